"""Flux.1: tiny random FluxPipeline folders (dev-shaped with a guidance embedding, schnell-shaped
without), DreamDistribution trained for a few steps, saved, generated, checked against the plain
diffusers pipeline; the flow-matching noise process; the family's doors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from dreamdist.artifact import load_artifact
from dreamdist.backbones import Backbone, BackboneMismatchError, FluxBackbone, detect_family
from dreamdist.backbones.noise import FlowMatchNoise
from dreamdist.config import GenerateConfig, TrainConfig
from dreamdist.generation import generate
from dreamdist.methods.dreamdistribution import artifact_features, artifact_stats
from dreamdist.methods.textual_inversion import load_token_file
from dreamdist.prompt_distribution import PromptTemplate, encode_prompts
from dreamdist.testing import example_config, save_tiny_flux_pipeline, write_images
from dreamdist.training.loop import train

CLIP, T5, LENGTH = 32, 48, 16  # the tiny encoders' widths and the T5 length (dreamdist.testing)


@pytest.fixture(scope="module", params=[False, True], ids=["schnell", "dev"])
def flux_model(request, tmp_path_factory):
    return save_tiny_flux_pipeline(tmp_path_factory.mktemp("tiny_flux"), guidance_embeds=request.param)


@pytest.fixture(scope="module")
def flux(flux_model):
    return Backbone.from_pretrained(flux_model, device="cpu")


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("flux_refs") / "refs", 4)


@pytest.fixture(scope="module")
def dd_run(refs, flux_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("flux_dd") / "run"
    config = TrainConfig(
        images=str(refs),
        out=str(out),
        model=str(flux_model),
        method="dreamdistribution",
        steps=2,
        batch_size=2,
        progress=False,
        checkpoint_every=0,
    )
    return train(config, example_config("dreamdistribution", num_prompts=3, num_tokens=2, num_samples=2))


def gen(out, run, **kw) -> list[np.ndarray]:
    base = dict(out=str(out), artifacts=[str(run)], num_images=3, num_inference_steps=2, progress=False, seed=3)
    base["guidance_scale"] = 3.0  # true CFG on schnell-shaped models, the guidance embedding on dev-shaped ones
    return [np.asarray(im, dtype=np.int16) for im in generate(GenerateConfig(**{**base, **kw})).images]


# ---------------------------------------------------------------- noise process
def test_flow_matching_noise_interpolates_and_shifts_its_density():
    latents, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([0.0, 0.25, 1.0])
    process = FlowMatchNoise(shift=3.0)
    noisy = process.add_noise(latents, noise, t)
    assert torch.allclose(noisy[0], latents[0]) and torch.allclose(noisy[2], noise[2])
    assert torch.allclose(noisy[1], 0.75 * latents[1] + 0.25 * noise[1])
    assert torch.equal(process.target(latents, noise, t), noise - latents)
    assert math.isclose(float(process.shifted(torch.tensor(0.5))), 0.75, rel_tol=1e-6)  # 3 * .5 / (1 + 2 * .5)
    plain = FlowMatchNoise(shift=1.0).sample_timesteps(4000, (0.0, 1.0), torch.Generator().manual_seed(0))
    shifted = process.sample_timesteps(4000, (0.0, 1.0), torch.Generator().manual_seed(0))
    assert float(plain.min()) > 0 and float(plain.max()) < 1 and abs(float(plain.mean()) - 0.5) < 0.02
    assert torch.allclose(shifted, process.shifted(plain)) and float(shifted.mean()) > 0.6  # towards noise
    narrow = FlowMatchNoise().sample_timesteps(1000, (0.2, 0.6), torch.Generator().manual_seed(0))
    assert float(narrow.min()) >= 0.2 and float(narrow.max()) < 0.6


# ---------------------------------------------------------------- backbone
def test_flux_folder_is_detected_and_encodes_as_the_pipeline_does(flux, flux_model):
    assert detect_family(str(flux_model)) == "flux" and isinstance(flux, FluxBackbone)
    assert flux.identity()["family"] == "flux" and flux.prediction_type == "flow_matching"
    assert flux.token_dim == CLIP + T5 and flux.max_sequence_length == LENGTH
    texts = ["a red dog", "a photo of a cat at night"]
    pipe = FluxPipeline.from_pretrained(str(flux_model))
    with torch.no_grad():
        features = flux.encode_text(texts)  # (2, 17, 48): 16 T5 rows + the pooled row
        embeds, pooled, _ = pipe.encode_prompt(texts, prompt_2=None, device="cpu", max_sequence_length=LENGTH)
    hidden, ours = flux.split_features(features)
    assert features.shape == (2, LENGTH + 1, T5) and torch.all(features[:, -1, CLIP:] == 0)
    assert torch.allclose(hidden, embeds, atol=1e-6) and torch.allclose(ours, pooled, atol=1e-6)
    # soft tokens: the joint vector of 'red' (CLIP row + T5 row) in the slot gives the text's features
    template = PromptTemplate.build(flux, 1, "a", "dog")
    clip_red = flux.text_encoder.get_input_embeddings().weight[flux.tokenizer.encode("red", add_special_tokens=False)]
    t5_red = flux.text_encoder_2.get_input_embeddings().weight[flux.tokenizer_2.encode("red", add_special_tokens=False)]
    vector = torch.cat([clip_red, t5_red], dim=-1)[None]  # (1, 1, 80)
    with torch.no_grad():
        soft, soft_pooled = encode_prompts(flux, vector, template)
    assert torch.allclose(soft[0], features[0], atol=1e-5) and torch.allclose(soft_pooled[0], pooled[0], atol=1e-5)


def test_denoise_packs_latents_and_passes_the_guidance_embedding(flux):
    generator = torch.Generator().manual_seed(0)
    noisy, t = torch.randn(2, 4, 16, 16, generator=generator), torch.tensor([0.2, 0.9])
    with torch.no_grad():
        features = flux.encode_text(["a red dog", "a cat"])
        hidden, pooled = flux.split_features(features)
        packed = FluxPipeline._pack_latents(noisy, 2, 4, 16, 16)  # (2, 64, 16)
        guidance = torch.full((2,), 3.5) if flux.guidance_embeds else None
        expected = flux.transformer(
            hidden_states=packed,
            timestep=t,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=hidden,
            txt_ids=torch.zeros(LENGTH, 3),
            img_ids=FluxPipeline._prepare_latent_image_ids(2, 8, 8, "cpu", torch.float32),
            return_dict=False,
        )[0]
        ours = flux.denoise(noisy, t, features)  # (2, 4, 16, 16)
        assert ours.shape == noisy.shape
        assert torch.equal(FluxPipeline._pack_latents(ours, 2, 4, 16, 16), expected)
        other = features.clone()
        other[:, -1, :CLIP] += 1.0  # the pooled row reaches the transformer
        assert not torch.allclose(flux.denoise(noisy, t, other), ours)


# ---------------------------------------------------------------- DreamDistribution
def test_dreamdistribution_trains_joint_tokens_and_a_pooled_distribution(dd_run, flux):
    artifact = load_artifact(dd_run)
    assert artifact.meta["backbone"]["family"] == "flux"
    assert artifact.tensors["vectors"].shape == (1, 3, 2, CLIP + T5)  # one joint vector per learned token
    hidden = artifact_features(flux, artifact, "", "", 0)  # (3, 17, 48)
    assert hidden.shape == (3, LENGTH + 1, T5)
    assert float(hidden[:, -1, :CLIP].std(dim=0).min()) > 0  # the pooled vector varies over the K prompts
    edited = artifact_features(flux, artifact, "", "at night", 0)  # a text edit changes the features
    assert not torch.allclose(edited, hidden)


def test_plain_flux_pipeline_draws_the_same_image_from_the_same_embeddings(dd_run, flux, flux_model, tmp_path):
    """dreamdist's images equal FluxPipeline's for the same prompt embeddings, guidance and seed."""
    ours = gen(tmp_path / "gen", dd_run, num_images=1, sampler="gaussian", gamma=0.0)[0]
    artifact = load_artifact(dd_run)
    features = artifact_stats(flux, artifact, "", "", 0)[0][None]  # gamma 0: the (weighted) mean, (1, 17, 48)
    embeds, pooled = flux.split_features(features)
    pipe = FluxPipeline.from_pretrained(str(flux_model))
    pipe.set_progress_bar_config(disable=True)
    guidance = {"guidance_scale": 3.0}
    if not flux.guidance_embeds:  # true CFG against the empty prompt's embeddings
        negative, negative_pooled, _ = pipe.encode_prompt([""], prompt_2=None, device="cpu", max_sequence_length=LENGTH)
        guidance = dict(
            true_cfg_scale=3.0, negative_prompt_embeds=negative, negative_pooled_prompt_embeds=negative_pooled
        )
    generator = torch.Generator().manual_seed(3)
    torch.randn(features.shape[1:], generator=generator)  # the image's generator first draws its prompt (omega)
    image = pipe(
        prompt_embeds=embeds,
        pooled_prompt_embeds=pooled,
        **guidance,
        num_inference_steps=2,
        height=32,
        width=32,
        generator=generator,
    ).images[0]
    assert np.abs(np.asarray(image, dtype=np.int16) - ours).max() <= 1
    unguided = gen(tmp_path / "unguided", dd_run, num_images=1, sampler="gaussian", gamma=0.0, guidance_scale=1.0)[0]
    assert np.abs(unguided - ours).max() > 0  # guidance changes the image


def test_dreamdistribution_generates_the_same_images_whatever_the_batch_size(dd_run, tmp_path):
    together = gen(tmp_path / "a", dd_run, batch_size=3)
    alone = gen(tmp_path / "b", dd_run, batch_size=1)
    for x, y in zip(together, alone):
        assert np.abs(x - y).max() <= 1
    assert np.abs(together[0] - together[1]).max() > 0  # different seeds, different samples
    edited = gen(tmp_path / "c", dd_run, num_images=1, suffix="at night")[0]
    assert np.abs(edited - together[0]).max() > 0  # --suffix edits the prompt


def test_a_mix_of_two_flux_runs_generates(dd_run, tmp_path):
    for sampler in ("gaussian", "mixture"):
        images = gen(
            tmp_path / sampler, dd_run, artifacts=[str(dd_run), str(dd_run)], weights=[0.5, 0.5], sampler=sampler
        )
        assert len(images) == 3


# ---------------------------------------------------------------- doors
@pytest.mark.parametrize(
    "method, why", [("custom-diffusion", "no separate cross-attention"), ("two-stage", "SD's UNet only")]
)
def test_other_methods_are_refused_by_name_and_reason_on_flux(method, why, refs, flux_model, tmp_path):
    config = TrainConfig(images=str(refs), out=str(tmp_path / "run"), model=str(flux_model), method=method, steps=1)
    pattern = f"{method} is not available on Flux.1 backbones \\(.*{why}.*\\).*dreamdistribution, textual-inversion"
    with pytest.raises(ValueError, match=pattern):
        train(config, example_config(method))


def test_flux_controlnet_pipeline_is_refused_by_name(flux):
    with pytest.raises(ValueError, match="--pipeline controlnet does not exist for Flux.1"):
        flux.check_pipeline("controlnet")


def test_artifacts_refuse_the_other_backbone_family(dd_run, flux, tiny_model, tmp_path):
    sd = Backbone.from_pretrained(tiny_model, device="cpu")
    with pytest.raises(BackboneMismatchError, match="on an SD 1.x/2.x backbone.*is a Flux.1 backbone"):
        flux.check_compatible(sd.identity(), sd.probe_rows(), "run")
    artifact = load_artifact(dd_run)
    with pytest.raises(BackboneMismatchError, match="on a Flux.1 backbone.*is an SD 1.x/2.x backbone"):
        sd.check_compatible(artifact.meta["backbone"], artifact.tensors["backbone.probe"], "run")
    with pytest.raises(BackboneMismatchError, match="--model"):
        generate(GenerateConfig(out=str(tmp_path / "g"), artifacts=[str(dd_run)], model=str(tiny_model)))


def test_a_component_folder_or_a_folder_of_images_is_not_taken_for_a_pipeline(flux_model, refs):
    # a Flux pipeline's transformer/ folder was read as an SD checkpoint ("no file named model.safetensors")
    with pytest.raises(OSError, match=r"one pipeline component \(FluxTransformer2DModel\).*model_index.json"):
        detect_family(str(flux_model / "transformer"))
    with pytest.raises(OSError, match="not a diffusers pipeline folder"):
        Backbone.from_pretrained(refs, device="cpu")


# ---------------------------------------------------------------- Textual Inversion, DreamBooth(-LoRA)
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


def plain_pipe(model) -> FluxPipeline:
    pipe = FluxPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipe_image(pipe, prompt: str, seed: int = 3) -> np.ndarray:
    """A plain FluxPipeline image with dreamdist's generation settings in ``gen`` (guidance 3, 2 steps)."""
    embedded = bool(pipe.transformer.config.guidance_embeds)
    guidance = {"guidance_scale": 3.0} if embedded else {"negative_prompt": "", "true_cfg_scale": 3.0}
    image = pipe(
        prompt,
        **guidance,
        max_sequence_length=LENGTH,
        num_inference_steps=2,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(seed),
    ).images[0]
    return np.asarray(image, dtype=np.int16)


