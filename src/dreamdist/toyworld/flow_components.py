"""Configurations of the toy flow-matching model ``toy-flow`` (all standard diffusers/transformers).

A Flux.1-shaped latent flow model, only tiny: the toy model's VAE (32 x 32 x 3 pixels <-> 16 x 16
x 4 latents, shared with ``toy``), a 3-layer T5 encoder over a SentencePiece-style vocabulary of
the toy world's words (the per-token features the transformer attends to), a 2-layer CLIP text
encoder whose pooled feature conditions the transformer's modulation (Flux's ``pooled_projections``),
and a ``FluxTransformer2DModel`` (2 double-stream and 4 single-stream blocks, width 128) over
2 x 2 patches of the latents (64 image tokens). Trained with rectified flow (``x_t = (1 - t) x_0 +
t eps``, target ``eps - x_0``); sampled by ``FlowMatchEulerDiscreteScheduler`` with true
classifier-free guidance (``true_cfg_scale``, an empty negative prompt). No guidance embedding
(like Flux.1-schnell). It loads in the plain ``FluxPipeline``.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from dreamdist.tokenizers import build_clip_tokenizer, build_t5_tokenizer
from dreamdist.toyworld.captions import vocabulary
from dreamdist.toyworld.components import LATENT_CHANNELS

T5_DIM = 128
CLIP_DIM = 64
MAX_T5_TOKENS = 32  # the T5 sequence length the model is trained and sampled with (max_sequence_length)
CLIP_TOKENS = 77
DEFAULT_STEPS = 20
DEFAULT_CFG = 3.0
# written to <model>/dreamdist.json; the keys are FluxPipeline arguments
GENERATION_DEFAULTS = {
    "num_inference_steps": DEFAULT_STEPS,
    "true_cfg_scale": DEFAULT_CFG,
    "negative_prompt": "",
    "max_sequence_length": MAX_T5_TOKENS,
    "height": 32,
    "width": 32,
}


def build_tokenizers(folder: str | Path):
    """(CLIP tokenizer, T5 tokenizer) of the toy world's words, written under ``folder``."""
    folder = Path(folder)
    words = vocabulary()
    return (
        build_clip_tokenizer(words, folder / "tokenizer", max_length=CLIP_TOKENS),
        build_t5_tokenizer(words, folder / "tokenizer_2", max_length=MAX_T5_TOKENS),
    )


def build_clip(tokenizer) -> CLIPTextModel:
    """A randomly initialised 2-layer CLIP text encoder (hidden 64): only its pooled feature is used."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=CLIP_DIM,
            intermediate_size=4 * CLIP_DIM,
            projection_dim=CLIP_DIM,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CLIP_TOKENS,
            hidden_act="gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_t5(tokenizer) -> T5EncoderModel:
    """A randomly initialised 3-layer T5 encoder (d_model 128, 4 heads, gated-GELU like T5 v1.1)."""
    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=T5_DIM,
            d_kv=T5_DIM // 4,
            d_ff=2 * T5_DIM,
            num_layers=3,
            num_heads=4,
            relative_attention_num_buckets=16,
            relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )


def build_transformer(layers: int = 2, single_layers: int = 4) -> FluxTransformer2DModel:
    """The denoiser: 2 x 2 latent patches (16 channels) -> 64 image tokens, width 128 (4 heads of 32)."""
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
        out_channels=None,
        num_layers=layers,
        num_single_layers=single_layers,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=T5_DIM,
        pooled_projection_dim=CLIP_DIM,
        guidance_embeds=False,
        axes_dims_rope=(8, 12, 12),
    )


def build_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """The sampling scheduler: Euler on the rectified-flow ODE, no resolution-dependent shift."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)


def flow_vae(vae: AutoencoderKL) -> AutoencoderKL:
    """The toy VAE with ``shift_factor`` set (0): Flux pipelines read it when decoding."""
    vae.register_to_config(shift_factor=0.0)
    return vae
