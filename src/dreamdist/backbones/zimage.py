"""The Z-Image family: a Qwen3 decoder-LLM text encoder and a single-stream flow transformer (METHODS.md §12).

Why Z-Image as the decoder-LLM family: one 4 B LLM encoder (Qwen3-4B) and a 6 B transformer, the
smallest of the three candidates (Qwen-Image: a 20 B transformer and a 7 B Qwen2.5-VL encoder; Flux.2:
Mistral-24B, or a Qwen3 encoder too for Klein), under Apache-2.0, run by a plain diffusers pipeline
(``ZImagePipeline``).

What differs from the other families, and how dreamdist represents it:

- One text encoder, a *causal* LLM (``text_encoder``, a ``Qwen3Model``). ``ZImagePipeline.encode_prompt``
  wraps the prompt in the tokenizer's chat template (a user message, then the assistant's turn, thinking
  enabled), pads it to ``max_sequence_length`` (``<model>/dreamdist.json``'s, else the pipeline's 512),
  runs the LLM with the attention mask and keeps ``hidden_states[-2]`` at the unmasked positions: a
  variable-length (L_i, D) sequence per prompt, handed to the pipeline as a list.
- Prompt features are fixed-size tensors here, ``(max_sequence_length, D)``: the unmasked sequence,
  then zero rows. Every K prompt of one template has the same length, but concepts of a multi-class
  run, text edits and mixes do not; zero rows keep them stackable, stay exactly zero under the
  Gaussian and the mixture (their std over the prompts is 0) and are dropped before the transformer
  (``caption_list``), so it sees exactly what the pipeline would.
- Soft tokens live in the LLM's input embeddings, at the user message's place inside the chat template:
  the template's text around a placeholder message is tokenized, the prefix / M slots / suffix laid
  between (``ZImagePromptTemplate``), and the LLM runs on ``inputs_embeds`` with the mask. The LLM is
  causal: the learned tokens only change the features of the positions after them (the suffix, the end
  of the user turn and the assistant header); the chat head before them is the same for every prompt.
  The features of the last position (after everything) serve as the pooled vector of the
  orthogonality loss.
- The denoiser is a ``ZImageTransformer2DModel``: a list of (C, 1, h, w) latents and a list of caption
  sequences, a timestep ``1 - sigma`` (the pipeline's ``(1000 - t) / 1000``), and it predicts
  ``x0 - noise``: the pipeline negates it before the Euler step. ``denoise`` returns the negated output,
  the velocity ``noise - x0`` that ``noise.FlowMatchNoise`` trains (shift from the scheduler config).
- Classifier-free guidance as ``ZImagePipeline`` does it: ``pos + g (pos - neg)`` with g its own
  ``guidance_scale`` (0 turns it off; default the model folder's, else the pipeline's 5.0), the negative
  prompt encoded as prompts are, and the folder's ``cfg_normalization`` / ``cfg_truncation`` if it names them.
- DreamDistribution only: no textual inversion or LoRA yet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
from transformers import AutoModel, AutoTokenizer

from dreamdist.backbones.base import Backbone, read_generation_defaults
from dreamdist.backbones.noise import FlowMatchNoise

ZIMAGE_MAX_SEQUENCE = 512  # ZImagePipeline's default max_sequence_length
ZIMAGE_GUIDANCE = 5.0  # ZImagePipeline's default guidance_scale (its own convention: 0 = no guidance)
ZIMAGE_SAMPLE_SIZE = 1024  # ZImagePipeline's default height and width
PLACEHOLDER = "\u2063SLOT\u2063"  # a user message no prompt contains, split out of the chat-formatted text
CFG_OPTIONS = ("cfg_normalization", "cfg_truncation")  # ZImagePipeline options a model folder may set


@dataclass
class ZImagePromptTemplate:
    """A soft prompt's fixed tokens: ``before`` (a,) = pads on the left (a left-padding tokenizer) + chat head +
    prefix, ``after`` (b,) = suffix + end of the user turn + assistant header, ``mask`` (a + M + b,) True where
    a token is real (False on pads)."""

    before: torch.Tensor
    after: torch.Tensor
    mask: torch.Tensor


def is_zimage_transformer(folder: Path) -> bool:
    """Whether ``folder/transformer/config.json`` is a ``ZImageTransformer2DModel``'s."""
    config = folder / "transformer" / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == "ZImageTransformer2DModel"
    except (OSError, ValueError):
        return False


