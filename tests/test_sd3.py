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
from safetensors import safe_open
from safetensors.torch import load_file

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
from dreamdist.methods.textual_inversion import load_token_file
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
@pytest.mark.parametrize(
    "method, why", [("custom-diffusion", "no separate cross-attention"), ("two-stage", "SD's UNet only")]
)
def test_other_methods_are_refused_by_name_and_reason_on_sd3(method, why, refs, sd3_model, tmp_path):
    config = TrainConfig(images=str(refs), out=str(tmp_path / "run"), model=str(sd3_model), method=method, steps=1)
    pattern = f"{method} is not available on SD3 backbones \\(.*{why}.*\\).*dreamdistribution, textual-inversion"
    with pytest.raises(ValueError, match=pattern):
        train(config, example_config(method))


@pytest.mark.parametrize("kind", ["inpaint", "controlnet"])
def test_sd3_inpaint_and_controlnet_pipelines_are_refused_by_name(kind, sd3):
    with pytest.raises(ValueError, match=f"--pipeline {kind} does not exist for SD3"):
        sd3.check_pipeline(kind)


def test_sd_and_flux_artifacts_are_refused_on_sd3_by_family_name(dd_run, sd3, tiny_model, tmp_path):
    sd = Backbone.from_pretrained(tiny_model, device="cpu")
    with pytest.raises(BackboneMismatchError, match="on an SD 1.x/2.x backbone.*is an SD3 backbone"):
        sd3.check_compatible(sd.identity(), sd.probe_rows(), "run")
    flux = Backbone.from_pretrained(save_tiny_flux_pipeline(tmp_path / "flux"), device="cpu")
    with pytest.raises(BackboneMismatchError, match="on a Flux.1 backbone.*is an SD3 backbone"):
        sd3.check_compatible(flux.identity(), flux.probe_rows(), "run")
    artifact = load_artifact(dd_run)
    with pytest.raises(BackboneMismatchError, match="on an SD3 backbone.*is a Flux.1 backbone"):
        flux.check_compatible(artifact.meta["backbone"], artifact.tensors["backbone.probe"], "run")
    with pytest.raises(BackboneMismatchError, match="--model"):
        generate(GenerateConfig(out=str(tmp_path / "g"), artifacts=[str(dd_run)], model=str(tiny_model)))


# ---------------------------------------------------------------- Textual Inversion, DreamBooth(-LoRA)
@pytest.fixture(scope="module", params=[True, False], ids=["t5", "no_t5"])
def any_sd3_model(request, sd3_model, sd3_no_t5_model):
    return sd3_model if request.param else sd3_no_t5_model


