"""The Python API in one import: ``from dreamdist.api import train, generate, interpret``."""

from __future__ import annotations

from pathlib import Path

from dreamdist.artifact import load_artifact
from dreamdist.backbones import Backbone
from dreamdist.config import GenerateConfig, TrainConfig
from dreamdist.generation import GenerationResult, generate
from dreamdist.training.loop import train
from dreamdist.vocab import nearest_words

__all__ = ["GenerateConfig", "GenerationResult", "TrainConfig", "generate", "interpret", "train"]


def interpret(
    artifact: str | Path, model: str | None = None, top_k: int = 5, allow_pickle: bool = False
) -> dict[str, list[list[tuple[str, float]]]]:
    """Nearest vocabulary words of each learned token (mean over K), per concept.

    Returns ``{class name: [token 1: [(word, cosine), ...], token 2: ..., ...]}``: words as text
    (special tokens and lone bytes skipped, word pieces marked ``…``; ``dreamdist.vocab``).
    """
    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1; got {top_k}")
    art = load_artifact(artifact, allow_pickle)
    if art.meta.get("method_config", {}).get("prompt_space") == "output":
        raise ValueError(
            f"{art.path} learned its prompts in the text encoders' output space (--prompt-space output): they are "
            "feature rows, not token embeddings, so they have no nearest vocabulary words"
        )
    if "vectors" in art.tensors:  # DreamDistribution: (C, K, M, d_tok)
        vectors, names = art.tensors["vectors"], art.meta["class_names"]
    elif "token_embeds" in art.tensors:  # a learned token (textual inversion, two-stage): (N, d_tok)
        vectors, names = art.tensors["token_embeds"][None, None], [art.meta.get("concept", "token")]
    else:
        raise ValueError(f"{art.path} ({art.method}) has no learned token embeddings to interpret")
    backbone = Backbone.from_pretrained(model or art.meta["backbone"]["model_id"], "cpu", "fp32", allow_pickle)
    backbone.check_compatible(art.meta["backbone"], art.tensors.get("backbone.probe"), str(art.path))
    return {name: nearest_words(backbone, vectors[c], top_k) for c, name in enumerate(names)}
