"""Configurations of the toy text-to-image model's components (all standard diffusers/transformers).

The toy model is a latent diffusion model like Stable Diffusion, only tiny: a 2x-downsampling
AutoencoderKL (32 x 32 x 3 pixels <-> 16 x 16 x 4 latents), a 3-layer CLIP text encoder over a
vocabulary of a few hundred tokens, and a small UNet2DConditionModel with cross-attention at
16 x 16 and 8 x 8, trained with v-prediction.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from dreamdist.tokenizers import build_clip_tokenizer
from dreamdist.toyworld.captions import vocabulary

IMAGE_SIZE = 32
LATENT_CHANNELS = 4
TEXT_DIM = 128
MAX_TOKENS = 77  # same prompt length as real CLIP, so every code path is the real one


def build_tokenizer(folder: str | Path) -> CLIPTokenizer:
    """Write the toy CLIP tokenizer (one token per toy-world word) into ``folder`` and load it."""
    return build_clip_tokenizer(vocabulary(), folder, max_length=MAX_TOKENS)


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A randomly initialised 3-layer CLIP text encoder (hidden 128) for ``tokenizer``."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=4 * TEXT_DIM,
        projection_dim=TEXT_DIM,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_vae() -> AutoencoderKL:
    """A tiny AutoencoderKL: 32 x 32 x 3 in [-1, 1] <-> 16 x 16 x 4 latents."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=16,
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=False,
        scaling_factor=1.0,  # set from the trained latents' std before saving
    )


def build_unet(channels: tuple[int, ...] = (32, 64, 128), layers_per_block: int = 1) -> UNet2DConditionModel:
    """The denoiser on 16 x 16 x 4 latents; cross-attention at 16 x 16, 8 x 8 and 4 x 4 (mid)."""
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=channels,
        layers_per_block=layers_per_block,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,  # diffusers' legacy name: the number of heads
        norm_num_groups=32,
    )


def build_scheduler() -> DDPMScheduler:
    """The training noise schedule: DDPM linear betas (1e-4..0.02, 1000 steps), v-prediction."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="v_prediction",
        clip_sample=False,
        steps_offset=1,
    )
