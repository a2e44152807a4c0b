"""What a rater's browser receives of an image: its pixels at the study's one size, nothing else.

A served file must not tell which set an image came from. So every image is rebuilt from its
pixels alone (EXIF orientation applied, transparency composited on white, RGB), every image of
the sets is brought to the study's one size, and the bytes sent are an *uncompressed* PNG with
only the IHDR, IDAT and IEND chunks. Uncompressed, because compressed size still gives the source
away: a JPEG-sourced set decodes to pixels with block noise that compresses worse than a
PNG-sourced set of the same content (measured in docs/study.md). Every served image of a study
therefore has exactly the same byte count.

The study file stores a compact PNG of the same pixels; :func:`served_png` expands it per request.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

MAX_SIDE = 768  # the page shows an image at most 480 CSS px wide: 768 px stays sharp on a HiDPI screen
REFERENCE_SIDE = 384  # references are shown small
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROTATING = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def probe_size(path: Path, what: str) -> tuple[int, int]:
    """(width, height) of an image file as it will be shown (EXIF rotation applied), from its header."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{what}: cannot use {path}: not a readable image ({exc}); fix or remove the file") from None
    return (height, width) if orientation in ROTATING else (width, height)


def load_pixels(path: Path, what: str) -> Image.Image:
    """The image's pixels as a fresh RGB image: orientation applied, nothing of the file kept (no
    ICC profile, transparency key, text, gamma or resolution)."""
    from dreamdist.data import open_image

    try:
        image = open_image(path, min_side=1)  # full decode, EXIF transpose, alpha on white, RGB
    except ValueError as exc:
        raise ValueError(f"{what}: cannot use {path}: {exc}; fix or remove the file") from None
    except OSError as exc:
        raise OSError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    return Image.fromarray(np.asarray(image, dtype=np.uint8).copy())


def decode_png(png: bytes) -> Image.Image:
    """The pixels of a PNG kept in a study file, as a fresh RGB image."""
    with Image.open(io.BytesIO(png)) as image:
        return Image.fromarray(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())


def study_size(sizes: list[tuple[int, int]], max_side: int = MAX_SIDE) -> tuple[int, int]:
    """The one (width, height) of every set image: the smallest width and the smallest height of the
    sets' images, scaled down (same shape) so that its longer side is at most ``max_side``."""
    if max_side < 16:
        raise ValueError(f"--max-side must be at least 16; got {max_side}")
    width, height = min(w for w, _ in sizes), min(h for _, h in sizes)
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` scaled (never up when it is at least ``size``) to cover ``size``, then centre-cropped to it."""
    width, height = size
    scale = max(width / image.width, height / image.height)
    scaled = (max(width, math.ceil(image.width * scale)), max(height, math.ceil(image.height * scale)))
    if scaled != image.size:
        image = image.resize(scaled, Image.Resampling.LANCZOS)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def shrink(image: Image.Image, side: int) -> Image.Image:
    """``image`` scaled down (same shape) so that its longer side is at most ``side``."""
    if max(image.size) > side:
        image = image.copy()
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return image


def compact_png(image: Image.Image) -> bytes:
    """The PNG kept in the study file: compressed, written from a fresh image so no metadata is carried."""
    fresh = Image.fromarray(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
    buffer = io.BytesIO()
    fresh.save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def stored_png(pixels: np.ndarray) -> bytes:
    """An uncompressed PNG of ``pixels`` (H, W, 3) uint8: IHDR, one IDAT, IEND and nothing else.

    Its length depends on H and W only (deflate "stored" blocks, filter 0 on every row).
    """
    height, width, channels = pixels.shape
    assert channels == 3 and pixels.dtype == np.uint8, (pixels.shape, pixels.dtype)
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # (H, 1 + 3W): filter byte 0, then RGB
    rows[:, 1:] = pixels.reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 0))
        + _chunk(b"IEND", b"")
    )


def served_png(png: bytes) -> bytes:
    """The bytes sent for an image of the study file: its pixels as :func:`stored_png`."""
    return stored_png(np.asarray(decode_png(png)))  # (H, W, 3)


def png_chunks(data: bytes) -> list[str]:
    """The chunk types of a PNG file in order (e.g. ``["IHDR", "IDAT", "IEND"]``)."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    kinds, at = [], len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        kinds.append(kind.decode("latin-1"))
        at += 12 + length
    return kinds
