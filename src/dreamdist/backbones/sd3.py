"""The SD3 / SD3.5 family: CLIP-L, CLIP-G and T5, an MMDiT on rectified flow (METHODS.md §12).

What differs from the other families, and how dreamdist represents it:

- Three text encoders, each tokenized by its own tokenizer as ``StableDiffusion3Pipeline.encode_prompt``
  does: CLIP-L (``text_encoder``) and CLIP-G (``text_encoder_2``), both ``CLIPTextModelWithProjection``
  over 77 tokens, give their penultimate hidden states (``clip_skip`` layers earlier with
  ``<model>/dreamdist.json``'s ``clip_skip``) and their projected EOS features; T5 (``text_encoder_3``)
  gives its sequence over ``max_sequence_length`` tokens (``dreamdist.json``'s, else the pipeline's
  256, at most the tokenizer's ``model_max_length``). SD3 runs without T5: then its rows are zeros
  of the transformer's ``joint_attention_dim``, exactly as the pipeline makes them.
- Per-token features: CLIP-L ‖ CLIP-G (zero-padded to the T5 width D) for the 77 CLIP positions,
  then the T5 sequence, then one row holding the pooled vector (CLIP-L's ‖ CLIP-G's projections,
  2048 wide at real size) in its first channels, zeros after (as SDXL's and Flux's pooled row):
  ``(77 + L + 1, D)``.
- Soft tokens live in the input embeddings of every encoder present: a token vector is joint, its
  CLIP-L row, CLIP-G row and T5 row side by side (``token_parts`` splits it). The fixed words around
  the learned slots are laid out per tokenizer (``SD3PromptTemplate``): CLIP-L and CLIP-G share one
  vocabulary but pad differently (CLIP-G pads with ``!``), T5 has no BOS (Flux's ``t5_layout``).
- Token ids of a prompt are *joint*, as Flux's: CLIP-L's 77, CLIP-G's 77 (its own pads), then T5's L when
  present (``tokenize``); their embeddings are laid out block-wise, each encoder's rows in its own
  positions and channels (``embed_tokens``), which ``encode_prompt_embeds`` splits again. A new vocabulary
  token (textual inversion) gets one id in both CLIP tokenizers, which names it (``token_rows``,
  ``set_token_rows``), and its own id in T5's; its joint vector fills all three rows. The
  textual-inversion file holds ``clip_l``, ``clip_g`` and ``t5`` (SDXL's pivotal-tuning keys plus
  Flux's ``t5``); StableDiffusion3Pipeline has no textual-inversion loader, so
  ``textual_inversion.load_token_file`` adds the rows to each tokenizer and table itself.
- LoRA adapts the transformer's attention projections (``SD3_LORA_TARGETS``, the diffusers SD3
  DreamBooth-LoRA script's defaults), and with ``--train-text-encoder`` the CLIP encoders' attention (T5 has
  no part in the file: refused when present), saved with ``StableDiffusion3Pipeline.save_lora_weights`` in
  peft's key names; there is no kohya export (kohya's SD3 names fuse q, k and v).
- The denoiser is an ``SD3Transformer2DModel`` (it patchifies the latents itself) trained with
  rectified flow (``noise.FlowMatchNoise``, the scheduler's ``shift``: 3.0 for SD3.5). Unlike Flux,
  it takes the scheduler's timesteps as they are: ``t = sigma * num_train_timesteps``.
- Generation uses real classifier-free guidance (``guidance_scale``, the pipeline's default 7.0)
  against the negative prompt's embeddings, encoded as the pipeline encodes negatives (no clip skip).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from dreamdist.backbones.base import (
    PROBE_ROWS,
    Backbone,
    PromptTemplate,
    added_token_ids,
    grow_vocabulary,
    read_generation_defaults,
    read_index,
    splice_rows,
)
from dreamdist.backbones.flux import t5_layout
from dreamdist.backbones.noise import FlowMatchNoise
from dreamdist.backbones.sd import CLIP_LORA_TARGETS

SD3_MAX_SEQUENCE = 256  # StableDiffusion3Pipeline's default T5 length
SD3_GUIDANCE = 7.0  # StableDiffusion3Pipeline's default guidance_scale
# the diffusers SD3 DreamBooth-LoRA script's default targets: q, k, v, out of every joint block's attention
# and its text-stream projections ("attn." leaves SD3.5's extra image self-attention, attn2, alone)
SD3_LORA_TARGETS = [
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "attn.to_k",
    "attn.to_out.0",
    "attn.to_q",
    "attn.to_v",
]


@dataclass
class SD3PromptTemplate:
    """A soft prompt's fixed words laid out for each tokenizer: ``clip_l`` and ``clip_g`` (BOS prefix [M]
    suffix EOS pads, each with its own pad token) and ``t5`` (prefix [M] suffix </s> pads; None without T5)."""

    clip_l: PromptTemplate
    clip_g: PromptTemplate
    t5: PromptTemplate | None


def is_sd3_transformer(folder: Path) -> bool:
    """Whether ``folder/transformer/config.json`` is an ``SD3Transformer2DModel``'s."""
    config = folder / "transformer" / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == "SD3Transformer2DModel"
    except (OSError, ValueError):
        return False


