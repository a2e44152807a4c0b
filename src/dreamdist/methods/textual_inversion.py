"""Textual Inversion (Gal et al., 2022), METHODS.md §2: learn only new token embedding(s)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from dreamdist.artifact import Artifact
from dreamdist.backbones import Backbone, family_of_pipeline
from dreamdist.backbones.base import grow_vocabulary
from dreamdist.config import help_
from dreamdist.data import ReferenceSet
from dreamdist.methods import Conditioning, Method
from dreamdist.methods.tokens import (
    TOKEN_FILE_META,
    PlaceholderTokens,
    install_tokens,
    save_learned_embeds,
    vector_names,
)

# the paper's (and diffusers' script's) prompt templates; {} is the placeholder token
OBJECT_TEMPLATES = [
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
]
STYLE_TEMPLATES = [
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a good painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
]
TEMPLATES = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}
EMBEDS_FILE = "learned_embeds.safetensors"


@dataclass
class TextualInversionConfig:
    """Textual Inversion (Gal et al. 2022): new token embedding(s) for the concept; nothing else trains."""

    init_word: str = field(metadata=help_("one-token word whose embedding initialises the new token(s), e.g. 'toy'"))
    token: str = field(default="<concept>", metadata=help_("the new placeholder token, e.g. '<cat-toy>'"))
    num_vectors: int = field(default=1, metadata=help_("embedding vectors for the token (diffusers multi-vector)"))
    template: str = field(default="object", metadata=help_("prompt templates: 'object' or 'style'"))

    def __post_init__(self) -> None:
        if self.num_vectors < 1:
            raise ValueError("--num-vectors must be >= 1")
        if self.template not in TEMPLATES:
            raise ValueError(f"--template must be 'object' or 'style'; got {self.template!r}")
        if not self.token or " " in self.token.strip():
            raise ValueError(f"--token must be one word without spaces, e.g. '<cat-toy>'; got {self.token!r}")


class TextualInversion(Method):
    """One placeholder token (N vectors) in prompts drawn from the object/style templates."""

    name = "textual-inversion"
    default_steps = 5000  # paper: 5000 steps at base lr 5e-3
    default_learning_rate = 5e-3

    def __init__(self, config: TextualInversionConfig):
        self.config = config
        self.tokens: PlaceholderTokens | None = None
        self.backbone: Backbone | None = None

    def setup(
        self, backbone: Backbone, data: ReferenceSet, generator: torch.Generator, run_dir: Path | None = None
    ) -> None:
        cfg = self.config
        self.backbone = backbone
        self.tokens = PlaceholderTokens(backbone, cfg.token, cfg.num_vectors, cfg.init_word)
        texts = [self.tokens.expand(t.format(cfg.token)) for t in TEMPLATES[cfg.template]]
        self.template_ids = backbone.tokenize(texts)  # (T, L)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.tokens]

    def condition(
        self, backbone: Backbone, labels: torch.Tensor, generator: torch.Generator, indices: torch.Tensor | None = None
    ) -> Conditioning:
        """One random template per image: labels (B,) -> hidden (B, L, d)."""
        pick = torch.randint(0, len(self.template_ids), (len(labels),), generator=generator)
        ids = self.template_ids[pick.to(self.template_ids.device)]  # (B, L)
        hidden, _ = backbone.encode_prompt_embeds(self.tokens.embed(backbone, ids), backbone.eos_positions(ids))
        return Conditioning(hidden=hidden)

    def after_step(self) -> None:
        self.tokens.sync(self.backbone)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"token_embeds": self.tokens.vectors.detach().float().cpu()}  # (N, d_tok)

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.tokens.vectors.copy_(tensors["token_embeds"])
        self.tokens.sync(self.backbone)

    def artifact(self, backbone: Backbone) -> tuple[dict[str, torch.Tensor], dict]:
        cfg = self.config
        return self.state_tensors(), {
            "method_config": asdict(cfg),
            "concept": cfg.token,
            "token_names": {cfg.token: self.tokens.names},
        }

    def export(self, backbone: Backbone, folder: Path) -> dict:
        """``learned_embeds.safetensors``: ``pipe.load_textual_inversion(folder)`` where the file is one tensor,
        ``load_token_file(pipe, file, token)`` where it holds a part per text encoder (SDXL, Flux.1)."""
        save_learned_embeds(folder / EMBEDS_FILE, self.config.token, self.tokens.vectors, backbone)
        return {"diffusers": {"textual_inversion": EMBEDS_FILE, "token": self.config.token, "family": backbone.family}}


def prepare(backbone: Backbone, artifacts: list[Artifact]) -> None:
    """Add the learned token(s) to the backbone's tokenizer and embedding table."""
    for artifact in artifacts:
        install_tokens(backbone, artifact.meta["concept"], artifact.tensors["token_embeds"])


