"""SD3 / SD3.5: tiny random StableDiffusion3Pipeline folders (with T5, and without), detection next to
the other families, encoding as the pipeline encodes, DreamDistribution trained for a few steps, saved,
generated, checked against the plain diffusers pipeline; the family's doors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from PIL import Image

from dreamdist.artifact import load_artifact
from dreamdist.backbones import (
    Backbone,
    BackboneMismatchError,
    FluxBackbone,
    SD3Backbone,
    SDBackbone,
    SDXLBackbone,
    detect_family,
    family_of_pipeline,
)
from dreamdist.backbones.noise import FlowMatchNoise
from dreamdist.config import GenerateConfig, TrainConfig
from dreamdist.generation import generate
from dreamdist.methods import sampler_for
from dreamdist.methods.dreamdistribution import artifact_features, artifact_stats
from dreamdist.pipeline import make_pipeline
from dreamdist.prompt_distribution import PromptTemplate, encode_prompts
from dreamdist.testing import (
    example_config,
    save_tiny_flux_pipeline,
    save_tiny_sd3_pipeline,
    save_tiny_sdxl_pipeline,
    write_images,
)
from dreamdist.training.loop import train

CLIP_L, CLIP_G, T5, LENGTH = 32, 40, 80, 16  # the tiny encoders' widths and the T5 length (dreamdist.testing)
POOLED = 24 + 36  # both CLIP projections
ROWS = 77 + LENGTH + 1  # CLIP positions, T5 sequence, the pooled row


@pytest.fixture(scope="module")
def sd3_model(tmp_path_factory):
    return save_tiny_sd3_pipeline(tmp_path_factory.mktemp("tiny_sd3"), qk_norm="rms_norm")  # SD3.5-shaped


@pytest.fixture(scope="module")
def sd3(sd3_model):
    return Backbone.from_pretrained(sd3_model, device="cpu")


@pytest.fixture(scope="module")
def sd3_no_t5_model(tmp_path_factory):
    return save_tiny_sd3_pipeline(tmp_path_factory.mktemp("tiny_sd3_no_t5"), with_t5=False)


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("sd3_refs") / "refs", 4)


def dd_train(refs, model, out):
    config = TrainConfig(
        images=str(refs),
        out=str(out),
        model=str(model),
        method="dreamdistribution",
        steps=2,
        batch_size=2,
        progress=False,
        checkpoint_every=0,
    )
    return train(config, example_config("dreamdistribution", num_prompts=3, num_tokens=2, num_samples=2))


@pytest.fixture(scope="module")
def dd_run(refs, sd3_model, tmp_path_factory):
    return dd_train(refs, sd3_model, tmp_path_factory.mktemp("sd3_dd") / "run")


def gen(out, run, **kw) -> list[np.ndarray]:
    base = dict(out=str(out), artifacts=[str(run)], num_images=3, num_inference_steps=2, progress=False, seed=3)
    base["guidance_scale"] = 3.0  # real classifier-free guidance against the empty prompt
    return [np.asarray(im, dtype=np.int16) for im in generate(GenerateConfig(**{**base, **kw})).images]


def encode_with_pipeline(pipe, texts, **kw):
    """StableDiffusion3Pipeline.encode_prompt's (prompt_embeds, negative, pooled, negative pooled)."""
    return pipe.encode_prompt(
        texts, None, None, device="cpu", max_sequence_length=LENGTH, do_classifier_free_guidance=True, **kw
    )


