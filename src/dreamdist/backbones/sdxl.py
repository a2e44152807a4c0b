"""The SDXL family: two CLIP text encoders, pooled text embeddings and size conditioning (METHODS.md §11).

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
- References of several shapes are bucketed by aspect ratio (``bucket_step``); kohya LoRA keys
  use the original SGM UNet paths and numbered text-encoder prefixes; textual-inversion files hold
  ``clip_l`` and ``clip_g``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from dreamdist.backbones.base import read_generation_defaults, read_index
from dreamdist.backbones.sd import CLIP_LORA_TARGETS, UNET_LORA_TARGETS, SDBackbone


@dataclass
class SDXLBackbone(SDBackbone):
    """An SDXL checkpoint: ``tokenizer``/``text_encoder`` (CLIP ViT-L) and ``tokenizer_2``/``text_encoder_2``
    (OpenCLIP bigG with projection), VAE, UNet (``addition_embed_type="text_time"``), training scheduler."""

    tokenizer_2: CLIPTokenizer | None = None
    text_encoder_2: CLIPTextModelWithProjection | None = None
    force_zeros_for_empty_prompt: bool = True  # the pipeline's model_index setting

    name = "sdxl"
    display_name = "SDXL"
    detection_tier = 1  # a text_encoder_2 alone makes a folder look like SDXL's (Flux, SD3 have one too)
    pipelines = {
        "text2img": "StableDiffusionXLPipeline",
        "img2img": "StableDiffusionXLImg2ImgPipeline",
        "inpaint": "StableDiffusionXLInpaintPipeline",
        "controlnet": "StableDiffusionXLControlNetPipeline",
    }
    text_encoder_names = ("text_encoder", "text_encoder_2")
    lora_targets = {"unet": UNET_LORA_TARGETS, "text_encoder": CLIP_LORA_TARGETS, "text_encoder_2": CLIP_LORA_TARGETS}
    kohya_prefixes = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}  # numbered

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

    # ---------------------------------------------------------------- loading
    @classmethod
    def recognises(cls, index: dict | None, folder: Path) -> bool:
        """A second text encoder in ``model_index.json`` (or an ``XL`` pipeline class); without an index,
        a ``text_encoder_2/`` sub-folder. A refiner (no first text encoder) is refused with the fix."""
        if index is None:
            return (folder / "text_encoder_2").is_dir()
        second = index.get("text_encoder_2")
        has_second = isinstance(second, (list, tuple)) and second[0] is not None
        if not (has_second or "XL" in str(index.get("_class_name", ""))):
            return False
        first = index.get("text_encoder")
        if not (isinstance(first, (list, tuple)) and first[0] is not None):
            raise OSError(
                f"{folder} has no text_encoder (an SDXL refiner?); dreamdist trains on base checkpoints "
                "such as stabilityai/stable-diffusion-xl-base-1.0"
            )
        return True

    @classmethod
    def load(
        cls, path: str, model_id: str, device: torch.device, dtype: torch.dtype, allow_pickle: bool = False
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
        backbone = cls(
            tokenizer,
            text_encoder,
            vae,
            unet,
            DDPMScheduler.from_config(scheduler_config),
            model_id,
            dict(scheduler_config),
            read_generation_defaults(path),
            tokenizer_2=tokenizer_2,
            text_encoder_2=text_encoder_2,
            force_zeros_for_empty_prompt=bool((read_index(path) or {}).get("force_zeros_for_empty_prompt", True)),
        )
        return backbone.to(device, dtype)

    # ---------------------------------------------------------------- shapes
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

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The UNet with ``added_cond_kwargs`` (pooled text embeddings, time ids of the latents' size)."""
        hidden, pooled = self.split_features(features.to(self.unet.dtype))
        scale = self.vae_scale_factor
        time_ids = self.time_ids(noisy.shape[-2] * scale, noisy.shape[-1] * scale, noisy.shape[0])
        added = {"text_embeds": pooled, "time_ids": time_ids}
        return self.unet(noisy, timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added).sample

    def bucket_step(self, size: int) -> int:
        """Bucket sides are multiples of this: what the UNet can halve down to (VAE x UNet downsampling),
        and at least size / 16 (64 px at SDXL's 1024)."""
        unet_down = 2 ** (len(self.unet.config.block_out_channels) - 1)
        return max(self.vae_scale_factor * unet_down, size // 16)

    # ---------------------------------------------------------------- files
    def pipeline_parts(self, kind: str) -> dict:
        """Both encoders and tokenizers, the VAE and the UNet."""
        parts = super().pipeline_parts(kind)
        return {**parts, "text_encoder_2": self.text_encoder_2, "tokenizer_2": self.tokenizer_2}

    def pipeline_options(self, kind: str) -> dict:
        """No watermark; the model's empty-prompt setting; img2img / inpaint: a base UNet takes 6 size ids,
        no aesthetic score."""
        options = {"force_zeros_for_empty_prompt": self.force_zeros_for_empty_prompt, "add_watermarker": False}
        if kind in ("img2img", "inpaint"):
            options["requires_aesthetics_score"] = False
        return options

    @classmethod
    def recognises_controlnet(cls, config: dict) -> bool:
        """SDXL ControlNets take ``text_time`` added conditioning (pooled text embeddings and size ids)."""
        return config.get("addition_embed_type") == "text_time"

    def kohya_module_path(self, module: str, layer_path: str) -> str:
        """UNet paths in the original SGM layout (as kohya's SDXL scripts write them)."""
        blocks = getattr(self.unet.config, "layers_per_block", None)
        if module == self.denoiser_name and isinstance(blocks, int):
            return sgm_unet_path(layer_path, blocks)
        return super().kohya_module_path(module, layer_path)

    def token_file_tensors(self, token: str, vectors: torch.Tensor) -> dict[str, torch.Tensor]:
        """``clip_l`` (N, d_tok1) and ``clip_g`` (N, d_tok2), the layout diffusers, ComfyUI and A1111 read."""
        clip_l, clip_g = self.token_parts(vectors)
        return {"clip_l": clip_l.contiguous(), "clip_g": clip_g.contiguous()}

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


def sgm_unet_path(path: str, layers_per_block: int) -> str:
    """A diffusers UNet attention module path -> the original (SGM/LDM) one kohya uses for SDXL.

    ``down_blocks.i.attentions.j.X`` -> ``input_blocks.{1 + i (n + 1) + j}.1.X``, ``mid_block.attentions.0.X``
    -> ``middle_block.1.X``, ``up_blocks.i.attentions.j.X`` -> ``output_blocks.{i (n + 1) + j}.1.X``
    (n = layers per block; the names inside a transformer block are the same in both layouts).
    """
    parts = path.split(".")
    step = layers_per_block + 1  # each level: n resnets (+1 in the up path) and a down/upsampler
    if parts[0] == "down_blocks" and parts[2] == "attentions":
        return ".".join(["input_blocks", str(1 + int(parts[1]) * step + int(parts[3])), "1", *parts[4:]])
    if parts[0] == "mid_block" and parts[1] == "attentions":
        return ".".join(["middle_block", "1", *parts[3:]])
    if parts[0] == "up_blocks" and parts[2] == "attentions":
        return ".".join(["output_blocks", str(int(parts[1]) * step + int(parts[3])), "1", *parts[4:]])
    raise ValueError(f"no kohya name for UNet module {path!r} (LoRA on attention layers only)")
