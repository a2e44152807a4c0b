"""dreamdist synth: selection, layout, seeds, pass-through, formats and bad input (in-process).

Helpers here are shared with test_synth_processes.py and test_synth_ray.py.
"""

from __future__ import annotations

import errno
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreamdist.cli import main
from dreamdist.config import GenerateConfig, TrainConfig
from dreamdist.evaluation.tiny import save_tiny_clip
from dreamdist.generation import generate
from dreamdist.methods.dreamdistribution import DreamDistributionConfig
from dreamdist.synth.config import MAX_PER_CLASS
from dreamdist.testing import write_images
from dreamdist.training.loop import train

CLASSES = ("cat", "dog", "red_toy")  # folder names; the run names the last one "red toy"
SMALL = dict(num_prompts=2, num_tokens=1, num_samples=1)


def make_job(root: Path, model: Path) -> dict:
    """A multi-class run, two single-class runs and a tiny CLIP folder under ``root``."""
    for i, name in enumerate(CLASSES):
        write_images(root / "refs" / name, 2, seed=i)
    job = {"model": model, "clip": save_tiny_clip(root / "clip")}
    base = dict(model=str(model), steps=2, progress=False)
    job["multi"] = train(
        TrainConfig(images=str(root / "refs"), out=str(root / "multi"), multiclass=True, **base),
        DreamDistributionConfig(**SMALL),
    )
    for name in ("cat", "dog"):
        job[name] = train(
            TrainConfig(images=str(root / "refs" / name), out=str(root / name), **base),
            DreamDistributionConfig(**SMALL),
        )
    return job


def synth_argv(job: dict, out: Path, *extra: str, per_class: int = 4, keep: int = 2, batch: int = 3) -> list[str]:
    """A small synth command line over the multi-class run (CLIP filter, 2 steps)."""
    return [
        "synth",
        str(job["multi"]),
        "--out",
        str(out),
        "--per-class",
        str(per_class),
        "--keep",
        str(keep),
        "--clip-model",
        str(job["clip"]),
        "--num-inference-steps",
        "2",
        "--batch-size",
        str(batch),
        "--no-progress",
        *extra,
    ]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def pixels(source) -> np.ndarray:
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_model):
    return make_job(tmp_path_factory.mktemp("synth_job"), tiny_model)


@pytest.fixture(scope="module")
def baseline(job, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline") / "ds"
    assert main(synth_argv(job, out)) == 0
    return out


def test_kept_set_is_the_top_k_of_the_manifest_scores_and_only_it_is_on_disk(baseline):
    manifest = rows(baseline)
    assert len(manifest) == 3 * 4  # one row per GENERATED image
    assert sorted({r["class"] for r in manifest}) == ["cat", "dog", "red_toy"]
    for name in ("cat", "dog", "red_toy"):
        members = [r for r in manifest if r["class"] == name]
        assert sorted(r["index"] for r in members) == [0, 1, 2, 3]
        best = sorted(members, key=lambda r: -r["score"])[:2]
        assert {r["index"] for r in members if r["kept"]} == {r["index"] for r in best}
        on_disk = sorted(p.name for p in (baseline / name).iterdir())
        assert on_disk == sorted(Path(r["file"]).name for r in best)
        assert all(r["file"] is None for r in members if not r["kept"])
        assert all(-1 <= r["score"] <= 1 for r in members)
    seeds = [r["seed"] for r in manifest]
    assert len(set(seeds)) == len(seeds) and seeds[4] == MAX_PER_CLASS  # class 1 starts at 2**20
    top = sorted(p.name for p in baseline.iterdir())
    assert top == ["cat", "dog", "manifest.jsonl", "red_toy", "synth.json"]  # an ImageFolder, nothing else


def clip_cosines(clip: Path, images: list, text: str) -> list[float]:
    """cos(image, text) straight from transformers' CLIPModel forward (not dreamdist's scorer)."""
    import transformers

    model = transformers.CLIPModel.from_pretrained(str(clip)).eval()
    tokens = transformers.AutoTokenizer.from_pretrained(str(clip))([text], return_tensors="pt")
    pixels = transformers.AutoImageProcessor.from_pretrained(str(clip))(images=images, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], pixel_values=pixels["pixel_values"])
    return out.logits_per_image[:, 0].div(model.logit_scale.exp()).tolist()  # the logits are scaled cosines


