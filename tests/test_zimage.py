"""Z-Image: a tiny random ZImagePipeline folder built here (a byte-level BPE tokenizer with a Qwen-style chat
template, a tiny Qwen3 encoder, a tiny ZImageTransformer2DModel), detection next to the other families,
encoding as the pipeline encodes, DreamDistribution trained, saved, generated, checked against the plain
diffusers pipeline; the family's doors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model

from dreamdist.artifact import load_artifact
from dreamdist.backbones import FAMILIES, Backbone, BackboneMismatchError, detect_family, family_of_pipeline
from dreamdist.backbones.noise import FlowMatchNoise
from dreamdist.backbones.zimage import ZImageBackbone
from dreamdist.config import GenerateConfig, TrainConfig
from dreamdist.generation import generate
from dreamdist.methods.dreamdistribution import artifact_features, artifact_stats
from dreamdist.pipeline import make_pipeline
from dreamdist.prompt_distribution import PromptTemplate, encode_prompts
from dreamdist.testing import example_config, save_tiny_flux_pipeline, save_tiny_sd3_pipeline, write_images
from dreamdist.training.loop import train

WORDS = [
    "user",
    "assistant",
    "a",
    "photo",
    "of",
    "red",
    "blue",
    "dog",
    "cat",
    "at",
    "night",
    "in",
    "the",
    "snow",
    "toy",
]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
CHAT_TEMPLATE = (  # Qwen3's shape: user turns, then the assistant header; an empty think block without thinking
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)
WIDTH, LENGTH, SIDE = 48, 32, 32  # the LLM's hidden size (= cap_feat_dim), max_sequence_length, image side


def tiny_qwen_tokenizer() -> Qwen2Tokenizer:
    """A byte-level BPE tokenizer trained offline on WORDS, as a Qwen2Tokenizer with the chat template."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([" ".join(WORDS)] * 4 + WORDS, trainer)
    state = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=state["vocab"], merges=[tuple(m) for m in state["merges"]], additional_special_tokens=SPECIAL[1:]
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_zimage_pipeline(folder, seed: int = 0):
    """Tiny random Z-Image components as an ordinary ``ZImagePipeline`` folder with a ``dreamdist.json``."""
    tokenizer = tiny_qwen_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=WIDTH,
            intermediate_size=2 * WIDTH,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=12,
            max_position_embeddings=2 * LENGTH,
        )  # no pad_token_id, as Qwen3's: a zeroed padding row would spoil the embedding fingerprint
    )
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=4,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=WIDTH,
        axes_dims=[4, 6, 6],  # sums to the head width 32 / 2
        axes_lens=[256, 32, 32],
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=SIDE,
        scaling_factor=0.3611,  # Z-Image's (Flux's) VAE
        shift_factor=0.1159,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    pipe = ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    pipe.save_pretrained(folder / "pipeline", safe_serialization=True)
    defaults = {"height": SIDE, "width": SIDE, "max_sequence_length": LENGTH}
    (folder / "pipeline" / "dreamdist.json").write_text(json.dumps(defaults))
    return folder / "pipeline"


@pytest.fixture(scope="module")
def zimage_model(tmp_path_factory):
    return save_tiny_zimage_pipeline(tmp_path_factory.mktemp("tiny_zimage"))


@pytest.fixture(scope="module")
def zimage(zimage_model):
    return Backbone.from_pretrained(zimage_model, device="cpu")


@pytest.fixture(scope="module")
def plain_pipe(zimage_model):
    pipe = ZImagePipeline.from_pretrained(str(zimage_model))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("zimage_refs") / "refs", 4)


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
def dd_run(refs, zimage_model, tmp_path_factory):
    return dd_train(refs, zimage_model, tmp_path_factory.mktemp("zimage_dd") / "run")


def gen(out, run, **kw) -> list[np.ndarray]:
    base = dict(out=str(out), artifacts=[str(run)], num_images=3, num_inference_steps=2, progress=False, seed=3)
    base["guidance_scale"] = 2.0  # ZImagePipeline's convention: pos + 2 (pos - neg) against the empty prompt
    return [np.asarray(im, dtype=np.int16) for im in generate(GenerateConfig(**{**base, **kw})).images]