def has_t5(path: str) -> bool:
    """Whether a pipeline folder holds a T5 encoder: listed (not null) in ``model_index.json``, else a
    ``text_encoder_3/`` sub-folder."""
    index = read_index(path)
    if index is not None and "text_encoder_3" in index:
        entry = index["text_encoder_3"]
        return isinstance(entry, (list, tuple)) and entry[0] is not None
    return (Path(path) / "text_encoder_3").is_dir()


def clip_hidden_states(encoder, token_embeds: torch.Tensor) -> list[torch.Tensor]:
    """A CLIP text transformer from (B, 77, d) token embeddings, with an explicit causal mask.

    Returns ``hidden_states`` as ``output_hidden_states=True`` gives them: the embeddings' output, then
    each layer's, each (B, 77, d) (the last one before the final layer norm).
    """
    model = getattr(encoder, "text_model", encoder)
    hidden = model.embeddings(inputs_embeds=token_embeds.to(encoder.dtype))  # (B, L, d) + positions
    batch, length = hidden.shape[:2]
    blocked = torch.ones(length, length, dtype=torch.bool, device=hidden.device).triu(1)
    mask = torch.zeros(length, length, dtype=hidden.dtype, device=hidden.device)
    mask = mask.masked_fill(blocked, torch.finfo(hidden.dtype).min)[None, None].expand(batch, 1, length, length)
    states = [hidden]
    for layer in model.encoder.layers:
        states.append(layer(states[-1], mask))  # (B, L, d)
    return states