def test_recorded_scores_are_recomputed_clip_cosines_and_the_best_are_kept(job, baseline, tmp_path):
    """Every image of a class (the dropped ones regenerated with their seeds) scored again with CLIP
    directly: the manifest's scores are those cosines, and the kept images are the best ones."""
    manifest = rows(baseline)
    for name in ("cat", "red_toy"):
        members, text = [r for r in manifest if r["class"] == name], name.replace("_", " ")
        again = generate(
            GenerateConfig(
                out=str(tmp_path / name),
                artifacts=[str(job["multi"])],
                class_name=text,
                seed=members[0]["seed"],
                num_images=len(members),
                num_inference_steps=2,
                progress=False,
            )
        )
        scores = clip_cosines(job["clip"], again.images, text)  # --clip-prompt "{}"
        assert [r["score"] for r in members] == pytest.approx(scores, abs=1e-3)  # regenerated: pixels may differ by 1
        kept = [r for r in members if r["kept"]]
        with_files = clip_cosines(job["clip"], [Image.open(baseline / r["file"]) for r in kept], text)
        assert [r["score"] for r in kept] == pytest.approx(with_files, abs=1e-5)  # the very images kept
        best = sorted(range(len(members)), key=lambda i: -scores[i])[:2]
        assert {r["index"] for r in kept} == {members[i]["index"] for i in best}


def test_an_image_is_the_same_whatever_the_batch_size(job, baseline, tmp_path):
    assert main(synth_argv(job, tmp_path / "b1", batch=1)) == 0
    one, three = rows(tmp_path / "b1"), rows(baseline)
    assert [r["kept"] for r in one] == [r["kept"] for r in three]
    assert [r["score"] for r in one] == pytest.approx([r["score"] for r in three], abs=1e-4)
    for row in (r for r in one if r["kept"]):
        diff = np.abs(pixels(tmp_path / "b1" / row["file"]) - pixels(baseline / row["file"]))
        assert diff.max() <= 1  # batched kernels may differ in the last float bit


def test_generation_options_pass_through_to_each_class(job, tmp_path):
    """Class c, image i of synth == image i of 'dreamdist generate RUN --class-name c' with its seed."""
    extra = ("--sampler", "gaussian", "--gamma", "0.5", "--suffix", "at night", "--scheduler", "euler")
    assert main(synth_argv(job, tmp_path / "ds", *extra, "--filter", "none", keep=4)) == 0
    manifest = rows(tmp_path / "ds")
    dog = [r for r in manifest if r["class"] == "dog"]
    result = generate(
        GenerateConfig(
            out=str(tmp_path / "gen"),
            artifacts=[str(job["multi"])],
            class_name="dog",
            seed=dog[0]["seed"],
            num_images=4,
            num_inference_steps=2,
            sampler="gaussian",
            gamma=0.5,
            suffix="at night",
            scheduler="euler",
            progress=False,
        )
    )
    for row, path in zip(dog, result.paths):
        assert np.abs(pixels(tmp_path / "ds" / row["file"]) - pixels(path)).max() <= 1
    assert dog[0]["prompt"] == "dog at night"
    assert main(synth_argv(job, tmp_path / "plain", "--filter", "none", keep=4)) == 0  # the options matter
    plain = next(r for r in rows(tmp_path / "plain") if r["class"] == "dog")
    assert np.abs(pixels(tmp_path / "plain" / plain["file"]) - pixels(tmp_path / "ds" / dog[0]["file"])).max() > 10


def test_filter_none_keeps_the_first_k(job, tmp_path):
    assert main(synth_argv(job, tmp_path / "ds", "--filter", "none", "--clip-model", "/no/such/folder")) == 0
    manifest = rows(tmp_path / "ds")
    assert [r["kept"] for r in manifest] == [True, True, False, False] * 3
    assert all(r["score"] is None for r in manifest)


def test_webdataset_shards_hold_the_kept_images(job, baseline, tmp_path):
    out = tmp_path / "wds"
    assert main(synth_argv(job, out, "--format", "webdataset", "--shard-size", "4")) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.jsonl",
        "shard-000000.tar",
        "shard-000001.tar",
        "synth.json",
    ]
    kept = {r["file"]: r for r in rows(out) if r["kept"]}
    reference = {(r["class"], r["index"]): r["file"] for r in rows(baseline) if r["kept"]}
    assert {(r["class"], r["index"]) for r in kept.values()} == set(reference)
    labels = set()
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            names = tar.getnames()
            assert len(names) in (6, 12)  # png + cls + json per sample
            for name in (n for n in names if n.endswith(".png")):
                row = kept[f"{shard.name}/{name}"]
                png = tar.extractfile(name).read()
                assert png == (baseline / reference[(row["class"], row["index"])]).read_bytes()
                key = name[: -len(".png")]
                labels.add(int(tar.extractfile(f"{key}.cls").read()))
                assert json.loads(tar.extractfile(f"{key}.json").read())["class"] == row["class"]
    assert labels == {0, 1, 2}
    with tarfile.open(out / "shard-000000.tar") as tar:
        first = {int(tar.extractfile(n).read()) for n in tar.getnames() if n.endswith(".cls")}
    assert len(first) > 1  # shuffled: classes mixed inside a shard


