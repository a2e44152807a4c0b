"""Names and defaults of the evaluation subsystem, importable without torch or transformers.

The main CLI builds its parser from these, so ``dreamdist --help`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

METRICS = ("fid", "clip-i", "dino", "density", "coverage", "precision", "recall", "clip-t")
DEFAULT_METRICS = ("fid", "clip-i", "dino", "density", "coverage", "precision", "recall")
MANIFOLD = ("density", "coverage", "precision", "recall")
FEATURES_OF = {  # metric -> the feature space it is computed in (METHODS.md section 7)
    "fid": "inception",
    "clip-i": "clip",
    "clip-t": "clip",
    "dino": "dino",
    **{name: "dinov2" for name in MANIFOLD},
}

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_DINO = "facebook/dino-vits16"
DEFAULT_DINOV2 = "facebook/dinov2-base"
INCEPTION_ENV = "DREAMDIST_INCEPTION_WEIGHTS"


def default_cache_dir() -> Path:
    """``$DREAMDIST_CACHE/features`` when the variable is set, else ``~/.cache/dreamdist/features``."""
    root = os.environ.get("DREAMDIST_CACHE")
    return Path(root).expanduser() / "features" if root else Path.home() / ".cache" / "dreamdist" / "features"
