"""Blinding: what the server sends of an image tells nothing of its set, measured on a JPEG-sourced
and a PNG-sourced set of the same content; the manifest cannot reach outside its folder; a study of
format version 1 is upgraded in place."""

from __future__ import annotations

import io
import json
import sqlite3
import urllib.request

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageDraw, ImageFilter, PngImagePlugin

from dreamdist.study import images, store
from dreamdist.study.create import ImageSource, create_study
from dreamdist.study.server import make_server
from test_study import BLUE, RED, color_folder

ANCILLARY_FREE = ["IHDR", "IDAT", "IEND"]


def scene(i: int, side: int = 64) -> Image.Image:
    """A seeded picture with gradients, shapes, soft edges and a little noise (like a generated image)."""
    rng = np.random.default_rng(i)
    y, x = np.mgrid[0:side, 0:side] / side
    picture = Image.fromarray(np.stack([x * 200 + 30, y * 180 + 40, (1 - x) * 150 + 50], -1).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for _ in range(6):
        cx, cy = rng.integers(0, side, 2)
        r = int(rng.integers(side // 10, side // 3))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    pixels = np.asarray(picture.filter(ImageFilter.GaussianBlur(side / 100)), dtype=float)
    pixels += rng.normal(0, 2.0, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def png_and_jpeg_sets(root, n: int = 12, side: int = 64):
    """The same n scenes twice: PNGs with every ancillary chunk a tool may write (iCCP, tRNS, tEXt, gAMA,
    pHYs), and JPEGs (quality 90, ICC profile, stored rotated with an EXIF orientation tag)."""
    png_dir, jpg_dir = root / "png_set", root / "jpg_set"
    png_dir.mkdir()
    jpg_dir.mkdir()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for i in range(n):
        picture = scene(i, side)
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", "steps 30, sampler pngmethod")
        info.add(b"gAMA", (45455).to_bytes(4, "big"))
        picture.save(png_dir / f"{i}.png", pnginfo=info, icc_profile=icc, transparency=(1, 2, 3), dpi=(72, 72))
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 clockwise to show": the file holds the scene turned the other way
        rotated = picture.transpose(Image.Transpose.ROTATE_90)
        rotated.save(jpg_dir / f"{i}.jpg", quality=90, icc_profile=icc, exif=exif)
    return png_dir, jpg_dir


def best_threshold_accuracy(sizes: list[int], labels: list[int]) -> float:
    """The accuracy of the best one-threshold classifier of the labels from the byte sizes (0.5: chance)."""
    best = 0.0
    for cut in sorted(set(sizes)) + [max(sizes) + 1]:
        guess = [int(s >= cut) for s in sizes]
        hits = sum(g == y for g, y in zip(guess, labels)) / len(labels)
        best = max(best, hits, 1 - hits)
    return best


def served_images(study, url: str) -> dict[str, list[bytes]]:
    """Every set image of the study as the server sends it, by set name."""
    conn = sqlite3.connect(study)
    rows = conn.execute("SELECT s.name, i.token FROM images i JOIN sets s ON s.id = i.set_id").fetchall()
    conn.close()
    served: dict[str, list[bytes]] = {}
    for name, token in rows:
        with urllib.request.urlopen(f"{url}img/{token}", timeout=30) as response:
            assert response.headers["Content-Type"] == "image/png"
            served.setdefault(name, []).append(response.read())
    return served


def test_served_images_do_not_tell_a_jpeg_set_from_a_png_set(tmp_path):
    png_dir, jpg_dir = png_and_jpeg_sets(tmp_path)
    sources = {"png": sorted(png_dir.iterdir()), "jpg": sorted(jpg_dir.iterdir())}
    source_sizes = [f.stat().st_size for f in sources["png"] + sources["jpg"]]
    labels = [0] * 12 + [1] * 12
    assert best_threshold_accuracy(source_sizes, labels) == 1.0  # the files themselves give the set away

    study = tmp_path / "s.sqlite"
    create_study(study, [ImageSource("png", png_dir), ImageSource("jpg", jpg_dir)], n_pairs=12)
    srv = make_server(study, port=0).start()
    try:
        served = served_images(study, srv.url)
    finally:
        srv.stop()
    everything = served["png"] + served["jpg"]
    for data in everything:
        assert images.png_chunks(data) == ANCILLARY_FREE  # no iCCP, tRNS, tEXt, gAMA, pHYs, eXIf
        with Image.open(io.BytesIO(data)) as picture:
            assert picture.size == (64, 64) and picture.mode == "RGB" and not picture.info
    sizes = [len(data) for data in everything]
    assert len(set(sizes)) == 1  # every image of the study has the same byte count
    assert best_threshold_accuracy(sizes, labels) == 0.5
    # the JPEGs are shown upright (EXIF orientation applied): each is one of the scenes, up to JPEG loss
    for data in served["jpg"]:
        jpg = np.asarray(Image.open(io.BytesIO(data)), dtype=float)
        errors = [np.abs(jpg - np.asarray(scene(i), dtype=float)).mean() for i in range(12)]
        assert min(errors) < 10, min(errors)  # another scene, or the scene turned: 50 and more


def test_sets_of_other_sizes_are_brought_to_one_size(tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    for i in range(3):
        scene(i, 90).crop((0, 0, 90, 72)).save(big / f"{i}.webp")  # 90 x 72, another format
    small = color_folder(tmp_path / "small", RED, 3)  # 48 x 40
    tall = tmp_path / "tall"
    tall.mkdir()
    for i in range(3):  # 30 x 50, with an alpha channel
        Image.new("RGBA", (30, 50), (0, 0, 255, 128)).save(tall / f"{i}.png")
    refs = color_folder(tmp_path / "refs", BLUE, 1)
    study = tmp_path / "s.sqlite"
    summary = create_study(
        study, [ImageSource("big", big), ImageSource("small", small), ImageSource("tall", tall)], refs=refs
    )
    assert summary["size"] == (30, 40)  # the smallest width and the smallest height
    conn = store.open_study(study)
    for set_id, png in conn.execute("SELECT set_id, png FROM images"):
        served = images.served_png(png)
        assert images.png_chunks(served) == ANCILLARY_FREE
        with Image.open(io.BytesIO(served)) as picture:
            assert picture.size == ((30, 40) if set_id is not None else (48, 40))  # references: their own shape
            if set_id == 3:  # transparency composited on white: (0, 0, 255) at half alpha
                assert picture.getpixel((15, 20)) == (127, 127, 255)
    conn.close()
    large = create_study(tmp_path / "l.sqlite", [ImageSource("a", big), ImageSource("b", big)], max_side=45)
    assert large["size"] == (45, 36)  # the longest side capped, the shape kept


def test_stored_png_length_depends_on_the_size_only():
    rng = np.random.default_rng(0)
    flat = np.zeros((20, 30, 3), np.uint8)
    noise = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert len(images.stored_png(flat)) == len(images.stored_png(noise))
    for pixels in (flat, noise):
        with Image.open(io.BytesIO(images.stored_png(pixels))) as picture:
            np.testing.assert_array_equal(np.asarray(picture), pixels)


def test_a_manifest_cannot_name_files_outside_its_folder(tmp_path):
    outside = color_folder(tmp_path / "private", RED, 1) / "img0.png"
    ok = color_folder(tmp_path / "ok", BLUE, 2)
    for name, entry in {
        "absolute": str(outside),
        "dotdot": "../private/img0.png",
        "symlink": "link.png",
        "deep": "sub/../../private/img0.png",
    }.items():
        gen = color_folder(tmp_path / f"gen_{name}", RED, 1)
        (gen / "link.png").symlink_to(outside)
        (gen / "manifest.jsonl").write_text(json.dumps({"file": "img0.png"}) + "\n" + json.dumps({"file": entry}))
        with pytest.raises(ValueError, match="outside the set's folder") as caught:
            create_study(tmp_path / f"{name}.sqlite", [ImageSource("a", gen), ImageSource("b", ok)])
        assert "manifest.jsonl line 2" in str(caught.value), name
        assert not (tmp_path / f"{name}.sqlite").exists()
    inside = color_folder(tmp_path / "gen_inside", RED, 2)
    (inside / "sub").mkdir()
    (inside / "img1.png").rename(inside / "sub" / "img1.png")
    (inside / "link.png").symlink_to(inside / "img0.png")  # a link that stays inside is fine
    (inside / "manifest.jsonl").write_text(
        "".join(json.dumps({"file": f}) + "\n" for f in ["img0.png", "sub/img1.png", "link.png"])
    )
    assert create_study(tmp_path / "in.sqlite", [ImageSource("a", inside), ImageSource("b", ok)])["sets"]["a"] == 3


def downgrade_to_v1(study) -> None:
    """Make ``study`` look like a version 1 file: no invites or key, images as version 1 stored them
    (chunks kept, each its own size), a rater row per page view."""
    conn = sqlite3.connect(study, isolation_level=None)
    conn.execute("DROP TABLE invites")
    conn.execute("DELETE FROM meta WHERE key = 'secret'")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'version'")
    for row_id, set_id in conn.execute("SELECT id, set_id FROM images").fetchall():
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", "v1 kept this")
        buffer = io.BytesIO()
        Image.new("RGB", (40 + 8 * (set_id or 0), 40), (200, 10, 10)).save(buffer, "PNG", pnginfo=info)
        conn.execute("UPDATE images SET png = ? WHERE id = ?", (buffer.getvalue(), row_id))
    conn.executemany("INSERT INTO raters (id, created) VALUES (?, 0)", [(f"{k:022d}",) for k in range(50)])
    conn.execute("INSERT INTO votes (pair_id, rater, choice, created) VALUES (1, ?, 'left', 0)", ("0" * 22,))
    conn.close()


def test_a_version_1_study_is_upgraded_in_place(tmp_path, monkeypatch):
    red = color_folder(tmp_path / "red", RED, 2)
    blue = color_folder(tmp_path / "blue", BLUE, 2)
    study = tmp_path / "old.sqlite"
    create_study(study, [ImageSource("a", red), ImageSource("b", blue)], refs=red)
    downgrade_to_v1(study)

    with monkeypatch.context() as patch:  # a version 1 file that cannot be written: a clear error, no change
        patch.setattr(store, "_connect", lambda path, mode, connect=store._connect: connect(path, "ro"))
        with pytest.raises(ValueError, match="format version 1; upgrading it .* needs write access"):
            store.open_study(study)
    conn = store.open_study(study)
    meta = store.read_meta(conn)
    assert meta["version"] == store.VERSION and len(store.secret(conn)) == 32 and store.invite_count(conn) == 0
    assert conn.execute("SELECT id FROM raters").fetchall() == [("0" * 22,)]  # page-view raters dropped
    assert conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0] == 1  # votes kept
    sizes = set()
    for set_id, png in conn.execute("SELECT set_id, png FROM images"):
        assert set(images.png_chunks(png)) == set(ANCILLARY_FREE)  # the stored PNG: no chunk of version 1 left
        if set_id is not None:
            sizes.add(Image.open(io.BytesIO(png)).size)
    assert sizes == {(48, 40)}  # the sets, 48 x 40 and 56 x 40 in version 1, now one size
    conn.execute("UPDATE meta SET value = '3' WHERE key = 'version'")
    conn.close()
    with pytest.raises(ValueError, match="format version 3; this dreamdist reads 2"):
        store.open_study(study)
