"""Artifacts: learned tensors in safetensors with self-describing JSON metadata.

One loader opens every method's artifact: the metadata names the method, the backbone it was
trained on (ids, dims, an embedding fingerprint), the hyperparameters, the step and versions.
Pickle files are refused unless the user opts in, and then read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dreamdist import __version__
from dreamdist.atomic import atomic_path, atomic_write_json

ARTIFACT_NAME = "dreamdist.safetensors"
FORMAT = "dreamdist"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


class UnsafeFileError(ValueError):
    """A pickle-based file was given without ``--allow-pickle``."""


@dataclass
class Artifact:
    """Loaded artifact: tensors plus decoded metadata."""

    tensors: dict[str, torch.Tensor]
    meta: dict
    path: Path

    @property
    def method(self) -> str:
        return self.meta["method"]

    def sha256(self) -> str:
        """Hash of the artifact file (recorded in generation manifests)."""
        return file_sha256(self.path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def save_artifact(folder: str | Path, method: str, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Save ``tensors`` with ``meta`` (JSON-serialisable) as ``<folder>/dreamdist.safetensors``.

    Also writes ``artifact.json`` beside it: the same metadata, for people and other tools.
    """
    folder = Path(folder)
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dreamdist_version": __version__,
        "method": method,
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
        **meta,
    }
    path = folder / ARTIFACT_NAME
    atomic_save_safetensors(tensors, path, {"dreamdist": json.dumps(full)})
    atomic_write_json(folder / "artifact.json", full)
    return path


def find_artifact(path: str | Path) -> Path:
    """A run folder (its ``dreamdist.safetensors``) or a file path -> the artifact file."""
    path = Path(path)
    if path.is_dir():
        candidate = path / ARTIFACT_NAME
        if not candidate.exists():
            raise FileNotFoundError(
                f"{path} holds no {ARTIFACT_NAME}: is it a finished run folder? "
                "(An interrupted run can be finished with 'dreamdist train ... --resume'.)"
            )
        return candidate
    if not path.exists():
        raise FileNotFoundError(f"artifact {path} does not exist")
    return path


def read_safetensors(path: str | Path, key: str = "dreamdist") -> tuple[dict[str, torch.Tensor], str | None]:
    """Every tensor of a safetensors file and its ``key`` metadata string (None if absent).

    Raises ``ValueError`` for anything safetensors cannot read (corrupt header, not safetensors).
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(key)
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a readable safetensors file ({exc})") from None
    return tensors, raw


def load_artifact(path: str | Path, allow_pickle: bool = False) -> Artifact:
    """Open any dreamdist artifact (safetensors). Pickle files need ``allow_pickle``."""
    path = find_artifact(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _load_pickle(path, allow_pickle)
    tensors, raw = read_safetensors(path)
    if raw is None:
        raise ValueError(f"{path} is a safetensors file without dreamdist metadata; was it made by dreamdist?")
    meta = json.loads(raw)
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path} uses artifact format {meta['format_version']}, newer than this dreamdist "
            f"({__version__}) reads; upgrade dreamdist"
        )
    return Artifact(tensors, meta, path)


def torch_load_safely(path: Path, allow_pickle: bool):
    """``torch.load`` for files a user hands us: refused unless opted in, then ``weights_only=True``."""
    if not allow_pickle:
        raise UnsafeFileError(
            f"{path} is a pickle-based file, which can run code when opened; dreamdist refuses it by default. "
            "If you trust it, pass --allow-pickle (it is then read with torch.load(weights_only=True))."
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_pickle(path: Path, allow_pickle: bool) -> Artifact:
    """A pickle holding {"tensors": {...}, "meta": {...}} as saved by older tools (opt-in)."""
    obj = torch_load_safely(path, allow_pickle)
    if not isinstance(obj, dict) or "meta" not in obj or "tensors" not in obj:
        raise ValueError(f"{path} does not hold a dreamdist artifact (expected keys 'tensors' and 'meta')")
    return Artifact(dict(obj["tensors"]), dict(obj["meta"]), path)
