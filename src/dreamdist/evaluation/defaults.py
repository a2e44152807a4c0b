"""Names and defaults of the evaluation subsystem, importable without torch or transformers.

The main CLI builds its parser from these, so ``dreamdist --help`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

METRICS = (
    *("fid", "clip-i", "dino", "density", "coverage", "precision", "recall", "clip-t"),
    *("kid", "cmmd", "fd-dinov2", "vendi"),  # the standard distribution metrics (docs/evaluation.md)
)
DEFAULT_METRICS = (
    "fid",
    "clip-i",
    "dino",
    "density",
    "coverage",
    "precision",
    "recall",
    "kid",
    "cmmd",
    "fd-dinov2",
    "vendi",
)
MANIFOLD = ("density", "coverage", "precision", "recall")
FRECHET = ("fid", "fd-dinov2")  # Frechet distances: need 2 images per set, biased for fewer than d
FEATURES_OF = {  # metric -> the feature space it is computed in (METHODS.md section 7)
    "fid": "inception",
    "kid": "inception",  # like FID (Binkowski et al. 2018)
    "clip-i": "clip",
    "clip-t": "clip",
    "cmmd": "clip",  # Jayasumana et al. 2024
    "dino": "dino",
    "fd-dinov2": "dinov2",  # Stein et al. 2023
    "vendi": "dinov2",  # of the generated set alone; every space's Vendi, both sets, is in the report
    **{name: "dinov2" for name in MANIFOLD},
}

# --features: "standard" computes each metric in its usual model's space (FEATURES_OF); the toy sets
# compute every metric in one space of the toy world's oracle (evaluation/toy_oracle.py), offline:
# "toy-oracle" its penultimate features, "toy-attributes" its predicted attributes as one-hots.
TOY_SETS = ("toy-oracle", "toy-attributes")
FEATURE_SETS = ("standard", *TOY_SETS)
# without --metrics under a toy set: clip-i and dino (fid and fd-dinov2) would be the same number there, so
# dino and fd-dinov2 are left out
TOY_DEFAULT_METRICS = ("fid", "clip-i", "density", "coverage", "precision", "recall", "kid", "cmmd", "vendi")

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_DINO = "facebook/dino-vits16"
DEFAULT_DINOV2 = "facebook/dinov2-base"
INCEPTION_ENV = "DREAMDIST_INCEPTION_WEIGHTS"


def metric_name(name: str) -> str:
    """A metric name as typed (``FD_DINOv2``, `` kid``) in the spelling of ``METRICS`` (``fd-dinov2``)."""
    return name.strip().lower().replace("_", "-")


def default_cache_dir() -> Path:
    """``$DREAMDIST_CACHE/features`` when the variable is set, else ``~/.cache/dreamdist/features``."""
    root = os.environ.get("DREAMDIST_CACHE")
    return Path(root).expanduser() / "features" if root else Path.home() / ".cache" / "dreamdist" / "features"


def feature_space(metric: str, features: str = "standard") -> str:
    """The feature space (extractor kind) ``metric`` is computed in under ``--features features``."""
    return features if features in TOY_SETS else FEATURES_OF[metric]


def space_of(report: dict, metric: str) -> dict:
    """A report's ``features`` entry (model id, weights, dim, ...) of the space ``metric`` was computed in."""
    features = report.get("settings", {}).get("features", "standard")
    return report.get("features", {}).get(feature_space(metric, features) if metric in FEATURES_OF else "", {})
