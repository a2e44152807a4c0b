"""SDXL: a tiny random StableDiffusionXLPipeline folder (two CLIP encoders of different widths, a
``text_time`` UNet), each method trained for a couple of steps, saved, loaded by diffusers, generated."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file

from dreamdist.artifact import load_artifact
from dreamdist.backbones import Backbone, BackboneMismatchError, SDXLBackbone
from dreamdist.config import GenerateConfig, TrainConfig
from dreamdist.generation import generate
from dreamdist.methods import method_names
from dreamdist.methods.custom_diffusion import KV_KEYS, load_custom_diffusion
from dreamdist.methods.dreamdistribution import artifact_stats
from dreamdist.prompt_distribution import PromptTemplate, encode_prompts
from dreamdist.testing import example_config, save_tiny_sdxl_pipeline, write_images
from dreamdist.training.loop import train

D1, D2, POOL = 32, 48, 40  # the tiny encoders' widths and encoder 2's projection (dreamdist.testing)


@pytest.fixture(scope="module")
def sdxl_model(tmp_path_factory):
    return save_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny_sdxl"), seed=0)


@pytest.fixture(scope="module")
def sdxl(sdxl_model):
    return Backbone.from_pretrained(sdxl_model, device="cpu")


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("sdxl_refs") / "refs", 4)


def plain_pipe(model) -> StableDiffusionXLPipeline:
    pipe = StableDiffusionXLPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_method(refs, model, out, method: str, steps: int = 2, learning_rate=None, **options):
    train_config = TrainConfig(
        images=str(refs),
        out=str(out),
        model=str(model),
        method=method,
        steps=steps,
        batch_size=2,
        learning_rate=learning_rate,
        progress=False,
        checkpoint_every=0,
    )
    return train(train_config, example_config(method, **options))


def gen(out, run, **kw) -> list[np.ndarray]:
    base = dict(out=str(out), artifacts=[str(run)], num_images=3, num_inference_steps=2, progress=False, seed=3)
    return [np.asarray(im, dtype=np.int16) for im in generate(GenerateConfig(**{**base, **kw})).images]


def pipe_image(pipe, prompt: str, seed: int = 3) -> np.ndarray:
    """A plain diffusers image with dreamdist's generation settings (negative prompt '', guidance 7.5, 2 steps)."""
    image = pipe(
        prompt,
        negative_prompt="",
        guidance_scale=7.5,  # dreamdist's default (the SDXL pipeline's own is 5)
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(seed),
        height=32,
        width=32,
    ).images[0]
    return np.asarray(image, dtype=np.int16)


# ---------------------------------------------------------------- backbone
def test_sdxl_folder_is_detected_and_encodes_as_the_pipeline_does(sdxl, sdxl_model):
    assert isinstance(sdxl, SDXLBackbone) and sdxl.family == "sdxl" and sdxl.identity()["family"] == "sdxl"
    assert sdxl.token_dim == D1 + D2 and sdxl.feature_dim == D1 + D2 and sdxl.pooled_dim == POOL
    texts = ["a red dog", "a photo of a cat at night"]
    with torch.no_grad():
        features = sdxl.encode_text(texts)  # (2, 78, 80): 77 token rows + the pooled row
        embeds, _, pooled, _ = plain_pipe(sdxl_model).encode_prompt(
            texts, device="cpu", do_classifier_free_guidance=False
        )
    hidden, ours = sdxl.split_features(features)
    assert features.shape == (2, 78, D1 + D2)
    assert torch.allclose(hidden, embeds, atol=1e-6) and torch.allclose(ours, pooled, atol=1e-6)
    assert torch.all(features[:, -1, POOL:] == 0)
    # soft tokens: one joint vector per token drives both encoders (tokenizer 2's padding included)
    template = PromptTemplate.build(sdxl, 1, "a", "dog")
    red = sdxl.token_rows(torch.tensor(sdxl.tokenizer.encode("red", add_special_tokens=False)))  # (1, 80)
    with torch.no_grad():
        soft, soft_pooled = encode_prompts(sdxl, red[None], template)
    assert torch.allclose(soft[0], features[0], atol=1e-6) and torch.allclose(soft_pooled[0], pooled[0], atol=1e-6)


def test_denoise_passes_pooled_embeddings_and_time_ids(sdxl):
    generator = torch.Generator().manual_seed(0)
    noisy, t = torch.randn(2, 4, 16, 16, generator=generator), torch.tensor([10, 500])
    with torch.no_grad():
        features = sdxl.encode_text(["a red dog", "a cat"])
        hidden, pooled = sdxl.split_features(features)
        time_ids = torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)  # (orig h, w, crop top, left, target h, w)
        added = {"text_embeds": pooled, "time_ids": time_ids}
        expected = sdxl.unet(noisy, t, encoder_hidden_states=hidden, added_cond_kwargs=added).sample
        assert torch.equal(sdxl.denoise(noisy, t, features), expected)
        other = features.clone()
        other[:, -1, :POOL] += 1.0  # the pooled row reaches the UNet
        assert not torch.allclose(sdxl.denoise(noisy, t, other), expected)


