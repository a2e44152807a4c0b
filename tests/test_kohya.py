"""--export kohya: DreamBooth-LoRA also written with kohya / A1111 / ComfyUI key names, which diffusers'
load_lora_weights converts back to the same adapters (same image as the diffusers-format file)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from dreamdist.backbones.sdxl import sgm_unet_path
from dreamdist.cli import main
from dreamdist.config import TrainConfig
from dreamdist.methods.dreambooth import DreamBoothConfig
from dreamdist.methods.finetune import KOHYA_FILE
from dreamdist.testing import save_tiny_sdxl_pipeline, write_images
from dreamdist.training.loop import train

LORA = dict(class_noun="dog", lora=True, export="kohya", train_text_encoder=True, prior_preservation=False)


def train_lora(refs, model, out, **options):
    config = TrainConfig(
        images=str(refs),
        out=str(out),
        model=str(model),
        method="dreambooth",
        steps=2,
        batch_size=2,
        learning_rate=1e-2,
        progress=False,
        checkpoint_every=0,
    )
    return train(config, DreamBoothConfig(**{**LORA, **options}))


def plain_pipe(family, model):
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline.from_pretrained(str(model))
    else:
        pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(pipe) -> np.ndarray:
    out = pipe(
        "a sks dog",
        negative_prompt="",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        height=32,
        width=32,
    ).images[0]
    return np.asarray(out, dtype=np.int16)


# kohya key prefixes of each family's text encoders
TEXT_PREFIXES = {"sd": ("lora_te_",), "sdxl": ("lora_te1_", "lora_te2_")}


@pytest.mark.parametrize(("family", "alpha"), [("sd", 2.0), ("sdxl", None)])
def test_kohya_file_loads_into_diffusers_as_the_same_lora(family, alpha, tiny_model, tmp_path):
    model = tiny_model if family == "sd" else save_tiny_sdxl_pipeline(tmp_path / "xl")
    run = train_lora(write_images(tmp_path / "refs", 2), model, tmp_path / "run", lora_alpha=alpha)
    kohya = load_file(str(run / KOHYA_FILE))
    diffusers_keys = load_file(str(run / "pytorch_lora_weights.safetensors"))
    # names: <prefix>_<module>.lora_down.weight / .lora_up.weight / .alpha, one triple per adapted layer
    stems = {key.split(".")[0] for key in kohya}
    assert {key.split(".", 1)[1] for key in kohya} == {"lora_down.weight", "lora_up.weight", "alpha"}
    assert len(kohya) == 3 * len(stems) and 2 * len(stems) == len(diffusers_keys)
    unet = sorted(s for s in stems if s.startswith("lora_unet_"))
    for prefix in TEXT_PREFIXES[family]:
        assert any(s.startswith(prefix + "text_model_encoder_layers_0_self_attn_q_proj") for s in stems)
    assert len(unet) + sum(s.startswith(TEXT_PREFIXES[family]) for s in stems) == len(stems)
    layout = (
        r"lora_unet_(input_blocks|middle_block|output_blocks)_" if family == "sdxl" else r"lora_unet_(down|mid|up)_"
    )
    assert unet and all(re.match(layout, s) for s in unet)
    rank, scale = 4, (alpha or 4.0)
    assert all(float(kohya[f"{s}.alpha"]) == scale for s in stems)
    assert kohya[f"{unet[0]}.lora_down.weight"].shape[0] == rank
    with safe_open(str(run / KOHYA_FILE), framework="pt") as handle:
        assert handle.metadata()["ss_network_dim"] == str(rank)

    base = image(plain_pipe(family, model))
    pipe = plain_pipe(family, model)
    pipe.load_lora_weights(str(run), weight_name="pytorch_lora_weights.safetensors")
    reference = image(pipe)
    pipe = plain_pipe(family, model)
    pipe.load_lora_weights(str(run), weight_name=KOHYA_FILE)
    converted = image(pipe)
    assert np.abs(reference - base).max() > 0  # the LoRA changes the image
    assert np.abs(converted - reference).max() <= 1  # and the kohya file is the same LoRA


def test_sgm_names_follow_the_original_unet_layout():
    # real SDXL: two layers per block
    assert sgm_unet_path("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", 2) == (
        "input_blocks.4.1.transformer_blocks.0.attn1.to_q"
    )
    assert sgm_unet_path("down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_out.0", 2) == (
        "input_blocks.8.1.transformer_blocks.9.attn2.to_out.0"
    )
    assert sgm_unet_path("mid_block.attentions.0.transformer_blocks.3.attn1.to_k", 2) == (
        "middle_block.1.transformer_blocks.3.attn1.to_k"
    )
    assert sgm_unet_path("up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_v", 2) == (
        "output_blocks.5.1.transformer_blocks.0.attn2.to_v"
    )
    with pytest.raises(ValueError, match="attention layers only"):
        sgm_unet_path("down_blocks.0.resnets.0.conv1", 2)


def test_export_kohya_needs_lora(tiny_model, tmp_path, capsys):
    argv = ["train", "--method", "dreambooth", "--images", str(tmp_path), "--out", str(tmp_path / "run")]
    argv += ["--model", str(tiny_model)]
    assert main([*argv, "--class-noun", "dog", "--export", "kohya"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--export kohya writes LoRA weights; add --lora" in err[0]
