"""Hostile image files: a seeded mutator over PNG/JPEG/WebP/GIF/BMP/TIFF seeds (every mode we read).

No exception but ``ValueError`` (with a reason) escapes the loader, decompression bombs are refused
from the header before decoding, and a folder of hundreds of mutated files trains with every
undecodable file named and bounded memory. Each run mutates with a new seed (the day's, printed on
failure; set ``DREAMDIST_FUZZ_SEED`` to replay and ``DREAMDIST_FUZZ_CASES`` for a longer run), so
the cases add up over the suite's lifetime; ``python -m dreamdist.fuzz`` is not needed for that.
"""

from __future__ import annotations

import datetime
import os
import resource
import subprocess
import sys
import time

import pytest

from dreamdist.data import open_image
from dreamdist.fuzz import mutated_files, png_with_size, seed_images

SEED = int(os.environ.get("DREAMDIST_FUZZ_SEED", datetime.date.today().toordinal()))
CASES = int(os.environ.get("DREAMDIST_FUZZ_CASES", "2000"))


def test_seed_images_are_valid_and_cover_every_format(tmp_path):
    seeds = seed_images()
    assert {fmt for fmt, _ in seeds} == {"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"}
    for i, (fmt, data) in enumerate(seeds):
        path = tmp_path / f"{i}.{fmt.lower()}"
        path.write_bytes(data)
        assert open_image(path).mode == "RGB"


def test_mutations_are_seeded_and_change_the_bytes():
    assert mutated_files(20, 5) == mutated_files(20, 5)
    assert mutated_files(20, 5) != mutated_files(20, 6)
    originals = {data for _, data in seed_images()}
    assert sum(data not in originals for _, data in mutated_files(64, 5)) >= 60


def test_no_exception_but_a_reasoned_refusal_escapes_the_loader(tmp_path):
    refused = kept = 0
    for i, (suffix, data) in enumerate(mutated_files(CASES, SEED)):
        path = tmp_path / f"case{suffix}"
        path.write_bytes(data)
        try:
            image = open_image(path)
        except ValueError as exc:
            assert str(exc), f"empty reason (DREAMDIST_FUZZ_SEED={SEED}, case {i})"
            refused += 1
        except Exception as exc:  # noqa: BLE001 - this is what the test looks for
            pytest.fail(f"{type(exc).__name__} escaped on case {i} (DREAMDIST_FUZZ_SEED={SEED}): {exc}")
        else:
            assert image.mode == "RGB" and min(image.size) >= 64
            kept += 1
    assert refused > CASES // 4 and kept > 0  # the mutator breaks files, and not all of them


@pytest.mark.parametrize("side", [20_000, 65_535])
def test_decompression_bombs_are_refused_from_the_header(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with_size(side, side))  # a few dozen bytes that claim gigapixels
    start = time.perf_counter()
    with pytest.raises(ValueError, match="decompression bomb"):
        open_image(path)
    assert time.perf_counter() - start < 1.0


def test_a_folder_of_hundreds_of_mutated_files_trains_and_names_each_skipped_file(tiny_model, tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    for i, (suffix, data) in enumerate(mutated_files(300, SEED + 1)):
        (refs / f"m{i:03d}{suffix}").write_bytes(data)
    for i, (fmt, data) in enumerate(seed_images()[:3]):
        (refs / f"good{i}.{fmt.lower()}").write_bytes(data)
    (refs / "bomb.png").write_bytes(png_with_size(30_000, 30_000))
    code = (
        "import resource, sys; from dreamdist.cli import main; code = main(sys.argv[1:]); "
        "print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)"
    )
    args = ["train", "--images", str(refs), "--model", str(tiny_model), "--out", str(tmp_path / "run")]
    args += ["--steps", "1", "--batch-size", "1", "--resolution", "32", "--no-progress"]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    named = {line.split("skipped ", 1)[1].split(":", 1)[0] for line in done.stderr.splitlines() if "  skipped " in line}
    kept = set(__import__("json").loads((tmp_path / "run" / "references.json").read_text())["kept"])
    assert named | kept == {p.name for p in refs.iterdir()} and not named & kept
    assert "bomb.png" in named and {"good0.png", "good1.png", "good2.png"} <= kept
    peak_mb = int(done.stdout.split("maxrss_kb")[1].split()[0]) / 1024
    assert peak_mb < 3000, f"peak memory {peak_mb:.0f} MB"
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 < 3000
