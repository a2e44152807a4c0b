"""SDXL backbone: two CLIP text encoders, pooled text embeddings and size conditioning (METHODS.md §11).

What differs from SD 1.x/2.x, and how dreamdist represents it:

- Token vectors are *joint*: a token's vector is its encoder-1 row followed by its encoder-2 row
  (768 + 1280 for real SDXL), so a soft prompt, a placeholder token or a sampled prompt is one
  vector per token that drives both encoders.
- Per-token features are both encoders' penultimate hidden states, concatenated (2048 wide),
  exactly as ``StableDiffusionXLPipeline.encode_prompt`` computes them.
- The UNet also takes encoder 2's projected EOS feature (``text_embeds``). Prompt features are
  therefore ``(L + 1, D)``: the L per-token rows, then one row holding the pooled embedding in its
  first ``d_pool`` channels (zeros after). Statistics over prompts (the Gaussian, the mixture)
  treat that row like any other, so the pooled embedding gets its distribution jointly with the
  tokens; the zero channels have zero spread and stay zero.
- ``time_ids`` = (original h, w, crop top, left, target h, w) = (H, W, 0, 0, H, W) at the
  training resolution, as the pipeline builds them for an uncropped image.
- The VAE is encoded in fp32 when it is held in fp16 and its config says ``force_upcast``
  (SDXL's VAE overflows in fp16); the pipeline does the same when decoding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from dreamdist.backbone import Backbone


@dataclass
class SDXLBackbone(Backbone):
    """An SDXL checkpoint: ``tokenizer``/``text_encoder`` (CLIP ViT-L) and ``tokenizer_2``/``text_encoder_2``
    (OpenCLIP bigG with projection), VAE, UNet (``addition_embed_type="text_time"``), training scheduler."""

    tokenizer_2: CLIPTokenizer | None = None
    text_encoder_2: CLIPTextModelWithProjection | None = None
    force_zeros_for_empty_prompt: bool = True  # the pipeline's model_index setting

    family = "sdxl"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokenizer_2 is None or self.text_encoder_2 is None:
            raise ValueError("SDXLBackbone needs tokenizer_2 and text_encoder_2")
        if self.unet.config.addition_embed_type != "text_time":
            raise ValueError(
                f"the UNet of {self.model_id!r} has addition_embed_type={self.unet.config.addition_embed_type!r}; "
                "an SDXL UNet takes 'text_time' (pooled text embeddings and size conditioning)"
            )
        if self.pooled_dim > self.feature_dim:
            raise ValueError(f"pooled width {self.pooled_dim} exceeds the feature width {self.feature_dim}")

    # ---------------------------------------------------------------- shapes
    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return [self.text_encoder, self.text_encoder_2]

    @property
    def tokenizers(self) -> list[CLIPTokenizer]:
        return [self.tokenizer, self.tokenizer_2]

    @property
    def token_widths(self) -> list[int]:
        """Width of each encoder's token vectors (768, 1280 for real SDXL)."""
        return [int(e.get_input_embeddings().weight.shape[1]) for e in self.text_encoders]

    @property
    def token_dim(self) -> int:
        return sum(self.token_widths)

    @property
    def feature_dim(self) -> int:
        """D: per-token feature width (both encoders' hidden sizes; 2048 for real SDXL)."""
        return sum(int(e.config.hidden_size) for e in self.text_encoders)

    @property
    def pooled_dim(self) -> int:
        """Width of the pooled embedding (encoder 2's projection; 1280 for real SDXL)."""
        return int(self.text_encoder_2.config.projection_dim)

    @property
    def token_embedding(self) -> torch.nn.Embedding:
        """Encoder 1's token table (the joint vectors are ``embed_tokens`` / ``token_rows``)."""
        return self.text_encoder.get_input_embeddings()

    # ---------------------------------------------------------------- tokens
    def _second_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Tokenizer-1 ids -> tokenizer-2 ids: the same vocabulary, but tokenizer 2 pads with its own pad
        token after the EOS (real SDXL: '!'), so every position after the first EOS becomes that pad."""
        eos = ids == self.tokenizer.eos_token_id  # (..., L)
        first = eos.int().argmax(dim=-1, keepdim=True)  # (..., 1)
        position = torch.arange(ids.shape[-1], device=ids.device)
        after = (position > first) & eos.any(dim=-1, keepdim=True)  # (..., L)
        return torch.where(after, torch.full_like(ids, self.tokenizer_2.pad_token_id), ids)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., L) ids of tokenizer 1 -> (..., L, d_tok1 + d_tok2) joint token embeddings."""
        first = self.text_encoder.get_input_embeddings()(ids)
        second = self.text_encoder_2.get_input_embeddings()(self._second_ids(ids))
        return torch.cat([first, second.to(first.dtype)], dim=-1)

    def token_rows(self, ids: torch.Tensor) -> torch.Tensor:
        rows = []
        for encoder in self.text_encoders:
            table = encoder.get_input_embeddings().weight
            rows.append(table[ids.to(table.device)].detach().float().cpu())
        return torch.cat(rows, dim=-1)  # (N, d_tok1 + d_tok2)

    def set_token_rows(self, ids: torch.Tensor, vectors: torch.Tensor) -> None:
        for encoder, part in zip(self.text_encoders, self.token_parts(vectors)):
            table = encoder.get_input_embeddings().weight
            with torch.no_grad():
                table[ids.to(table.device)] = part.to(table.device, table.dtype)

    def token_parts(self, vectors: torch.Tensor) -> list[torch.Tensor]:
        """(N, d_tok1 + d_tok2) -> [(N, d_tok1) for encoder 1 ('clip_l'), (N, d_tok2) for encoder 2 ('clip_g')]."""
        return list(vectors.split(self.token_widths, dim=-1))

    # ---------------------------------------------------------------- text
    def encode_prompt_embeds(
        self, token_embeds: torch.Tensor, eos_positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both CLIP encoders from joint token embeddings, as the SDXL pipeline encodes prompts.

        Args:
            token_embeds: (B, L, d_tok1 + d_tok2) joint token embeddings.
            eos_positions: (B,) index of the EOS token (encoder 2's pooled position).
        Returns:
            features: (B, L + 1, D): penultimate hidden states of both encoders (L rows), then the
                pooled row (``text_embeds`` in the first d_pool channels).
            pooled: (B, d_pool) encoder 2's projected EOS feature (``text_embeds``).
        """
        first, second = token_embeds.split(self.token_widths, dim=-1)
        hidden_1, _ = _run_clip(self.text_encoder, first, last_layer=False)  # (B, L, d1) penultimate
        hidden_2, last_2 = _run_clip(self.text_encoder_2, second, last_layer=True)  # (B, L, d2), (B, L, d2)
        last_2 = self.text_encoder_2.text_model.final_layer_norm(last_2)
        eos = last_2[torch.arange(last_2.shape[0], device=last_2.device), eos_positions]  # (B, d2)
        pooled = self.text_encoder_2.text_projection(eos)  # (B, d_pool)
        hidden = torch.cat([hidden_1, hidden_2.to(hidden_1.dtype)], dim=-1)  # (B, L, D)
        return self.join_features(hidden, pooled), pooled

    def join_features(self, hidden: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """(..., L, D) per-token features and (..., d_pool) pooled -> (..., L + 1, D) prompt features."""
        row = torch.zeros((*pooled.shape[:-1], 1, hidden.shape[-1]), dtype=hidden.dtype, device=hidden.device)
        row[..., 0, : pooled.shape[-1]] = pooled.to(hidden.dtype)
        return torch.cat([hidden, row], dim=-2)

    def split_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., L + 1, D) -> per-token features (..., L, D) and the pooled embedding (..., d_pool)."""
        return features[..., :-1, :], features[..., -1, : self.pooled_dim]

    # ---------------------------------------------------------------- UNet
    def time_ids(self, height: int, width: int, batch: int) -> torch.Tensor:
        """(batch, 6) size conditioning of an uncropped ``height`` x ``width`` image at that size."""
        row = torch.tensor([height, width, 0, 0, height, width], dtype=self.unet.dtype, device=self.device)
        return row.expand(batch, 6)

    def unet_forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The UNet with ``added_cond_kwargs`` (pooled text embeddings, time ids of the latents' size)."""
        hidden, pooled = self.split_features(features.to(self.unet.dtype))
        scale = self.vae_scale_factor
        time_ids = self.time_ids(noisy.shape[-2] * scale, noisy.shape[-1] * scale, noisy.shape[0])
        added = {"text_embeds": pooled, "time_ids": time_ids}
        return self.unet(noisy, timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added).sample

    # ---------------------------------------------------------------- images
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``Backbone.encode_images``, in fp32 when an fp16 VAE asks for it (``force_upcast``)."""
        upcast = self.vae.dtype == torch.float16 and bool(getattr(self.vae.config, "force_upcast", False))
        if not upcast:
            return super().encode_images(pixels, batch_size)
        self.vae.to(torch.float32)
        try:
            return super().encode_images(pixels, batch_size)
        finally:
            self.vae.to(torch.float16)


def _run_clip(encoder, token_embeds: torch.Tensor, last_layer: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A CLIP text transformer from token embeddings, with an explicit causal mask.

    Returns the penultimate layer's output (B, L, d) and, with ``last_layer``, the last layer's
    (before the final layer norm); without it the last layer is not run at all.
    """
    model = getattr(encoder, "text_model", encoder)  # CLIPTextModelWithProjection wraps a CLIPTextModel
    hidden = model.embeddings(inputs_embeds=token_embeds.to(encoder.dtype))  # (B, L, d) + positions
    batch, length = hidden.shape[:2]
    blocked = torch.ones(length, length, dtype=torch.bool, device=hidden.device).triu(1)
    mask = torch.zeros(length, length, dtype=hidden.dtype, device=hidden.device)
    mask = mask.masked_fill(blocked, torch.finfo(hidden.dtype).min)[None, None].expand(batch, 1, length, length)
    layers = model.encoder.layers
    for layer in layers[:-1]:
        hidden = layer(hidden, mask)
    if not last_layer:
        return hidden, None
    return hidden, layers[-1](hidden, mask)


def _load_index(path: str) -> dict:
    index = Path(path) / "model_index.json"
    if index.is_file():
        return json.loads(index.read_text())
    try:
        from diffusers import DiffusionPipeline

        return dict(DiffusionPipeline.load_config(path))
    except Exception:
        return {}


def load_sdxl(
    path: str, model_id: str, device: torch.device, dtype: torch.dtype, allow_pickle: bool = False
) -> SDXLBackbone:
    """Load an SDXL pipeline folder or cached hub id (see ``Backbone.from_pretrained``)."""
    safe = {} if allow_pickle else {"use_safetensors": True}
    try:
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        tokenizer_2 = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2")
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype, **safe)
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
            path, subfolder="text_encoder_2", torch_dtype=dtype, **safe
        )
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, **safe)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype, **safe)
        scheduler_config = DDPMScheduler.load_config(path, subfolder="scheduler")
    except (OSError, ValueError) as exc:
        hint = " Pass --allow-pickle for .bin weights." if "safetensors" in str(exc).lower() else ""
        raise OSError(
            f"could not load an SDXL checkpoint from {model_id!r}: {exc}\nPass a diffusers StableDiffusionXLPipeline "
            "folder (tokenizer/, tokenizer_2/, text_encoder/, text_encoder_2/, vae/, unet/, scheduler/) or a hub id "
            f"that is cached locally.{hint}"
        ) from exc
    if len(tokenizer) != len(tokenizer_2) or tokenizer.eos_token_id != tokenizer_2.eos_token_id:
        raise OSError(
            f"{model_id!r}: tokenizer and tokenizer_2 have different vocabularies ({len(tokenizer)} vs "
            f"{len(tokenizer_2)} tokens); dreamdist needs SDXL's shared CLIP vocabulary"
        )
    defaults_file = Path(path) / "dreamdist.json"
    defaults = json.loads(defaults_file.read_text()) if defaults_file.is_file() else {}
    backbone = SDXLBackbone(
        tokenizer,
        text_encoder,
        vae,
        unet,
        DDPMScheduler.from_config(scheduler_config),
        model_id,
        dict(scheduler_config),
        defaults,
        tokenizer_2=tokenizer_2,
        text_encoder_2=text_encoder_2,
        force_zeros_for_empty_prompt=bool(_load_index(path).get("force_zeros_for_empty_prompt", True)),
    )
    return backbone.to(device, dtype)


def assemble_sdxl_pipeline(backbone: SDXLBackbone, scheduler) -> StableDiffusionXLPipeline:
    """A ``StableDiffusionXLPipeline`` over the backbone's modules (no watermark, no progress bar)."""
    pipe = StableDiffusionXLPipeline(
        vae=backbone.vae,
        text_encoder=backbone.text_encoder,
        text_encoder_2=backbone.text_encoder_2,
        tokenizer=backbone.tokenizer,
        tokenizer_2=backbone.tokenizer_2,
        unet=backbone.unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=backbone.force_zeros_for_empty_prompt,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
