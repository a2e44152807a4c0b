"""The built-in toy world: a renderer, a tiny text-to-image model trained on it, and an oracle.

``model_dir()`` is the shipped ``StableDiffusionPipeline`` folder (``--model toy``).
"""

from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).parent / "assets" / "toy-sd"


def model_dir() -> Path:
    """Folder of the shipped toy pipeline; raises with the fix when it is missing."""
    if not (MODEL_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the toy model is missing from {MODEL_DIR}; reinstall dreamdist with its package data, "
            "or retrain it with `python scripts/train_toy_model.py` (about an hour on one CPU core)"
        )
    return MODEL_DIR


__all__ = ["MODEL_DIR", "model_dir"]