# ---------------------------------------------------------------- detection
def test_zimage_folders_are_detected_and_the_other_families_still_are(zimage_model, tiny_model, tmp_path):
    assert detect_family(str(zimage_model)) == "zimage" and ZImageBackbone in FAMILIES
    assert [f.name for f in FAMILIES].index("zimage") < [f.name for f in FAMILIES].index("sd")  # before the fallback
    flux, sd3 = save_tiny_flux_pipeline(tmp_path / "flux"), save_tiny_sd3_pipeline(tmp_path / "sd3")
    assert detect_family(str(flux)) == "flux" and detect_family(str(sd3)) == "sd3"
    assert detect_family(str(tiny_model)) == "sd"
    for other in (flux, sd3, tiny_model):
        assert not ZImageBackbone.recognises(json.loads((other / "model_index.json").read_text()), other)
    bare = tmp_path / "bare"  # no model_index.json: the transformer's config tells
    (bare / "transformer").mkdir(parents=True)
    (bare / "transformer" / "config.json").write_text(json.dumps({"_class_name": "ZImageTransformer2DModel"}))
    assert detect_family(str(bare)) == "zimage"
    img2img = tmp_path / "img2img"
    img2img.mkdir()
    (img2img / "model_index.json").write_text(json.dumps({"_class_name": "ZImageImg2ImgPipeline"}))
    assert detect_family(str(img2img)) == "zimage"


def test_from_pretrained_dispatches_to_zimage(zimage):
    assert type(zimage) is ZImageBackbone and zimage.family == "zimage" and zimage.denoiser is zimage.transformer
    assert list(zimage.named_text_encoders) == ["text_encoder"] and zimage.max_sequence_length == LENGTH
    assert zimage.token_dim == WIDTH and zimage.identity()["family"] == "zimage"
    assert isinstance(zimage.noise_process, FlowMatchNoise) and zimage.noise_process.shift == 3.0
    assert zimage.default_guidance == 5.0 and zimage.sample_size == SIDE
    assert family_of_pipeline(make_pipeline(zimage)) is ZImageBackbone


# ---------------------------------------------------------------- encoding
def test_plain_text_encodes_as_the_pipeline_does(zimage, plain_pipe):
    texts = ["a red dog", "a photo of a blue cat at night in the snow"]
    with torch.no_grad():
        features = zimage.encode_text(texts)  # (2, 32, 48): each sequence, then zero rows
        embeds, negative = plain_pipe.encode_prompt(list(texts), device="cpu", max_sequence_length=LENGTH)
    assert features.shape == (2, LENGTH, WIDTH)
    for ours, theirs in zip(features, embeds):
        assert torch.equal(ours[: len(theirs)], theirs) and torch.all(ours[len(theirs) :] == 0)
    assert len(embeds[0]) < len(embeds[1])  # the sequences have their own lengths
    assert [len(e) for e in zimage.caption_list(features)] == [len(e) for e in embeds]
    assert torch.equal(zimage.caption_list(zimage.negative_features("")[None])[0], negative[0])


def test_a_soft_prompt_holding_a_words_rows_is_that_text(zimage):
    template = PromptTemplate.build(zimage, 1, "a", "dog")
    red = zimage.tokenizer.encode(" red", add_special_tokens=False)
    assert len(red) == 1  # ' red' is one token ('Ġred'), as it is inside 'a red dog'
    vector = zimage.token_rows(torch.tensor(red))[None]  # (1, 1, 48)
    with torch.no_grad():
        features = zimage.encode_text(["a red dog"])
        soft, pooled = encode_prompts(zimage, vector, template)
    assert torch.allclose(soft, features, atol=1e-5)
    length = int(template.mask.sum())
    assert torch.allclose(pooled[0], features[0, length - 1], atol=1e-5)  # the last real position


