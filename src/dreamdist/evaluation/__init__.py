"""Evaluation: feature extractors (``features``), pure metric functions (``metrics``), reports.

``dreamdist eval`` / ``dreamdist compare`` live in ``evaluation.cli``; the library entry point
is :func:`evaluate` on two :class:`ImageSet`s. Attributes load lazily, so importing the CLI
module does not import torch or transformers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EvalConfig": "pipeline",
    "evaluate": "pipeline",
    "ImageSet": "images",
    "load_image_set": "images",
    "METRICS": "defaults",
    "DEFAULT_METRICS": "defaults",
    "ToyOracleFeatures": "toy_oracle",
    **{
        name: "metrics"
        for name in (
            "clip_t",
            "cmmd",
            "frechet_distance",
            "frechet_distance_from_stats",
            "gaussian_stats",
            "kernel_inception_distance",
            "knn_radii",
            "manifold_metrics",
            "mean_cosine_similarity",
            "vendi_score",
        )
    },
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"dreamdist.evaluation.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dreamdist.evaluation' has no attribute {name!r}")