def run_method(refs, model, out, method: str, steps: int = 2, learning_rate=None, **options):
    config = TrainConfig(
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
    return train(config, example_config(method, **options))


def plain_pipe(model) -> StableDiffusion3Pipeline:
    no_t5 = {} if (model / "text_encoder_3").is_dir() else {"text_encoder_3": None, "tokenizer_3": None}
    pipe = StableDiffusion3Pipeline.from_pretrained(str(model), **no_t5)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipe_image(pipe, prompt: str, seed: int = 3) -> np.ndarray:
    """A plain StableDiffusion3Pipeline image with dreamdist's generation settings in ``gen``."""
    image = pipe(
        prompt,
        negative_prompt="",
        guidance_scale=3.0,
        max_sequence_length=LENGTH,
        num_inference_steps=2,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(seed),
    ).images[0]
    return np.asarray(image, dtype=np.int16)


def test_joint_ids_encode_as_the_text_and_splice_placeholders_into_every_encoder(any_sd3_model):
    sd3 = Backbone.from_pretrained(any_sd3_model, device="cpu")  # its own copy: tokens are added below
    t5 = sd3.text_encoder_3 is not None
    ids = sd3.tokenize(["a red dog"])  # (1, 77 + 77 [+ 16]): CLIP-L's, CLIP-G's, T5's
    assert ids.shape == (1, 154 + (LENGTH if t5 else 0)) and int(sd3.eos_positions(ids)[0]) == 4
    assert ids[0, 76] != ids[0, 153]  # CLIP-G pads with its own token
    with torch.no_grad():
        assert torch.allclose(sd3.encode_ids(ids), sd3.encode_text(["a red dog"]), atol=1e-6)
    token_ids = sd3.add_tokens(["<p>"])  # (1,) CLIP id, the same in both CLIP tokenizers; T5 has its own
    assert sd3.tokenizer_2.convert_tokens_to_ids("<p>") == int(token_ids[0])
    assert len(sd3.tokenizer_2) == sd3.text_encoder_2.get_input_embeddings().num_embeddings
    if t5:
        assert "<p>" in sd3.tokenizer_3.get_vocab() and len(sd3.tokenizer_3) == sd3.text_encoder_3.shared.num_embeddings
    vectors = torch.randn(1, sd3.token_dim, requires_grad=True)
    prompt = sd3.tokenize(["a <p> dog"])
    features, _ = sd3.encode_prompt_embeds(sd3.splice_tokens(prompt, token_ids, vectors), sd3.eos_positions(prompt))
    features.square().sum().backward()
    for part in vectors.grad.split(sd3.token_widths, dim=-1):  # every encoder's part is trained
        assert float(part.abs().sum()) > 0
    sd3.set_token_rows(token_ids, vectors.detach())
    assert torch.equal(sd3.token_rows(token_ids), vectors.detach())  # every row, found by the CLIP id
    with torch.no_grad():
        assert torch.allclose(sd3.encode_text(["a <p> dog"]), features, atol=1e-6)  # the tables say the same


def test_textual_inversion_file_holds_every_encoders_rows_and_loads_into_a_plain_sd3_pipeline(
    refs, any_sd3_model, tmp_path
):
    token = "<sd3-toy>"
    options = dict(learning_rate=0.5, init_word="toy", token=token, num_vectors=2)
    run = run_method(refs, any_sd3_model, tmp_path / "run", "textual-inversion", **options)
    backbone = Backbone.from_pretrained(any_sd3_model, device="cpu")
    keys = ["clip_l", "clip_g", "t5"][: len(backbone.text_encoders)]
    learned = load_artifact(run).tensors["token_embeds"]  # (2, d_tok): CLIP-L, CLIP-G [, T5] rows per vector
    init = backbone.word_row("toy", "--init-word")  # (d_tok,)
    assert learned.shape == (2, backbone.token_dim)
    for part, start in zip(learned.split(backbone.token_widths, -1), init.split(backbone.token_widths, -1)):
        assert not torch.allclose(part, start)  # every encoder's part moved
    path = run / "learned_embeds.safetensors"
    state = load_file(str(path))
    assert sorted(state) == sorted(keys)
    assert torch.equal(torch.cat([state[key] for key in keys], -1), learned)
    with safe_open(str(path), framework="pt") as handle:
        about = json.loads(handle.metadata()["dreamdist_textual_inversion"])
    assert about["token"] == token and about["family"] == "sd3"
    assert about["encoders"] == dict(zip(keys, ["text_encoder", "text_encoder_2", "text_encoder_3"]))
    pipe = plain_pipe(any_sd3_model)
    before = pipe_image(pipe, "a photo of toy")
    names = load_token_file(pipe, run)
    assert names == [token, f"{token}_1"]
    for key, name in about["encoders"].items():
        tokenizer = pipe.components[name.replace("text_encoder", "tokenizer")]
        rows = pipe.components[name].get_input_embeddings().weight[tokenizer.convert_tokens_to_ids(names)]
        assert torch.equal(rows, state[key])
    after = pipe_image(pipe, f"a photo of {' '.join(names)}")  # the plain pipeline expands no prompt
    assert np.abs(after - before).max() > 0  # the learned token changes the image
    ours = gen(tmp_path / "gen", run, prompt="a photo of {}", num_images=1)[0]  # dreamdist's own generation
    assert np.abs(ours - after).max() <= 1


def test_dreambooth_lora_loads_with_load_lora_weights(refs, any_sd3_model, tmp_path):
    options = dict(learning_rate=1e-2, class_noun="dog", lora=True, class_images=2, class_inference_steps=1)
    run = run_method(refs, any_sd3_model, tmp_path / "run", "dreambooth", **options)
    assert len(list((run / "class_images").glob("*.png"))) == 2  # prior preservation ran (the default)
    keys = load_file(str(run / "pytorch_lora_weights.safetensors"))
    assert all(key.startswith("transformer.") for key in keys)
    adapted = {key.split(".lora_")[0].split(".attn.")[-1] for key in keys}  # peft's names, as diffusers' script
    assert adapted == {"to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}
    pipe = plain_pipe(any_sd3_model)
    before = pipe_image(pipe, "a sks dog")
    pipe.load_lora_weights(str(run))
    after = pipe_image(pipe, "a sks dog")
    assert np.abs(after - before).max() > 0
    ours = gen(tmp_path / "gen", run, prompt="a {}", num_images=1)[0]
    assert np.abs(ours - after).max() <= 1


def test_dreambooth_without_prior_trains_lora_and_full_weights(refs, sd3_model, tmp_path):
    lora = run_method(
        refs, sd3_model, tmp_path / "lora", "dreambooth", learning_rate=1e-2, lora=True, prior_preservation=False
    )
    assert not (lora / "class_images").exists() and (lora / "pytorch_lora_weights.safetensors").is_file()
    full = run_method(refs, sd3_model, tmp_path / "full", "dreambooth", learning_rate=1e-3, prior_preservation=False)
    ours = gen(tmp_path / "gen", full, prompt="a {}", num_images=1)[0]
    saved = pipe_image(plain_pipe(full / "pipeline"), "a sks dog")  # the fine-tuned StableDiffusion3Pipeline folder
    assert np.abs(ours - saved).max() <= 1
    assert np.abs(saved - pipe_image(plain_pipe(sd3_model), "a sks dog")).max() > 0


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(lora=True, export="kohya"), "--export kohya: dreamdist has no kohya LoRA format for SD3.*load_lora"),
        (dict(lora=True, train_text_encoder=True), "SD3 text encoders \\['text_encoder_3'\\] have no LoRA"),
    ],
)
def test_dreambooth_options_without_an_sd3_file_format_are_refused(options, message, refs, sd3_model, tmp_path):
    with pytest.raises(ValueError, match=message):
        run_method(refs, sd3_model, tmp_path / "run", "dreambooth", prior_preservation=False, **options)


def test_dreambooth_lora_trains_the_clip_encoders_without_t5_and_loads_with_load_lora_weights(
    refs, sd3_no_t5_model, tmp_path
):
    options = dict(learning_rate=1e-2, lora=True, train_text_encoder=True, prior_preservation=False)
    run = run_method(refs, sd3_no_t5_model, tmp_path / "run", "dreambooth", **options)
    keys = load_file(str(run / "pytorch_lora_weights.safetensors"))
    assert {key.split(".")[0] for key in keys} == {"transformer", "text_encoder", "text_encoder_2"}
    pipe = plain_pipe(sd3_no_t5_model)
    pipe.load_lora_weights(str(run))
    after = pipe_image(pipe, "a sks dog")
    ours = gen(tmp_path / "gen", run, prompt="a {}", num_images=1)[0]
    assert np.abs(ours - after).max() <= 1