def test_the_learned_tokens_change_only_the_positions_after_them(zimage):
    """The LLM is causal: the chat head before the slots is the same for every soft prompt."""
    template = PromptTemplate.build(zimage, 2, "a", "dog")
    vectors = torch.randn(2, 2, WIDTH, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        soft, _ = encode_prompts(zimage, vectors, template)  # (2, 32, 48)
    head = len(template.before)
    assert torch.allclose(soft[0, :head], soft[1, :head]) and not torch.allclose(soft[0, head:], soft[1, head:])


def test_a_denoise_euler_step_is_the_pipelines_step(zimage, plain_pipe):
    """The training target (velocity noise - x0) is what the pipeline integrates: one Euler step from denoise
    equals one step of ZImagePipeline's own loop (no guidance) from the same latents."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, SIDE // 2, SIDE // 2, generator=generator)
    with torch.no_grad():
        features = zimage.encode_text(["a red dog"])
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(zimage.scheduler_config)
        scheduler.set_timesteps(sigmas=[1.0, 0.5], mu=0.0)
        sigma, following = scheduler.sigmas[:2]
        ours = latents + (following - sigma) * zimage.denoise(latents, sigma[None], features)
        seen = {}

        def after_first(pipe, i, t, kwargs):
            seen.setdefault("latents", kwargs["latents"].clone())
            return {}

        plain_pipe(
            prompt_embeds=zimage.caption_list(features),
            guidance_scale=0.0,
            sigmas=[1.0, 0.5],
            latents=latents.clone(),
            height=SIDE,
            width=SIDE,
            output_type="latent",
            callback_on_step_end=after_first,
        )
    assert torch.allclose(ours, seen["latents"], atol=1e-5)


# ---------------------------------------------------------------- DreamDistribution
def test_dreamdistribution_trains_soft_tokens_through_the_llm(dd_run, zimage):
    artifact = load_artifact(dd_run)
    assert artifact.meta["backbone"]["family"] == "zimage"
    assert artifact.tensors["vectors"].shape == (1, 3, 2, WIDTH)
    hidden = artifact_features(zimage, artifact, "", "", 0)  # (3, 32, 48)
    assert hidden.shape == (3, LENGTH, WIDTH) and float(hidden.std(dim=0).max()) > 0
    edited = artifact_features(zimage, artifact, "", "at night", 0)
    assert not torch.allclose(edited, hidden)  # a text edit changes the features


def test_plain_zimage_pipeline_draws_the_same_image_from_the_same_embeddings(dd_run, zimage, plain_pipe, tmp_path):
    """dreamdist's image equals ZImagePipeline's for the same prompt embeddings, guidance and seed."""
    ours = gen(tmp_path / "gen", dd_run, num_images=1, sampler="gaussian", gamma=0.0)[0]
    features = artifact_stats(zimage, load_artifact(dd_run), "", "", 0)[0][None]  # gamma 0: the mean, (1, 32, 48)
    generator = torch.Generator().manual_seed(3)
    torch.randn(features.shape[1:], generator=generator)  # the image's generator first draws its prompt (omega)
    with torch.no_grad():
        negative = zimage.caption_list(zimage.encode_text([""]))
    image = plain_pipe(
        prompt_embeds=zimage.caption_list(features),
        negative_prompt_embeds=negative,
        guidance_scale=2.0,
        num_inference_steps=2,
        height=SIDE,
        width=SIDE,
        generator=generator,
    ).images[0]
    assert np.abs(np.asarray(image, dtype=np.int16) - ours).max() <= 1
    unguided = gen(tmp_path / "unguided", dd_run, num_images=1, sampler="gaussian", gamma=0.0, guidance_scale=0.0)[0]
    assert np.abs(unguided - ours).max() > 0  # guidance changes the image


def test_dreamdistribution_generates_the_same_images_whatever_the_batch_size(dd_run, tmp_path):
    together = gen(tmp_path / "a", dd_run, batch_size=3)
    alone = gen(tmp_path / "b", dd_run, batch_size=1)
    for x, y in zip(together, alone):
        assert np.abs(x - y).max() <= 1
    assert np.abs(together[0] - together[1]).max() > 0  # different seeds, different samples
    edited = gen(tmp_path / "c", dd_run, num_images=1, suffix="at night")[0]
    assert np.abs(edited - together[0]).max() > 0  # --suffix edits the prompt


def test_a_mix_of_two_zimage_runs_generates(dd_run, tmp_path):
    for sampler in ("gaussian", "mixture"):
        images = gen(
            tmp_path / sampler, dd_run, artifacts=[str(dd_run), str(dd_run)], weights=[0.5, 0.5], sampler=sampler
        )
        assert len(images) == 3 and images[0].shape == (SIDE, SIDE, 3)


# ---------------------------------------------------------------- doors
@pytest.mark.parametrize("method", ["textual-inversion", "dreambooth", "custom-diffusion"])
def test_other_methods_are_refused_by_name_on_zimage(method, refs, zimage_model, tmp_path):
    config = TrainConfig(images=str(refs), out=str(tmp_path / "run"), model=str(zimage_model), method=method, steps=1)
    with pytest.raises(ValueError, match=f"{method} is not available on Z-Image backbones.*dreamdistribution"):
        train(config, example_config(method))


def test_other_families_artifacts_are_refused_on_zimage_by_family_name(dd_run, zimage, tiny_model, tmp_path):
    sd = Backbone.from_pretrained(tiny_model, device="cpu")
    with pytest.raises(BackboneMismatchError, match="SD 1.x/2.x backbone.*Z-Image backbone"):
        zimage.check_compatible(sd.identity(), sd.probe_rows(), "run")
    flux = Backbone.from_pretrained(save_tiny_flux_pipeline(tmp_path / "flux"), device="cpu")
    with pytest.raises(BackboneMismatchError, match="Flux.1 backbone.*Z-Image backbone"):
        zimage.check_compatible(flux.identity(), flux.probe_rows(), "run")
    artifact = load_artifact(dd_run)
    with pytest.raises(BackboneMismatchError, match="Z-Image backbone.*Flux.1 backbone"):
        flux.check_compatible(artifact.meta["backbone"], artifact.tensors["backbone.probe"], "run")
    with pytest.raises(BackboneMismatchError, match="--model"):
        generate(GenerateConfig(out=str(tmp_path / "g"), artifacts=[str(dd_run)], model=str(tiny_model)))
