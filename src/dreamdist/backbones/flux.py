"""The Flux.1 family (dev and schnell): CLIP pooled + T5 sequence, a rectified-flow transformer (METHODS.md §12).

What differs from the SD families, and how dreamdist represents it:

- Two text encoders with different tokenizers: CLIP (``text_encoder``; only its pooled EOS feature,
  77 tokens) and T5 (``text_encoder_2``; the per-token sequence, ``max_sequence_length`` tokens:
  ``<model>/dreamdist.json``'s, else FluxPipeline's 512, at most the tokenizer's ``model_max_length``).
- Soft tokens live in the encoders' *input* embeddings (the paper's choice): a token vector is
  joint, its CLIP row followed by its T5 row (``token_parts`` splits it), pushed through both
  encoders. The template around the learned slots is laid out per tokenizer (``FluxPromptTemplate``):
  CLIP ``BOS prefix V suffix EOS pads``, T5 ``prefix V suffix </s> <pad>...`` (no BOS).
- Token ids of a prompt are *joint*: CLIP's 77 ids, then T5's L ids (``tokenize``); their embeddings are
  laid out block-wise, CLIP rows in the CLIP channels of the first 77 positions and T5 rows in the T5
  channels of the last L (``embed_tokens``), which ``encode_prompt_embeds`` splits again. A new
  vocabulary token (textual inversion) is added to both tokenizers; its CLIP id names it
  (``token_rows``, ``set_token_rows``) and its joint vector fills both rows. The textual-inversion file
  holds ``clip_l`` and ``t5``, as diffusers' advanced Flux DreamBooth-LoRA (pivotal tuning) script writes it.
- LoRA adapts the transformer's attention projections (``FLUX_LORA_TARGETS``), saved with
  ``FluxPipeline.save_lora_weights``; there is no kohya export (kohya's Flux names fuse q, k and v).
- Prompt features are ``(L + 1, d_t5)``: the T5 sequence, then one row holding the CLIP pooled
  vector in its first ``d_pool`` channels (zeros after), as SDXL's pooled row. The Gaussian and the
  mixture treat it like any other row.
- The denoiser is a ``FluxTransformer2DModel`` over 2 x 2 packed latents with RoPE ids; trained with
  rectified flow (``noise.FlowMatchNoise``); it takes t = sigma in (0, 1). Flux.1-dev also takes a
  *guidance embedding* (``guidance_embeds``): the model-folder default or 3.5, in training too.
- Classifier-free guidance at generation: a guidance-embedding model gets ``guidance_scale`` and no
  negative prompt; a model without one (schnell-shaped, ``toy-flow``) gets ``true_cfg_scale`` with
  the negative prompt's embeddings, encoded through the same path as the prompts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from dreamdist.backbones.base import (
    PROBE_ROWS,
    Backbone,
    PromptTemplate,
    added_token_ids,
    grow_vocabulary,
    read_generation_defaults,
    splice_rows,
)
from dreamdist.backbones.noise import FlowMatchNoise
from dreamdist.backbones.sdxl import _run_clip

FLUX_MAX_SEQUENCE = 512  # FluxPipeline's default (and maximum) T5 length
FLUX_GUIDANCE = 3.5  # FluxPipeline's default embedded guidance
FLUX_SAMPLE_SIZE = 128  # FluxPipeline.default_sample_size, in latents
# the diffusers Flux DreamBooth-LoRA script's attention targets: q, k, v, out of every block, and the
# double-stream blocks' text-stream projections
FLUX_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_q_proj", "add_v_proj", "to_add_out"]


@dataclass
class FluxPromptTemplate:
    """A soft prompt's fixed words laid out for each tokenizer: ``clip`` (BOS prefix [M] suffix EOS pads)
    and ``t5`` (prefix [M] suffix </s> pads; its ``eos_position`` is that of ``</s>``)."""

    clip: PromptTemplate
    t5: PromptTemplate


def t5_layout(tokenizer, length: int, num_tokens: int, prefix: str = "", suffix: str = "") -> PromptTemplate:
    """T5's layout of ``prefix [num_tokens slots] suffix </s> <pad>...`` over ``length`` tokens (no BOS)."""
    words = lambda text: tokenizer(text, add_special_tokens=False).input_ids if text.strip() else []  # noqa: E731
    pre, post = words(prefix), words(suffix)
    used = len(pre) + num_tokens + len(post) + 1
    if used > length:
        raise ValueError(
            f"prompt too long for T5: prefix ({len(pre)} tokens) + {num_tokens} learned tokens + suffix "
            f"({len(post)} tokens) + </s> = {used} > {length}; shorten the prefix/suffix"
        )
    before = torch.tensor(pre, dtype=torch.long)
    after = torch.tensor([*post, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * (length - used))
    return PromptTemplate(before, after, eos_position=used - 1)


def is_flux_transformer(folder: Path) -> bool:
    """Whether ``folder/transformer/config.json`` is a ``FluxTransformer2DModel``'s."""
    config = folder / "transformer" / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == "FluxTransformer2DModel"
    except (OSError, ValueError):
        return False


@dataclass
class FluxBackbone(Backbone):
    """A Flux.1 checkpoint: ``tokenizer``/``text_encoder`` (CLIP), ``tokenizer_2``/``text_encoder_2`` (T5),
    VAE (with ``shift_factor``), ``transformer`` and the flow-matching scheduler."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    tokenizer_2: T5TokenizerFast
    text_encoder_2: T5EncoderModel
    vae: AutoencoderKL
    transformer: FluxTransformer2DModel
    scheduler: FlowMatchEulerDiscreteScheduler
    model_id: str = "components"
    scheduler_config: dict = field(default_factory=dict)
    generation_defaults: dict = field(default_factory=dict)
    max_sequence_length: int = FLUX_MAX_SEQUENCE

    name = "flux"
    display_name = "Flux.1"
    methods = ("dreamdistribution", "textual-inversion", "dreambooth")
    pipelines = {"text2img": "FluxPipeline"}
    denoiser_name = "transformer"
    text_encoder_names = ("text_encoder", "text_encoder_2")
    lora_targets = {"transformer": FLUX_LORA_TARGETS}
    lora_peft_keys = True  # as diffusers' Flux DreamBooth-LoRA script saves them
    kohya_prefixes = {}  # kohya's Flux LoRA names fuse q, k and v: no simple mapping from diffusers' layers
    token_file_encoders = {"clip_l": "text_encoder", "t5": "text_encoder_2"}
    method_refusals = {
        "custom-diffusion": "it trains text cross-attention layers, and Flux.1's transformer attends jointly over "
        "text and image tokens with no separate cross-attention",
        "two-stage": "its published recipe (a rare-adjective token, then a full UNet fine-tune without prior) is "
        "defined and measured on SD's UNet only; on Flux.1 train textual-inversion, then dreambooth --lora",
    }

    def __post_init__(self) -> None:
        if not self.scheduler_config:
            self.scheduler_config = dict(self.scheduler.config)
        if self.pooled_dim > self.feature_dim:
            raise ValueError(f"CLIP pooled width {self.pooled_dim} exceeds the T5 width {self.feature_dim}")
        self._negatives: dict[str, torch.Tensor] = {}  # negative prompt -> (L + 1, D) features

    # ---------------------------------------------------------------- loading
    @classmethod
    def recognises(cls, index: dict | None, folder: Path) -> bool:
        """A ``Flux*Pipeline`` in ``model_index.json``, or a ``transformer/`` that is a FluxTransformer2DModel."""
        kind = str((index or {}).get("_class_name", ""))
        if kind.startswith("Flux") and kind.endswith("Pipeline"):
            return True
        return is_flux_transformer(Path(folder))

    @classmethod
    def load(
        cls, path: str, model_id: str, device: torch.device, dtype: torch.dtype, allow_pickle: bool = False
    ) -> FluxBackbone:
        """Load a Flux.1 pipeline folder or cached hub id (see ``Backbone.from_pretrained``)."""
        safe = {} if allow_pickle else {"use_safetensors": True}
        try:
            tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
            tokenizer_2 = T5TokenizerFast.from_pretrained(path, subfolder="tokenizer_2")
            text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype, **safe)
            text_encoder_2 = T5EncoderModel.from_pretrained(path, subfolder="text_encoder_2", torch_dtype=dtype, **safe)
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, **safe)
            transformer = FluxTransformer2DModel.from_pretrained(
                path, subfolder="transformer", torch_dtype=dtype, **safe
            )
            scheduler_config = FlowMatchEulerDiscreteScheduler.load_config(path, subfolder="scheduler")
        except (OSError, ValueError) as exc:
            hint = " Pass --allow-pickle for .bin weights." if "safetensors" in str(exc).lower() else ""
            raise OSError(
                f"could not load a Flux.1 checkpoint from {model_id!r}: {exc}\nPass a diffusers FluxPipeline folder "
                "(tokenizer/, tokenizer_2/, text_encoder/, text_encoder_2/, vae/, transformer/, scheduler/) or a hub "
                f"id that is cached locally.{hint}"
            ) from exc
        defaults = read_generation_defaults(path)
        length = int(defaults.get("max_sequence_length", FLUX_MAX_SEQUENCE))
        limit = getattr(tokenizer_2, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < length:
            length = limit
        backbone = cls(
            tokenizer,
            text_encoder,
            tokenizer_2,
            text_encoder_2,
            vae,
            transformer,
            FlowMatchEulerDiscreteScheduler.from_config(scheduler_config),
            model_id,
            dict(scheduler_config),
            defaults,
            max_sequence_length=length,
        )
        return backbone.to(device, dtype)

    # ---------------------------------------------------------------- shapes
    @property
    def tokenizers(self) -> list:
        return [self.tokenizer, self.tokenizer_2]

    @property
    def token_widths(self) -> list[int]:
        """Width of each encoder's input token vectors (CLIP-L 768, T5-XXL 4096 for real Flux.1)."""
        return [int(e.get_input_embeddings().weight.shape[1]) for e in self.text_encoders]

    @property
    def token_dim(self) -> int:
        return sum(self.token_widths)

    @property
    def feature_dim(self) -> int:
        """D: the T5 sequence's width (4096 for real Flux.1)."""
        return int(self.text_encoder_2.config.d_model)

    @property
    def pooled_dim(self) -> int:
        """Width of the CLIP pooled vector (768 for real Flux.1)."""
        return int(self.text_encoder.config.hidden_size)

    @property
    def token_embedding(self) -> torch.nn.Embedding:
        """CLIP's token table (the joint vectors are ``token_rows``)."""
        return self.text_encoder.get_input_embeddings()

    @property
    def sample_size(self) -> int:
        """Default image side: the model folder's ``height``, else FluxPipeline's (1024 for real Flux.1)."""
        return int(self.generation_defaults.get("height", FLUX_SAMPLE_SIZE * self.vae_scale_factor))

    @property
    def prediction_type(self) -> str:
        return FlowMatchNoise.prediction_type

    @property
    def guidance_embeds(self) -> bool:
        """Whether the transformer takes a guidance embedding (Flux.1-dev; not schnell)."""
        return bool(getattr(self.transformer.config, "guidance_embeds", False))

    # ---------------------------------------------------------------- tokens
    @property
    def clip_length(self) -> int:
        """CLIP's sequence length (77): the first positions of ``tokenize``'s joint ids."""
        return int(self.tokenizer.model_max_length)

    def _t5_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(N,) CLIP ids -> (N,) T5 ids of the same *added* tokens (placeholders live in both vocabularies);
        -1 where T5 has no such added token (CLIP's own words: the vocabularies differ)."""
        return added_token_ids(self.tokenizer, self.tokenizer_2, ids)

    def token_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """(N,) CLIP ids -> (N, d_clip + d_t5) fp32 CPU rows: the CLIP row, then the T5 row of the same added
        token (a placeholder) or zeros (CLIP's own words; what reads those, the nearest-word display, then
        ranks by CLIP cosine)."""
        clip_table = self.text_encoder.get_input_embeddings().weight
        t5_table = self.text_encoder_2.get_input_embeddings().weight
        clip = clip_table[ids.to(clip_table.device)].detach().float().cpu()  # (N, d_clip)
        t5 = torch.zeros(len(clip), t5_table.shape[1])  # (N, d_t5)
        t5_ids = self._t5_ids(ids)
        known = t5_ids >= 0
        if known.any():
            t5[known] = t5_table[t5_ids[known].to(t5_table.device)].detach().float().cpu()
        return torch.cat([clip, t5], dim=-1)

    def probe_rows(self) -> torch.Tensor:
        """(PROBE_ROWS, d_clip + d_t5): rows spread over both vocabularies, side by side."""
        rows = []
        for encoder in self.text_encoders:
            table = encoder.get_input_embeddings().weight
            ids = torch.linspace(0, table.shape[0] - 1, PROBE_ROWS).long().to(table.device)
            rows.append(table[ids].detach().float().cpu())
        return torch.cat(rows, dim=-1)

    def set_token_rows(self, ids: torch.Tensor, vectors: torch.Tensor) -> None:
        """Write (N, d_clip + d_t5) joint vectors at (N,) CLIP ids: the CLIP part there, the T5 part at the same
        tokens' T5 ids (tokens added with ``add_tokens``; other words have no T5 row of their own)."""
        t5_ids = self._t5_ids(ids)
        if (t5_ids < 0).any():
            names = self.tokenizer.convert_ids_to_tokens(ids[t5_ids < 0].tolist())
            raise ValueError(f"{names} are not tokens added to both Flux.1 tokenizers; add them with add_tokens first")
        for encoder, rows, part in zip(self.text_encoders, (ids, t5_ids), self.token_parts(vectors)):
            table = encoder.get_input_embeddings().weight
            with torch.no_grad():
                table[rows.to(table.device)] = part.to(table.device, table.dtype)

    def add_tokens(self, names: list[str]) -> torch.Tensor:
        """Add ``names`` to the CLIP and the T5 tokenizer and size both tables; (N,) CLIP ids (the names' ids here)."""
        clip = grow_vocabulary(self.tokenizer, self.text_encoder, names)
        grow_vocabulary(self.tokenizer_2, self.text_encoder_2, names)
        return torch.tensor(clip, dtype=torch.long)

    def word_row(self, word: str, flag: str) -> torch.Tensor:
        """(d_clip + d_t5,): ``word``'s CLIP row (it must be one CLIP token) and the mean of its T5 pieces' rows."""
        row = super().word_row(word, flag)  # CLIP row, zeros for T5
        pieces = self.tokenizer_2.encode(word, add_special_tokens=False)
        if not pieces:
            raise ValueError(f"{flag} {word!r} is no token at all for T5; choose a common word")
        table = self.text_encoder_2.get_input_embeddings().weight
        row[self.token_widths[0] :] = table[torch.tensor(pieces, device=table.device)].detach().float().mean(0).cpu()
        return row

    def token_parts(self, vectors: torch.Tensor) -> list[torch.Tensor]:
        """(N, d_clip + d_t5) -> [(N, d_clip) for CLIP ('clip_l'), (N, d_t5) for T5 ('t5')]."""
        return list(vectors.split(self.token_widths, dim=-1))

    def token_file_tensors(self, token: str, vectors: torch.Tensor) -> dict[str, torch.Tensor]:
        """``clip_l`` (N, d_clip) and ``t5`` (N, d_t5): the layout of diffusers' advanced Flux DreamBooth-LoRA
        (pivotal tuning) script, loaded part by part with ``load_textual_inversion``."""
        clip_l, t5 = self.token_parts(vectors)
        return {"clip_l": clip_l.contiguous(), "t5": t5.contiguous()}

    # ---------------------------------------------------------------- text
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Texts -> (B, 77 + L) joint ids: CLIP's (BOS ... EOS pads) then T5's (... </s> pads, L =
        ``max_sequence_length``), each padded and truncated as FluxPipeline tokenizes them."""
        clip = self._ids(self.tokenizer, texts, self.clip_length)  # (B, 77)
        t5 = self._ids(self.tokenizer_2, texts, self.max_sequence_length)  # (B, L)
        return torch.cat([clip, t5], dim=-1)

    def _ids(self, tokenizer, texts: list[str], length: int) -> torch.Tensor:
        """(B, length) ids of ``texts``, padded and truncated as FluxPipeline tokenizes them."""
        return tokenizer(
            texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)

    def _split_ids(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., 77 + L) joint ids -> CLIP's (..., 77) and T5's (..., L)."""
        return ids[..., : self.clip_length], ids[..., self.clip_length :]

    def eos_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, 77 + L) joint ids -> (B,) index of CLIP's first EOS (its pooled position)."""
        clip_ids = input_ids[..., : self.clip_length]
        return (clip_ids == self.tokenizer.eos_token_id).int().argmax(dim=-1)

    def _blocks(self, clip: torch.Tensor, t5: torch.Tensor) -> torch.Tensor:
        """(..., 77, d_clip) CLIP and (..., L, d_t5) T5 embeddings -> (..., 77 + L, d_clip + d_t5), each in its
        own positions and channels, zeros elsewhere."""
        d_clip, d_t5 = self.token_widths
        return torch.cat([F.pad(clip, (0, d_t5)), F.pad(t5.to(clip.dtype), (d_clip, 0))], dim=-2)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., 77 + L) joint ids -> (..., 77 + L, d_clip + d_t5) block-laid token embeddings (``_blocks``)."""
        clip_ids, t5_ids = self._split_ids(ids)
        clip = self.text_encoder.get_input_embeddings()(clip_ids)  # (..., 77, d_clip)
        return self._blocks(clip, self.text_encoder_2.get_input_embeddings()(t5_ids))

    def splice_tokens(self, ids: torch.Tensor, token_ids: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """As ``Backbone.splice_tokens`` for joint ids: the CLIP part of each vector where its CLIP id occurs among
        the CLIP positions, the T5 part where its T5 id occurs among the T5 positions."""
        clip_ids, t5_ids = self._split_ids(ids)
        clip_part, t5_part = self.token_parts(vectors)  # (N, d_clip), (N, d_t5)
        clip = splice_rows(self.text_encoder.get_input_embeddings()(clip_ids), clip_ids, token_ids, clip_part)
        t5_tokens = self._t5_ids(token_ids.cpu()).to(ids.device)  # (N,)
        t5 = splice_rows(self.text_encoder_2.get_input_embeddings()(t5_ids), t5_ids, t5_tokens, t5_part)
        return self._blocks(clip, t5)  # (B, 77 + L, d_clip + d_t5)

    def clip_pooled(self, token_embeds: torch.Tensor, eos_positions: torch.Tensor) -> torch.Tensor:
        """(B, 77, d_clip) CLIP token embeddings, (B,) EOS index -> (B, d_pool) ``pooler_output``
        (causal mask, positions, final layer norm, read at EOS)."""
        _, last = _run_clip(self.text_encoder, token_embeds, last_layer=True)  # (B, 77, d_clip)
        model = getattr(self.text_encoder, "text_model", self.text_encoder)
        last = model.final_layer_norm(last)
        return last[torch.arange(last.shape[0], device=last.device), eos_positions]  # (B, d_pool)

    def t5_sequence(self, token_embeds: torch.Tensor) -> torch.Tensor:
        """(B, L, d_t5) T5 input embeddings -> (B, L, d_t5) encoder output (no mask, as FluxPipeline)."""
        return self.text_encoder_2(inputs_embeds=token_embeds.to(self.text_encoder_2.dtype)).last_hidden_state

    def join_features(self, hidden: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """(..., L, D) T5 sequence and (..., d_pool) CLIP pooled -> (..., L + 1, D) prompt features."""
        row = torch.zeros((*pooled.shape[:-1], 1, hidden.shape[-1]), dtype=hidden.dtype, device=hidden.device)
        row[..., 0, : pooled.shape[-1]] = pooled.to(hidden.dtype)
        return torch.cat([hidden, row], dim=-2)

    def split_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., L + 1, D) -> ``prompt_embeds`` (..., L, D) and ``pooled_prompt_embeds`` (..., d_pool)."""
        return features[..., :-1, :], features[..., -1, : self.pooled_dim]

    def encode_prompt_embeds(
        self, token_embeds: torch.Tensor, eos_positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both encoders from block-laid token embeddings (``embed_tokens``), as FluxPipeline.encode_prompt.

        Args:
            token_embeds: (B, 77 + L, d_clip + d_t5): CLIP's in the first 77 positions' CLIP channels, T5's in
                the last L positions' T5 channels.
            eos_positions: (B,) CLIP's EOS index (its pooled position).
        Returns:
            features (B, L + 1, D) (the T5 sequence + the pooled row) and CLIP's pooled vectors (B, d_pool).
        """
        d_clip = self.token_widths[0]
        pooled = self.clip_pooled(token_embeds[:, : self.clip_length, :d_clip], eos_positions)  # (B, d_pool)
        hidden = self.t5_sequence(token_embeds[:, self.clip_length :, d_clip:])  # (B, L, D)
        return self.join_features(hidden, pooled), pooled

    def prompt_template(self, num_tokens: int, prefix: str = "", suffix: str = "") -> FluxPromptTemplate:
        """CLIP's and T5's layouts of ``prefix [num_tokens slots] suffix``."""
        return FluxPromptTemplate(
            clip=PromptTemplate.layout(self.tokenizer, num_tokens, prefix, suffix),
            t5=t5_layout(self.tokenizer_2, self.max_sequence_length, num_tokens, prefix, suffix),
        )

    def encode_soft_prompts(
        self, vectors: torch.Tensor, template: FluxPromptTemplate
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft prompts through both encoders: the CLIP part of each vector into CLIP, the T5 part into T5.

        Args:
            vectors: (N, M, d_clip + d_t5) joint learned token vectors.
            template: ``prompt_template``'s per-tokenizer layouts.
        Returns:
            features (N, L + 1, D) (T5 sequence + the pooled row) and the CLIP pooled vectors (N, d_pool).
        """
        n = vectors.shape[0]
        clip_part, t5_part = self.token_parts(vectors)  # (N, M, d_clip), (N, M, d_t5)
        embeds = []
        for table, part, layout in (
            (self.text_encoder.get_input_embeddings(), clip_part, template.clip),
            (self.text_encoder_2.get_input_embeddings(), t5_part, template.t5),
        ):
            before = table(layout.before.to(self.device)).expand(n, -1, -1)  # (N, a, d_i)
            after = table(layout.after.to(self.device)).expand(n, -1, -1)  # (N, b, d_i)
            embeds.append(torch.cat([before, part.to(before.dtype), after], dim=1))  # (N, L_i, d_i)
        eos = torch.full((n,), template.clip.eos_position, device=self.device)
        pooled = self.clip_pooled(embeds[0], eos)  # (N, d_pool)
        hidden = self.t5_sequence(embeds[1])  # (N, L, D)
        return self.join_features(hidden, pooled), pooled

    def feature_slots(self, template: FluxPromptTemplate, num_tokens: int) -> torch.Tensor:
        """(M,) the slots' positions in the features: T5's, whose sequence is the features' (CLIP gives the pooled row)."""
        start = len(template.t5.before)
        return torch.arange(start, start + num_tokens)

    # ---------------------------------------------------------------- training
    @property
    def noise_process(self) -> FlowMatchNoise:
        """Rectified flow with the scheduler config's ``shift`` (logit-normal timestep density)."""
        return FlowMatchNoise.from_scheduler_config(self.scheduler_config)

    @property
    def default_guidance(self) -> float:
        """dev: the folder's ``guidance_scale`` or 3.5 (embedded); otherwise the folder's ``true_cfg_scale``
        (or ``guidance_scale``), else 1 (no classifier-free guidance, FluxPipeline's default)."""
        defaults = self.generation_defaults
        if self.guidance_embeds:
            return float(defaults.get("guidance_scale", FLUX_GUIDANCE))
        return float(defaults.get("true_cfg_scale", defaults.get("guidance_scale", 1.0)))

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The transformer's velocity for (N, C, h, w) noisy latents, (N,) t in (0, 1), (N, L + 1, D) features.

        Latents are packed 2 x 2 into (N, h/2 * w/2, 4C) tokens with their RoPE ids, as FluxPipeline does;
        a guidance-embedding model gets ``default_guidance``.
        """
        dtype = self.transformer.dtype
        hidden, pooled = self.split_features(features.to(dtype))  # (N, L, D), (N, d_pool)
        n, channels, height, width = noisy.shape
        packed = FluxPipeline._pack_latents(noisy.to(dtype), n, channels, height, width)  # (N, hw/4, 4C)
        image_ids = FluxPipeline._prepare_latent_image_ids(n, height // 2, width // 2, self.device, dtype)
        text_ids = torch.zeros(hidden.shape[1], 3, device=self.device, dtype=dtype)  # (L, 3)
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((n,), self.default_guidance, device=self.device, dtype=torch.float32)
        pred = self.transformer(
            hidden_states=packed,
            timestep=timesteps.to(self.device, dtype),
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=hidden,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]  # (N, hw/4, 4C)
        scale = self.vae_scale_factor
        return FluxPipeline._unpack_latents(pred, height * scale, width * scale, scale)  # (N, C, h, w)

    def bucket_step(self, size: int) -> int:
        """Bucket sides are multiples of two latents (the 2 x 2 packing), and at least size / 16."""
        return max(2 * self.vae_scale_factor, size // 16)

    # ---------------------------------------------------------------- generation
    def negative_features(self, text: str) -> torch.Tensor:
        """(L + 1, D) features of the negative prompt (cached; the same path as every prompt)."""
        if text not in self._negatives:
            with torch.no_grad():
                self._negatives[text] = self.encode_text([text])[0]
        return self._negatives[text]

    def pipeline_call_kwargs(self, features: torch.Tensor, negative_prompt: str, guidance_scale: float) -> dict:
        """``prompt_embeds`` + ``pooled_prompt_embeds``; then the embedded ``guidance_scale`` (dev), or
        ``true_cfg_scale`` with the negative prompt's embeddings (no guidance embedding; none at scale <= 1)."""
        embeds, pooled = self.split_features(features)  # (b, L, D), (b, d_pool)
        kwargs = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        if self.guidance_embeds:
            return {**kwargs, "guidance_scale": guidance_scale}
        if guidance_scale <= 1:
            return {**kwargs, "true_cfg_scale": 1.0}
        negative = self.negative_features(negative_prompt).to(features.device, features.dtype)
        negative = negative.expand(len(features), -1, -1)  # (b, L + 1, D)
        negative_embeds, negative_pooled = self.split_features(negative)
        return {
            **kwargs,
            "true_cfg_scale": guidance_scale,
            "negative_prompt_embeds": negative_embeds,
            "negative_pooled_prompt_embeds": negative_pooled,
        }

    # ---------------------------------------------------------------- files
    def assemble_pipeline(self, kind: str, scheduler, controlnet=None):
        """A ``FluxPipeline`` over the backbone's modules (no progress bar)."""
        if controlnet is not None:
            raise ValueError("ControlNet is not available on Flux.1 backbones yet")
        parts = {
            "scheduler": scheduler,
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "tokenizer": self.tokenizer,
            "text_encoder_2": self.text_encoder_2,
            "tokenizer_2": self.tokenizer_2,
            "transformer": self.transformer,
        }
        pipe = self.pipeline_class(kind)(**parts)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # ---------------------------------------------------------------- identity
    def shape_facts(self) -> dict:
        """CLIP vocabulary, joint token width, T5 width, sequence length, the transformer's text width."""
        return {
            "vocab_size": int(self.token_embedding.weight.shape[0]),
            "t5_vocab_size": int(self.text_encoder_2.get_input_embeddings().weight.shape[0]),
            "token_dim": self.token_dim,
            "hidden_dim": self.feature_dim,
            "pooled_dim": self.pooled_dim,
            "max_length": self.max_sequence_length,
            "cross_attention_dim": int(self.transformer.config.joint_attention_dim),
            "guidance_embeds": self.guidance_embeds,
        }
