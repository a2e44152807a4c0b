"""Reference-image loading: every bad-input case skips the file with a reason, never crashes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreamdist.data import (
    MIN_SIDE,
    NoUsableImagesError,
    ReferenceSet,
    image_to_tensor,
    load_image_folder,
    open_image,
    resize_center_crop,
)
from dreamdist.testing import write_images

CATHEDRAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cathedral"


def test_skips_non_images_dotfiles_folders_and_reports_why(tmp_path):
    write_images(tmp_path, 2)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".DS_Store").write_bytes(b"\0\1")
    (tmp_path / "fake.jpg").write_text("this is not a jpeg")
    (tmp_path / "sub").mkdir()
    images, report = load_image_folder(tmp_path)
    assert len(images) == 2 and all(im.mode == "RGB" for im in images)
    reasons = {p.name: why for p, why in report.skipped}
    assert "extension" in reasons["notes.txt"]
    assert "not a readable image" in reasons["fake.jpg"]
    assert "folder" in reasons["sub"]
    assert ".DS_Store" not in reasons  # dotfiles are silently ignored
    assert "2 image(s) kept" in report.summary()


def test_truncated_jpeg_is_detected_by_full_decode(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with Image.open(tmp_path / "cut.jpg") as probe:
        probe.verify()  # verify() alone does not notice the missing half
    with pytest.raises(ValueError, match="not a readable image"):
        open_image(tmp_path / "cut.jpg")


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(NoUsableImagesError, match="no usable image"):
        load_image_folder(tmp_path)
    with pytest.raises(NoUsableImagesError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(NoUsableImagesError, match="a.txt"):
        load_image_folder(tmp_path)


def test_rgba_and_palette_transparency_composite_on_white(tmp_path):
    rgba = Image.new("RGBA", (80, 80), (255, 0, 0, 0))  # fully transparent red
    rgba.save(tmp_path / "rgba.png")
    assert open_image(tmp_path / "rgba.png").getpixel((5, 5)) == (255, 255, 255)
    pal = Image.new("P", (80, 80), 0)
    pal.putpalette([0, 0, 255] + [0] * 765)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    assert open_image(tmp_path / "pal.png").getpixel((5, 5)) == (255, 255, 255)
    la = Image.new("LA", (80, 80), (0, 255))  # opaque black
    la.save(tmp_path / "la.png")
    assert open_image(tmp_path / "la.png").getpixel((5, 5)) == (0, 0, 0)


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    array = np.full((80, 80), 32768, dtype=np.uint16)  # mid-grey in 16 bit
    Image.fromarray(array).save(tmp_path / "grey16.png")
    value = open_image(tmp_path / "grey16.png").getpixel((1, 1))
    assert value[0] == value[1] == value[2] and 126 <= value[0] <= 129


def test_cmyk_is_converted(tmp_path):
    Image.new("CMYK", (80, 80), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # red
    r, g, b = open_image(tmp_path / "cmyk.jpg").getpixel((40, 40))
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (120, 80), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 60, 80))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    loaded = open_image(tmp_path / "rot.jpg")
    assert loaded.size == (80, 120)
    assert sum(loaded.getpixel((40, 10))) > 600 and sum(loaded.getpixel((40, 110))) < 100


def test_tiny_and_bomb_images_are_refused(tmp_path):
    Image.new("RGB", (MIN_SIDE - 1, 200)).save(tmp_path / "tiny.png")
    with pytest.raises(ValueError, match="too small"):
        open_image(tmp_path / "tiny.png")
    Image.new("L", (3000, 3000)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="decompression bomb"):
        open_image(tmp_path / "big.png", max_pixels=1_000_000)


def test_resize_crop_and_tensor_range():
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    crop = resize_center_crop(image, 64)
    assert crop.size == (64, 64)
    tensor = image_to_tensor(crop)
    assert tensor.shape == (3, 64, 64)
    assert torch.allclose(tensor[0], torch.ones(64, 64)) and torch.allclose(tensor[1], -torch.ones(64, 64))


def test_multiclass_reference_set(tmp_path):
    write_images(tmp_path / "red_car", 2, seed=1)
    write_images(tmp_path / "blue_boat", 3, seed=2)
    data = ReferenceSet.from_folder(tmp_path, 32, multiclass=True)
    assert data.class_names == ["blue boat", "red car"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    assert data.pixels.shape == (5, 3, 32, 32)
    single = ReferenceSet.from_folder(tmp_path / "red_car", 32)
    assert single.fingerprint != data.fingerprint


@pytest.mark.skipif(not CATHEDRAL.is_dir(), reason="shared cathedral photos not present")
def test_real_cathedral_photos_load():
    data = ReferenceSet.from_folder(CATHEDRAL, 64)
    assert len(data.report.kept) == 23 and not data.report.skipped
    assert data.pixels.shape == (23, 3, 64, 64)


def test_reference_sets_hold_paths_not_pixels_and_stream_chunks(tmp_path):
    for c in range(3):
        write_images(tmp_path / f"class_{c}", 7, seed=c)
    data = ReferenceSet.from_folder(tmp_path, 32, multiclass=True)
    held = [v for v in vars(data).values() if isinstance(v, torch.Tensor)]
    assert [t.shape for t in held] == [(21,)]  # the labels only: no class's pixels stay in memory
    chunks = list(data.iter_pixels(chunk=8))
    assert [len(c) for c in chunks] == [8, 8, 5]
    assert torch.equal(torch.cat(chunks), data.pixels)
    (tmp_path / "class_1" / "img_03.png").write_bytes(b"gone")
    with pytest.raises(ValueError, match="changed after it was checked"):
        _ = data.pixels
