"""dreamdist sample-prompts: the exported prompt embeddings, passed to a plain diffusers pipeline,
give dreamdist generate's images (SD and SDXL); metadata names the backbone; bad options fail in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from dreamdist.backbones import Backbone
from dreamdist.cli import main
from dreamdist.config import GenerateConfig, TrainConfig
from dreamdist.generation import generate
from dreamdist.methods.dreamdistribution import DreamDistributionConfig
from dreamdist.methods.textual_inversion import TextualInversionConfig
from dreamdist.sample_prompts import SamplePromptsConfig, read_prompt_file, sample_prompts
from dreamdist.testing import save_tiny_sdxl_pipeline, write_images
from dreamdist.training.loop import train


def train_run(refs, model, out, method_config, method="dreamdistribution"):
    config = TrainConfig(
        images=str(refs),
        out=str(out),
        model=str(model),
        method=method,
        steps=1,
        batch_size=2,
        progress=False,
        checkpoint_every=0,
    )
    return train(config, method_config)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("sample_prompts")
    refs = write_images(root / "refs", 2)
    small = DreamDistributionConfig(num_prompts=3, num_tokens=2, num_samples=1)
    xl = save_tiny_sdxl_pipeline(root / "xl")
    return {
        "sd": (tiny_model, train_run(refs, tiny_model, root / "sd", small)),
        "sdxl": (xl, train_run(refs, xl, root / "sdxl", small)),
        "ti": (
            tiny_model,
            train_run(refs, tiny_model, root / "ti", TextualInversionConfig(init_word="toy"), "textual-inversion"),
        ),
    }


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_exported_rows_reproduce_dreamdist_generate_in_a_plain_pipeline(family, runs, tmp_path):
    model, run = runs[family]
    out = tmp_path / "prompts.safetensors"
    argv = ["sample-prompts", str(run), "--n", "3", "--out", str(out), "--seed", "5", "--gamma", "1.5"]
    assert main([*argv, "--sampler", "gaussian", "--device", "cpu"]) == 0
    tensors, meta = read_prompt_file(out)
    backbone = Backbone.from_pretrained(model, device="cpu")
    width = int(backbone.unet.config.cross_attention_dim)  # D: 32 (SD) or 32 + 48 (SDXL)
    assert tensors["prompt_embeds"].shape == (3, 77, width)
    assert meta["backbone"]["family"] == family and meta["backbone"] == backbone.identity()
    assert (meta["options"]["sampler"], meta["options"]["gamma"], meta["options"]["seed"]) == ("gaussian", 1.5, 5)
    assert tensors["seeds"].tolist() == [5, 6, 7] and len(meta["rows"]) == 3
    assert not torch.equal(tensors["prompt_embeds"][0], tensors["prompt_embeds"][1])  # samples, not one prompt
    extra = {}
    if family == "sdxl":
        assert tensors["pooled_prompt_embeds"].shape == (3, backbone.pooled_dim)
        pipe = StableDiffusionXLPipeline.from_pretrained(str(model))
    else:
        assert "pooled_prompt_embeds" not in tensors
        pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    config = dict(sampler="gaussian", gamma=1.5, seed=5, num_images=3, num_inference_steps=2, progress=False)
    ours = generate(GenerateConfig(out=str(tmp_path / "gen"), artifacts=[str(run)], **config), backbone).images
    for i in (0, 2):
        if family == "sdxl":
            extra = {"pooled_prompt_embeds": tensors["pooled_prompt_embeds"][i : i + 1]}
        image = pipe(
            prompt_embeds=tensors["prompt_embeds"][i : i + 1],
            **extra,
            negative_prompt="",
            generator=torch.Generator().set_state(tensors["generator_states"][i].clone()),  # a row of its own
            guidance_scale=7.5,
            num_inference_steps=2,
        ).images[0]
        theirs, mine = np.asarray(image, dtype=np.int16), np.asarray(ours[i], dtype=np.int16)
        assert np.abs(theirs - mine).max() <= 1


def test_rows_depend_on_seed_and_gamma_only(runs, tmp_path):
    model, run = runs["sd"]
    backbone = Backbone.from_pretrained(model, device="cpu")

    def rows(name, **kw):
        config = SamplePromptsConfig(artifact=str(run), out=str(tmp_path / f"{name}.safetensors"), n=3, **kw)
        return read_prompt_file(sample_prompts(config, backbone))[0]["prompt_embeds"]

    first, again = rows("a", seed=1), rows("b", seed=1)
    assert torch.equal(first, again)
    assert torch.equal(rows("shifted", seed=2)[0], first[1])  # row i is seed + i, as image i of generate
    mean = rows("mean", sampler="gaussian", gamma=0.0)
    assert torch.equal(mean[0], mean[2])  # gamma 0: the mean prompt in every row
    assert not torch.equal(rows("wide", sampler="gaussian", gamma=2.0)[0], mean[0])


def test_any_methods_prompt_is_exported(runs, tmp_path):
    model, run = runs["ti"]
    out = tmp_path / "ti.safetensors"
    config = SamplePromptsConfig(artifact=str(run), out=str(out), n=2, prompt="a photo of {}", device="cpu")
    tensors, meta = read_prompt_file(sample_prompts(config))
    assert meta["method"] == "textual-inversion" and meta["rows"][0]["prompt"].startswith("a photo of <")
    assert torch.equal(tensors["prompt_embeds"][0], tensors["prompt_embeds"][1])  # one prompt, no distribution
    with torch.no_grad():
        plain = Backbone.from_pretrained(model, device="cpu").encode_text(["a photo of toy"])[0]
    assert not torch.allclose(tensors["prompt_embeds"][0], plain)  # the learned token is in it


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--n", "0"], "--n must be >= 1"),
        (["--out", "prompts.pt"], "--out must name a .safetensors file"),
    ],
)
def test_bad_options_give_one_error_line(flags, message, runs, tmp_path, capsys):
    argv = ["sample-prompts", str(runs["sd"][1]), "--out", str(tmp_path / "p.safetensors"), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dreamdist: error: ") and message in err[0]


def test_a_file_of_another_kind_is_refused(runs):
    with pytest.raises(ValueError, match="not a 'dreamdist sample-prompts' file"):
        read_prompt_file(runs["sd"][1] / "dreamdist.safetensors")
