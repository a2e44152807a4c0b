"""Generation: per-image seeds, gamma, text edits, mixing, manifests, safety and backbone checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dreamdist.artifact import UnsafeFileError, load_artifact
from dreamdist.backbones import BackboneMismatchError
from dreamdist.config import GenerateConfig, TrainConfig
from dreamdist.generation import generate
from dreamdist.methods.dreamdistribution import DreamDistributionConfig
from dreamdist.testing import write_images
from dreamdist.training.loop import train

SMALL = DreamDistributionConfig(num_prompts=4, num_tokens=2, num_samples=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, seed in (("a", 1), ("b", 2)):
        refs = write_images(root / f"refs_{name}", 3, seed=seed)
        out[name] = train(
            TrainConfig(images=str(refs), model=str(tiny_model), out=str(root / name), steps=2, progress=False),
            DreamDistributionConfig(num_prompts=4, num_tokens=2, num_samples=1, prefix="a photo of"),
        )
    return out


def gen(tmp_path, artifacts, **kw):
    base = dict(out=str(tmp_path), artifacts=[str(a) for a in artifacts], num_inference_steps=3, progress=False)
    return generate(GenerateConfig(**{**base, **kw}))


def arrays(result):
    return [np.asarray(im, dtype=np.int16) for im in result.images]


def test_each_image_is_independent_of_batch_size(runs, tmp_path):
    one = arrays(gen(tmp_path / "b1", [runs["a"]], num_images=5, batch_size=1))
    three = arrays(gen(tmp_path / "b3", [runs["a"]], num_images=5, batch_size=3))
    shifted = arrays(gen(tmp_path / "s", [runs["a"]], num_images=2, batch_size=2, seed=3))
    for x, y in zip(one, three):
        assert np.abs(x - y).max() <= 1  # batched conv/matmul may differ in the last float bit
    assert np.abs(one[3] - shifted[0]).max() <= 1 and np.abs(one[4] - shifted[1]).max() <= 1
    assert np.abs(one[0] - one[1]).max() > 10  # and different seeds give different images


def test_gaussian_gamma_zero_samples_the_mean_prompt(runs, backbone):
    from dreamdist.methods.dreamdistribution import prompt_sampler

    art = load_artifact(runs["a"])
    g0 = prompt_sampler(backbone, [art], GenerateConfig(out="x", artifacts=["a"], gamma=0.0, sampler="gaussian"))
    g2 = prompt_sampler(backbone, [art], GenerateConfig(out="x", artifacts=["a"], gamma=2.0, sampler="gaussian"))
    e0 = [g0(i, torch.Generator().manual_seed(i))[0] for i in range(2)]
    e2 = [g2(i, torch.Generator().manual_seed(i))[0] for i in range(2)]
    assert torch.equal(e0[0], e0[1]) and not torch.equal(e2[0], e2[1])
    assert (e2[0] - e0[0]).abs().max() > 0


def test_text_edit_refits_with_new_suffix(runs, backbone):
    from dreamdist.methods.dreamdistribution import artifact_stats

    art = load_artifact(runs["a"])
    mean_plain, _ = artifact_stats(backbone, art, "a photo of", "", 0)
    mean_night, _ = artifact_stats(backbone, art, "a photo of", "at night", 0)
    assert not torch.allclose(mean_plain, mean_night)
    # via --prompt with a placeholder == via --prefix/--suffix
    from dreamdist.methods.dreamdistribution import prompt_sampler

    via_prompt = prompt_sampler(
        backbone, [art], GenerateConfig(out="x", artifacts=["a"], prompt="a photo of {} at night")
    )
    via_flags = prompt_sampler(backbone, [art], GenerateConfig(out="x", artifacts=["a"], suffix="at night"))
    e1, info = via_prompt(0, torch.Generator().manual_seed(0))
    e2, _ = via_flags(0, torch.Generator().manual_seed(0))
    assert torch.equal(e1, e2) and info["prompt"] == "a photo of at night"


def test_mix_manifest_and_grid(runs, tmp_path):
    result = gen(tmp_path, [runs["a"], runs["b"]], weights=[0.3, 0.7], num_images=3)
    records = [json.loads(line) for line in result.manifest.read_text().splitlines()]
    assert [r["seed"] for r in records] == [0, 1, 2]
    assert records[0]["method"] == "dreamdistribution"
    assert records[0]["weights"] == [0.3, 0.7] and len(records[0]["artifacts"]) == 2
    assert len(records[0]["artifacts"][0]["sha256"]) == 64
    assert all((tmp_path / r["file"]).exists() for r in records)
    assert result.grid.exists()
    with pytest.raises(ValueError, match="sum to 1"):
        GenerateConfig(out="x", artifacts=["a", "b"], weights=[0.3, 0.6])
    with pytest.raises(ValueError, match="weights"):
        GenerateConfig(out="x", artifacts=["a", "b"])


def test_plain_prompt_baseline(tiny_model, tmp_path):
    result = generate(
        GenerateConfig(
            out=str(tmp_path),
            prompt="a photo of a cathedral",
            model=str(tiny_model),
            num_images=2,
            num_inference_steps=2,
            progress=False,
        )
    )
    assert len(result.paths) == 2
    record = json.loads(result.manifest.read_text().splitlines()[0])
    assert record["prompt"] == "a photo of a cathedral" and record["method"] == "caption"


def test_wrong_backbone_is_refused(runs, other_model, tmp_path):
    with pytest.raises(BackboneMismatchError, match="different weights"):
        gen(tmp_path, [runs["a"]], model=str(other_model), num_images=1)


def test_pickle_artifacts_refused_unless_opted_in(runs, tmp_path):
    art = load_artifact(runs["a"])
    pt = tmp_path / "artifact.pt"
    torch.save({"tensors": art.tensors, "meta": art.meta}, pt)
    with pytest.raises(UnsafeFileError, match="--allow-pickle"):
        load_artifact(pt)
    loaded = load_artifact(pt, allow_pickle=True)
    assert torch.equal(loaded.tensors["vectors"], art.tensors["vectors"])

    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    torch.save({"tensors": {}, "meta": {}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        load_artifact(tmp_path / "evil.pt", allow_pickle=True)


def test_corrupt_or_foreign_artifact_is_a_clear_error(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_artifact(tmp_path / "bad.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="without dreamdist metadata"):
        load_artifact(tmp_path / "foreign.safetensors")
    with pytest.raises(FileNotFoundError, match="finished run"):
        load_artifact(tmp_path)


# ---------------------------------------------------------------- streaming, resuming, caller's backbone, mixing
def mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png") if p.name != "grid.png"}


def test_a_rerun_skips_written_images_and_redoes_only_what_is_missing(runs, tmp_path):
    first = gen(tmp_path, [runs["a"]], num_images=5, batch_size=2)
    before = {p.name: p.read_bytes() for p in first.paths}
    stamps = mtimes(tmp_path)
    again = gen(tmp_path, [runs["a"]], num_images=5, batch_size=2)
    assert again.reused == 5 and mtimes(tmp_path) == stamps  # nothing regenerated
    # a run killed after image 3's file but before its row, with a torn manifest line
    manifest = tmp_path / "manifest.jsonl"
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[:3]) + lines[3][:20])
    (tmp_path / "00004.png").unlink()
    resumed = gen(tmp_path, [runs["a"]], num_images=5, batch_size=2)
    assert resumed.reused == 3
    assert mtimes(tmp_path)["00000.png"] == stamps["00000.png"]
    assert {p.name: p.read_bytes() for p in resumed.paths} == before  # same blocks, same bits
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4]
    more = gen(tmp_path, [runs["a"]], num_images=7, batch_size=2)  # a longer run continues
    assert more.reused == 5 and len(more.paths) == 7


def test_another_request_in_the_same_folder_is_refused_unless_overwrite(runs, tmp_path):
    gen(tmp_path, [runs["a"]], num_images=3, gamma=1.0)
    before = (tmp_path / "00000.png").read_bytes()
    with pytest.raises(FileExistsError, match="other settings: --gamma.*--overwrite"):
        gen(tmp_path, [runs["a"]], num_images=2, gamma=3.0)
    assert (tmp_path / "00002.png").exists()  # dreamdist.outputs: nothing replaced silently
    base = dict(out=str(tmp_path), artifacts=[str(runs["a"])], num_inference_steps=3, progress=False)
    other = generate(GenerateConfig(**base, num_images=2, gamma=3.0), overwrite=True)
    assert other.reused == 0 and (tmp_path / "00000.png").read_bytes() != before
    assert not (tmp_path / "00002.png").exists()  # the old request's files are gone
    assert len((tmp_path / "manifest.jsonl").read_text().splitlines()) == 2


def test_the_grid_shows_the_first_images_only(runs, tmp_path, monkeypatch):
    import dreamdist.generation as generation

    monkeypatch.setattr(generation, "GRID_IMAGES", 2)
    result = gen(tmp_path, [runs["a"]], num_images=5)
    from PIL import Image

    with Image.open(result.grid) as grid:
        width, height = result.images[0].size
        assert grid.size == (2 * width, height)


def test_generate_never_changes_a_backbone_passed_in(tiny_model, backbone, tmp_path):
    from dreamdist.methods.textual_inversion import TextualInversionConfig

    run = train(
        TrainConfig(
            images=str(write_images(tmp_path / "refs", 2)),
            model=str(tiny_model),
            out=str(tmp_path / "ti"),
            method="textual-inversion",
            steps=2,
            progress=False,
        ),
        TextualInversionConfig(init_word="toy", token="<thing>"),
    )
    vocab, table = len(backbone.tokenizer), backbone.token_embedding.weight.detach().clone()
    config = dict(artifacts=[str(run)], num_images=2, num_inference_steps=2, progress=False)
    shared = generate(GenerateConfig(out=str(tmp_path / "shared"), **config), backbone=backbone)
    assert len(backbone.tokenizer) == vocab and "<thing>" not in backbone.tokenizer.get_vocab()
    assert torch.equal(backbone.token_embedding.weight, table)
    own = generate(GenerateConfig(out=str(tmp_path / "own"), **config))
    assert [p.read_bytes() for p in shared.paths] == [p.read_bytes() for p in own.paths]


def test_mixing_honours_class_name(tiny_model, runs, backbone, tmp_path):
    from dreamdist.methods.dreamdistribution import prompt_sampler

    for name, seed in (("cat", 1), ("dog", 2)):
        write_images(tmp_path / "refs" / name, 2, seed=seed)
    multi = train(
        TrainConfig(
            images=str(tmp_path / "refs"), model=str(tiny_model), out=str(tmp_path / "m"), steps=2, multiclass=True
        ),
        SMALL,
    )
    arts = [load_artifact(multi), load_artifact(runs["b"])]

    def mean(class_name):
        config = GenerateConfig(
            out="x", artifacts=["m", "b"], weights=[0.5, 0.5], class_name=class_name, sampler="gaussian", gamma=0
        )
        return prompt_sampler(backbone, arts, config)(0, torch.Generator().manual_seed(0))[0]

    cat, dog = mean("cat"), mean("dog")
    assert not torch.allclose(cat, dog)  # each class's row is mixed, not always the first
    with pytest.raises(ValueError, match="pick the one to mix with --class-name"):
        mean(None)
    with pytest.raises(ValueError, match="'horse' is not in"):
        mean("horse")