def test_one_single_class_run_per_class(job, tmp_path):
    argv = ["synth", "--run", f"dog={job['dog']}", f"cat={job['cat']}", "--out", str(tmp_path / "ds")]
    argv += ["--run", f"red_toy={job['multi']}"]  # a class of a multi-class run, by its folder name
    argv += ["--per-class", "2", "--filter", "none", "--num-inference-steps", "2", "--no-progress"]
    assert main(argv) == 0
    manifest = rows(tmp_path / "ds")
    classes = [(r["class"], r["index"]) for r in manifest]
    assert classes == [("cat", 0), ("cat", 1), ("dog", 0), ("dog", 1), ("red_toy", 0), ("red_toy", 1)]
    assert manifest[4]["prompt"] == "red toy"  # the multi-class run's prompt names its class
    result = generate(
        GenerateConfig(
            out=str(tmp_path / "gen"),
            artifacts=[str(job["dog"])],
            seed=manifest[2]["seed"],
            num_images=2,
            num_inference_steps=2,
            progress=False,
        )
    )
    for row, path in zip(manifest[2:], result.paths):
        assert np.abs(pixels(tmp_path / "ds" / row["file"]) - pixels(path)).max() <= 1


def test_a_finished_dataset_is_not_redone_and_other_settings_are_refused(job, baseline, capsys):
    before = tree(baseline)
    assert main(synth_argv(job, baseline)) == 0
    assert "generated 0 images" in capsys.readouterr().out and tree(baseline) == before
    assert main(synth_argv(job, baseline, "--gamma", "2")) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "generation" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda argv, job: [*argv[:1], str(job["cat"]), *argv[2:]], "single-class run"),
        (lambda argv, job: [*argv, "--keep", "9"], "--keep 9 must be between 1 and --per-class 4"),
        (lambda argv, job: [argv[0], "--run", f"horse={job['multi']}", *argv[2:]], "class 'horse' is not in"),
        (lambda argv, job: [*argv, "--run", "dog"], "CLASS=RUN"),
    ],
    ids=["single-class-run", "keep-over-n", "unknown-class", "bad-run-item"],
)
def test_bad_input_is_one_clear_line(job, tmp_path, capsys, change, message):
    assert main(change(synth_argv(job, tmp_path / "ds"), job)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dreamdist: error:") and message in err and "Traceback" not in err


def test_a_folder_that_is_not_clip_is_refused(job, tmp_path, capsys):
    not_clip = tmp_path / "not_clip"
    write_images(not_clip, 1)
    assert main(synth_argv(job, tmp_path / "ds", "--clip-model", str(not_clip))) == 2
    err = capsys.readouterr().err
    assert err.startswith("dreamdist: error:") and "CLIP" in err and str(not_clip) in err
    assert main(synth_argv(job, tmp_path / "ds2", "--clip-model", str(tmp_path / "missing"))) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_foreign_non_empty_out_is_refused(job, tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "mine.txt").write_text("keep me")
    assert main(synth_argv(job, tmp_path / "photos")) == 2
    assert "did not write" in capsys.readouterr().err
    assert (tmp_path / "photos" / "mine.txt").read_text() == "keep me"


def test_a_full_disk_leaves_no_half_file_and_the_rerun_completes(job, baseline, tmp_path, monkeypatch, capsys):
    import dreamdist.atomic

    calls = {"n": 0}
    real_open = open

    class FullDisk(io.BufferedWriter):
        def write(self, data):
            super().write(bytes(data)[: len(data) // 2])
            super().flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(path, mode="r", *args, **kwargs):
        if mode == "wb" and ".png.tmp-" in str(path):  # the 5th image write fills the disk half way
            calls["n"] += 1
            if calls["n"] == 5:
                return FullDisk(real_open(path, "wb", buffering=0))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(dreamdist.atomic, "open", fake_open, raising=False)
    out = tmp_path / "ds"
    assert main(synth_argv(job, out)) == 2
    assert "No space left on device" in capsys.readouterr().err
    work = out / ".synth-work"
    logged = [json.loads(line) for line in (work / "rows-0.jsonl").read_text().splitlines()]
    assert len(logged) == 4  # the images written before the failure, each with its row
    pngs = sorted(p for p in work.rglob("*") if p.is_file() and not p.name.startswith("rows-"))
    assert [str(p.relative_to(work)) for p in pngs] == [r["file"] for r in logged]  # no half-written file
    assert not (out / "manifest.jsonl").exists()
    monkeypatch.undo()
    assert main(synth_argv(job, out)) == 0
    assert tree(out) == tree(baseline)
