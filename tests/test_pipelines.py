"""--pipeline img2img / inpaint / controlnet on SD and SDXL: the learned distribution's prompt features
reach the family's diffusers pipeline (same image as a plain diffusers call), seeds stay per image,
and bad inputs give one error line."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from PIL import Image

from dreamdist.artifact import load_artifact
from dreamdist.backbones import FAMILIES, Backbone, SDBackbone, SDXLBackbone
from dreamdist.cli import main
from dreamdist.config import PIPELINE_NAMES, GenerateConfig, TrainConfig
from dreamdist.generation import generate
from dreamdist.methods import sampler_for
from dreamdist.methods.dreamdistribution import DreamDistributionConfig
from dreamdist.testing import save_tiny_sdxl_pipeline, write_images
from dreamdist.training.loop import train

SIZE = 32  # the tiny models' native image side


def save_controlnet(model, folder, seed: int = 0):
    """A tiny ControlNet of ``model``'s UNet whose zero-initialised convolutions are made random (so it acts)."""
    unet = UNet2DConditionModel.from_pretrained(str(model), subfolder="unet")
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))  # /2, as the tiny VAE
    zeroed = [controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    zeroed.append(controlnet.controlnet_cond_embedding.conv_out)
    with torch.no_grad():
        for module in zeroed:
            for p in module.parameters():
                p.normal_(0, 0.3)
    controlnet.save_pretrained(str(folder), safe_serialization=True)
    return folder


def write_mask(path, size=(SIZE, SIZE), left: bool = True):
    """A binary mask: white (redraw) on the left (or right) half."""
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    if left:
        mask[:, : size[0] // 2] = 255
    else:
        mask[:, size[0] // 2 :] = 255
    Image.fromarray(mask).save(path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model):
    """Per family: model folder, loaded backbone, a DreamDistribution run, a ControlNet; shared input images."""
    root = tmp_path_factory.mktemp("pipelines")
    images = write_images(root / "inputs", 2, size=(SIZE, SIZE))
    out = {"init": images / "img_00.png", "other": images / "img_01.png", "mask": write_mask(root / "mask.png")}
    out["mask2"] = write_mask(root / "mask2.png", left=False)
    refs = write_images(root / "refs", 2)
    for family, model in (("sd", tiny_model), ("sdxl", save_tiny_sdxl_pipeline(root / "xl"))):
        run = train(
            TrainConfig(
                images=str(refs),
                out=str(root / f"run_{family}"),
                model=str(model),
                steps=1,
                batch_size=2,
                progress=False,
                checkpoint_every=0,
            ),
            DreamDistributionConfig(num_prompts=3, num_tokens=2, num_samples=1),
        )
        out[family] = {
            "model": model,
            "backbone": Backbone.from_pretrained(model, device="cpu"),
            "run": run,
            "controlnet": save_controlnet(model, root / f"controlnet_{family}"),
        }
    return out


def options(world, kind: str, family: str, **changes) -> dict:
    """GenerateConfig fields of ``kind`` with the world's input files."""
    files = {
        "text2img": {},
        "img2img": {"init_image": str(world["init"]), "strength": 0.5},
        "inpaint": {"init_image": str(world["init"]), "mask": str(world["mask"])},
        "controlnet": {"controlnet": str(world[family]["controlnet"]), "control_image": str(world["other"])},
    }[kind]
    return {"pipeline": kind, **files, **changes}


def gen(world, family, out, **kw) -> list[np.ndarray]:
    """dreamdist's images from the family's DreamDistribution run (2 steps, seed 3)."""
    base = dict(out=str(out), artifacts=[str(world[family]["run"])], num_inference_steps=2, progress=False, seed=3)
    result = generate(GenerateConfig(**{**base, **kw}), backbone=world[family]["backbone"])
    return [np.asarray(im, dtype=np.int16) for im in result.images]


def plain_diffusers_image(world, family: str, kind: str, config: GenerateConfig) -> np.ndarray:
    """Image 0 of ``config`` made by a diffusers pipeline loaded from the model folder, fed the sampled
    prompt features and the image's generator (after its prompt draw), as a user would."""
    model, backbone = world[family]["model"], world[family]["backbone"]
    sampler = sampler_for(backbone, [load_artifact(world[family]["run"])], config)
    generator = torch.Generator().manual_seed(config.seed)
    features, _ = sampler(0, generator)
    embeds, pooled = backbone.split_features(features[None])  # (1, L, D) [, (1, d_pool)]
    extra = {} if pooled is None else {"pooled_prompt_embeds": pooled}
    parts = {} if family == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    if kind == "controlnet":
        parts["controlnet"] = ControlNetModel.from_pretrained(config.controlnet)
    pipe = backbone.pipeline_class(kind).from_pretrained(str(model), **parts)
    pipe.set_progress_bar_config(disable=True)
    init, control = Image.open(world["init"]).convert("RGB"), Image.open(world["other"]).convert("RGB")
    call = {
        "img2img": {"image": [init], "strength": 0.5},
        "inpaint": {"image": [init], "mask_image": [Image.open(world["mask"]).convert("L")], "strength": 1.0},
        "controlnet": {"image": [control], "controlnet_conditioning_scale": 1.0},
    }[kind]
    if kind != "img2img":
        call |= {"height": SIZE, "width": SIZE}
    image = pipe(
        prompt_embeds=embeds,
        **extra,
        negative_prompt=[""],
        generator=[generator],
        guidance_scale=7.5,
        num_inference_steps=2,
        **call,
    ).images[0]
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("kind", ["img2img", "inpaint", "controlnet"])
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_pipeline_gives_diffusers_image_for_every_batch_size(world, family, kind, tmp_path):
    together = gen(world, family, tmp_path / "b2", num_images=2, batch_size=2, **options(world, kind, family))
    alone = gen(world, family, tmp_path / "b1", num_images=2, batch_size=1, **options(world, kind, family))
    for x, y in zip(together, alone):
        assert x.shape == (SIZE, SIZE, 3)
        assert np.abs(x - y).max() <= 1  # image i depends on its seed only
    assert np.abs(together[0] - together[1]).max() > 0  # different seeds, different images
    config = GenerateConfig(out="x", artifacts=[str(world[family]["run"])], seed=3, **options(world, kind, family))
    assert np.abs(plain_diffusers_image(world, family, kind, config) - alone[0]).max() <= 1
    # the pipeline's own input reaches the image
    other = {
        "img2img": {"init_image": str(world["other"])},
        "inpaint": {"mask": str(world["mask2"])},
        "controlnet": {"control_image": str(world["init"])},
    }[kind]
    changed = gen(world, family, tmp_path / "other", num_images=1, **options(world, kind, family, **other))[0]
    assert np.abs(changed - alone[0]).max() > 0


def test_controlnet_at_scale_zero_is_text2img(world, tmp_path):
    plain = gen(world, "sd", tmp_path / "t2i", num_images=2)
    zero = gen(world, "sd", tmp_path / "cn0", num_images=2, **options(world, "controlnet", "sd", controlnet_scale=0.0))
    for x, y in zip(plain, zero):
        assert np.abs(x - y).max() <= 1


def test_mask_of_another_size_is_resized_to_the_init_image(world, tmp_path):
    small = write_mask(tmp_path / "small.png", size=(SIZE // 2, SIZE // 2))
    resized = gen(world, "sd", tmp_path / "small", num_images=1, **options(world, "inpaint", "sd", mask=str(small)))
    same = gen(world, "sd", tmp_path / "full", num_images=1, **options(world, "inpaint", "sd"))
    assert np.array_equal(resized[0], same[0])


def test_output_size_manifest_and_request_follow_the_init_image(world, tmp_path):
    init = write_images(tmp_path / "wide", 2, size=(44, 24))  # 44 -> 40: multiples of 8
    out, backbone = tmp_path / "out", world["sd"]["backbone"]
    kw = dict(init_image=str(init / "img_00.png"), strength=0.5, prompt="a red dog", model=str(world["sd"]["model"]))
    config = GenerateConfig(
        out=str(out), num_images=1, num_inference_steps=2, progress=False, **options(world, "img2img", "sd", **kw)
    )
    first = generate(config, backbone=backbone)
    assert first.images[0].size == (40, 24)
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert row["pipeline"] == "img2img" and row["strength"] == 0.5 and row["size"] == [40, 24]
    assert generate(config, backbone=backbone).reused == 1  # same request: nothing redone
    (init / "img_01.png").replace(init / "img_00.png")  # same path, other pixels: a new request
    with pytest.raises(FileExistsError, match="other settings: input_files"):  # refused, not replaced silently
        generate(config, backbone=backbone)
    assert generate(config, backbone=backbone, overwrite=True).reused == 0


def test_pipeline_names_are_the_families_pipeline_tables():
    for family in FAMILIES:  # every kind a family has is a --pipeline name; SD and SDXL have them all
        assert set(family.pipelines) <= set(PIPELINE_NAMES)
    assert tuple(SDBackbone.pipelines) == tuple(SDXLBackbone.pipelines) == PIPELINE_NAMES


@pytest.fixture(scope="module")
def junk(tmp_path_factory):
    root = tmp_path_factory.mktemp("junk")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "empty").mkdir()
    return root


BAD = {
    "missing init image": (["--pipeline", "img2img", "--init-image", "{junk}/nope.png"], "--init-image .*no such file"),
    "undecodable init image": (["--pipeline", "img2img", "--init-image", "{junk}/broken.png"], "not an image PIL"),
    "undecodable mask": (
        ["--pipeline", "inpaint", "--init-image", "{init}", "--mask", "{junk}/broken.png"],
        "--mask .*not an image",
    ),
    "inpaint without mask": (["--pipeline", "inpaint", "--init-image", "{init}"], "inpaint needs --mask"),
    "mask for img2img": (["--pipeline", "img2img", "--init-image", "{init}", "--mask", "{init}"], "--mask is for"),
    "strength above 1": (["--pipeline", "img2img", "--init-image", "{init}", "--strength", "1.5"], "--strength must"),
    "too few steps for the strength": (
        ["--pipeline", "img2img", "--init-image", "{init}", "--strength", "0.1"],
        "denoises no step",
    ),
    "not a controlnet folder": (
        ["--pipeline", "controlnet", "--controlnet", "{junk}/empty", "--control-image", "{init}"],
        "no ControlNet there",
    ),
    "a UNet given as controlnet": (
        ["--pipeline", "controlnet", "--controlnet", "{sd_model}/unet", "--control-image", "{init}"],
        "holds a UNet2DConditionModel, not a ControlNetModel",
    ),
    "controlnet of the other family": (
        ["--pipeline", "controlnet", "--controlnet", "{xl_controlnet}", "--control-image", "{init}"],
        "is an SDXL ControlNet, but .* is an SD 1.x/2.x backbone",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gives_one_error_line(case, world, junk, tmp_path, capsys):
    flags, message = BAD[case]
    names = dict(
        junk=junk, init=world["init"], sd_model=world["sd"]["model"], xl_controlnet=world["sdxl"]["controlnet"]
    )
    argv = ["generate", "--model", str(world["sd"]["model"]), "--prompt", "a dog", "--out", str(tmp_path / "o")]
    argv += ["--num-images", "1", "--num-inference-steps", "2", "--no-progress", "--device", "cpu"]
    code = main(argv + [flag.format(**names) for flag in flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("dreamdist: error: ")
    assert re.search(message, err[0]), err[0]


@pytest.mark.parametrize("case", ["missing init image", "not a controlnet folder"])
def test_bad_inputs_fail_before_the_model_loads(case, world, junk, tmp_path, capsys):
    flags, message = BAD[case]
    names = dict(junk=junk, init=world["init"])
    argv = ["generate", "--model", str(tmp_path / "no-such-model"), "--prompt", "a dog", "--out", str(tmp_path / "o")]
    assert main(argv + [flag.format(**names) for flag in flags]) == 2
    assert re.search(message, capsys.readouterr().err)  # not the missing model's error