@dataclass
class ZImageBackbone(Backbone):
    """A Z-Image checkpoint: ``tokenizer``/``text_encoder`` (Qwen3), VAE (with ``shift_factor``), ``transformer``
    and the flow-matching scheduler."""

    tokenizer: object  # a Qwen2Tokenizer with a chat template
    text_encoder: torch.nn.Module  # a Qwen3Model
    vae: AutoencoderKL
    transformer: ZImageTransformer2DModel
    scheduler: FlowMatchEulerDiscreteScheduler
    model_id: str = "components"
    scheduler_config: dict = field(default_factory=dict)
    generation_defaults: dict = field(default_factory=dict)
    max_sequence_length: int = ZIMAGE_MAX_SEQUENCE

    name = "zimage"
    display_name = "Z-Image"
    methods = ("dreamdistribution",)
    pipelines = {"text2img": "ZImagePipeline"}
    denoiser_name = "transformer"
    text_encoder_names = ("text_encoder",)
    method_refusals = {
        "textual-inversion": "no token-file format exists for Z-Image's LLM encoder yet",
        "dreambooth": "LoRA on Z-Image's transformer is not wired up yet",
        "custom-diffusion": "Z-Image's transformer attends jointly over text and image tokens, with no separate "
        "cross-attention",
    }

    def __post_init__(self) -> None:
        if not self.scheduler_config:
            self.scheduler_config = dict(self.scheduler.config)
        if self.token_dim != self.feature_dim:
            raise ValueError(
                f"the LLM width {self.token_dim} differs from the transformer's cap_feat_dim {self.feature_dim}"
            )
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("the Z-Image tokenizer has no chat_template; ZImagePipeline formats every prompt with it")
        self._negatives: dict[str, torch.Tensor] = {}  # negative prompt -> (L_max, D) features

    # ---------------------------------------------------------------- loading
    @classmethod
    def recognises(cls, index: dict | None, folder: Path) -> bool:
        """A ``ZImage*Pipeline`` in ``model_index.json``, or a ``transformer/`` that is a ZImageTransformer2DModel."""
        kind = str((index or {}).get("_class_name", ""))
        if kind.startswith("ZImage") and kind.endswith("Pipeline"):
            return True
        return is_zimage_transformer(Path(folder))

    @classmethod
    def load(
        cls, path: str, model_id: str, device: torch.device, dtype: torch.dtype, allow_pickle: bool = False
    ) -> ZImageBackbone:
        """Load a Z-Image pipeline folder or cached hub id (see ``Backbone.from_pretrained``)."""
        safe = {} if allow_pickle else {"use_safetensors": True}
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
            text_encoder = AutoModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype, **safe)
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, **safe)
            transformer = ZImageTransformer2DModel.from_pretrained(
                path, subfolder="transformer", torch_dtype=dtype, **safe
            )
            scheduler_config = FlowMatchEulerDiscreteScheduler.load_config(path, subfolder="scheduler")
        except (OSError, ValueError) as exc:
            hint = " Pass --allow-pickle for .bin weights." if "safetensors" in str(exc).lower() else ""
            raise OSError(
                f"could not load a Z-Image checkpoint from {model_id!r}: {exc}\nPass a diffusers ZImagePipeline "
                "folder (tokenizer/, text_encoder/, vae/, transformer/, scheduler/) or a hub id that is cached "
                f"locally.{hint}"
            ) from exc
        defaults = read_generation_defaults(path)
        length = int(defaults.get("max_sequence_length", ZIMAGE_MAX_SEQUENCE))
        backbone = cls(
            tokenizer,
            text_encoder,
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
        return [self.tokenizer]

    @property
    def token_embedding(self) -> torch.nn.Embedding:
        """The LLM's input token table, (vocab, d)."""
        return self.text_encoder.get_input_embeddings()

    @property
    def token_dim(self) -> int:
        """Width of the LLM's input token vectors (2560 for Qwen3-4B)."""
        return int(self.token_embedding.weight.shape[1])

    @property
    def feature_dim(self) -> int:
        """D: the transformer's caption width (``cap_feat_dim``; the LLM's hidden size)."""
        return int(self.transformer.config.cap_feat_dim)

    @property
    def sample_size(self) -> int:
        """Default image side: the model folder's ``height``, else ZImagePipeline's 1024."""
        return int(self.generation_defaults.get("height", ZIMAGE_SAMPLE_SIZE))

    @property
    def prediction_type(self) -> str:
        return FlowMatchNoise.prediction_type

    # ---------------------------------------------------------------- tokens
    def token_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """(N,) ids -> (N, d) fp32 CPU copies of the LLM's input embedding rows."""
        table = self.token_embedding.weight
        return table[ids.to(table.device)].detach().float().cpu()

    def set_token_rows(self, ids: torch.Tensor, vectors: torch.Tensor) -> None:
        raise ValueError("Z-Image backbones take no new vocabulary tokens yet (textual inversion is not available)")

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., L) ids -> (..., L, d) the LLM's input embeddings."""
        return self.token_embedding(ids.to(self.device))

    def token_parts(self, vectors: torch.Tensor) -> list[torch.Tensor]:
        return [vectors]

    # ---------------------------------------------------------------- text
    def chat_text(self, content: str) -> str:
        """``content`` as ZImagePipeline formats it: the user message of the chat template, thinking enabled."""
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True, enable_thinking=True
        )

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Texts -> (B, L_max) chat-formatted ids, padded and truncated as ZImagePipeline tokenizes them."""
        return self._tokens(texts).input_ids.to(self.device)

    def _tokens(self, texts: list[str]):
        return self.tokenizer(
            [self.chat_text(text) for text in texts],
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            return_tensors="pt",
        )

    def llm_features(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, d) input embeddings and (B, L) bool mask -> (B, L, D) ``hidden_states[-2]``, as the pipeline reads it."""
        return self.text_encoder(
            inputs_embeds=embeds.to(self.text_encoder.dtype), attention_mask=mask, output_hidden_states=True
        ).hidden_states[-2]

    def padded(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, D) LLM features and (B, L) mask -> (B, L_max, D): each row's unmasked features, then zero rows."""
        out = hidden.new_zeros(hidden.shape[0], self.max_sequence_length, hidden.shape[-1])
        rows = []
        for features, keep in zip(hidden, mask):
            real = features[keep]  # (L_i, D)
            rows.append(torch.cat([real, out[0, real.shape[0] :]]))  # (L_max, D)
        return torch.stack(rows)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Plain prompts -> (B, L_max, D) features: ZImagePipeline.encode_prompt's sequences, zero-padded."""
        tokens = self._tokens(texts)
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device).bool()  # (B, L_max)
        return self.padded(self.llm_features(self.embed_tokens(ids), mask), mask)

    def encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L_max) ids from ``tokenize`` -> (B, L_max, D) features (the mask: every position but the pads)."""
        mask = ids != self.tokenizer.pad_token_id
        return self.padded(self.llm_features(self.embed_tokens(ids), mask), mask)

    def eos_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise ValueError("Z-Image prompts have no pooled position; encode text with encode_text")

    def encode_prompt_embeds(
        self, token_embeds: torch.Tensor, eos_positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError("Z-Image prompts need their attention mask: use encode_text or encode_soft_prompts")

    def split_features(self, features: torch.Tensor) -> tuple[torch.Tensor, None]:
        """(..., L_max, D) -> the zero-padded sequences themselves (``caption_list`` drops the pads); no pooled."""
        return features, None

    def prompt_template(self, num_tokens: int, prefix: str = "", suffix: str = "") -> ZImagePromptTemplate:
        """The chat-formatted text of the user message ``prefix [num_tokens slots] suffix``, tokenized around them.

        The chat head + prefix and the suffix + chat tail are tokenized apart, split where the text has a
        space (the suffix keeps its leading space, as in the whole text), so the real words get the ids they
        get in the text ``prefix word suffix``.
        """
        head, tail = self.chat_text(PLACEHOLDER).split(PLACEHOLDER)
        prefix, suffix = prefix.strip(), suffix.strip()
        words = lambda text: self.tokenizer(text, add_special_tokens=False).input_ids if text else []  # noqa: E731
        before = words(head + prefix)
        after = words((" " + suffix if suffix else "") + tail)
        used = len(before) + num_tokens + len(after)
        if used > self.max_sequence_length:
            raise ValueError(
                f"prompt too long: the chat template, prefix and suffix ({len(before) + len(after)} tokens) + "
                f"{num_tokens} learned tokens = {used} > {self.max_sequence_length}; shorten the prefix/suffix"
            )
        pads = []  # a right-padding tokenizer's pads come after every real token: the causal LLM never sees them
        if self.tokenizer.padding_side == "left":
            pads = [self.tokenizer.pad_token_id] * (self.max_sequence_length - used)
        mask = torch.tensor([False] * len(pads) + [True] * used)
        return ZImagePromptTemplate(torch.tensor(pads + before), torch.tensor(after, dtype=torch.long), mask)

    def encode_soft_prompts(
        self, vectors: torch.Tensor, template: ZImagePromptTemplate
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft prompts through the LLM at the user message's place.

        Args:
            vectors: (N, M, d) learned token vectors.
            template: ``prompt_template``'s tokens around them.
        Returns:
            features (N, L_max, D) (zero-padded) and the last real position's features (N, D) as pooled vectors.
        """
        n = vectors.shape[0]
        before = self.embed_tokens(template.before).expand(n, -1, -1)  # (N, a, d)
        after = self.embed_tokens(template.after).expand(n, -1, -1)  # (N, b, d)
        embeds = torch.cat([before, vectors.to(before.dtype), after], dim=1)  # (N, a + M + b, d)
        mask = template.mask.to(self.device).expand(n, -1)  # (N, a + M + b)
        hidden = self.llm_features(embeds, mask)  # (N, a + M + b, D)
        return self.padded(hidden, mask), hidden[:, -1]

    def feature_slots(self, template: ZImagePromptTemplate, num_tokens: int) -> torch.Tensor:
        """(M,) the slots' positions in the zero-padded features: after the real tokens before them (``padded``
        drops a left-padding tokenizer's pads)."""
        start = len(template.before) - int((~template.mask[: len(template.before)]).sum())
        return torch.arange(start, start + num_tokens)

    # ---------------------------------------------------------------- training
    @property
    def noise_process(self) -> FlowMatchNoise:
        """Rectified flow with the scheduler config's ``shift`` (3.0 for Z-Image; logit-normal timestep density)."""
        return FlowMatchNoise.from_scheduler_config(self.scheduler_config)

    @property
    def default_guidance(self) -> float:
        """The model folder's ``guidance_scale`` (0 for Turbo), else ZImagePipeline's 5.0 (``pos + g (pos - neg)``)."""
        return float(self.generation_defaults.get("guidance_scale", ZIMAGE_GUIDANCE))

    @staticmethod
    def caption_list(features: torch.Tensor) -> list[torch.Tensor]:
        """(N, L_max, D) zero-padded features -> N (L_i, D) sequences without their zero rows."""
        return [rows[rows.ne(0).any(dim=-1)] for rows in features]

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The velocity ``noise - x0`` for (N, C, h, w) noisy latents, (N,) t in (0, 1), (N, L_max, D) features.

        As ZImagePipeline's loop: each latent a (C, 1, h, w) frame, the timestep ``(1000 - 1000 t) / 1000``, the
        captions without padding; the transformer predicts ``x0 - noise``, so its output is negated.
        """
        dtype = self.transformer.dtype
        scale = float(self.scheduler_config.get("num_train_timesteps", 1000))
        t = timesteps.to(self.device, torch.float32) * scale  # the scheduler's timesteps
        frames = list(noisy.to(dtype).unsqueeze(2).unbind(dim=0))  # N x (C, 1, h, w)
        out = self.transformer(frames, (scale - t) / scale, self.caption_list(features.to(dtype)), return_dict=False)[0]
        return -torch.stack(out).squeeze(2)  # (N, C, h, w)

    def bucket_step(self, size: int) -> int:
        """Bucket sides are multiples of one transformer patch (2 latents), and at least size / 16."""
        return max(2 * self.vae_scale_factor, size // 16)

    # ---------------------------------------------------------------- generation
    def negative_features(self, text: str) -> torch.Tensor:
        """(L_max, D) features of the negative prompt (cached; encoded as every prompt)."""
        if text not in self._negatives:
            with torch.no_grad():
                self._negatives[text] = self.encode_text([text])[0]
        return self._negatives[text]

    def pipeline_call_kwargs(self, features: torch.Tensor, negative_prompt: str, guidance_scale: float) -> dict:
        """``prompt_embeds`` as a list of (L_i, D) sequences, ``guidance_scale``, the folder's CFG options, and
        above 0 the negative prompt's sequences (``negative_prompt_embeds``)."""
        kwargs = {"prompt_embeds": self.caption_list(features), "guidance_scale": guidance_scale}
        kwargs.update({key: self.generation_defaults[key] for key in CFG_OPTIONS if key in self.generation_defaults})
        if guidance_scale <= 0:  # the pipeline runs no classifier-free guidance then
            return kwargs
        negative = self.negative_features(negative_prompt).to(features.device, features.dtype)
        return {**kwargs, "negative_prompt_embeds": self.caption_list(negative.expand(len(features), -1, -1))}

    # ---------------------------------------------------------------- files
    def assemble_pipeline(self, kind: str, scheduler, controlnet=None):
        """A ``ZImagePipeline`` over the backbone's modules (no progress bar)."""
        if controlnet is not None:
            raise ValueError("ControlNet is not available on Z-Image backbones yet")
        parts = {
            "scheduler": scheduler,
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "tokenizer": self.tokenizer,
            "transformer": self.transformer,
        }
        pipe = self.pipeline_class(kind)(**parts)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # ---------------------------------------------------------------- identity
    def shape_facts(self) -> dict:
        """LLM vocabulary and width, the caption length, the transformer's caption width."""
        return {
            "vocab_size": int(self.token_embedding.weight.shape[0]),
            "token_dim": self.token_dim,
            "hidden_dim": self.feature_dim,
            "max_length": self.max_sequence_length,
            "cross_attention_dim": self.feature_dim,
        }