def test_joint_ids_encode_as_the_pipeline_and_splice_placeholders_into_both_encoders(flux_model):
    flux = Backbone.from_pretrained(flux_model, device="cpu")  # its own copy: tokens are added below
    ids = flux.tokenize(["a red dog"])  # (1, 77 + 16): CLIP's ids, then T5's
    assert ids.shape == (1, 77 + LENGTH) and int(flux.eos_positions(ids)[0]) == 4  # BOS a red dog EOS
    token_ids = flux.add_tokens(["<p>"])  # (1,) CLIP id; T5 has it too
    assert "<p>" in flux.tokenizer_2.get_vocab() and len(flux.tokenizer_2) == flux.text_encoder_2.shared.num_embeddings
    vectors = torch.randn(1, CLIP + T5, requires_grad=True)
    embeds = flux.splice_tokens(flux.tokenize(["a <p> dog"]), token_ids, vectors)  # (1, 93, 80)
    features, _ = flux.encode_prompt_embeds(embeds, flux.eos_positions(flux.tokenize(["a <p> dog"])))
    features.square().sum().backward()
    assert float(vectors.grad[0, :CLIP].abs().sum()) > 0 and float(vectors.grad[0, CLIP:].abs().sum()) > 0
    flux.set_token_rows(token_ids, vectors.detach())
    assert torch.equal(flux.token_rows(token_ids), vectors.detach())  # both rows, found by the CLIP id
    with torch.no_grad():
        assert torch.allclose(flux.encode_text(["a <p> dog"]), features, atol=1e-6)  # the tables say the same


