"""Reference images: a folder -> validated RGB images -> cached VAE latents.

Every file that cannot be used is skipped with a reason, never silently and never with a
traceback; the caller decides what to do when nothing usable is left (``NoUsableImagesError``).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MIN_SIDE = 64  # smaller images carry too little detail to be a reference
MAX_PIXELS = 50_000_000  # decompression-bomb guard, per file (a 7000 x 7000 photo passes)


class NoUsableImagesError(ValueError):
    """Raised when a reference folder yields no usable image; the message lists why per file."""


@dataclass
class LoadReport:
    """What happened to each file of a folder: kept paths and (path, reason) for skipped ones."""

    kept: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One line per skipped file, prefixed by the counts."""
        lines = [f"{len(self.kept)} image(s) kept, {len(self.skipped)} skipped"]
        lines += [f"  skipped {p.name}: {why}" for p, why in self.skipped]
        return "\n".join(lines)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Transparency (RGBA, LA, P with a transparent index) is composited on ``background``;
    16-bit and 32-bit integer / float greyscale are scaled to 0..255 from their true range;
    CMYK and YCbCr go through PIL's converters.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            array = array / 65535.0
        else:  # 32-bit: scale from the type's range when it is integer, else from the data
            hi = 65535.0 if image.mode == "I" and array.max() <= 65535 else max(float(array.max()), 1e-12)
            array = array / hi
        grey = Image.fromarray(np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
        return grey.convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(path: str | Path, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open one image file fully (decode every pixel), apply EXIF orientation, return RGB.

    Raises ``ValueError`` with a human reason for anything unusable: not an image, truncated or
    corrupt data, too small, or more pixels than ``max_pixels`` (decompression bomb).
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PIL's notes on damaged metadata: the reason is ours
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ValueError(
                        f"{width}x{height} has more than {max_pixels:,} pixels (possible decompression bomb); "
                        "downscale it first"
                    )
                image.load()  # full decode: truncated files fail here, verify() alone would not
                image = ImageOps.exif_transpose(image)
                image = to_rgb(image)
    except ValueError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"refused as a possible decompression bomb ({exc})") from None
    except (OSError, SyntaxError) as exc:  # PIL reports unreadable/truncated data as OSError
        raise ValueError(f"not a readable image ({type(exc).__name__}: {exc})") from None
    if min(image.size) < min_side:
        raise ValueError(f"too small ({image.size[0]}x{image.size[1]}); need at least {min_side}px per side")
    return image


def list_image_files(folder: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Candidate image files of a folder (sorted, not recursive) and the entries passed over."""
    folder = Path(folder)
    if not folder.exists():
        raise NoUsableImagesError(f"reference folder {folder} does not exist")
    if not folder.is_dir():
        raise NoUsableImagesError(f"{folder} is not a folder; pass the folder that holds the images")
    files, passed = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue  # dotfiles (.DS_Store, ._foo.jpg) are never images a user meant
        if entry.is_dir():
            passed.append((entry, "is a folder (folders are not searched)"))
        elif entry.suffix.lower() not in IMAGE_EXTENSIONS:
            passed.append((entry, f"extension {entry.suffix or '(none)'} is not an image type"))
        else:
            files.append(entry)
    return files, passed


def load_image_folder(
    folder: str | Path, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS, keep: bool = True
) -> tuple[list[Image.Image], LoadReport]:
    """Load every usable image of ``folder`` as RGB; raise ``NoUsableImagesError`` if none is left.

    ``keep=False`` decodes each file to check it but returns no images (only the report).
    """
    files, passed = list_image_files(folder)
    report = LoadReport(skipped=list(passed))
    images = []
    for path in files:
        try:
            image = open_image(path, min_side=min_side, max_pixels=max_pixels)
            report.kept.append(path)
            if keep:
                images.append(image)
        except ValueError as exc:
            report.skipped.append((path, str(exc)))
    if not report.kept:
        raise NoUsableImagesError(f"no usable image in {folder}.\n{report.summary()}")
    return images, report


def check_image_folder(folder: str | Path) -> LoadReport:
    """Decode every file of ``folder`` once to tell usable from unusable; keep no pixels."""
    return load_image_folder(folder, keep=False)[1]


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the short side to ``size`` (Lanczos), then center-crop to ``size`` x ``size``."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if image.size != (new_w, new_h):
        if max(width, height) > 4 * size:  # cheap pre-shrink of huge photos before the exact filter
            image = image.reduce(max(1, int(min(width, height) / (2 * size))))
        image = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def bucket_sizes(size: int, step: int, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """Aspect-ratio buckets: (width, height) multiples of ``step`` of about ``size`` x ``size`` pixels.

    For each height, the widest width with ``width * height <= size**2``; ratios up to ``max_ratio``
    (SDXL's 1024 px, step 64: 1024x1024, 1088x960, ..., 1408x704 and their transposes).
    """
    out = set()
    for height in range(step, 2 * size + 1, step):
        width = size * size // height // step * step
        if width >= step and max(width / height, height / width) <= max_ratio:
            out.add((width, height))
    return sorted(out, key=lambda wh: wh[0] / wh[1])


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest (in log ratio) to ``width`` / ``height``."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda wh: abs(math.log(wh[0] / wh[1]) - ratio))


def resize_cover_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize (Lanczos) to cover ``width`` x ``height``, then center-crop to it (no squashing)."""
    scale = max(width / image.width, height / image.height)
    new_w, new_h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    if image.size != (new_w, new_h):
        image = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return image.crop((left, top, left + width, top + height))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float tensor in [-1, 1] (the VAE's input range)."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def images_fingerprint(paths: list[Path]) -> str:
    """Hash of file names and bytes: the cache key of a reference set."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


@dataclass
class ReferenceSet:
    """Validated reference images of one or more concepts, read for training at ``size`` x ``size``.

    Only paths and labels are held: pixels are decoded again, a chunk at a time, when they are
    needed (``iter_pixels``), so a multi-class folder never sits in memory as a whole.
    ``labels`` (N,) index into ``class_names``.
    """

    paths: list[Path]
    labels: torch.Tensor
    class_names: list[str]
    fingerprint: str
    report: LoadReport
    size: int
    multiclass: bool = False

    def __len__(self) -> int:
        return len(self.paths)

    def iter_pixels(self, chunk: int = 16):
        """Yield (n, 3, size, size) tensors in [-1, 1], ``chunk`` images at a time, in order."""
        for start in range(0, len(self.paths), chunk):
            yield torch.stack([self._pixels(path) for path in self.paths[start : start + chunk]])

    @property
    def pixels(self) -> torch.Tensor:
        """All images at once (N, 3, size, size): for small sets and tests; training streams them."""
        return torch.cat(list(self.iter_pixels()))

    def _image(self, path: Path) -> Image.Image:
        try:
            return open_image(path)
        except ValueError as exc:
            raise ValueError(f"{path} changed after it was checked and is no longer usable: {exc}") from None

    def _pixels(self, path: Path) -> torch.Tensor:
        return image_to_tensor(resize_center_crop(self._image(path), self.size))

    def buckets(self, step: int) -> list[tuple[int, int]]:
        """Each image's aspect-ratio bucket (width, height) at about ``size``² pixels (``bucket_sizes``)."""
        sizes = bucket_sizes(self.size, step)
        if not sizes:
            return [(self.size, self.size)] * len(self.paths)
        return [nearest_bucket(*self._image(path).size, sizes) for path in self.paths]

    def iter_bucket_pixels(self, buckets: list[tuple[int, int]], chunk: int = 16):
        """Yield (indices, (n, 3, h, w) pixels in [-1, 1]) per bucket, ``chunk`` images at a time.

        Each image is resized to cover its bucket and center-cropped to it (``buckets[i]``).
        """
        for bucket in sorted(set(buckets)):
            members = [i for i, b in enumerate(buckets) if b == bucket]
            for start in range(0, len(members), chunk):
                part = members[start : start + chunk]
                images = [resize_cover_crop(self._image(self.paths[i]), *bucket) for i in part]
                yield part, torch.stack([image_to_tensor(image) for image in images])

    @classmethod
    def from_folder(cls, folder: str | Path, size: int, multiclass: bool = False) -> ReferenceSet:
        """One concept from a folder, or (``multiclass``) one concept per sub-folder name."""
        folder = Path(folder)
        if not multiclass:
            report = check_image_folder(folder)
            labels = torch.zeros(len(report.kept), dtype=torch.long)
            return cls(list(report.kept), labels, [folder.name], images_fingerprint(report.kept), report, size)
        if not folder.is_dir():
            raise NoUsableImagesError(f"{folder} is not a folder of class sub-folders")
        subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not subfolders:
            raise NoUsableImagesError(f"multi-class mode needs one sub-folder per class in {folder}; found none")
        labels, report = [], LoadReport()
        for index, sub in enumerate(subfolders):
            sub_report = check_image_folder(sub)
            report.kept += sub_report.kept
            report.skipped += sub_report.skipped
            labels += [index] * len(sub_report.kept)
        names = [sub.name.replace("_", " ") for sub in subfolders]
        fingerprint = images_fingerprint(report.kept)
        return cls(list(report.kept), torch.tensor(labels), names, fingerprint, report, size, multiclass=True)
