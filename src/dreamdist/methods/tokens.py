"""New placeholder tokens whose embedding rows are learned (textual inversion, Custom Diffusion's
modifier token, the two-stage method's rare adjective), and diffusers' file format for them.

Only the new rows are parameters: an ``(N, d_tok)`` tensor spliced into the frozen token
embeddings wherever a placeholder id occurs. Every other row of the table is untouched by
construction (no gradient, no optimizer state for the 49k frozen rows); ``sync`` copies the
learned rows into the table so the tokenizer + text encoder (and a diffusers pipeline built on
them) see the concept too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from dreamdist.artifact import atomic_save_safetensors
from dreamdist.backbones import Backbone

TOKEN_FILE_META = "dreamdist_textual_inversion"  # metadata key of a textual-inversion file's description


def vector_names(token: str, num_vectors: int) -> list[str]:
    """diffusers' naming of a multi-vector token: ``<tok>``, ``<tok>_1``, ..., ``<tok>_{N-1}``."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def add_tokens(backbone: Backbone, names: list[str]) -> torch.Tensor:
    """Add ``names`` to the tokenizer(s) (if missing) and grow the frozen embedding table(s) to match.

    Returns:
        (N,) token ids of ``names`` (``Backbone.add_tokens``: the family knows its vocabularies).
    """
    return backbone.add_tokens(names)


def init_word_row(backbone: Backbone, word: str, flag: str) -> torch.Tensor:
    """The token vector (d_tok,) of a word that must be exactly one token (``Backbone.word_row``)."""
    return backbone.word_row(word, flag)


def set_rows(backbone: Backbone, ids: torch.Tensor, vectors: torch.Tensor) -> None:
    """Write ``vectors`` (N, d_tok) into the embedding table(s) at ``ids`` (N,)."""
    backbone.set_token_rows(ids, vectors)


class PlaceholderTokens(nn.Module):
    """N learnable embedding rows for new tokens ``names`` (one concept, N vectors)."""

    def __init__(self, backbone: Backbone, token: str, num_vectors: int, init_word: str, flag: str = "--init-word"):
        """Add the tokens and initialise every vector from ``init_word``'s row.

        Args:
            token: the placeholder as written in prompts, e.g. ``<cat-toy>``; must be new.
            num_vectors: N; vectors 2..N are the extra tokens ``<cat-toy>_1`` ... (diffusers' names).
            init_word: one-token word whose embedding initialises all N rows.
        """
        super().__init__()
        self.token = token
        self.names = vector_names(token, num_vectors)
        taken = [n for n in self.names if any(n in tokenizer.get_vocab() for tokenizer in backbone.tokenizers)]
        if taken:
            raise ValueError(
                f"the token(s) {taken} already exist in the tokenizer; choose a new placeholder with --token "
                "(e.g. '<my-concept>')"
            )
        init = init_word_row(backbone, init_word, flag)  # (d_tok,)
        self.register_buffer("ids", add_tokens(backbone, self.names), persistent=False)  # (N,)
        if len(backbone.tokenizer.encode(token, add_special_tokens=False)) != 1:
            raise ValueError(f"--token {token!r} is not kept as one token by the tokenizer; avoid spaces in it")
        self.vectors = nn.Parameter(init.repeat(num_vectors, 1).to(backbone.device))  # (N, d_tok) fp32
        self.sync(backbone)

    def expand(self, text: str) -> str:
        """Replace the placeholder by all its vector tokens (as diffusers' loader does)."""
        return text.replace(self.token, " ".join(self.names)) if len(self.names) > 1 else text

    def embed(self, backbone: Backbone, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, d_tok) token embeddings with the learned rows spliced in (differentiable)."""
        return backbone.splice_tokens(ids, self.ids, self.vectors)  # (B, L, d_tok)

    def encode(self, backbone: Backbone, texts: list[str]) -> torch.Tensor:
        """Prompts containing the placeholder -> (B, L, d) text features, gradient into ``vectors``."""
        ids = backbone.tokenize([self.expand(t) for t in texts])  # (B, L)
        return backbone.encode_prompt_embeds(self.embed(backbone, ids), backbone.eos_positions(ids))[0]

    def sync(self, backbone: Backbone) -> None:
        """Copy the learned rows into the embedding table (after every optimizer step)."""
        set_rows(backbone, self.ids, self.vectors.detach())


def install_tokens(backbone: Backbone, token: str, vectors: torch.Tensor) -> list[str]:
    """Generation: add ``token`` (N vectors, (N, d_tok)) to a backbone; return its vector names."""
    if vectors.shape[-1] != backbone.token_dim:
        raise ValueError(
            f"token {token!r} has {vectors.shape[-1]}-d vectors but the backbone's token embeddings are "
            f"{backbone.token_dim}-d; load it onto the backbone it was trained on"
        )
    names = vector_names(token, vectors.shape[0])
    set_rows(backbone, add_tokens(backbone, names), vectors)
    return names


def save_learned_embeds(path: Path, token: str, vectors: torch.Tensor, backbone: Backbone | None = None) -> Path:
    """Write ``{token: (N, d_tok)}`` as diffusers' textual-inversion script does (safetensors).

    Loads with ``pipe.load_textual_inversion(path)`` (token name from the file) or
    ``pipe.load_textual_inversion(path, token=...)``. The backbone's family sets the layout
    (``Backbone.token_file_tensors``): on SDXL the file holds ``clip_l`` (N, d_tok1) and ``clip_g``
    (N, d_tok2), the layout diffusers, ComfyUI and A1111 read: load each part into its encoder
    (``load_textual_inversion(file["clip_l"], token=..., text_encoder=pipe.text_encoder,
    tokenizer=pipe.tokenizer)``, and ``clip_g`` with ``text_encoder_2`` / ``tokenizer_2``); on Flux.1 it
    holds ``clip_l`` and ``t5`` (the pivotal-tuning scripts' layout); on SD3 ``clip_l``, ``clip_g`` and
    ``t5`` (without T5, the first two). ``textual_inversion.load_token_file`` loads any of them in one call.
    """
    vectors = vectors.detach().float().cpu()
    if backbone is None:
        atomic_save_safetensors({token: vectors}, path, {"format": "pt"})
        return path
    tensors = backbone.token_file_tensors(token, vectors)
    about = {  # self-describing: which token, which backbone, which key goes into which text encoder
        "token": token,
        "names": vector_names(token, vectors.shape[0]),
        "family": backbone.family,
        "model_id": backbone.model_id,
        "encoders": {key: encoder for key, encoder in backbone.token_file_encoders.items() if key in tensors},
    }
    metadata = {"format": "pt", TOKEN_FILE_META: json.dumps(about)}
    atomic_save_safetensors(tensors, path, metadata)
    return path
