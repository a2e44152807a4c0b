"""Every metric under ``--features toy-oracle`` against the toy world's ground truth, offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dreamdist.evaluation import hub
from dreamdist.evaluation import metrics as M
from dreamdist.evaluation.cli import main
from dreamdist.evaluation.toy_oracle import ToyOracleFeatures
from dreamdist.toyworld.attributes import combo_index
from dreamdist.toyworld.concepts import get_concept, reference_combos, render_concept
from dreamdist.toyworld.render import render_images


@pytest.fixture(scope="module")
def oracle():
    return ToyOracleFeatures("toy-oracle", device="cpu")


@pytest.fixture(scope="module")
def attributes():
    return ToyOracleFeatures("toy-attributes", device="cpu")


def render(combos: list, seed: int) -> torch.Tensor:
    """uint8 (N, 3, 32, 32) renders of index triples."""
    return as_uint8(render_images(torch.tensor(combos), size=32, seed=seed))


def star(colour: str) -> list:
    """A ``colour`` star on each of the four backgrounds."""
    return [combo_index((colour, "star", b)) for b in ("plain", "striped", "checkered", "dotted")]


def as_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) floats in [0, 1] -> uint8, the extractors' tensor input."""
    return (images * 255 + 0.5).clamp(0, 255).to(torch.uint8)


def concept_features(oracle, concept: str, n: int, seed: int) -> torch.Tensor:
    combos = reference_combos(get_concept(concept), n, seed)  # (n, 3)
    return oracle(as_uint8(render_images(combos, size=32, seed=seed)))


def test_features_read_any_size_and_any_input_form(oracle):
    images = render_images(torch.tensor([[4, 4, 0], [0, 0, 3], [2, 1, 1]]), size=32, seed=0)  # (3, 3, 32, 32)
    pixels = as_uint8(images)
    small = [Image.fromarray(a) for a in pixels.permute(0, 2, 3, 1).numpy()]
    features = oracle(small)
    assert features.shape == (3, oracle.info.dim) == (3, 192) and features.dtype == torch.float32
    assert torch.equal(oracle(pixels), features)
    upsampled = [im.resize((96, 96), Image.NEAREST) for im in small]  # toy-refs --size 96
    assert torch.allclose(oracle(upsampled), features, atol=1e-5)  # box-downscaled back exactly
    assert not torch.allclose(features[0], features[1])
    assert oracle.info.kind == "toy-oracle" and oracle.info.weights.startswith("sha256:")


def test_identical_sets_are_a_perfect_match(oracle):
    x = concept_features(oracle, "cool-patterned", 40, seed=0)
    assert M.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert M.manifold_metrics(x, x, k=5) == {"density": pytest.approx(1.2), "coverage": 1.0, "precision": 1.0,
                                             "recall": 1.0}  # fmt: skip
    assert M.mean_cosine_similarity(x[:1], x[:1]) == pytest.approx(1.0, abs=1e-6)


def test_same_concept_scores_better_than_another_concept_on_every_metric(oracle):
    refs = concept_features(oracle, "cool-patterned", 60, seed=0)
    same = concept_features(oracle, "cool-patterned", 60, seed=1)  # new nuisance draws, same support
    other = concept_features(oracle, "warm-pointy", 60, seed=2)  # disjoint support
    fid_same, fid_other = M.frechet_distance(refs, same), M.frechet_distance(refs, other)
    assert fid_same < 0.05 * fid_other
    cos_same, cos_other = M.mean_cosine_similarity(same, refs), M.mean_cosine_similarity(other, refs)
    assert cos_same > cos_other + 0.1
    good, bad = M.manifold_metrics(refs, same, k=5), M.manifold_metrics(refs, other, k=5)
    assert good["coverage"] > 0.9 and good["precision"] > 0.9 and good["recall"] > 0.9
    assert good["density"] > 0.8
    assert max(bad.values()) < 0.1  # nothing of another concept lands in the reference manifold


def test_half_of_the_reference_combos_gives_coverage_one_half(oracle):
    support = sorted(get_concept("cool-patterned").support)  # 30 triples
    refs = oracle(as_uint8(render_images(torch.tensor(support * 3), size=32, seed=7)))  # 3 of each
    half = oracle(as_uint8(render_images(torch.tensor(support[::2] * 6), size=32, seed=8)))  # 15 triples
    scores = M.manifold_metrics(refs, half, k=5)
    assert scores["coverage"] == pytest.approx(0.5, abs=0.05)
    assert scores["recall"] == pytest.approx(0.5, abs=0.1)
    assert scores["precision"] > 0.95  # every generated image is a reference triple