def test_an_fp16_vae_that_asks_for_upcasting_encodes_in_fp32(sdxl_model):
    half = Backbone.from_pretrained(sdxl_model, device="cpu", dtype="fp16")
    assert half.vae.config.force_upcast and half.vae.dtype == torch.float16
    seen, encode = [], half.vae.encode
    half.vae.encode = lambda pixels, *a, **k: seen.append((pixels.dtype, half.vae.dtype)) or encode(pixels, *a, **k)
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mean, std = half.encode_images(pixels)
    assert seen == [(torch.float32, torch.float32)] and half.vae.dtype == torch.float16  # back to fp16 after
    assert torch.isfinite(mean).all() and mean.dtype == torch.float32


# ---------------------------------------------------------------- DreamDistribution
@pytest.fixture(scope="module")
def dd_run(refs, sdxl_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("sdxl_dd") / "run"
    return run_method(refs, sdxl_model, out, "dreamdistribution", num_prompts=3, num_tokens=2, num_samples=2)


def test_dreamdistribution_learns_joint_tokens_and_a_pooled_distribution(dd_run, sdxl):
    artifact = load_artifact(dd_run)
    assert artifact.meta["backbone"]["family"] == "sdxl"
    assert artifact.tensors["vectors"].shape == (1, 3, 2, D1 + D2)  # one joint vector per learned token
    mean, std = artifact_stats(sdxl, artifact, "", "", 0)  # (78, 80) each
    assert mean.shape == (78, D1 + D2)
    assert float(std[-1, :POOL].min()) > 0  # the pooled embedding varies over the K prompts
    assert torch.all(std[-1, POOL:] == 0) and torch.all(mean[-1, POOL:] == 0)


def test_dreamdistribution_generates_the_same_images_whatever_the_batch_size(dd_run, tmp_path):
    together = gen(tmp_path / "a", dd_run, batch_size=3)
    alone = gen(tmp_path / "b", dd_run, batch_size=1)
    for x, y in zip(together, alone):
        assert np.abs(x - y).max() <= 1
    assert np.abs(together[0] - together[1]).max() > 0  # different seeds, different samples


# ---------------------------------------------------------------- Textual Inversion
def test_textual_inversion_file_loads_into_a_plain_sdxl_pipeline(refs, sdxl_model, tmp_path):
    token = "<sdxl-toy>"
    run = run_method(
        refs, sdxl_model, tmp_path / "run", "textual-inversion", learning_rate=0.5, init_word="toy", token=token
    )
    learned = load_artifact(run).tensors["token_embeds"]  # (1, 80)
    state = load_file(str(run / "learned_embeds.safetensors"))
    assert set(state) == {"clip_l", "clip_g"}
    assert torch.equal(torch.cat([state["clip_l"], state["clip_g"]], -1), learned)
    pipe = plain_pipe(sdxl_model)
    before = pipe_image(pipe, "a photo of toy")
    pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(
        state["clip_g"], token=token, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
    )
    for tokenizer, encoder, part in (
        (pipe.tokenizer, pipe.text_encoder, "clip_l"),
        (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g"),
    ):
        row = encoder.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids(token)]
        assert torch.equal(row, state[part][0])
    after = pipe_image(pipe, f"a photo of {token}")
    assert np.abs(after - before).max() > 0  # the learned token changes the image
    ours = gen(tmp_path / "gen", run, prompt="a photo of {}", num_images=1)[0]  # dreamdist's own generation
    assert np.abs(ours - after).max() <= 1


# ---------------------------------------------------------------- DreamBooth-LoRA
def test_dreambooth_lora_with_prior_loads_with_load_lora_weights(refs, sdxl_model, tmp_path):
    run = run_method(
        refs,
        sdxl_model,
        tmp_path / "run",
        "dreambooth",
        learning_rate=1e-2,
        class_noun="dog",
        lora=True,
        class_images=2,
        class_inference_steps=1,
    )
    assert len(list((run / "class_images").glob("*.png"))) == 2  # prior preservation ran (the default)
    pipe = plain_pipe(sdxl_model)
    before = pipe_image(pipe, "a sks dog")
    pipe.load_lora_weights(str(run), weight_name="pytorch_lora_weights.safetensors")
    after = pipe_image(pipe, "a sks dog")
    assert np.abs(after - before).max() > 0
    ours = gen(tmp_path / "gen", run, prompt="a {}", num_images=1)[0]
    assert np.abs(ours - after).max() <= 1


# ---------------------------------------------------------------- families
def test_artifacts_refuse_the_other_backbone_family(dd_run, sdxl, tiny_model, tmp_path):
    sd = Backbone.from_pretrained(tiny_model, device="cpu")
    artifact = load_artifact(dd_run)
    with pytest.raises(BackboneMismatchError, match="SDXL backbone.*SD 1.x/2.x backbone"):
        sd.check_compatible(artifact.meta["backbone"], artifact.tensors["backbone.probe"], "run")
    with pytest.raises(BackboneMismatchError, match="SD 1.x/2.x backbone.*SDXL backbone"):
        sdxl.check_compatible(sd.identity(), sd.probe_rows(), "run")
    legacy = {k: v for k, v in sd.identity().items() if k != "family"}  # artifacts from before SDXL support
    with pytest.raises(BackboneMismatchError, match="SD 1.x/2.x"):
        sdxl.check_compatible(legacy, None, "run")
    with pytest.raises(BackboneMismatchError, match="--model"):
        generate(GenerateConfig(out=str(tmp_path / "g"), artifacts=[str(dd_run)], model=str(tiny_model)))


# ---------------------------------------------------------------- Custom Diffusion
def test_custom_diffusion_files_load_into_a_plain_sdxl_pipeline(refs, sdxl_model, tmp_path):
    run = run_method(
        refs, sdxl_model, tmp_path / "run", "custom-diffusion", learning_rate=1e-2, class_noun="dog", init_word="toy"
    )
    loaded = load_artifact(run)
    meta, artifact = loaded.meta, loaded.tensors
    token, prompt = meta["diffusers"]["token"], f"a photo of {meta['concept']}"
    pipe = plain_pipe(sdxl_model)
    before = pipe_image(pipe, prompt)
    load_custom_diffusion(pipe, run, meta["diffusers"]["custom_diffusion"])  # the README's loader
    moved = []
    for name, processor in pipe.unet.attn_processors.items():  # every attn2 holds the file's K/V, as trained
        if name.endswith("attn2.processor"):
            attn = pipe.unet.get_submodule(name.rsplit(".", 1)[0])
            for key, frozen in zip(KV_KEYS, (attn.to_k.weight, attn.to_v.weight)):
                trained = artifact[f"unet.{name}.{key}"]
                assert torch.equal(processor.state_dict()[key], trained), f"{name}.{key}"
                moved.append(not torch.equal(trained, frozen))
    assert moved and any(moved)  # and training moved them away from the frozen projections
    state = load_file(str(run / meta["diffusers"]["textual_inversion"]))
    assert set(state) == {"clip_l", "clip_g"}
    assert torch.equal(torch.cat([state["clip_l"], state["clip_g"]], -1), artifact["token_embeds"])
    pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(
        state["clip_g"], token=token, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
    )
    after = pipe_image(pipe, prompt)
    assert np.abs(after - before).max() > 0  # the files change what the plain pipeline draws
    ours = gen(tmp_path / "gen", run, prompt="a photo of {}", num_images=1)[0]  # dreamdist's own generation
    assert np.abs(ours - after).max() <= 1


# ---------------------------------------------------------------- every other method of the registry
DEDICATED = {"dreamdistribution", "textual-inversion", "custom-diffusion"}  # tested above, file by file
# small settings and the generation prompt; a registered method without an entry runs with
# dreamdist.testing.example_config and the prompt "a photo of {}"
OTHERS = {
    "dreambooth": (dict(class_noun="dog", class_images=2, class_inference_steps=1, train_text_encoder=True), "a {}"),
    "two-stage": (dict(class_noun="dog", stage1_steps=1), "a photo of {}"),
}


@pytest.mark.parametrize("method", [name for name in method_names() if name not in DEDICATED])
def test_every_other_method_trains_saves_and_generates_on_sdxl(method, refs, sdxl_model, tmp_path):
    options, prompt = OTHERS.get(method, ({}, "a photo of {}"))
    run = run_method(refs, sdxl_model, tmp_path / "run", method, learning_rate=1e-3, **options)
    meta = load_artifact(run).meta
    assert meta["backbone"]["family"] == "sdxl"
    ours = gen(tmp_path / "gen", run, prompt=prompt, num_images=1)[0]
    if (run / "pipeline").is_dir():  # a full SDXL pipeline folder (both tokenizers know new tokens)
        saved = plain_pipe(run / "pipeline")
        assert np.abs(ours - pipe_image(saved, prompt.replace("{}", meta["concept"]))).max() <= 1
    base = pipe_image(plain_pipe(sdxl_model), prompt.replace("{}", "dog"))
    assert np.abs(ours - base).max() > 0