def test_textual_inversion_file_holds_clip_and_t5_rows_and_loads_into_a_plain_flux_pipeline(refs, flux_model, tmp_path):
    token = "<flux-toy>"
    options = dict(learning_rate=0.5, init_word="toy", token=token, num_vectors=2)
    run = run_method(refs, flux_model, tmp_path / "run", "textual-inversion", **options)
    learned = load_artifact(run).tensors["token_embeds"]  # (2, 80): CLIP row + T5 row per vector
    init = Backbone.from_pretrained(flux_model, device="cpu").word_row("toy", "--init-word")  # (80,)
    assert learned.shape == (2, CLIP + T5)
    assert not torch.allclose(learned[:, :CLIP], init[:CLIP]) and not torch.allclose(learned[:, CLIP:], init[CLIP:])
    path = run / "learned_embeds.safetensors"
    state = load_file(str(path))
    assert set(state) == {"clip_l", "t5"}  # the pivotal-tuning scripts' layout
    assert torch.equal(torch.cat([state["clip_l"], state["t5"]], -1), learned)
    with safe_open(str(path), framework="pt") as handle:
        about = json.loads(handle.metadata()["dreamdist_textual_inversion"])
    assert about["token"] == token and about["family"] == "flux"
    assert about["encoders"] == {"clip_l": "text_encoder", "t5": "text_encoder_2"}
    pipe = plain_pipe(flux_model)
    before = pipe_image(pipe, "a photo of toy")
    assert load_token_file(pipe, run) == [token, f"{token}_1"]
    for tokenizer, encoder, part in (
        (pipe.tokenizer, pipe.text_encoder, "clip_l"),
        (pipe.tokenizer_2, pipe.text_encoder_2, "t5"),
    ):
        rows = encoder.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids([token, f"{token}_1"])]
        assert torch.equal(rows, state[part])
    after = pipe_image(pipe, f"a photo of {token}")
    assert np.abs(after - before).max() > 0  # the learned token changes the image
    ours = gen(tmp_path / "gen", run, prompt="a photo of {}", num_images=1)[0]  # dreamdist's own generation
    assert np.abs(ours - after).max() <= 1