def test_one_wrong_attribute_is_seen(oracle):
    blue = [combo_index(("blue", "star", b)) for b in ("plain", "striped", "checkered", "dotted")]
    green = [combo_index(("green", "star", b)) for b in ("plain", "striped", "checkered", "dotted")]
    refs = oracle(as_uint8(render_images(torch.tensor(blue * 6), size=32, seed=3)))
    right = oracle(as_uint8(render_images(torch.tensor(blue * 6), size=32, seed=4)))
    wrong = oracle(as_uint8(render_images(torch.tensor(green * 6), size=32, seed=4)))  # only the colour differs
    assert M.manifold_metrics(refs, right, k=5)["coverage"] > 0.7  # new nuisance draws: most balls are hit
    assert M.manifold_metrics(refs, wrong, k=5)["coverage"] == 0.0
    assert M.frechet_distance(refs, right) < 0.1 * M.frechet_distance(refs, wrong)


def test_attribute_features_are_the_oracle_reading_as_one_hots(attributes):
    combos = sorted(get_concept("cool-patterned").support)  # 30 triples
    features = attributes(render(combos, seed=0))  # (30, 15)
    assert features.shape == (30, 15) and attributes.info.kind == "toy-attributes"
    assert torch.equal(features.sum(1), torch.full((30,), 3.0))
    colour, shape, background = features.split([6, 5, 4], dim=1)
    read = torch.stack([colour.argmax(1), shape.argmax(1), background.argmax(1)], dim=1)
    assert (read == torch.tensor(combos)).all(1).float().mean() >= 0.95  # the oracle reads renders right


def test_attribute_metrics_count_attribute_triples(attributes):
    support = sorted(get_concept("cool-patterned").support)
    refs = attributes(render(support * 6, seed=1))  # k + 1 = 6 references of each triple
    assert M.frechet_distance(refs, refs) == pytest.approx(0.0, abs=1e-9)
    half = M.manifold_metrics(refs, attributes(render(support[::2] * 6, seed=2)), k=5)  # 15 triples
    assert half["coverage"] == pytest.approx(0.5, abs=0.02) and half["precision"] >= 0.97
    assert half["recall"] == pytest.approx(0.5, abs=0.05)
    blue = attributes(render(star("blue") * 6, seed=3))
    right, wrong = attributes(render(star("blue") * 6, seed=4)), attributes(render(star("green") * 6, seed=4))
    # cosine = shared attributes / 3: same shape always, same background for 1 pair in 4, colour (0 or 1)
    assert M.mean_cosine_similarity(right, blue) == pytest.approx((1 + 1 + 0.25) / 3, abs=0.02)
    assert M.mean_cosine_similarity(wrong, blue) == pytest.approx((0 + 1 + 0.25) / 3, abs=0.02)
    assert M.manifold_metrics(blue, right, k=5) == {"density": pytest.approx(1.2, abs=0.05), "coverage": 1.0,
                                                    "precision": 1.0, "recall": 1.0}  # fmt: skip
    assert M.manifold_metrics(blue, wrong, k=5)["coverage"] == 0.0


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy-eval")
    render_concept("blue-stars", root / "refs", n=16, seed=0, size=32)  # 32 px, as the toy model draws
    render_concept("blue-stars", root / "same", n=16, seed=1, size=64)
    render_concept("red-things", root / "other", n=16, seed=2, size=32)
    return root


def eval_toy(folders, generated, out, *extra):
    argv = ["eval", "--real", str(folders / "refs"), "--generated", str(folders / generated), "--out", str(out)]
    return main([*argv, "--features", "toy-oracle", "--no-progress", "--no-cache", *extra])


def test_cli_toy_oracle_runs_offline_on_32px_images(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: pytest.fail("toy-oracle must not probe the hub"))
    assert eval_toy(folders, "same", tmp_path / "same") == 0
    assert eval_toy(folders, "other", tmp_path / "other") == 0
    out = capsys.readouterr()
    assert "FID" in out.out and "smaller than 64 px" not in out.err  # the oracle reads 32 px natively
    same, other = (json.loads((tmp_path / x / "report.json").read_text()) for x in ("same", "other"))
    assert list(same["metrics"]) == [
        *("fid", "clip-i", "density", "coverage", "precision", "recall", "kid", "cmmd", "vendi")
    ]
    assert same["settings"]["features"] == "toy-oracle" and list(same["features"]) == ["toy-oracle"]
    assert same["features"]["toy-oracle"]["model_id"] == "toy-oracle"
    assert same["metrics"]["fid"] < 0.1 * other["metrics"]["fid"]
    assert same["metrics"]["kid"] < 0.1 * other["metrics"]["kid"] and same["metrics"]["cmmd"] < other["metrics"]["cmmd"]
    assert same["vendi"]["toy-oracle"]["generated"] == same["metrics"]["vendi"] > 1
    assert same["metrics"]["clip-i"] > other["metrics"]["clip-i"]
    for metric in ("density", "coverage", "precision", "recall"):
        assert same["metrics"][metric] > 0.8 > 0.2 > other["metrics"][metric], metric
    assert (
        "| FID ↓ | " in (md := (tmp_path / "same" / "report.md").read_text())
        and md.count(" | toy-oracle (192-d) |") == 9
    )


