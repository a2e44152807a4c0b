"""Tiny random Stable Diffusion components built from config, as diffusers' own tests do.

Used by the test-suite and the benchmarks: no download, seconds to build, every code path the
same as a real checkpoint's (real classes, a real CLIP BPE tokenizer, a saved pipeline folder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from dreamdist.tokenizers import build_clip_tokenizer

WORDS = [
    "a",
    "an",
    "the",
    "of",
    "in",
    "on",
    "at",
    "by",
    "with",
    "and",
    "photo",
    "painting",
    "picture",
    "image",
    "style",
    "cathedral",
    "church",
    "dog",
    "cat",
    "toy",
    "red",
    "green",
    "blue",
    "night",
    "day",
    "snow",
    "beach",
    "forest",
    "city",
    "sketch",
    "oil",
    "watercolor",
    "old",
    "new",
    "big",
    "small",
    "view",
]


def tiny_components(
    folder: str | Path,
    prediction_type: str = "epsilon",
    seed: int = 0,
    hidden_size: int = 32,
    sample_size: int = 16,
    text_layers: int = 2,
    unet_channels: tuple[int, int] = (8, 16),
) -> dict:
    """Build tokenizer, text encoder, VAE, UNet and scheduler (random weights, fixed seed).

    Images are ``2 * sample_size`` pixels on a side (the VAE halves them).
    """
    tokenizer = build_clip_tokenizer(list(WORDS), Path(folder) / "tokenizer_src")
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=37 if hidden_size <= 32 else 4 * hidden_size,
            num_hidden_layers=text_layers,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=hidden_size,
        )
    )
    unet = UNet2DConditionModel(
        block_out_channels=unet_channels,
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=hidden_size,
        attention_head_dim=4 if unet_channels[0] <= 8 else 8,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=2 * sample_size,
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        clip_sample=False,
        steps_offset=1,
    )
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "unet": unet,
        "scheduler": scheduler,
    }


def save_tiny_pipeline(folder: str | Path, **kwargs) -> Path:
    """Write tiny components as an ordinary diffusers ``StableDiffusionPipeline`` folder."""
    folder = Path(folder)
    parts = tiny_components(folder, **kwargs)
    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / "pipeline", safe_serialization=True)
    return folder / "pipeline"


def write_images(folder, count: int, seed: int = 0, size=(80, 72)):
    """Write ``count`` random-colour PNGs (smooth gradients, so the VAE sees structure)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        base = rng.integers(0, 255, 3)
        ramp = np.linspace(0, 1, size[0])[None, :, None]
        array = np.clip(base * (0.5 + ramp) + rng.normal(0, 10, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
        Image.fromarray(array).save(folder / f"img_{i:02d}.png")
    return folder


def tiny_sdxl_components(
    folder: str | Path,
    seed: int = 0,
    hidden_sizes: tuple[int, int] = (32, 48),
    projection_dim: int = 40,
    sample_size: int = 16,
    time_embed_dim: int = 8,
) -> dict:
    """Tiny random SDXL components (two CLIP encoders, a ``text_time`` UNet), as diffusers' SDXL tests build them.

    The two encoders have different widths (and the projection a third) so that a mixed-up split
    fails loudly. Tokenizer 2 pads with ``!`` as real SDXL's does. Images are ``2 * sample_size`` px.
    """
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = build_clip_tokenizer(list(WORDS), Path(folder) / "tokenizer_src")
    tokenizer_2 = CLIPTokenizer.from_pretrained(Path(folder) / "tokenizer_src", pad_token="!")
    torch.manual_seed(seed)

    def text_config(hidden: int, projection: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=projection,
            hidden_act="gelu",
        )

    text_encoder = CLIPTextModel(text_config(hidden_sizes[0], hidden_sizes[0]))
    text_encoder_2 = CLIPTextModelWithProjection(text_config(hidden_sizes[1], projection_dim))
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * time_embed_dim + projection_dim,
        cross_attention_dim=sum(hidden_sizes),
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=2 * sample_size,
        scaling_factor=0.13025,  # SDXL's VAE
        force_upcast=True,
    )
    scheduler = EulerDiscreteScheduler(  # SDXL base ships Euler; training uses DDPM over the same config
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return {
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "vae": vae,
        "unet": unet,
        "scheduler": scheduler,
    }


def save_tiny_sdxl_pipeline(folder: str | Path, **kwargs) -> Path:
    """Write tiny SDXL components as an ordinary diffusers ``StableDiffusionXLPipeline`` folder."""
    from diffusers import StableDiffusionXLPipeline

    folder = Path(folder)
    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(folder, **kwargs), add_watermarker=False)
    pipe.save_pretrained(folder / "pipeline", safe_serialization=True)
    return folder / "pipeline"


# values for the config fields that have no default, for every registered method (see ``example_config``)
EXAMPLE_VALUES = {"class_noun": "dog", "init_word": "toy"}


def example_config(method: str, **options):
    """A config of registered ``method`` for tests and benchmarks: ``options`` over ``EXAMPLE_VALUES``
    for its required fields, its own defaults elsewhere. Lets test matrices iterate the registry.

    Args:
        method: a name of ``dreamdist.methods.method_names()``.
        options: config fields to set (e.g. small sizes).

    Raises:
        ValueError: a required field has no example value (add one to ``EXAMPLE_VALUES``).
    """
    from dataclasses import MISSING, fields

    from dreamdist.methods import get_method

    config_cls = get_method(method).config
    required = [f.name for f in fields(config_cls) if f.default is MISSING and f.default_factory is MISSING]
    unknown = [name for name in required if name not in options and name not in EXAMPLE_VALUES]
    if unknown:
        raise ValueError(
            f"{config_cls.__name__} requires {unknown} and dreamdist.testing.EXAMPLE_VALUES has no value for them; "
            "add one there so the test matrices can build this method"
        )
    return config_cls(**{**{name: EXAMPLE_VALUES[name] for name in required if name not in options}, **options})


def tiny_flux_components(
    folder: str | Path,
    seed: int = 0,
    guidance_embeds: bool = False,
    clip_size: int = 32,
    t5_size: int = 48,
    max_sequence_length: int = 16,
    sample_size: int = 16,
) -> dict:
    """Tiny random Flux.1 components (CLIP, T5, a FluxTransformer2DModel), as diffusers' Flux tests build them.

    CLIP and T5 have different widths so that a mixed-up split fails loudly; ``guidance_embeds``
    makes a dev-shaped transformer (schnell-shaped without). Images are ``2 * sample_size`` px
    (the VAE halves them; the transformer packs 2 x 2 latents).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from dreamdist.tokenizers import build_t5_tokenizer

    tokenizer = build_clip_tokenizer(list(WORDS), Path(folder) / "tokenizer_src")
    tokenizer_2 = build_t5_tokenizer(list(WORDS), Path(folder) / "tokenizer_2_src", max_length=max_sequence_length)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=clip_size,
            intermediate_size=2 * clip_size,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=clip_size,
            hidden_act="gelu",
        )
    )
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=t5_size,
            d_kv=t5_size // 4,
            d_ff=2 * t5_size,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
            pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            decoder_start_token_id=tokenizer_2.pad_token_id,
        )
    )
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels x 2 x 2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5_size,
        pooled_projection_dim=clip_size,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=2 * sample_size,
        scaling_factor=0.3611,  # Flux.1's VAE
        shift_factor=0.1159,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "tokenizer_2": tokenizer_2,
        "text_encoder_2": text_encoder_2,
        "vae": vae,
        "transformer": transformer,
        "scheduler": scheduler,
    }


def save_tiny_flux_pipeline(folder: str | Path, **kwargs) -> Path:
    """Write tiny Flux.1 components as an ordinary diffusers ``FluxPipeline`` folder, with a ``dreamdist.json``
    naming its image size and T5 length (``max_sequence_length``)."""
    import json

    from diffusers import FluxPipeline

    folder = Path(folder)
    parts = tiny_flux_components(folder, **kwargs)
    pipe = FluxPipeline(**parts)
    pipe.save_pretrained(folder / "pipeline", safe_serialization=True)
    side = parts["vae"].config.sample_size  # the image side in pixels
    defaults = {"height": side, "width": side, "max_sequence_length": parts["tokenizer_2"].model_max_length}
    (folder / "pipeline" / "dreamdist.json").write_text(json.dumps(defaults))
    return folder / "pipeline"


def tiny_sd3_components(
    folder: str | Path,
    seed: int = 0,
    with_t5: bool = True,
    clip_sizes: tuple[int, int] = (32, 40),
    projection_dims: tuple[int, int] = (24, 36),
    t5_size: int = 80,
    max_sequence_length: int = 16,
    sample_size: int = 16,
    qk_norm: str | None = None,
) -> dict:
    """Tiny random SD3 components (CLIP-L, CLIP-G, optionally T5, an SD3Transformer2DModel), as diffusers'
    SD3 tests build them.

    Every width differs (CLIP-L, CLIP-G, their projections, T5 = the transformer's text width) so that
    a mixed-up split fails loudly; tokenizer 2 pads with ``!`` as SD3's CLIP-G tokenizer does. ``with_t5``
    False leaves T5 out (``text_encoder_3`` None), as SD3 can run. ``qk_norm="rms_norm"`` makes an
    SD3.5-shaped transformer. Images are ``2 * sample_size`` px (the VAE halves them; the transformer
    takes 2 x 2 latent patches).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel

    from dreamdist.tokenizers import build_t5_tokenizer

    tokenizer = build_clip_tokenizer(list(WORDS), Path(folder) / "tokenizer_src")
    tokenizer_2 = CLIPTokenizer.from_pretrained(Path(folder) / "tokenizer_src", pad_token="!")
    tokenizer_3 = None
    if with_t5:
        tokenizer_3 = build_t5_tokenizer(list(WORDS), Path(folder) / "tokenizer_3_src", max_length=max_sequence_length)
    torch.manual_seed(seed)

    def clip(hidden: int, projection: int) -> CLIPTextModelWithProjection:
        config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=projection,
            hidden_act="gelu",
        )
        return CLIPTextModelWithProjection(config)

    text_encoder = clip(clip_sizes[0], projection_dims[0])
    text_encoder_2 = clip(clip_sizes[1], projection_dims[1])
    text_encoder_3 = None
    if with_t5:
        text_encoder_3 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_3),
                d_model=t5_size,
                d_kv=t5_size // 4,
                d_ff=2 * t5_size,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                relative_attention_max_distance=16,
                feed_forward_proj="gated-gelu",
                dropout_rate=0.0,
                pad_token_id=tokenizer_3.pad_token_id,
                eos_token_id=tokenizer_3.eos_token_id,
                decoder_start_token_id=tokenizer_3.pad_token_id,
            )
        )
    transformer = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=t5_size,
        caption_projection_dim=32,  # heads x head dim
        pooled_projection_dim=sum(projection_dims),
        out_channels=4,
        pos_embed_max_size=32,
        qk_norm=qk_norm,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=2 * sample_size,
        scaling_factor=1.5305,  # SD3's VAE
        shift_factor=0.0609,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "tokenizer_2": tokenizer_2,
        "text_encoder_2": text_encoder_2,
        "tokenizer_3": tokenizer_3,
        "text_encoder_3": text_encoder_3,
        "vae": vae,
        "transformer": transformer,
        "scheduler": scheduler,
    }


def save_tiny_sd3_pipeline(folder: str | Path, **kwargs) -> Path:
    """Write tiny SD3 components as an ordinary diffusers ``StableDiffusion3Pipeline`` folder, with a
    ``dreamdist.json`` naming its image size and T5 length (``max_sequence_length``)."""
    import json

    from diffusers import StableDiffusion3Pipeline

    folder = Path(folder)
    parts = tiny_sd3_components(folder, **kwargs)
    pipe = StableDiffusion3Pipeline(**parts)
    pipe.save_pretrained(folder / "pipeline", safe_serialization=True)
    side = parts["vae"].config.sample_size  # the image side in pixels
    length = kwargs.get("max_sequence_length", 16)
    defaults = {"height": side, "width": side, "max_sequence_length": length}
    (folder / "pipeline" / "dreamdist.json").write_text(json.dumps(defaults))
    return folder / "pipeline"