def test_dreambooth_lora_loads_with_load_lora_weights(refs, flux_model, tmp_path):
    options = dict(learning_rate=1e-2, class_noun="dog", lora=True, class_images=2, class_inference_steps=1)
    run = run_method(refs, flux_model, tmp_path / "run", "dreambooth", **options)
    assert len(list((run / "class_images").glob("*.png"))) == 2  # prior preservation ran (the default)
    keys = load_file(str(run / "pytorch_lora_weights.safetensors"))
    assert all(key.startswith("transformer.") for key in keys)
    adapted = {key.split(".lora_")[0].split(".attn.")[-1] for key in keys}  # peft's names, as diffusers' script
    assert adapted == {"to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}
    pipe = plain_pipe(flux_model)
    before = pipe_image(pipe, "a sks dog")
    pipe.load_lora_weights(str(run))
    after = pipe_image(pipe, "a sks dog")
    assert np.abs(after - before).max() > 0
    ours = gen(tmp_path / "gen", run, prompt="a {}", num_images=1)[0]
    assert np.abs(ours - after).max() <= 1


def test_dreambooth_without_prior_trains_lora_and_full_weights(refs, flux_model, tmp_path):
    lora = run_method(
        refs, flux_model, tmp_path / "lora", "dreambooth", learning_rate=1e-2, lora=True, prior_preservation=False
    )
    assert not (lora / "class_images").exists() and (lora / "pytorch_lora_weights.safetensors").is_file()
    full = run_method(refs, flux_model, tmp_path / "full", "dreambooth", learning_rate=1e-3, prior_preservation=False)
    ours = gen(tmp_path / "gen", full, prompt="a {}", num_images=1)[0]
    saved = pipe_image(plain_pipe(full / "pipeline"), "a sks dog")  # the fine-tuned FluxPipeline folder
    assert np.abs(ours - saved).max() <= 1
    assert np.abs(saved - pipe_image(plain_pipe(flux_model), "a sks dog")).max() > 0


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(lora=True, export="kohya"), "--export kohya: dreamdist has no kohya LoRA format for Flux.1.*load_lora"),
        (dict(lora=True, train_text_encoder=True), "text encoders \\['text_encoder', 'text_encoder_2'\\] have no LoRA"),
    ],
)
def test_dreambooth_options_without_a_flux_file_format_are_refused(options, message, refs, flux_model, tmp_path):
    with pytest.raises(ValueError, match=message):
        run_method(refs, flux_model, tmp_path / "run", "dreambooth", prior_preservation=False, **options)