# ---------------------------------------------------------------- detection
def test_sd3_folders_are_detected_and_the_other_families_still_are(sd3_model, sd3_no_t5_model, tiny_model, tmp_path):
    assert detect_family(str(sd3_model)) == "sd3" and detect_family(str(sd3_no_t5_model)) == "sd3"
    sdxl = save_tiny_sdxl_pipeline(tmp_path / "sdxl")
    flux = save_tiny_flux_pipeline(tmp_path / "flux")
    assert detect_family(str(sdxl)) == "sdxl" and detect_family(str(flux)) == "flux"
    assert detect_family(str(tiny_model)) == "sd"
    bare = tmp_path / "bare"  # no model_index.json: the transformer's config tells
    (bare / "transformer").mkdir(parents=True)
    (bare / "text_encoder_2").mkdir()
    (bare / "text_encoder_3").mkdir()
    (bare / "transformer" / "config.json").write_text(json.dumps({"_class_name": "SD3Transformer2DModel"}))
    assert detect_family(str(bare)) == "sd3"
    (bare / "transformer" / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    assert detect_family(str(bare)) == "flux"
    img2img = tmp_path / "img2img"
    img2img.mkdir()
    (img2img / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Img2ImgPipeline"}))
    assert detect_family(str(img2img)) == "sd3"
    assert not SD3Backbone.recognises(json.loads((sdxl / "model_index.json").read_text()), sdxl)
    assert not SD3Backbone.recognises(json.loads((flux / "model_index.json").read_text()), flux)


def test_from_pretrained_dispatches_to_sd3(sd3, sd3_model):
    assert type(sd3) is SD3Backbone and sd3.family == "sd3" and sd3.denoiser is sd3.transformer
    assert list(sd3.named_text_encoders) == ["text_encoder", "text_encoder_2", "text_encoder_3"]
    assert sd3.token_dim == CLIP_L + CLIP_G + T5 and sd3.max_sequence_length == LENGTH
    assert sd3.identity()["family"] == "sd3" and sd3.prediction_type == "flow_matching"
    assert isinstance(sd3.noise_process, FlowMatchNoise) and sd3.noise_process.shift == 3.0
    assert sd3.default_guidance == 7.0 and sd3.sample_size == 32
    assert family_of_pipeline(make_pipeline(sd3)) is SD3Backbone
    for family in (FluxBackbone, SDXLBackbone, SDBackbone):
        assert "StableDiffusion3Pipeline" not in family.pipelines.values()


# ---------------------------------------------------------------- encoding
def test_plain_text_encodes_as_the_pipeline_does(sd3, sd3_model):
    texts = ["a red dog", "a photo of a cat at night"]
    pipe = StableDiffusion3Pipeline.from_pretrained(str(sd3_model))
    with torch.no_grad():
        features = sd3.encode_text(texts)  # (2, 94, 80): 77 CLIP rows, 16 T5 rows, the pooled row
        embeds, negative, pooled, negative_pooled = encode_with_pipeline(pipe, texts)
        skipped = sd3.encode_text_skipping(texts, 1)
        skipped_embeds = encode_with_pipeline(pipe, texts, clip_skip=1)[0]
        ours_negative = sd3.negative_features("")
    hidden, ours = sd3.split_features(features)
    assert features.shape == (2, ROWS, T5) and torch.all(features[:, -1, POOLED:] == 0)
    assert torch.all(features[:, :77, CLIP_L + CLIP_G :] == 0)  # CLIP-L ‖ CLIP-G zero-padded to the T5 width
    assert torch.equal(hidden, embeds) and torch.equal(ours, pooled)
    assert torch.equal(skipped[:, :-1], skipped_embeds) and not torch.allclose(skipped_embeds, embeds)
    negative_hidden, negative_ours = sd3.split_features(ours_negative)
    assert torch.allclose(negative_hidden, negative[0], atol=1e-6)
    assert torch.allclose(negative_ours, negative_pooled[0], atol=1e-6)


def test_a_soft_prompt_holding_a_words_rows_is_that_text(sd3):
    template = PromptTemplate.build(sd3, 1, "a", "dog")
    word = lambda encoder, tokenizer: encoder.get_input_embeddings().weight[  # noqa: E731
        tokenizer.encode("red", add_special_tokens=False)
    ]
    vector = torch.cat(
        [
            word(sd3.text_encoder, sd3.tokenizer),
            word(sd3.text_encoder_2, sd3.tokenizer_2),
            word(sd3.text_encoder_3, sd3.tokenizer_3),
        ],
        dim=-1,
    )[None]  # (1, 1, 152) the joint vector of 'red'
    with torch.no_grad():
        features = sd3.encode_text(["a red dog"])
        soft, soft_pooled = encode_prompts(sd3, vector, template)
    assert torch.allclose(soft[0], features[0], atol=1e-5)
    assert torch.allclose(soft_pooled[0], sd3.split_features(features)[1][0], atol=1e-5)
    assert template.clip_g.after[-1] == sd3.tokenizer_2.pad_token_id != sd3.tokenizer.pad_token_id  # its own pad


def test_denoise_passes_the_schedulers_timesteps(sd3):
    generator = torch.Generator().manual_seed(0)
    noisy, t = torch.randn(2, 4, 16, 16, generator=generator), torch.tensor([0.2, 0.9])
    with torch.no_grad():
        features = sd3.encode_text(["a red dog", "a cat"])
        hidden, pooled = sd3.split_features(features)
        expected = sd3.transformer(
            hidden_states=noisy, timestep=t * 1000, encoder_hidden_states=hidden, pooled_projections=pooled
        ).sample
        ours = sd3.denoise(noisy, t, features)  # (2, 4, 16, 16)
        assert ours.shape == noisy.shape and torch.equal(ours, expected)
        other = features.clone()
        other[:, -1, :POOLED] += 1.0  # the pooled row reaches the transformer
        assert not torch.allclose(sd3.denoise(noisy, t, other), ours)


# ---------------------------------------------------------------- DreamDistribution
def test_dreamdistribution_trains_joint_tokens_through_three_encoders(dd_run, sd3):
    artifact = load_artifact(dd_run)
    assert artifact.meta["backbone"]["family"] == "sd3"
    assert artifact.tensors["vectors"].shape == (1, 3, 2, CLIP_L + CLIP_G + T5)  # one joint vector per token
    hidden = artifact_features(sd3, artifact, "", "", 0)  # (3, 94, 80)
    assert hidden.shape == (3, ROWS, T5)
    assert float(hidden[:, -1, :POOLED].std(dim=0).min()) > 0  # the pooled vector varies over the K prompts
    assert float(hidden[:, 77:-1].std(dim=0).max()) > 0  # so does the T5 sequence
    edited = artifact_features(sd3, artifact, "", "at night", 0)  # a text edit changes the features
    assert not torch.allclose(edited, hidden)


def test_plain_sd3_pipeline_draws_the_same_image_from_the_same_embeddings(dd_run, sd3, sd3_model, tmp_path):
    """dreamdist's images equal StableDiffusion3Pipeline's for the same prompt embeddings, guidance and seed."""
    ours = gen(tmp_path / "gen", dd_run, num_images=1, sampler="gaussian", gamma=0.0)[0]
    artifact = load_artifact(dd_run)
    features = artifact_stats(sd3, artifact, "", "", 0)[0][None]  # gamma 0: the mean, (1, 94, 80)
    embeds, pooled = sd3.split_features(features)
    pipe = StableDiffusion3Pipeline.from_pretrained(str(sd3_model))
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(3)
    torch.randn(features.shape[1:], generator=generator)  # the image's generator first draws its prompt (omega)
    image = pipe(  # the pipeline encodes the empty negative prompt itself
        prompt_embeds=embeds,
        pooled_prompt_embeds=pooled,
        guidance_scale=3.0,
        max_sequence_length=LENGTH,
        num_inference_steps=2,
        height=32,
        width=32,
        generator=generator,
    ).images[0]
    assert np.abs(np.asarray(image, dtype=np.int16) - ours).max() <= 1
    unguided = gen(tmp_path / "unguided", dd_run, num_images=1, sampler="gaussian", gamma=0.0, guidance_scale=1.0)[0]
    assert np.abs(unguided - ours).max() > 0  # guidance changes the image


def test_img2img_draws_the_plain_pipelines_image(dd_run, sd3, sd3_model, tmp_path):
    """--pipeline img2img: image 0 equals StableDiffusion3Img2ImgPipeline's for the same embeddings and
    generator, at batch 1 and 2."""
    inputs = write_images(tmp_path / "inputs", 1, size=(32, 32))
    files = {"pipeline": "img2img", "init_image": str(inputs / "img_00.png"), "strength": 0.5}
    together = gen(tmp_path / "b2", dd_run, num_images=2, batch_size=2, **files)
    alone = gen(tmp_path / "b1", dd_run, num_images=1, batch_size=1, **files)[0]
    assert np.abs(together[0] - alone).max() <= 1
    config = GenerateConfig(out=str(tmp_path / "x"), artifacts=[str(dd_run)], seed=3, guidance_scale=3.0)
    generator = torch.Generator().manual_seed(3)
    features, _ = sampler_for(sd3, [load_artifact(dd_run)], config)(0, generator)  # (94, 80), omega drawn
    embeds, pooled = sd3.split_features(features[None])
    pipe = sd3.pipeline_class("img2img").from_pretrained(str(sd3_model))
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        prompt_embeds=embeds,
        pooled_prompt_embeds=pooled,
        guidance_scale=3.0,
        max_sequence_length=LENGTH,
        num_inference_steps=2,
        generator=[generator],
        image=[Image.open(inputs / "img_00.png").convert("RGB")],
        strength=0.5,
    ).images[0]
    assert np.abs(np.asarray(image, dtype=np.int16) - alone).max() <= 1


def test_dreamdistribution_generates_the_same_images_whatever_the_batch_size(dd_run, tmp_path):
    together = gen(tmp_path / "a", dd_run, batch_size=3)
    alone = gen(tmp_path / "b", dd_run, batch_size=1)
    for x, y in zip(together, alone):
        assert np.abs(x - y).max() <= 1
    assert np.abs(together[0] - together[1]).max() > 0  # different seeds, different samples
    edited = gen(tmp_path / "c", dd_run, num_images=1, suffix="at night")[0]
    assert np.abs(edited - together[0]).max() > 0  # --suffix edits the prompt


def test_a_mix_of_two_sd3_runs_generates(dd_run, tmp_path):
    for sampler in ("gaussian", "mixture"):
        images = gen(
            tmp_path / sampler, dd_run, artifacts=[str(dd_run), str(dd_run)], weights=[0.5, 0.5], sampler=sampler
        )
        assert len(images) == 3


def test_sd3_without_t5_encodes_trains_and_generates(sd3_no_t5_model, refs, tmp_path):
    sd3 = Backbone.from_pretrained(sd3_no_t5_model, device="cpu")
    assert sd3.text_encoder_3 is None and list(sd3.named_text_encoders) == ["text_encoder", "text_encoder_2"]
    assert sd3.token_dim == CLIP_L + CLIP_G and sd3.prompt_template(2).t5 is None
    pipe = StableDiffusion3Pipeline.from_pretrained(str(sd3_no_t5_model), text_encoder_3=None, tokenizer_3=None)
    assert pipe.text_encoder_3 is None
    with torch.no_grad():
        features = sd3.encode_text(["a red dog"])
        embeds, _, pooled, _ = encode_with_pipeline(pipe, ["a red dog"])
    assert torch.equal(sd3.split_features(features)[0], embeds) and torch.equal(sd3.split_features(features)[1], pooled)
    assert torch.all(features[:, 77:-1] == 0)  # the T5 rows are zeros, as the pipeline makes them
    run = dd_train(refs, sd3_no_t5_model, tmp_path / "run")
    assert load_artifact(run).tensors["vectors"].shape[-1] == CLIP_L + CLIP_G
    images = gen(tmp_path / "gen", run, num_images=2, suffix="at night")
    assert len(images) == 2 and images[0].shape == (32, 32, 3)


# ---------------------------------------------------------------- doors
@pytest.mark.parametrize("method", ["textual-inversion", "dreambooth"])
def test_other_methods_are_refused_by_name_on_sd3(method, refs, sd3_model, tmp_path):
    config = TrainConfig(images=str(refs), out=str(tmp_path / "run"), model=str(sd3_model), method=method, steps=1)
    with pytest.raises(ValueError, match=f"{method} is not available on SD3 backbones.*dreamdistribution"):
        train(config, example_config(method))


@pytest.mark.parametrize("kind", ["inpaint", "controlnet"])
def test_sd3_inpaint_and_controlnet_pipelines_are_refused_by_name(kind, sd3):
    with pytest.raises(ValueError, match=f"--pipeline {kind} does not exist for SD3"):
        sd3.check_pipeline(kind)


def test_sd_and_flux_artifacts_are_refused_on_sd3_by_family_name(dd_run, sd3, tiny_model, tmp_path):
    sd = Backbone.from_pretrained(tiny_model, device="cpu")
    with pytest.raises(BackboneMismatchError, match="SD 1.x/2.x backbone.*SD3 backbone"):
        sd3.check_compatible(sd.identity(), sd.probe_rows(), "run")
    flux = Backbone.from_pretrained(save_tiny_flux_pipeline(tmp_path / "flux"), device="cpu")
    with pytest.raises(BackboneMismatchError, match="Flux.1 backbone.*SD3 backbone"):
        sd3.check_compatible(flux.identity(), flux.probe_rows(), "run")
    artifact = load_artifact(dd_run)
    with pytest.raises(BackboneMismatchError, match="SD3 backbone.*Flux.1 backbone"):
        flux.check_compatible(artifact.meta["backbone"], artifact.tensors["backbone.probe"], "run")
    with pytest.raises(BackboneMismatchError, match="--model"):
        generate(GenerateConfig(out=str(tmp_path / "g"), artifacts=[str(dd_run)], model=str(tiny_model)))