@dataclass
class SD3Backbone(Backbone):
    """An SD3 / SD3.5 checkpoint: ``tokenizer``/``text_encoder`` (CLIP-L), ``tokenizer_2``/``text_encoder_2``
    (CLIP-G), optionally ``tokenizer_3``/``text_encoder_3`` (T5), VAE (with ``shift_factor``), ``transformer``
    and the flow-matching scheduler."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModelWithProjection
    tokenizer_2: CLIPTokenizer
    text_encoder_2: CLIPTextModelWithProjection
    tokenizer_3: T5TokenizerFast | None
    text_encoder_3: T5EncoderModel | None
    vae: AutoencoderKL
    transformer: SD3Transformer2DModel
    scheduler: FlowMatchEulerDiscreteScheduler
    model_id: str = "components"
    scheduler_config: dict = field(default_factory=dict)
    generation_defaults: dict = field(default_factory=dict)
    max_sequence_length: int = SD3_MAX_SEQUENCE
    clip_skip: int | None = None

    name = "sd3"
    display_name = "SD3"
    methods = ("dreamdistribution", "textual-inversion", "dreambooth")
    pipelines = {
        "text2img": "StableDiffusion3Pipeline",
        "img2img": "StableDiffusion3Img2ImgPipeline",
    }
    denoiser_name = "transformer"
    text_encoder_names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    # CLIP-L and CLIP-G have LoRA parts in StableDiffusion3Pipeline.save_lora_weights, T5 none
    lora_targets = {
        "transformer": SD3_LORA_TARGETS,
        "text_encoder": CLIP_LORA_TARGETS,
        "text_encoder_2": CLIP_LORA_TARGETS,
    }
    lora_peft_keys = True  # as diffusers' SD3 DreamBooth-LoRA script saves them
    kohya_prefixes = {}  # kohya's SD3 LoRA names fuse q, k and v: no simple mapping from diffusers' layers
    token_file_encoders = {"clip_l": "text_encoder", "clip_g": "text_encoder_2", "t5": "text_encoder_3"}
    method_refusals = {
        "custom-diffusion": "it trains text cross-attention layers, and SD3's MMDiT attends jointly over text and "
        "image tokens with no separate cross-attention",
        "two-stage": "its published recipe (a rare-adjective token, then a full UNet fine-tune without prior) is "
        "defined and measured on SD's UNet only; on SD3 train textual-inversion, then dreambooth --lora",
    }

    def __post_init__(self) -> None:
        if not self.scheduler_config:
            self.scheduler_config = dict(self.scheduler.config)
        if (self.tokenizer_3 is None) != (self.text_encoder_3 is None):
            raise ValueError("SD3Backbone takes tokenizer_3 and text_encoder_3 together, or neither (no T5)")
        if self.text_encoder_3 is not None and int(self.text_encoder_3.config.d_model) != self.feature_dim:
            raise ValueError(
                f"the T5 width {self.text_encoder_3.config.d_model} differs from the transformer's "
                f"joint_attention_dim {self.feature_dim}"
            )
        clip_width = sum(int(e.config.hidden_size) for e in (self.text_encoder, self.text_encoder_2))
        if max(clip_width, self.pooled_dim) > self.feature_dim:
            raise ValueError(
                f"the CLIP features ({clip_width} wide, pooled {self.pooled_dim}) exceed the T5 width {self.feature_dim}"
            )
        self._negatives: dict[str, torch.Tensor] = {}  # negative prompt -> (77 + L + 1, D) features

    # ---------------------------------------------------------------- loading
    @classmethod
    def recognises(cls, index: dict | None, folder: Path) -> bool:
        """A ``StableDiffusion3*Pipeline`` in ``model_index.json``, or a ``transformer/`` that is an
        SD3Transformer2DModel."""
        if str((index or {}).get("_class_name", "")).startswith("StableDiffusion3"):
            return True
        return is_sd3_transformer(Path(folder))

    @classmethod
    def load(
        cls, path: str, model_id: str, device: torch.device, dtype: torch.dtype, allow_pickle: bool = False
    ) -> SD3Backbone:
        """Load an SD3 / SD3.5 pipeline folder or cached hub id, with or without T5 (see ``Backbone.from_pretrained``)."""
        safe = {} if allow_pickle else {"use_safetensors": True}
        clip = CLIPTextModelWithProjection
        try:
            tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
            tokenizer_2 = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2")
            text_encoder = clip.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype, **safe)
            text_encoder_2 = clip.from_pretrained(path, subfolder="text_encoder_2", torch_dtype=dtype, **safe)
            tokenizer_3 = text_encoder_3 = None
            if has_t5(path):
                tokenizer_3 = T5TokenizerFast.from_pretrained(path, subfolder="tokenizer_3")
                text_encoder_3 = T5EncoderModel.from_pretrained(
                    path, subfolder="text_encoder_3", torch_dtype=dtype, **safe
                )
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, **safe)
            transformer = SD3Transformer2DModel.from_pretrained(
                path, subfolder="transformer", torch_dtype=dtype, **safe
            )
            scheduler_config = FlowMatchEulerDiscreteScheduler.load_config(path, subfolder="scheduler")
        except (OSError, ValueError) as exc:
            hint = " Pass --allow-pickle for .bin weights." if "safetensors" in str(exc).lower() else ""
            raise OSError(
                f"could not load an SD3 checkpoint from {model_id!r}: {exc}\nPass a diffusers StableDiffusion3Pipeline "
                "folder (tokenizer/, tokenizer_2/, text_encoder/, text_encoder_2/, optionally tokenizer_3/ and "
                f"text_encoder_3/, vae/, transformer/, scheduler/) or a hub id that is cached locally.{hint}"
            ) from exc
        if len(tokenizer) != len(tokenizer_2) or tokenizer.eos_token_id != tokenizer_2.eos_token_id:
            raise OSError(
                f"{model_id!r}: tokenizer and tokenizer_2 have different vocabularies ({len(tokenizer)} vs "
                f"{len(tokenizer_2)} tokens); dreamdist needs SD3's shared CLIP vocabulary"
            )
        defaults = read_generation_defaults(path)
        length = int(defaults.get("max_sequence_length", SD3_MAX_SEQUENCE))
        limit = getattr(tokenizer_3, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < length:
            length = limit
        clip_skip = defaults.get("clip_skip")
        backbone = cls(
            tokenizer,
            text_encoder,
            tokenizer_2,
            text_encoder_2,
            tokenizer_3,
            text_encoder_3,
            vae,
            transformer,
            FlowMatchEulerDiscreteScheduler.from_config(scheduler_config),
            model_id,
            dict(scheduler_config),
            defaults,
            max_sequence_length=length,
            clip_skip=None if clip_skip is None else int(clip_skip),
        )
        return backbone.to(device, dtype)

    # ---------------------------------------------------------------- shapes
    @property
    def named_text_encoders(self) -> dict[str, torch.nn.Module]:
        """The text encoders present (T5 may be absent), by pipeline-module name."""
        encoders = {name: getattr(self, name) for name in self.text_encoder_names}
        return {name: encoder for name, encoder in encoders.items() if encoder is not None}

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return list(self.named_text_encoders.values())

    @property
    def tokenizers(self) -> list:
        return [t for t in (self.tokenizer, self.tokenizer_2, self.tokenizer_3) if t is not None]

    @property
    def token_widths(self) -> list[int]:
        """Width of each present encoder's input token vectors (768, 1280, 4096 for real SD3)."""
        return [int(e.get_input_embeddings().weight.shape[1]) for e in self.text_encoders]

    @property
    def token_dim(self) -> int:
        return sum(self.token_widths)

    @property
    def feature_dim(self) -> int:
        """D: the transformer's text width, T5's (4096 for real SD3)."""
        return int(self.transformer.config.joint_attention_dim)

    @property
    def pooled_dim(self) -> int:
        """Width of the pooled vector: both CLIP projections (768 + 1280 for real SD3)."""
        return int(self.text_encoder.config.projection_dim) + int(self.text_encoder_2.config.projection_dim)

    @property
    def clip_length(self) -> int:
        """CLIP's token count (the pipeline's ``tokenizer_max_length``, 77)."""
        return int(self.tokenizer.model_max_length)

    @property
    def token_embedding(self) -> torch.nn.Embedding:
        """CLIP-L's token table (the joint vectors are ``token_rows``)."""
        return self.text_encoder.get_input_embeddings()

    @property
    def sample_size(self) -> int:
        """Default image side: the model folder's ``height``, else the pipeline's (transformer sample size x VAE)."""
        return int(self.generation_defaults.get("height", self.transformer.config.sample_size * self.vae_scale_factor))

    @property
    def prediction_type(self) -> str:
        return FlowMatchNoise.prediction_type

    # ---------------------------------------------------------------- tokens
    def _t5_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(N,) CLIP ids -> (N,) T5 ids of the same added tokens (placeholders); -1 for CLIP's own words."""
        return added_token_ids(self.tokenizer, self.tokenizer_3, ids)

    def token_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """(N,) CLIP ids -> (N, d_tok) fp32 CPU rows: CLIP-L's and CLIP-G's rows (one vocabulary), then the T5
        row of the same added token (a placeholder) or zeros (CLIP's own words; the nearest-word display then
        ranks by the CLIP parts)."""
        rows = []
        for encoder in (self.text_encoder, self.text_encoder_2):
            table = encoder.get_input_embeddings().weight
            rows.append(table[ids.to(table.device)].detach().float().cpu())  # (N, d_i)
        if self.text_encoder_3 is not None:
            t5_table = self.text_encoder_3.get_input_embeddings().weight
            t5 = torch.zeros(len(ids), t5_table.shape[1])  # (N, d_t5)
            t5_ids = self._t5_ids(ids)
            known = t5_ids >= 0
            if known.any():
                t5[known] = t5_table[t5_ids[known].to(t5_table.device)].detach().float().cpu()
            rows.append(t5)
        return torch.cat(rows, dim=-1)

    def probe_rows(self) -> torch.Tensor:
        """(PROBE_ROWS, d_tok): rows spread over every present encoder's vocabulary, side by side."""
        rows = []
        for encoder in self.text_encoders:
            table = encoder.get_input_embeddings().weight
            ids = torch.linspace(0, table.shape[0] - 1, PROBE_ROWS).long().to(table.device)
            rows.append(table[ids].detach().float().cpu())
        return torch.cat(rows, dim=-1)

    def _token_ids(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """(N,) CLIP ids -> each present encoder's (N,) ids of the same tokens (CLIP-L's = CLIP-G's; T5's own)."""
        return [ids, ids] + ([self._t5_ids(ids.cpu()).to(ids.device)] if self.text_encoder_3 is not None else [])

    def set_token_rows(self, ids: torch.Tensor, vectors: torch.Tensor) -> None:
        """Write (N, d_tok) joint vectors at (N,) CLIP ids: the CLIP-L and CLIP-G parts there, the T5 part at the
        same tokens' T5 ids (tokens added with ``add_tokens``; other words have no T5 row of their own)."""
        per_encoder = self._token_ids(ids)
        if (per_encoder[-1] < 0).any():
            names = self.tokenizer.convert_ids_to_tokens(ids[per_encoder[-1].cpu() < 0].tolist())
            raise ValueError(f"{names} are not tokens added to every SD3 tokenizer; add them with add_tokens first")
        for encoder, rows, part in zip(self.text_encoders, per_encoder, self.token_parts(vectors)):
            table = encoder.get_input_embeddings().weight
            with torch.no_grad():
                table[rows.to(table.device)] = part.to(table.device, table.dtype)

    def add_tokens(self, names: list[str]) -> torch.Tensor:
        """Add ``names`` to every tokenizer and size every table; (N,) CLIP ids (one id in both CLIP tokenizers)."""
        clip_l = grow_vocabulary(self.tokenizer, self.text_encoder, names)
        clip_g = grow_vocabulary(self.tokenizer_2, self.text_encoder_2, names)
        if clip_l != clip_g:
            raise ValueError(
                f"the tokens {names} got different ids in SD3's CLIP tokenizers ({clip_l} vs {clip_g}); "
                "their vocabularies must stay one"
            )
        if self.text_encoder_3 is not None:
            grow_vocabulary(self.tokenizer_3, self.text_encoder_3, names)
        return torch.tensor(clip_l, dtype=torch.long)

    def word_row(self, word: str, flag: str) -> torch.Tensor:
        """(d_tok,): ``word``'s CLIP-L and CLIP-G rows (it must be one CLIP token) and the mean of its T5 pieces'
        rows when T5 is present."""
        row = super().word_row(word, flag)  # CLIP rows, zeros for T5
        if self.text_encoder_3 is None:
            return row
        pieces = self.tokenizer_3.encode(word, add_special_tokens=False)
        if not pieces:
            raise ValueError(f"{flag} {word!r} is no token at all for T5; choose a common word")
        table = self.text_encoder_3.get_input_embeddings().weight
        clip_width = sum(self.token_widths[:2])
        row[clip_width:] = table[torch.tensor(pieces, device=table.device)].detach().float().mean(0).cpu()
        return row

    def token_parts(self, vectors: torch.Tensor) -> list[torch.Tensor]:
        """(N, d_tok) -> [(N, d_l) CLIP-L, (N, d_g) CLIP-G, (N, d_t5) T5 when present]."""
        return list(vectors.split(self.token_widths, dim=-1))

    def token_file_tensors(self, token: str, vectors: torch.Tensor) -> dict[str, torch.Tensor]:
        """``clip_l`` (N, d_l), ``clip_g`` (N, d_g) and, with T5, ``t5`` (N, d_t5): SDXL's pivotal-tuning keys and
        Flux's ``t5``, loaded part by part by ``textual_inversion.load_token_file``."""
        keys = list(self.token_file_encoders)[: len(self.text_encoders)]
        return {key: part.contiguous() for key, part in zip(keys, self.token_parts(vectors))}

    # ---------------------------------------------------------------- text
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Texts -> (B, 77 + 77 [+ L]) joint ids: CLIP-L's, CLIP-G's (its own pads), then T5's when present, each
        padded and truncated as StableDiffusion3Pipeline tokenizes them."""
        parts = [self._ids(tokenizer, texts, length) for tokenizer, length in zip(self.tokenizers, self.id_lengths)]
        return torch.cat(parts, dim=-1)

    @property
    def id_lengths(self) -> list[int]:
        """Positions of each present tokenizer in the joint ids: 77, 77 (and L with T5)."""
        return [self.clip_length, self.clip_length, self.max_sequence_length][: len(self.tokenizers)]

    def _blocks(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Each encoder's (..., L_i, d_i) token embeddings -> (..., sum L_i, d_tok), each in its own positions and
        channels, zeros elsewhere."""
        widths = [part.shape[-1] for part in parts]
        blocks, start = [], 0
        for part, width in zip(parts, widths):
            blocks.append(F.pad(part.to(parts[0].dtype), (start, sum(widths) - start - width)))
            start += width
        return torch.cat(blocks, dim=-2)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., 77 + 77 [+ L]) joint ids -> (..., 77 + 77 [+ L], d_tok) block-laid token embeddings."""
        parts = ids.split(self.id_lengths, dim=-1)
        return self._blocks([e.get_input_embeddings()(part) for e, part in zip(self.text_encoders, parts)])

    def splice_tokens(self, ids: torch.Tensor, token_ids: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """As ``Backbone.splice_tokens`` for joint ids: each part of each vector where the token's id in that
        encoder's vocabulary occurs among that encoder's positions.

        Args:
            ids: (B, 77 + 77 [+ L]) joint ids.
            token_ids: (N,) CLIP ids of the placeholders.
            vectors: (N, d_tok) their joint vectors.
        Returns:
            (B, 77 + 77 [+ L], d_tok) block-laid embeddings, differentiable w.r.t. ``vectors``.
        """
        per_encoder = zip(ids.split(self.id_lengths, dim=-1), self._token_ids(token_ids), self.token_parts(vectors))
        spliced = [
            splice_rows(encoder.get_input_embeddings()(part_ids), part_ids, tokens, part)  # (B, L_i, d_i)
            for encoder, (part_ids, tokens, part) in zip(self.text_encoders, per_encoder)
        ]
        return self._blocks(spliced)

    def _ids(self, tokenizer, texts: list[str], length: int) -> torch.Tensor:
        """(B, length) ids of ``texts``, padded and truncated as StableDiffusion3Pipeline tokenizes them."""
        return tokenizer(
            texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)

    def eos_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, 77 ...) CLIP (or joint) ids -> (B,) index of the first EOS in the first 77 (CLIP's pooled position;
        the same words put it at the same place for CLIP-G)."""
        return (input_ids[..., : self.clip_length] == self.tokenizer.eos_token_id).int().argmax(dim=-1)

    def clip_features(
        self, encoder, token_embeds: torch.Tensor, eos_positions: torch.Tensor, clip_skip: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One CLIP encoder from (B, 77, d) token embeddings and (B,) EOS indices, as the pipeline reads it.

        Returns ``hidden_states[-(clip_skip + 2)]`` (B, 77, d) (the penultimate layer when ``clip_skip``
        is None) and the projected pooled feature ``text_embeds`` (B, d_proj).
        """
        states = clip_hidden_states(encoder, token_embeds)  # embeddings + one per layer, each (B, 77, d)
        hidden = states[-(clip_skip + 2)] if clip_skip is not None else states[-2]
        last = encoder.text_model.final_layer_norm(states[-1])
        eos = last[torch.arange(last.shape[0], device=last.device), eos_positions]  # (B, d)
        return hidden, encoder.text_projection(eos)  # (B, 77, d), (B, d_proj)

    def t5_sequence(self, token_embeds: torch.Tensor | None, batch: int) -> torch.Tensor:
        """(B, L, d_t5) T5 input embeddings -> (B, L, D) encoder output (no mask, as the pipeline); without T5,
        (batch, L, D) zeros as the pipeline makes them."""
        if self.text_encoder_3 is None:
            return torch.zeros(batch, self.max_sequence_length, self.feature_dim, device=self.device, dtype=self.dtype)
        return self.text_encoder_3(inputs_embeds=token_embeds.to(self.text_encoder_3.dtype)).last_hidden_state

    def join_features(
        self, clip_l: torch.Tensor, clip_g: torch.Tensor, t5: torch.Tensor, pooled: torch.Tensor
    ) -> torch.Tensor:
        """(B, 77, d_l), (B, 77, d_g), (B, L, D) and (B, d_pool) -> (B, 77 + L + 1, D) prompt features."""
        clip = torch.cat([clip_l, clip_g.to(clip_l.dtype)], dim=-1)  # (B, 77, d_l + d_g)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1])).to(t5.dtype)  # (B, 77, D)
        row = torch.zeros((pooled.shape[0], 1, t5.shape[-1]), dtype=t5.dtype, device=t5.device)
        row[:, 0, : pooled.shape[-1]] = pooled.to(t5.dtype)  # (B, 1, D)
        return torch.cat([clip, t5, row], dim=-2)

    def split_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., 77 + L + 1, D) -> ``prompt_embeds`` (..., 77 + L, D) and ``pooled_prompt_embeds`` (..., d_pool)."""
        return features[..., :-1, :], features[..., -1, : self.pooled_dim]

    def encode_prompt_embeds(
        self, token_embeds: torch.Tensor, eos_positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every encoder from block-laid token embeddings (``embed_tokens``), with the backbone's ``clip_skip``.

        Args:
            token_embeds: (B, 77 + 77 [+ L], d_tok): each encoder's rows in its own positions and channels.
            eos_positions: (B,) CLIP's EOS index (its pooled position).
        Returns:
            features (B, 77 + L + 1, D) and the pooled vectors (B, d_pool).
        """
        embeds, start, offset = [], 0, 0
        for length, width in zip(self.id_lengths, self.token_widths):
            embeds.append(token_embeds[:, start : start + length, offset : offset + width])  # (B, L_i, d_i)
            start, offset = start + length, offset + width
        clip_l, pooled_l = self.clip_features(self.text_encoder, embeds[0], eos_positions, self.clip_skip)
        clip_g, pooled_g = self.clip_features(self.text_encoder_2, embeds[1], eos_positions, self.clip_skip)
        t5 = self.t5_sequence(embeds[2] if len(embeds) > 2 else None, len(token_embeds))  # (B, L, D)
        pooled = torch.cat([pooled_l, pooled_g], dim=-1)  # (B, d_pool)
        return self.join_features(clip_l, clip_g, t5, pooled), pooled

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Plain prompts -> (B, 77 + L + 1, D) prompt features, as StableDiffusion3Pipeline.encode_prompt
        computes them (with the backbone's ``clip_skip``)."""
        return self.encode_text_skipping(texts, self.clip_skip)

    def encode_text_skipping(self, texts: list[str], skip: int | None) -> torch.Tensor:
        """``encode_text`` reading the CLIP states ``skip`` layers before the penultimate (None: the penultimate)."""
        parts = []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = self._ids(tokenizer, texts, self.clip_length)  # (B, 77)
            parts.append(
                self.clip_features(encoder, encoder.get_input_embeddings()(ids), self.eos_positions(ids), skip)
            )
        t5_embeds = None
        if self.text_encoder_3 is not None:
            t5_ids = self._ids(self.tokenizer_3, texts, self.max_sequence_length)  # (B, L)
            t5_embeds = self.text_encoder_3.get_input_embeddings()(t5_ids)  # (B, L, d_t5)
        pooled = torch.cat([parts[0][1], parts[1][1]], dim=-1)  # (B, d_pool)
        return self.join_features(parts[0][0], parts[1][0], self.t5_sequence(t5_embeds, len(texts)), pooled)

    def prompt_template(self, num_tokens: int, prefix: str = "", suffix: str = "") -> SD3PromptTemplate:
        """CLIP-L's, CLIP-G's and T5's layouts of ``prefix [num_tokens slots] suffix``."""
        t5 = None
        if self.tokenizer_3 is not None:
            t5 = t5_layout(self.tokenizer_3, self.max_sequence_length, num_tokens, prefix, suffix)
        return SD3PromptTemplate(
            clip_l=PromptTemplate.layout(self.tokenizer, num_tokens, prefix, suffix),
            clip_g=PromptTemplate.layout(self.tokenizer_2, num_tokens, prefix, suffix),
            t5=t5,
        )

    def encode_soft_prompts(
        self, vectors: torch.Tensor, template: SD3PromptTemplate
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft prompts through every encoder present: each part of the joint vectors into its encoder.

        Args:
            vectors: (N, M, d_tok) joint learned token vectors (CLIP-L ‖ CLIP-G ‖ T5 parts).
            template: ``prompt_template``'s per-tokenizer layouts.
        Returns:
            features (N, 77 + L + 1, D) and the pooled vectors (N, d_pool).
        """
        n = vectors.shape[0]
        layouts = [template.clip_l, template.clip_g, template.t5][: len(self.text_encoders)]
        embeds = []
        for encoder, part, layout in zip(self.text_encoders, self.token_parts(vectors), layouts):
            table = encoder.get_input_embeddings()
            before = table(layout.before.to(self.device)).expand(n, -1, -1)  # (N, a, d_i)
            after = table(layout.after.to(self.device)).expand(n, -1, -1)  # (N, b, d_i)
            embeds.append(torch.cat([before, part.to(before.dtype), after], dim=1))  # (N, L_i, d_i)
        eos = torch.full((n,), template.clip_l.eos_position, device=self.device)  # same words: same EOS in both
        clip_l, pooled_l = self.clip_features(self.text_encoder, embeds[0], eos, self.clip_skip)
        clip_g, pooled_g = self.clip_features(self.text_encoder_2, embeds[1], eos, self.clip_skip)
        t5 = self.t5_sequence(embeds[2] if len(embeds) > 2 else None, n)  # (N, L, D)
        pooled = torch.cat([pooled_l, pooled_g], dim=-1)  # (N, d_pool)
        return self.join_features(clip_l, clip_g, t5, pooled), pooled

    def feature_slots(self, template: SD3PromptTemplate, num_tokens: int) -> torch.Tensor:
        """(M or 2M,) the slots' positions in the features: in the CLIP block (CLIP-L ‖ CLIP-G, 77 rows) and,
        with T5, in the T5 block after it."""
        start = len(template.clip_l.before)
        slots = [torch.arange(start, start + num_tokens)]
        if template.t5 is not None:
            start = self.clip_length + len(template.t5.before)
            slots.append(torch.arange(start, start + num_tokens))
        return torch.cat(slots)

    # ---------------------------------------------------------------- training
    @property
    def noise_process(self) -> FlowMatchNoise:
        """Rectified flow with the scheduler config's ``shift`` (3.0 for SD3.5; logit-normal timestep density)."""
        return FlowMatchNoise.from_scheduler_config(self.scheduler_config)

    @property
    def default_guidance(self) -> float:
        """The model folder's ``guidance_scale``, else the pipeline's 7.0."""
        return float(self.generation_defaults.get("guidance_scale", SD3_GUIDANCE))

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The transformer's velocity for (N, C, h, w) noisy latents, (N,) t in (0, 1) and (N, 77 + L + 1, D)
        features; the transformer takes ``t * num_train_timesteps``, the scheduler's timesteps, as the pipeline
        passes them."""
        dtype = self.transformer.dtype
        hidden, pooled = self.split_features(features.to(dtype))  # (N, 77 + L, D), (N, d_pool)
        scale = float(self.scheduler_config.get("num_train_timesteps", 1000))
        return self.transformer(
            hidden_states=noisy.to(dtype),
            timestep=(timesteps.to(self.device, torch.float32) * scale).to(dtype),
            encoder_hidden_states=hidden,
            pooled_projections=pooled,
            return_dict=False,
        )[0]  # (N, C, h, w)

    def bucket_step(self, size: int) -> int:
        """Bucket sides are multiples of one transformer patch in pixels, and at least size / 16."""
        return max(int(self.transformer.config.patch_size) * self.vae_scale_factor, size // 16)

    # ---------------------------------------------------------------- generation
    def negative_features(self, text: str) -> torch.Tensor:
        """(77 + L + 1, D) features of the negative prompt (cached; no clip skip, as the pipeline encodes negatives)."""
        if text not in self._negatives:
            with torch.no_grad():
                self._negatives[text] = self.encode_text_skipping([text], None)[0]
        return self._negatives[text]

    def pipeline_call_kwargs(self, features: torch.Tensor, negative_prompt: str, guidance_scale: float) -> dict:
        """``prompt_embeds`` + ``pooled_prompt_embeds``, ``guidance_scale``, and above 1 the negative prompt's
        embeddings (``negative_prompt_embeds``, ``negative_pooled_prompt_embeds``)."""
        embeds, pooled = self.split_features(features)  # (b, 77 + L, D), (b, d_pool)
        kwargs = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "guidance_scale": guidance_scale}
        if guidance_scale <= 1:  # the pipeline runs no classifier-free guidance then
            return kwargs
        negative = self.negative_features(negative_prompt).to(features.device, features.dtype)
        negative_embeds, negative_pooled = self.split_features(negative.expand(len(features), -1, -1))
        return {**kwargs, "negative_prompt_embeds": negative_embeds, "negative_pooled_prompt_embeds": negative_pooled}

    # ---------------------------------------------------------------- files
    def assemble_pipeline(self, kind: str, scheduler, controlnet=None):
        """A ``StableDiffusion3*Pipeline`` of ``kind`` over the backbone's modules (T5 may be None; no progress bar)."""
        if controlnet is not None:
            raise ValueError("ControlNet is not available on SD3 backbones yet")
        parts = {
            "transformer": self.transformer,
            "scheduler": scheduler,
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "tokenizer": self.tokenizer,
            "text_encoder_2": self.text_encoder_2,
            "tokenizer_2": self.tokenizer_2,
            "text_encoder_3": self.text_encoder_3,
            "tokenizer_3": self.tokenizer_3,
        }
        pipe = self.pipeline_class(kind)(**parts)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # ---------------------------------------------------------------- identity
    def shape_facts(self) -> dict:
        """CLIP vocabulary, joint token width, T5 width and length, pooled width, whether T5 is present."""
        t5 = self.text_encoder_3
        return {
            "vocab_size": int(self.token_embedding.weight.shape[0]),
            "t5_vocab_size": 0 if t5 is None else int(t5.get_input_embeddings().weight.shape[0]),
            "token_dim": self.token_dim,
            "hidden_dim": self.feature_dim,
            "pooled_dim": self.pooled_dim,
            "max_length": self.max_sequence_length,
            "cross_attention_dim": self.feature_dim,
            "t5": t5 is not None,
        }
