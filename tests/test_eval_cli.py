"""``dreamdist eval`` / ``dreamdist compare`` end to end on tiny random models (offline)."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamdist.evaluation import features, metrics, tiny
from dreamdist.evaluation.cli import main, register
from dreamdist.evaluation.images import load_image_set

ALL = "fid,clip-i,dino,density,coverage,precision,recall,clip-t,kid,cmmd,fd-dinov2,vendi"


def save_noise_images(folder, count, mean, seed, manifest_prompts=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        pixels = np.clip(rng.normal(mean, 50, size=(64, 72, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")
        records.append({"file": f"{i:05d}.png"})
        if manifest_prompts:
            records[-1]["prompt"] = manifest_prompts[i % len(manifest_prompts)]
    if manifest_prompts:
        (folder / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    refs = save_noise_images(root / "refs", 6, 110, seed=0)
    (refs / "notes.txt").write_text("not an image")
    (refs / "broken.png").write_bytes(b"\x89PNG truncated")
    gen = save_noise_images(root / "gen", 6, 140, seed=1, manifest_prompts=["a photo of a cat", "a dog in snow"])
    Image.new("RGB", (128, 128)).save(gen / "grid.png")  # not listed in the manifest
    models = {
        "clip": tiny.save_tiny_clip(root / "m" / "clip"),
        "dino": tiny.save_tiny_dino(root / "m" / "dino"),
        "dinov2": tiny.save_tiny_dinov2(root / "m" / "dinov2"),
        "inception": tiny.save_random_fid_inception(root / "m" / "inception.pth"),
    }
    return {"root": root, "refs": refs, "gen": gen, "models": models, "cache": root / "cache"}


def model_flags(work):
    m = work["models"]
    return [
        *("--clip-model", str(m["clip"]), "--dino-model", str(m["dino"]), "--dinov2-model", str(m["dinov2"])),
        *("--inception-weights", str(m["inception"]), "--device", "cpu", "--no-progress", "--offline"),
    ]


def run_eval(work, out, *extra, real=None, generated=None):
    argv = ["eval", "--real", str(real or work["refs"]), "--generated", str(generated or work["gen"])]
    return main([*argv, "--out", str(out), *model_flags(work), "--cache-dir", str(work["cache"]), *extra])


@pytest.fixture(scope="module")
def report(work):
    out = work["root"] / "report"
    assert run_eval(work, out, "--metrics", ALL) == 0
    return out


def test_report_records_what_reproduces_the_numbers(work, report):
    data = json.loads((report / "report.json").read_text())
    assert list(data["metrics"]) == ALL.split(",")
    assert all(math.isfinite(v) for v in data["metrics"].values())
    assert data["real"]["count"] == 6 and data["generated"]["count"] == 6
    assert {s["file"].rsplit("/", 1)[-1] for s in data["real"]["skipped"]} == {"notes.txt", "broken.png"}
    assert data["real"]["sha256"] == load_image_set(work["refs"]).hash
    assert data["generated"]["sha256"] == load_image_set(work["gen"]).hash  # grid.png is not a sample
    dims = {kind: space["dim"] for kind, space in data["features"].items()}
    assert dims == {"inception": 2048, "clip": 16, "dino": 24, "dinov2": 32}
    assert data["features"]["dino"]["model_id"] == str(work["models"]["dino"])
    assert data["features"]["inception"]["standard_weights"] is False
    assert data["settings"]["k"] == 5 and data["settings"]["prompt_source"] == "manifest"
    assert {"torch", "transformers", "dreamdist", "numpy", "python"} <= set(data["versions"])
    assert data["scenario"] == "refs"
    markdown = (report / "report.md").read_text()
    assert "| Density ↑ |" in markdown and "| FID ↓ |" in markdown and "broken.png" in markdown
    assert (report / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_numbers_equal_the_library_on_the_same_images(work, report):
    data = json.loads((report / "report.json").read_text())
    real, gen = load_image_set(work["refs"]), load_image_set(work["gen"])
    dinov2 = features.DINOv2Features(str(work["models"]["dinov2"]), device="cpu")
    manifold = metrics.manifold_metrics(dinov2(real.images), dinov2(gen.images), k=5)
    for name in ("density", "coverage", "precision", "recall"):
        assert data["metrics"][name] == pytest.approx(manifold[name], abs=1e-12)
    clip = features.CLIPFeatures(str(work["models"]["clip"]), device="cpu")
    images = clip(gen.images)
    per_image = metrics.clip_t(images, clip.encode_text(gen.prompts))  # each image's own manifest prompt
    assert data["metrics"]["clip-t"] == pytest.approx(per_image, abs=1e-6)
    assert per_image != pytest.approx(metrics.clip_t(images, clip.encode_text(["a photo of a cat"])), abs=1e-6)
    assert data["metrics"]["clip-i"] == pytest.approx(metrics.mean_cosine_similarity(images, clip(real.images)))


def test_distribution_metrics_equal_the_library_on_the_same_images(work, report):
    """KID on Inception, CMMD on CLIP, FD-DINOv2 and Vendi on DINOv2; Vendi of both sets in every space."""
    data = json.loads((report / "report.json").read_text())
    real, gen = load_image_set(work["refs"]), load_image_set(work["gen"])
    inception = features.InceptionFeatures(work["models"]["inception"], device="cpu")
    clip = features.CLIPFeatures(str(work["models"]["clip"]), device="cpu")
    dinov2 = features.DINOv2Features(str(work["models"]["dinov2"]), device="cpu")
    spaces = {"inception": inception, "clip": clip, "dinov2": dinov2}
    feats = {kind: (model(real.images), model(gen.images)) for kind, model in spaces.items()}
    kid, kid_std = metrics.kernel_inception_distance(*feats["inception"], subsets=100, subset_size=1000)
    assert data["metrics"]["kid"] == pytest.approx(kid, rel=1e-6, abs=1e-9)
    assert data["kid"] == {"std": pytest.approx(kid_std, rel=1e-6, abs=1e-9), "subsets": 100, "subset_size": 6,
                           "seed": 0}  # fmt: skip
    assert data["metrics"]["cmmd"] == pytest.approx(metrics.cmmd(*feats["clip"]), rel=1e-6)
    assert data["metrics"]["fd-dinov2"] == pytest.approx(metrics.frechet_distance(*feats["dinov2"]), rel=1e-6)
    assert data["metrics"]["vendi"] == pytest.approx(metrics.vendi_score(feats["dinov2"][1]), rel=1e-6)
    assert set(data["vendi"]) == {"inception", "clip", "dino", "dinov2"}
    for kind, (r, g) in feats.items():
        assert data["vendi"][kind]["real"] == pytest.approx(metrics.vendi_score(r), rel=1e-6), kind
        assert data["vendi"][kind]["generated"] == pytest.approx(metrics.vendi_score(g), rel=1e-6), kind
    markdown = (report / "report.md").read_text()
    assert "| KID ↓ |" in markdown and "| FD-DINOv2 ↓ |" in markdown and "| Vendi ↑ |" in markdown
    assert "Vendi score (effective number of distinct images) per feature space" in markdown


def test_default_metrics_include_the_distribution_metrics_and_accept_underscores(work, tmp_path):
    assert run_eval(work, tmp_path / "default") == 0
    data = json.loads((tmp_path / "default" / "report.json").read_text())
    assert list(data["metrics"]) == [*ALL.split(",")[:7], "kid", "cmmd", "fd-dinov2", "vendi"]
    assert run_eval(work, tmp_path / "under", "--metrics", "FD_DINOv2,vendi") == 0
    under = json.loads((tmp_path / "under" / "report.json").read_text())
    assert under["metrics"] == {k: data["metrics"][k] for k in ("fd-dinov2", "vendi")}
    assert "kid" not in under and set(under["vendi"]) == {"dinov2"}


def test_same_inputs_give_the_same_numbers_with_and_without_cache(work, report):
    first = json.loads((report / "report.json").read_text())
    assert run_eval(work, work["root"] / "again", "--metrics", ALL, "--no-cache") == 0
    fresh = json.loads((work["root"] / "again" / "report.json").read_text())
    assert fresh["metrics"] == first["metrics"]
    assert run_eval(work, work["root"] / "cached", "--metrics", ALL) == 0
    cached = json.loads((work["root"] / "cached" / "report.json").read_text())
    assert cached["metrics"] == first["metrics"]
    assert all(all(space["from_cache"].values()) for space in cached["features"].values())
    assert not any(any(space["from_cache"].values()) for space in fresh["features"].values())


def test_prompt_flag_overrides_manifest_prompts(work, report, capsys):
    assert run_eval(work, work["root"] / "prompt", "--metrics", "clip-t", "--prompt", "a photo of a cat") == 0
    data = json.loads((work["root"] / "prompt" / "report.json").read_text())
    clip = features.CLIPFeatures(str(work["models"]["clip"]), device="cpu")
    expected = metrics.clip_t(clip(load_image_set(work["gen"]).images), clip.encode_text(["a photo of a cat"]))
    assert data["metrics"] == {"clip-t": pytest.approx(expected, abs=1e-6)}
    assert data["settings"]["prompt_source"] == "--prompt"
    assert "CLIP-T" in capsys.readouterr().out


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("missing-folder", "does not exist"),
        ("no-images", "no usable image"),
        ("too-few", "density/coverage/precision needs at least 6 reference images"),
        ("unknown-metric", "unknown metric"),
        ("no-weights", "--inception-weights"),
        ("no-prompt", "clip-t needs a prompt"),
        ("bad-manifest", "line 1 is not JSON"),
        ("offline-hub", "nobody/no-such-model"),
    ],
)
def test_user_errors_exit_2_with_a_message_and_no_traceback(work, case, pattern, monkeypatch, capsys, tmp_path):
    real, generated, extra = work["refs"], work["gen"], ["--metrics", "dino"]
    if case == "missing-folder":
        real = tmp_path / "absent"
    elif case == "no-images":
        (tmp_path / "empty").mkdir()
        real = tmp_path / "empty"
    elif case == "too-few":
        real = save_noise_images(tmp_path / "three", 3, 100, seed=3)
        extra = ["--metrics", "density,coverage"]
    elif case == "unknown-metric":
        extra = ["--metrics", "dino,fidd"]
    elif case == "no-weights":
        monkeypatch.delenv("DREAMDIST_INCEPTION_WEIGHTS", raising=False)
        argv = ["eval", "--real", str(real), "--generated", str(generated), "--out", str(tmp_path / "o")]
        assert main([*argv, "--metrics", "fid", "--no-progress"]) == 2
        assert pattern in capsys.readouterr().err
        return
    elif case == "no-prompt":
        generated, extra = work["refs"], ["--metrics", "clip-t"]
    elif case == "bad-manifest":
        generated = save_noise_images(tmp_path / "bad", 2, 100, seed=4)
        (generated / "manifest.jsonl").write_text("{oops\n")
    elif case == "offline-hub":
        extra = ["--metrics", "dino", "--dino-model", "nobody/no-such-model"]
    assert run_eval(work, tmp_path / "out", *extra, real=real, generated=generated) == 2
    err = capsys.readouterr().err
    assert pattern in err and "Traceback" not in err
    assert not (tmp_path / "out" / "report.json").exists()


def fake_report(folder, method, scenario, values, k=5):
    folder.mkdir(parents=True)
    report = {
        "method": method,
        "scenario": scenario,
        "metrics": values,
        "features": {"dinov2": {"model_id": "m", "weights": "w", "preprocessing": "p", "dim": 8}},
        "settings": {"k": k, "boundary": "inclusive"},
    }
    (folder / "report.json").write_text(json.dumps(report))


def test_compare_table_is_mean_and_std_over_scenarios(tmp_path, capsys):
    values = {"a": [(1.2, 0.9), (1.0, 0.7), (0.8, 0.8)], "b": [(0.5, 0.4), (0.7, 0.6)]}
    for method, rows in values.items():
        for i, (density, coverage) in enumerate(rows):
            fake_report(tmp_path / method / f"s{i}", None, f"s{i}", {"density": density, "coverage": coverage})
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")]) == 0
    summary = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    by_name = {m["name"]: m for m in summary["methods"]}
    assert set(by_name) == {"a", "b"}  # folder names label methods without --method
    for method, rows in values.items():
        density = [r[0] for r in rows]
        assert by_name[method]["mean"]["density"] == pytest.approx(np.mean(density))
        assert by_name[method]["std"]["density"] == pytest.approx(np.std(density, ddof=1))
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| a | 3 | 1.0000 ± 0.2000 | 0.8000 ± 0.1000 |" in table
    assert "| a | 3 |" in capsys.readouterr().out
    for png in ("metrics.png", "fidelity_diversity.png"):
        assert (tmp_path / "cmp" / png).read_bytes()[:4] == b"\x89PNG"


def test_reports_and_comparisons_arrive_whole_by_rename(work, tmp_path, monkeypatch):
    """Every file ``eval`` and ``compare`` write is renamed into place (a crash leaves the old one whole)."""
    renamed, replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: renamed.append(Path(dst)) or replace(src, dst))
    assert run_eval(work, tmp_path / "eval", "--metrics", "density,coverage") == 0
    for i, density in enumerate((1.0, 0.8)):
        fake_report(tmp_path / "a" / f"s{i}", None, f"s{i}", {"density": density, "coverage": 0.5})
    assert main(["compare", str(tmp_path / "a"), "--out", str(tmp_path / "cmp")]) == 0
    written = sorted(p for folder in ("eval", "cmp") for p in (tmp_path / folder).iterdir())
    assert [p.name for p in written if p.parent.name == "cmp"] == sorted(
        ["comparison.json", "comparison.md", "fidelity_diversity.png", "metrics.png"]
    )
    assert {"report.json", "report.md", "metrics.png"} <= {p.name for p in written if p.parent.name == "eval"}
    assert sorted(p for p in renamed if p.parent.name in ("eval", "cmp")) == written


def test_compare_refuses_mixed_settings_and_duplicates(tmp_path, capsys):
    fake_report(tmp_path / "a" / "s0", None, "s0", {"density": 1.0})
    fake_report(tmp_path / "b" / "s0", None, "s0", {"density": 0.5}, k=3)
    argv = ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")]
    assert main(argv) == 2
    assert "not comparable" in capsys.readouterr().err
    assert main([*argv, "--allow-mixed"]) == 0
    fake_report(tmp_path / "a" / "s0-copy", None, "s0", {"density": 1.0})
    assert main([*argv, "--allow-mixed"]) == 2
    assert "two reports for scenario 's0'" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "none"), "--out", str(tmp_path / "cmp")]) == 2


def test_compare_reads_real_eval_reports(work, report, tmp_path):
    assert main(["compare", str(report), "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| report | 1 |" in table and "FID ↓" in table


def test_register_gives_every_flag_help_and_a_callable():
    parser = argparse.ArgumentParser(prog="dreamdist")
    subparsers = parser.add_subparsers(dest="command")
    register(subparsers)
    for name in ("eval", "compare"):
        sub = subparsers.choices[name]
        assert all(action.help for action in sub._actions), name
        assert callable(sub.get_default("func"))


def test_main_cli_exposes_eval_and_compare(work, report, tmp_path):
    from dreamdist.cli import main as dreamdist_main

    assert dreamdist_main(["compare", str(report), "--out", str(tmp_path / "cmp")]) == 0
    code = dreamdist_main(["eval", "--real", str(tmp_path / "missing"), "--generated", str(work["gen"]),
                           "--out", str(tmp_path / "o"), "--metrics", "dino"])  # fmt: skip
    assert code == 2
