"""On-disk feature cache: one safetensors file per (feature space, image set), never pickle.

The key hashes the model id, the fingerprint of its weights, the preprocessing settings and the
image set's pixel hash, so any change to one of them misses the cache instead of returning
stale features. Location: ``--cache-dir``, else ``$DREAMDIST_CACHE/features``, else
``~/.cache/dreamdist/features``. Files are written atomically (temp file + rename).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from dreamdist.artifact import atomic_save_safetensors
from dreamdist.evaluation.defaults import default_cache_dir  # noqa: F401 (re-export)
from dreamdist.evaluation.features import FeatureInfo, Images, extract_features

CACHE_VERSION = "1"  # bump when the meaning of cached features changes


def cache_key(info: FeatureInfo, image_hash: str) -> str:
    """Hex key of (feature space, image set)."""
    identity = {
        "version": CACHE_VERSION,
        "kind": info.kind,
        "model_id": info.model_id,
        "weights": info.weights,
        "preprocessing": info.preprocessing,
        "images": image_hash,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:40]


def cache_path(cache_dir: str | Path, info: FeatureInfo, image_hash: str) -> Path:
    return Path(cache_dir) / f"{info.kind}-{cache_key(info, image_hash)}.safetensors"


def load_cached(path: Path, count: int, dim: int) -> torch.Tensor | None:
    """Features stored at ``path`` if present and of shape (count, dim); None otherwise."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            features = handle.get_tensor("features")
    except (SafetensorError, OSError, KeyError) as exc:
        warnings.warn(f"ignoring unreadable feature cache {path} ({exc}); recomputing", stacklevel=2)
        return None
    if tuple(features.shape) != (count, dim):
        warnings.warn(f"ignoring feature cache {path} of shape {tuple(features.shape)}; recomputing", stacklevel=2)
        return None
    return features


def save_cached(path: Path, features: torch.Tensor, info: FeatureInfo, image_hash: str) -> None:
    """Write features (N, d) with their identity as safetensors metadata, atomically."""
    meta = {"model_id": info.model_id, "weights": info.weights, "kind": info.kind, "images": image_hash}
    atomic_save_safetensors({"features": features}, path, meta)


def cached_features(
    extractor: torch.nn.Module,
    images: Images,
    image_hash: str,
    cache_dir: str | Path | None,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "",
) -> tuple[torch.Tensor, bool]:
    """Features of ``images`` from the cache, or extracted (with a progress bar) and stored.

    Args:
        extractor: a module of ``features.py`` (has ``.info``).
        images: the input contract of ``features.py``.
        image_hash: identity of ``images`` (``ImageSet.hash``).
        cache_dir: cache folder, or None to neither read nor write a cache.
        batch_size, progress, desc: passed to ``extract_features``.

    Returns:
        (N, d) float32 features and whether they came from the cache.
    """
    info: FeatureInfo = extractor.info
    path = cache_path(cache_dir, info, image_hash) if cache_dir is not None else None
    if path is not None:
        features = load_cached(path, len(images), info.dim)
        if features is not None:
            return features, True
    features = extract_features(extractor, images, batch_size=batch_size, progress=progress, desc=desc)
    if path is not None:
        save_cached(path, features, info, image_hash)
    return features, False
