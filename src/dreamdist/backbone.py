"""Backbone: the frozen parts of a diffusers Stable Diffusion checkpoint, and the only code that
touches CLIP text-encoder internals (with ``backbone_sdxl`` for SDXL's two encoders).

Works for any SD 1.x / 2.x checkpoint (hub id or local folder, epsilon or v-prediction);
``from_pretrained`` returns an ``SDXLBackbone`` for SDXL folders.

*Prompt features* are what a method hands the UNet for one prompt: on SD 1.x/2.x the per-token
features (L, d); on SDXL the per-token features plus one row holding the pooled embedding
(``backbone_sdxl``). ``split_features`` and ``unet_forward`` are the only readers of that layout.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

PROBE_ROWS = 16  # token-embedding rows stored in artifacts to recognise the backbone


class BackboneMismatchError(ValueError):
    """An artifact was made on a different backbone than the one it is loaded onto."""


def resolve_model(model: str | Path) -> str:
    """Map built-in names (``toy``) to their folders; pass hub ids and paths through."""
    if str(model) == "toy":
        from dreamdist.toyworld import model_dir

        return str(model_dir())
    return str(model)


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when present, else Apple MPS, else CPU."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """Weights dtype of the frozen parts: fp32 on CPU; ``fp16``/``bf16``/``fp32`` on request."""
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, None: None}
    if dtype not in table:
        raise ValueError(f"dtype must be one of fp32, fp16, bf16; got {dtype!r}")
    if table[dtype] is None:
        return torch.float32 if device.type == "cpu" else torch.float16
    return table[dtype]


@dataclass
class Backbone:
    """Tokenizer, text encoder, VAE, UNet and the training noise scheduler of one checkpoint."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    scheduler: DDPMScheduler
    model_id: str = "components"
    scheduler_config: dict = field(default_factory=dict)  # the checkpoint's own (inference) scheduler
    generation_defaults: dict = field(default_factory=dict)  # optional <model>/dreamdist.json

    family = "sd"  # backbone family recorded in artifacts: "sd" (1.x / 2.x) or "sdxl"

    def __post_init__(self) -> None:
        if not self.scheduler_config:
            self.scheduler_config = dict(self.scheduler.config)

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        allow_pickle: bool = False,
    ) -> Backbone:
        """Load from a hub id or a local diffusers folder (``toy`` = the built-in toy model).

        Args:
            model: hub id (``stabilityai/stable-diffusion-2-1-base``) or local pipeline folder.
            device: ``cuda``, ``cpu``, ... (default: best available).
            dtype: frozen-weights dtype ``fp32``/``fp16``/``bf16`` (default fp32 on CPU, fp16 on GPU).
            allow_pickle: also accept ``.bin`` (pickle) weights; they load with ``weights_only=True``.
        """
        path = resolve_model(model)
        if Path(path).is_file():
            raise OSError(
                f"{model} is a single checkpoint file; dreamdist needs a diffusers pipeline folder or hub id. "
                "Convert it once with diffusers (StableDiffusionPipeline.from_single_file(...).save_pretrained(folder))."
            )
        device = pick_device(str(device) if device is not None else None)
        torch_dtype = pick_dtype(dtype, device)
        if detect_family(path) == "sdxl":
            from dreamdist.backbone_sdxl import load_sdxl

            return load_sdxl(path, str(model), device, torch_dtype, allow_pickle)
        # safetensors only; with allow_pickle the libraries fall back to .bin, read with weights_only=True
        safe = {} if allow_pickle else {"use_safetensors": True}
        try:
            tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
            text_encoder = CLIPTextModel.from_pretrained(
                path, subfolder="text_encoder", torch_dtype=torch_dtype, **safe
            )
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch_dtype, **safe)
            unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch_dtype, **safe)
            scheduler_config = DDPMScheduler.load_config(path, subfolder="scheduler")
            scheduler = DDPMScheduler.from_config(scheduler_config)
        except (OSError, ValueError) as exc:
            hint = (
                " It may hold only pickle (.bin) weights: pass --allow-pickle to load them with weights_only=True."
                if "safetensors" in str(exc).lower()
                else ""
            )
            raise OSError(
                f"could not load a Stable Diffusion checkpoint from {model!r}: {exc}\n"
                "Pass a diffusers pipeline folder (with tokenizer/, text_encoder/, vae/, unet/, scheduler/) "
                f"or a hub id that is cached locally.{hint}"
            ) from exc
        defaults_file = Path(path) / "dreamdist.json"
        defaults = json.loads(defaults_file.read_text()) if defaults_file.is_file() else {}
        backbone = cls(tokenizer, text_encoder, vae, unet, scheduler, str(model), dict(scheduler_config), defaults)
        return backbone.to(device, torch_dtype)

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Backbone:
        """Move the frozen modules to ``device`` and ``dtype`` (one dtype, as the pipeline expects)."""
        for module in (*self.text_encoders, self.unet, self.vae):
            if module.dtype == dtype:
                module.to(device)
            else:
                module.to(device=device, dtype=dtype)
            module.requires_grad_(False)
            module.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        """Every text encoder, in the pipeline's order."""
        return [self.text_encoder]

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

    @property
    def sample_size(self) -> int:
        """Default image side in pixels."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

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

    def encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, L, d) features, through the same path as learned prompts."""
        return self.encode_prompt_embeds(self.embed_tokens(ids), self.eos_positions(ids))[0]

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Plain prompts -> (B, L, d) features."""
        return self.encode_ids(self.tokenize(texts))

    def split_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt features -> (per-token features for ``prompt_embeds``, pooled embedding or None)."""
        return features, None

    def unet_forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction for (N, C, h, w) noisy latents, (N,) timesteps and (N, ...) prompt features."""
        return self.unet(noisy, timesteps, encoder_hidden_states=features.to(self.unet.dtype)).sample

    # ---------------------------------------------------------------- images
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) pixels in [-1, 1] -> VAE posterior (mean, std), each (N, C, h, w), fp32.

        Latents are sampled from these each step (``mean + std * noise``) and scaled by the VAE's
        scaling factor; caching the posterior instead of a sample keeps that randomness exact.
        """
        means, stds = [], []
        for start in range(0, len(pixels), batch_size):
            chunk = pixels[start : start + batch_size].to(self.device, self.vae.dtype)
            dist = self.vae.encode(chunk).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
        return torch.cat(means), torch.cat(stds)

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_shift(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    def training_target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet must predict: noise (epsilon), velocity (v_prediction) or the sample."""
        kind = self.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, timesteps)
        if kind == "sample":
            return latents
        raise ValueError(f"unsupported prediction_type {kind!r} in the scheduler config")

    # ---------------------------------------------------------------- identity
    def identity(self) -> dict:
        """Facts that must match when an artifact is loaded onto this backbone."""
        return {
            "model_id": self.model_id,
            "family": self.family,
            "vocab_size": int(self.text_encoder.get_input_embeddings().weight.shape[0]),
            "token_dim": self.token_dim,
            "hidden_dim": sum(int(encoder.config.hidden_size) for encoder in self.text_encoders),
            "max_length": int(self.tokenizer.model_max_length),
            "cross_attention_dim": int(self.unet.config.cross_attention_dim),
            "prediction_type": self.prediction_type,
            "embedding_fingerprint": embedding_fingerprint(self.probe_rows()),
        }

    def probe_rows(self) -> torch.Tensor:
        """(PROBE_ROWS, d_tok) fp32 rows spread over the vocabulary: a dtype-robust fingerprint."""
        vocab = self.text_encoder.get_input_embeddings().weight.shape[0]
        return self.token_rows(torch.linspace(0, vocab - 1, PROBE_ROWS).long())

    def check_compatible(self, identity: dict, probe: torch.Tensor | None, what: str) -> None:
        """Raise ``BackboneMismatchError`` if ``what`` (an artifact) was made on another backbone."""
        mine = self.identity()
        family = identity.get("family", "sd")  # artifacts from before SDXL support are SD 1.x/2.x
        if family != self.family:
            raise BackboneMismatchError(
                f"{what} was trained on an {FAMILY_NAMES.get(family, family)} backbone ({identity.get('model_id')!r}), "
                f"but {self.model_id!r} is an {FAMILY_NAMES[self.family]} backbone. "
                f"Load it with --model {identity.get('model_id')!r} (or another {FAMILY_NAMES.get(family, family)} "
                "checkpoint of the same base)."
            )
        for key in ("vocab_size", "token_dim", "hidden_dim", "cross_attention_dim"):
            if key in identity and int(identity[key]) != mine[key]:
                raise BackboneMismatchError(
                    f"{what} was trained on {identity.get('model_id')!r} ({key}={identity[key]}), "
                    f"but the backbone {self.model_id!r} has {key}={mine[key]}. "
                    f"Load it with --model {identity.get('model_id')!r} (or a copy of that checkpoint)."
                )
        if probe is not None:
            cos = torch.nn.functional.cosine_similarity(probe.float(), self.probe_rows(), dim=-1)
            if cos.min() < 0.99:
                raise BackboneMismatchError(
                    f"{what} was trained on {identity.get('model_id')!r}, whose token embeddings differ from "
                    f"those of {self.model_id!r} (same shapes, different weights). Use the original backbone."
                )


FAMILY_NAMES = {"sd": "SD 1.x/2.x", "sdxl": "SDXL"}


def detect_family(path: str) -> str:
    """``sdxl`` when the pipeline folder (or cached hub id) has a second text encoder, else ``sd``.

    Read from ``model_index.json`` (``_class_name`` / a ``text_encoder_2`` entry); a folder
    without one counts as SDXL when it has a ``text_encoder_2/`` sub-folder.
    """
    folder = Path(path)
    index = None
    if (folder / "model_index.json").is_file():
        index = json.loads((folder / "model_index.json").read_text())
    elif folder.is_dir():
        return "sdxl" if (folder / "text_encoder_2").is_dir() else "sd"
    else:
        try:
            from diffusers import DiffusionPipeline

            index = DiffusionPipeline.load_config(path)
        except Exception:  # not cached / no such id: the ordinary loader reports it
            return "sd"
    second = index.get("text_encoder_2")
    has_second = isinstance(second, (list, tuple)) and second[0] is not None
    if has_second or "XL" in str(index.get("_class_name", "")):
        first = index.get("text_encoder")
        if not (isinstance(first, (list, tuple)) and first[0] is not None):
            raise OSError(
                f"{path} has no text_encoder (an SDXL refiner?); dreamdist trains on base checkpoints "
                "such as stabilityai/stable-diffusion-xl-base-1.0"
            )
        return "sdxl"
    return "sd"


def embedding_fingerprint(probe: torch.Tensor) -> str:
    """Short hash of probe rows rounded to 2 decimals (display only; matching uses cosines)."""
    return hashlib.sha256(probe.float().mul(100).round().to(torch.int32).numpy().tobytes()).hexdigest()[:16]