def load_token_file(pipe, path: str | Path, token: str | None = None) -> list[str]:
    """Load a textual-inversion file into a plain diffusers pipeline, each part into its text encoder.

    A file with one tensor (SD) goes to ``pipe.load_textual_inversion``; a file with a part per text
    encoder (SDXL: ``clip_l``, ``clip_g``; Flux.1: ``clip_l``, ``t5``, as diffusers' advanced Flux
    DreamBooth-LoRA script writes it; SD3: ``clip_l``, ``clip_g``, ``t5``, through ``load_rows`` as
    StableDiffusion3Pipeline has no loader) is loaded part by part, as that script's inference snippet does:
    ``pipe.load_textual_inversion(file["t5"], token=..., text_encoder=pipe.text_encoder_2,
    tokenizer=pipe.tokenizer_2)`` adds the token to that tokenizer, resizes that embedding table and
    writes the rows (``<token>_1``, ... for extra vectors). Prompts containing ``token`` then use the
    learned rows in every encoder.

    Args:
        pipe: a diffusers pipeline of the family the file was trained on.
        path: the file (``learned_embeds.safetensors``) or the run folder holding it.
        token: the placeholder (default: the one recorded in the file's metadata).
    Returns:
        The vector tokens added to each tokenizer (``[token, token_1, ...]``).
    """
    from safetensors import safe_open

    path = Path(path)
    path = path / EMBEDS_FILE if path.is_dir() else path
    with safe_open(str(path), framework="pt") as handle:
        about = json.loads((handle.metadata() or {}).get(TOKEN_FILE_META, "{}"))
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    token = token or about.get("token")
    encoders = family_of_pipeline(pipe).token_file_encoders
    if not encoders or len(tensors) == 1:  # one tensor: diffusers reads the token from the key
        pipe.load_textual_inversion(str(path), token=token)
        vectors = next(iter(tensors.values()))
    else:  # the encoders this pipeline holds (SD3 may run without T5)
        encoders = {key: name for key, name in encoders.items() if pipe.components.get(name) is not None}
        missing = sorted(set(encoders) - set(tensors))
        if missing or token is None:
            raise ValueError(
                f"{path} does not fit a {type(pipe).__name__}: it lacks {missing or 'the token name'}; "
                f"pass the file of a run trained on this family (keys {sorted(encoders)}) and token=..."
            )
        for key, encoder in encoders.items():
            tokenizer = pipe.components[encoder.replace("text_encoder", "tokenizer")]
            load_rows(pipe, tensors[key], token, pipe.components[encoder], tokenizer)
        vectors = tensors[next(iter(encoders))]
    return vector_names(token, 1 if vectors.ndim == 1 else vectors.shape[0])


def load_rows(pipe, vectors: torch.Tensor, token: str, text_encoder, tokenizer) -> None:
    """One part of a textual-inversion file, (N, d_i) or (d_i,), into one text encoder of ``pipe``.

    With diffusers' textual-inversion loader (SD, SDXL, Flux.1): ``pipe.load_textual_inversion(vectors,
    token=..., text_encoder=..., tokenizer=...)``. StableDiffusion3Pipeline has none: the vector tokens are
    added to the tokenizer, the table is resized and the rows written, as that loader does (its prompts
    then name every vector token, ``<token> <token>_1 ...``, for it expands no prompt).
    """
    if hasattr(pipe, "load_textual_inversion"):
        pipe.load_textual_inversion(vectors, token=token, text_encoder=text_encoder, tokenizer=tokenizer)
        return
    rows = vectors.reshape(-1, vectors.shape[-1])  # (N, d_i)
    ids = grow_vocabulary(tokenizer, text_encoder, vector_names(token, len(rows)))
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        table[torch.tensor(ids, device=table.device)] = rows.to(table.device, table.dtype)


load_flux_textual_inversion = load_token_file  # the name Flux.1 users look for; one function for every family
