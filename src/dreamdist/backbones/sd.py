"""The SD 1.x / 2.x family: one CLIP text encoder, a UNet, DDPM noise (epsilon or v-prediction).

The only code that touches CLIP text-encoder internals (with ``sdxl`` for SDXL's two encoders).
*Prompt features* are what a method hands the UNet for one prompt: here the per-token features
(L, d); ``split_features`` and ``denoise`` are the only readers of that layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from dreamdist.backbones.base import Backbone, read_generation_defaults
from dreamdist.backbones.noise import DDPMNoise

UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # diffusers' DreamBooth-LoRA script
CLIP_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
SAFETY_OFF = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
ALL_METHODS = ("dreamdistribution", "textual-inversion", "dreambooth", "custom-diffusion", "two-stage")


@dataclass
class SDBackbone(Backbone):
    """Tokenizer, text encoder, VAE, UNet and the training noise scheduler of one SD 1.x/2.x checkpoint."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    scheduler: DDPMScheduler
    model_id: str = "components"
    scheduler_config: dict = field(default_factory=dict)  # the checkpoint's own (inference) scheduler
    generation_defaults: dict = field(default_factory=dict)  # optional <model>/dreamdist.json

    name = "sd"
    display_name = "SD 1.x/2.x"
    detection_tier = 2  # the fallback: it takes any folder, so it is asked last
    methods = ALL_METHODS
    pipelines = {
        "text2img": "StableDiffusionPipeline",
        "img2img": "StableDiffusionImg2ImgPipeline",
        "inpaint": "StableDiffusionInpaintPipeline",
        "controlnet": "StableDiffusionControlNetPipeline",
    }
    denoiser_name = "unet"
    text_encoder_names = ("text_encoder",)
    lora_targets = {"unet": UNET_LORA_TARGETS, "text_encoder": CLIP_LORA_TARGETS}
    kohya_prefixes = {"unet": "lora_unet", "text_encoder": "lora_te"}

    def __post_init__(self) -> None:
        if not self.scheduler_config:
            self.scheduler_config = dict(self.scheduler.config)

    # ---------------------------------------------------------------- loading
    @classmethod
    def recognises(cls, index: dict | None, folder: Path) -> bool:
        """Any folder the families before it in the registry did not claim (SD is the fallback)."""
        return True

    @classmethod
    def load(
        cls, path: str, model_id: str, device: torch.device, dtype: torch.dtype, allow_pickle: bool = False
    ) -> SDBackbone:
        """Load an SD 1.x/2.x pipeline folder or cached hub id (see ``Backbone.from_pretrained``)."""
        # safetensors only; with allow_pickle the libraries fall back to .bin, read with weights_only=True
        safe = {} if allow_pickle else {"use_safetensors": True}
        try:
            tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
            text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype, **safe)
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, **safe)
            unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype, **safe)
            scheduler_config = DDPMScheduler.load_config(path, subfolder="scheduler")
            scheduler = DDPMScheduler.from_config(scheduler_config)
        except (OSError, ValueError) as exc:
            hint = (
                " It may hold only pickle (.bin) weights: pass --allow-pickle to load them with weights_only=True."
                if "safetensors" in str(exc).lower()
                else ""
            )
            raise OSError(
                f"could not load a Stable Diffusion checkpoint from {model_id!r}: {exc}\n"
                "Pass a diffusers pipeline folder (with tokenizer/, text_encoder/, vae/, unet/, scheduler/) "
                f"or a hub id that is cached locally.{hint}"
            ) from exc
        defaults = read_generation_defaults(path)
        backbone = cls(tokenizer, text_encoder, vae, unet, scheduler, model_id, dict(scheduler_config), defaults)
        return backbone.to(device, dtype)

    # ---------------------------------------------------------------- shapes
    @property
    def tokenizers(self) -> list[CLIPTokenizer]:
        """The tokenizer of each text encoder (same order as ``text_encoders``)."""
        return [self.tokenizer]

    @property
    def token_embedding(self) -> torch.nn.Embedding:
        """The text encoder's token-embedding table, (vocab, d_tok)."""
        return self.text_encoder.get_input_embeddings()

    @property
    def token_dim(self) -> int:
        """Width of one token vector (SDXL: both encoders' widths, concatenated)."""
        return int(self.token_embedding.weight.shape[1])

    @property
    def sample_size(self) -> int:
        """Default image side in pixels."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    # ---------------------------------------------------------------- tokens
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., L) token ids -> (..., L, d_tok) token embeddings (the input of ``encode_prompt_embeds``)."""
        return self.token_embedding(ids)

    def token_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """(N,) ids -> (N, d_tok) fp32 CPU copies of their embedding rows."""
        table = self.token_embedding.weight
        return table[ids.to(table.device)].detach().float().cpu()

    def set_token_rows(self, ids: torch.Tensor, vectors: torch.Tensor) -> None:
        """Write ``vectors`` (N, d_tok) into the embedding table(s) at ``ids`` (N,)."""
        table = self.token_embedding.weight
        with torch.no_grad():
            table[ids.to(table.device)] = vectors.to(table.device, table.dtype)

    def token_parts(self, vectors: torch.Tensor) -> list[torch.Tensor]:
        """(N, d_tok) token vectors -> one (N, d_i) slice per text encoder."""
        return [vectors]

    # ---------------------------------------------------------------- text
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Texts -> (B, L) input ids padded to the encoder's full length (L = 77 for CLIP)."""
        return self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)

    def eos_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B,) index of the first EOS token (CLIP's pooled position)."""
        return (input_ids == self.tokenizer.eos_token_id).int().argmax(dim=-1)

    def encode_prompt_embeds(
        self, token_embeds: torch.Tensor, eos_positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the CLIP text transformer from token embeddings instead of ids.

        Position embeddings are added exactly once (by the embeddings module) and the causal mask
        is built explicitly, so nothing depends on private keyword arguments of transformers.

        Args:
            token_embeds: (B, L, d_tok) token embeddings (real rows or learned vectors).
            eos_positions: (B,) index of the EOS token, where the pooled feature is read.
        Returns:
            hidden: (B, L, d) per-token features (what the UNet cross-attends to).
            pooled: (B, d) final-layer-norm feature at the EOS position.
        """
        encoder = self.text_encoder
        hidden = encoder.embeddings(inputs_embeds=token_embeds)  # (B, L, d) + positions
        batch, length = hidden.shape[:2]
        blocked = torch.ones(length, length, dtype=torch.bool, device=hidden.device).triu(1)
        mask = torch.zeros(length, length, dtype=hidden.dtype, device=hidden.device)
        mask = mask.masked_fill(blocked, torch.finfo(hidden.dtype).min)  # (L, L) additive causal mask
        mask = mask[None, None].expand(batch, 1, length, length)  # (B, 1, L, L)
        hidden = encoder.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
        hidden = encoder.final_layer_norm(hidden)  # (B, L, d)
        pooled = hidden[torch.arange(batch, device=hidden.device), eos_positions]  # (B, d)
        return hidden, pooled

    def split_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt features -> (per-token features for ``prompt_embeds``, pooled embedding or None)."""
        return features, None

    # ---------------------------------------------------------------- training
    @property
    def noise_process(self) -> DDPMNoise:
        """DDPM noise of the checkpoint's training scheduler (epsilon, v or sample prediction)."""
        return DDPMNoise(self.scheduler)

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction for (N, C, h, w) noisy latents, (N,) timesteps and (N, L, d) prompt features."""
        return self.unet(noisy, timesteps, encoder_hidden_states=features.to(self.unet.dtype)).sample

    # ---------------------------------------------------------------- files
    def pipeline_parts(self, kind: str) -> dict:
        """Constructor arguments of the family's pipelines besides the scheduler and ControlNet."""
        return {"vae": self.vae, "text_encoder": self.text_encoder, "tokenizer": self.tokenizer, "unet": self.unet}

    def pipeline_options(self, kind: str) -> dict:
        """Constructor switches of the pipeline of ``kind`` (no safety checker)."""
        return dict(SAFETY_OFF)

    def assemble_pipeline(self, kind: str, scheduler, controlnet=None):
        """A diffusers pipeline of ``kind`` over the backbone's modules (no safety checker, no progress bar)."""
        parts = {**self.pipeline_parts(kind), "scheduler": scheduler}
        if controlnet is not None:
            parts["controlnet"] = controlnet
        pipe = self.pipeline_class(kind)(**parts, **self.pipeline_options(kind))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @classmethod
    def recognises_controlnet(cls, config: dict) -> bool:
        """SD ControlNets take no added text-time conditioning."""
        return config.get("addition_embed_type") != "text_time"

    @classmethod
    def is_cross_attention(cls, processor: str) -> bool:
        """The UNet's text cross-attention processors are its ``attn2`` ones."""
        return processor.endswith("attn2.processor")

    def kohya_module_path(self, module: str, layer_path: str) -> str:
        """Text-encoder paths start with ``text_model.`` (transformers 5 CLIP models lack that wrapper)."""
        if module != self.denoiser_name and not layer_path.startswith("text_model."):
            return f"text_model.{layer_path}"
        return layer_path

    # ---------------------------------------------------------------- identity
    def shape_facts(self) -> dict:
        """Vocabulary, token and feature widths, sequence length, the UNet's cross-attention width."""
        return {
            "vocab_size": int(self.token_embedding.weight.shape[0]),
            "token_dim": self.token_dim,
            "hidden_dim": sum(int(encoder.config.hidden_size) for encoder in self.text_encoders),
            "max_length": int(self.tokenizer.model_max_length),
            "cross_attention_dim": int(self.unet.config.cross_attention_dim),
        }


def assemble_sd_pipeline(vae, text_encoder, tokenizer, unet, scheduler):
    """A ``StableDiffusionPipeline`` over in-memory components, without safety checker or progress bar."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, **SAFETY_OFF
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
