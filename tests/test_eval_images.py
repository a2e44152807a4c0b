"""Image sets: plain folders, generation manifests, per-file skips, pixel hashes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dreamdist.data import NoUsableImagesError
from dreamdist.evaluation.images import ManifestError, hash_images, load_image_set, small_images_note


def write_image(path, value: int, size=(72, 64)):
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def write_manifest(folder, records):
    (folder / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_manifest_sets_order_prompts_and_excludes_unlisted_files(tmp_path):
    for index, value in enumerate((10, 20, 30)):
        write_image(tmp_path / f"{index:05d}.png", value)
    write_image(tmp_path / "grid.png", 99)  # written by generation, not a sample
    write_manifest(
        tmp_path,
        [
            {"file": "00002.png", "prompt": "a cat"},
            {"file": "00000.png"},
            {"file": "gone.png", "prompt": "lost"},
            {"file": "00001.png", "prompt": "a dog", "method": "dreamdistribution"},
        ],
    )
    image_set = load_image_set(tmp_path)
    assert [int(np.asarray(im)[0, 0, 0]) for im in image_set.images] == [30, 10, 20]
    assert image_set.prompts == ["a cat", None, "a dog"]
    assert [r["file"] for r in image_set.records] == ["00002.png", "00000.png", "00001.png"]
    assert [(p.name, why) for p, why in image_set.report.skipped] == [
        ("gone.png", "listed in the manifest but not found")
    ]
    plain = load_image_set(tmp_path, use_manifest=False)  # every image of the folder, grid included
    assert len(plain) == 4 and plain.prompts is None


def test_malformed_manifest_lines_are_named(tmp_path):
    write_image(tmp_path / "a.png", 1)
    (tmp_path / "manifest.jsonl").write_text('{"file": "a.png"}\n{not json}\n')
    with pytest.raises(ManifestError, match="line 2 is not JSON"):
        load_image_set(tmp_path)
    write_manifest(tmp_path, [{"prompt": "no file key"}])
    with pytest.raises(ManifestError, match='line 1 needs a "file" key'):
        load_image_set(tmp_path)
    write_manifest(tmp_path, [{"file": str(tmp_path / "a.png")}])
    with pytest.raises(ManifestError, match="relative"):
        load_image_set(tmp_path)


def test_nothing_usable_raises_with_a_per_file_report(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    write_manifest(tmp_path, [{"file": "broken.png"}, {"file": "absent.png"}])
    with pytest.raises(NoUsableImagesError, match="(?s)broken.png.*absent.png"):
        load_image_set(tmp_path)
    with pytest.raises(NoUsableImagesError, match="does not exist"):
        load_image_set(tmp_path / "nope")


def test_hash_depends_on_pixels_and_order_not_on_file_names(tmp_path):
    write_image(tmp_path / "a.png", 5)
    write_image(tmp_path / "b.png", 6)
    first = load_image_set(tmp_path)
    (tmp_path / "a.png").rename(tmp_path / "a2.png")
    assert load_image_set(tmp_path).hash == first.hash
    write_image(tmp_path / "b.png", 7)
    assert load_image_set(tmp_path).hash != first.hash
    assert hash_images(first.images[::-1]) != first.hash
    wider = [Image.new("RGB", (2, 1)), Image.new("RGB", (1, 2))]  # same bytes, different sizes
    assert hash_images(wider[:1]) != hash_images(wider[1:])


def zero_pixel_png() -> bytes:
    """A PNG whose header says 0 x 8 pixels (PIL refuses to write one)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 0, 8, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_small_images_are_kept_broken_ones_refused(tmp_path):
    write_image(tmp_path / "toy.png", 10, size=(32, 32))  # what the toy model draws
    write_image(tmp_path / "dot.png", 20, size=(1, 1))
    (tmp_path / "zero.png").write_bytes(zero_pixel_png())
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    image_set = load_image_set(tmp_path)
    assert sorted(im.size for im in image_set.images) == [(1, 1), (32, 32)]
    reasons = dict((p.name, why) for p, why in image_set.report.skipped)
    assert set(reasons) == {"zero.png", "cut.png"} and all("not a readable image" in r for r in reasons.values())


def test_small_images_note_counts_each_side_once(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "g").mkdir()
    write_image(tmp_path / "r" / "a.png", 1, size=(32, 40))
    write_image(tmp_path / "r" / "b.png", 1, size=(64, 64))
    write_image(tmp_path / "g" / "c.png", 1, size=(300, 300))
    real, generated = load_image_set(tmp_path / "r"), load_image_set(tmp_path / "g")
    note = small_images_note({"reference": real, "generated": generated})
    assert note.startswith("1 reference image(s) are smaller than 64 px (smallest 32x40)")
    assert "toy-oracle" in note
    assert small_images_note({"generated": generated}) is None


def test_errors_name_the_folder_by_its_role(tmp_path):
    with pytest.raises(NoUsableImagesError, match=r"^generated folder .*nope does not exist"):
        load_image_set(tmp_path / "nope", role="generated")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoUsableImagesError, match=r"^reference folder: no usable image"):
        load_image_set(tmp_path / "empty", role="reference")
    write_image(tmp_path / "file.png", 1)
    with pytest.raises(NoUsableImagesError, match="generated folder .* is not a folder"):
        load_image_set(tmp_path / "file.png", role="generated")


def test_eval_names_a_missing_generated_folder_as_generated(tmp_path, capsys):
    from dreamdist.evaluation.cli import main

    (tmp_path / "refs").mkdir()
    write_image(tmp_path / "refs" / "a.png", 1)
    argv = [
        "eval",
        "--real",
        str(tmp_path / "refs"),
        "--generated",
        str(tmp_path / "samples"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*argv, "--features", "toy-oracle", "--metrics", "clip-i"]) == 2
    err = capsys.readouterr().err
    assert "generated (--generated) folder" in err and "samples does not exist" in err and "reference" not in err
