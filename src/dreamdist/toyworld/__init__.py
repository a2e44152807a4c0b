"""The built-in toy world: a renderer, a tiny text-to-image model trained on it, and an oracle.

``model_dir()`` is the shipped ``StableDiffusionPipeline`` folder (``--model toy``).
"""

from __future__ import annotations

import os
from pathlib import Path

MODEL_DIR = Path(__file__).parent / "assets" / "toy-sd"
MODEL_ENV = "DREAMDIST_TOY_MODEL"  # points --model toy at a retrained folder instead


def model_dir() -> Path:
    """Folder of the toy pipeline (``$DREAMDIST_TOY_MODEL`` or the shipped one); raises with the fix."""
    folder = Path(os.environ[MODEL_ENV]) if os.environ.get(MODEL_ENV) else MODEL_DIR
    if not (folder / "model_index.json").is_file():
        hint = f"unset {MODEL_ENV} or point it at a pipeline folder; " if os.environ.get(MODEL_ENV) else ""
        raise FileNotFoundError(
            f"the toy model is missing from {folder} (no model_index.json); {hint}reinstall dreamdist with "
            "its package data, or retrain it with `python scripts/train_toy_model.py` (about an hour on one CPU core)"
        )
    return folder


__all__ = ["MODEL_DIR", "MODEL_ENV", "model_dir"]
