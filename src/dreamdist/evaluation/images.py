"""Image sets to evaluate: a folder of images, or a generation folder with ``manifest.jsonl``.

A manifest line is a JSON object with at least ``"file"`` (a path relative to the folder) and
optionally ``"prompt"`` (the text the image was generated from, used by CLIP-T) and ``"method"``.
Files that cannot be used (unreadable, truncated, 0 px, decompression bombs) are skipped with a
reason (as ``dreamdist.data`` does for references); ``NoUsableImagesError`` is raised when nothing
usable is left. Small images are kept: each feature extractor resizes to its own input size, and
the evaluation notes when tiny images were upscaled (``small_images_note``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from dreamdist.data import LoadReport, NoUsableImagesError, load_image_folder, open_image

MANIFEST = "manifest.jsonl"
MIN_SIDE = 1  # any image with pixels is usable: the extractors resize (the training loader's 64 px does not apply)
SMALL_SIDE = 64  # below this, upscaling to a model's 224 / 299 px input makes its features less meaningful


class ManifestError(ValueError):
    """A manifest line is not what ``dreamdist eval`` can read; the message names the line."""


@dataclass
class ImageSet:
    """Images of one side of a comparison, in a fixed order.

    Attributes:
        folder: where they came from.
        images: RGB PIL images.
        report: kept and skipped files.
        prompts: per-image prompt from the manifest (None where absent), or None without manifest.
        records: the manifest records of the kept images (empty without manifest).
    """

    folder: Path
    images: list[Image.Image]
    report: LoadReport
    prompts: list[str | None] | None = None
    records: list[dict] = field(default_factory=list)
    _hash: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def hash(self) -> str:
        """sha256 of the decoded pixels (sizes included) in order: the set's identity."""
        if self._hash is None:
            self._hash = hash_images(self.images)
        return self._hash


def hash_images(images: list[Image.Image]) -> str:
    """Hex sha256 over each image's size and RGB bytes, in order (independent of file names)."""
    digest = hashlib.sha256()
    for image in images:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        digest.update(f"{rgb.size[0]}x{rgb.size[1]};".encode())
        digest.update(rgb.tobytes())
    return digest.hexdigest()


def _read_manifest(folder: Path) -> list[dict]:
    records = []
    lines = (folder / MANIFEST).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(
                f"{folder / MANIFEST} line {number} is not JSON ({exc.msg}); fix or remove it"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("file"), str):
            raise ManifestError(
                f'{folder / MANIFEST} line {number} needs a "file" key with the image path relative to '
                f"{folder}; got {line[:80]!r}"
            )
        if Path(record["file"]).is_absolute():
            raise ManifestError(f'{folder / MANIFEST} line {number}: "file" must be relative to {folder}')
        records.append(record)
    if not records:
        raise NoUsableImagesError(f"{folder / MANIFEST} lists no images; remove it to evaluate every image")
    return records


def load_image_set(folder: str | Path, use_manifest: bool = True, role: str = "image") -> ImageSet:
    """Load a folder's usable images (or, when it has ``manifest.jsonl``, the files it lists).

    Args:
        folder: the image folder.
        use_manifest: read ``manifest.jsonl`` when present; otherwise every image of the folder.
        role: what the folder is, for error messages (``reference``, ``generated``).

    Raises:
        NoUsableImagesError: the folder is missing or holds no usable image (per-file report).
        ManifestError: a manifest line is malformed.
    """
    folder = Path(folder)
    if not folder.exists():
        raise NoUsableImagesError(f"{role} folder {folder} does not exist")
    if not folder.is_dir():
        raise NoUsableImagesError(f"{role} folder {folder} is not a folder; pass the folder that holds the images")
    if not (use_manifest and (folder / MANIFEST).is_file()):
        try:
            images, report = load_image_folder(folder, min_side=MIN_SIDE)
        except NoUsableImagesError as exc:
            raise NoUsableImagesError(f"{role} folder: {exc}") from None
        return ImageSet(folder, images, report)
    images, report, kept = [], LoadReport(), []
    for record in _read_manifest(folder):
        path = folder / record["file"]
        if not path.is_file():
            report.skipped.append((path, "listed in the manifest but not found"))
            continue
        try:
            images.append(open_image(path, min_side=MIN_SIDE))
        except ValueError as exc:
            report.skipped.append((path, str(exc)))
            continue
        report.kept.append(path)
        kept.append(record)
    if not images:
        raise NoUsableImagesError(f"{role} folder: no usable image listed in {folder / MANIFEST}.\n{report.summary()}")
    prompts = [r["prompt"] if isinstance(r.get("prompt"), str) else None for r in kept]
    return ImageSet(folder, images, report, prompts=prompts, records=kept)


def small_images_note(sets: dict[str, ImageSet], side: int = SMALL_SIDE) -> str | None:
    """A note when some images are smaller than ``side`` px (upscaled by the standard models), else None.

    Args:
        sets: role -> image set, e.g. ``{"reference": real, "generated": generated}``.
        side: the smallest side that passes without a note.
    """
    counts = {role: sum(min(im.size) < side for im in s.images) for role, s in sets.items()}
    if not any(counts.values()):
        return None
    smallest = min((im for s in sets.values() for im in s.images), key=lambda im: min(im.size))
    which = " and ".join(f"{n} {role}" for role, n in counts.items() if n)
    return (
        f"{which} image(s) are smaller than {side} px (smallest {smallest.size[0]}x{smallest.size[1]}); each model "
        "upscales them to its input (Inception 299 px, CLIP / DINO / DINOv2 224 px), which makes their features "
        "less meaningful than on photos; for toy-world images use --features toy-oracle"
    )
