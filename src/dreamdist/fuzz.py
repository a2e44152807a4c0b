"""A seeded mutator of image files, for testing that loaders survive hostile inputs.

``seed_images()`` renders small valid files in every format and mode we read; ``mutate()`` applies
one to three byte-level mutations (bit flips, overwrites, truncation, insertion, duplication of a
span, zeroing, header-size tampering). The same seed always gives the same bytes.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def seed_images(size: int = 72) -> list[tuple[str, bytes]]:
    """Valid files: (format, bytes) for each format, in several modes (RGB, RGBA, P, L, 16-bit, CMYK)."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    rgba = rgb.convert("RGBA")
    grey16 = Image.fromarray((rng.integers(0, 65535, (size, size))).astype(np.uint16))
    seeds = [
        ("PNG", _encode(rgb, "PNG")),
        ("PNG", _encode(rgba, "PNG")),
        ("PNG", _encode(rgb.convert("P"), "PNG")),
        ("PNG", _encode(grey16, "PNG")),
        ("JPEG", _encode(rgb, "JPEG", quality=80)),
        ("JPEG", _encode(rgb.convert("CMYK"), "JPEG")),
        ("JPEG", _encode(rgb, "JPEG", progressive=True)),
        ("WEBP", _encode(rgb, "WEBP", quality=70)),
        ("WEBP", _encode(rgba, "WEBP", lossless=True)),
        ("GIF", _encode(rgb.convert("P"), "GIF")),
        ("GIF", _encode(rgb.convert("P"), "GIF", save_all=True, append_images=[rgb.rotate(90).convert("P")])),
        ("BMP", _encode(rgb, "BMP")),
        ("BMP", _encode(rgb.convert("L"), "BMP")),
        ("TIFF", _encode(rgb, "TIFF", compression="tiff_lzw")),
        ("TIFF", _encode(rgb.convert("CMYK"), "TIFF")),
        ("TIFF", _encode(grey16, "TIFF")),
    ]
    return seeds


def png_with_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to three random byte-level mutations of ``data``."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(0, 8))
        n = len(out)
        if n < 2:
            out += bytes(rng.integers(0, 256, 16, dtype=np.uint8))
            continue
        at = int(rng.integers(0, n))
        span = int(rng.integers(1, max(2, min(64, n - at) + 1)))
        if kind == 0:  # flip bits
            for i in rng.integers(0, n, int(rng.integers(1, 9))):
                out[int(i)] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # overwrite a span with random bytes
            out[at : at + span] = bytes(rng.integers(0, 256, span, dtype=np.uint8))
        elif kind == 2:  # truncate
            del out[max(1, at) :]
        elif kind == 3:  # insert random bytes
            out[at:at] = bytes(rng.integers(0, 256, span, dtype=np.uint8))
        elif kind == 4:  # duplicate a span
            out[at:at] = out[at : at + span]
        elif kind == 5:  # zero a span
            out[at : at + span] = bytes(span)
        elif kind == 6:  # tamper with the header (where sizes live): large or zero values
            where = int(rng.integers(0, min(n, 40)))
            out[where : where + 4] = rng.choice([b"\xff\xff\xff\x7f", b"\x00\x00\x00\x00", b"\x00\x01\x00\x00"])
        else:  # delete a span
            del out[at : at + span]
    return bytes(out)


def mutated_files(count: int, seed: int) -> list[tuple[str, bytes]]:
    """``count`` (file suffix, bytes) cases: mutations of every seed image, round robin."""
    rng = np.random.default_rng(seed)
    seeds = seed_images()
    cases = []
    for i in range(count):
        fmt, data = seeds[i % len(seeds)]
        cases.append((SUFFIX[fmt], mutate(data, rng)))
    return cases