def test_cli_toy_attributes_scores_what_the_images_show(folders, tmp_path, capsys):
    assert eval_toy(folders, "same", tmp_path / "same", "--features", "toy-attributes") == 0
    report = json.loads((tmp_path / "same" / "report.json").read_text())
    assert list(report["features"]) == ["toy-attributes"] and report["features"]["toy-attributes"]["dim"] == 15
    # 16 blue stars over 4 backgrounds against 16 others: every triple has 4 images (< k + 1), still all in
    assert report["metrics"]["precision"] == 1.0 and report["metrics"]["coverage"] == 1.0
    assert eval_toy(folders, "same", tmp_path / "x", "--features", "toy-attributes", "--boundary", "exclusive") == 2
    assert "--boundary inclusive" in capsys.readouterr().err


def test_cli_toy_oracle_refuses_clip_t_and_needs_no_inception(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DREAMDIST_INCEPTION_WEIGHTS", raising=False)
    assert eval_toy(folders, "same", tmp_path / "a", "--metrics", "fid,dino") == 0
    assert eval_toy(folders, "same", tmp_path / "b", "--prompt", "a blue star") == 2
    assert "clip-t needs a text encoder" in capsys.readouterr().err


def test_standard_features_accept_32px_images_with_one_note(folders, tmp_path, capsys):
    from dreamdist.evaluation import tiny

    model = tiny.save_tiny_dinov2(tmp_path / "dinov2")
    argv = [
        "eval",
        "--real",
        str(folders / "refs"),
        "--generated",
        str(folders / "other"),
        "--out",
        str(tmp_path / "out"),
    ]
    extra = ["--metrics", "coverage", "--dinov2-model", str(model), "--no-progress", "--no-cache", "--offline"]
    assert main([*argv, *extra]) == 0
    err = capsys.readouterr().err
    assert err.count("smaller than 64 px") == 1 and "16 reference and 16 generated" in err
    assert "--features toy-oracle" in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["real"]["count"] == 16 and not report["real"]["skipped"]


def test_broken_images_are_still_refused(tmp_path, capsys):
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "refs" / "ok.png")
    argv = [
        "eval",
        "--real",
        str(tmp_path / "refs"),
        "--generated",
        str(tmp_path / "refs"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main([*argv, "--features", "toy-oracle", "--metrics", "clip-i", "--no-progress", "--no-cache"]) == 0
    err = capsys.readouterr().err
    assert "truncated.png: not a readable image" in err


def toy_report(folder, method, features, density, weights="sha256:w"):
    space = "toy-oracle" if features == "toy-oracle" else "dinov2"
    folder.mkdir(parents=True)
    report = {
        "method": method,
        "scenario": "blue-stars",
        "metrics": {"density": density},
        "features": {space: {"model_id": space, "weights": weights, "preprocessing": "p", "dim": 192}},
        "settings": {"k": 5, "boundary": "inclusive", "features": features},
    }
    (folder / "report.json").write_text(json.dumps(report))
    return report


def test_compare_reads_the_toy_feature_space(tmp_path):
    from dreamdist.evaluation.compare import collect

    toy_report(tmp_path / "a", "a", "toy-oracle", 1.0)
    toy_report(tmp_path / "b", "b", "toy-oracle", 0.5)
    toy_report(tmp_path / "c", "c", "standard", 0.7)
    toy_report(tmp_path / "d", "d", "toy-oracle", 0.7, weights="sha256:retrained")

    def reports(*names):
        return [(name, [tmp_path / name / "report.json"]) for name in names]

    assert [m.name for m in collect(reports("a", "b"))[0]] == ["a", "b"]
    for other in ("c", "d"):  # standard features, or another oracle: not comparable
        with pytest.raises(ValueError, match="density"):
            collect(reports("a", other))
