"""Generation for the subject-personalisation baselines (TI, DreamBooth, Custom Diffusion, two-stage).

Their artifacts name a *concept*: the words that stand for what was learned (TI: ``<cat-toy>``;
DreamBooth: ``sks dog``; Custom Diffusion: ``<new1> dog``; two-stage: ``<rare> backpack``). After the
method's ``prepare`` has loaded its weights/tokens into the backbone, a prompt is ordinary text with
``{}`` replaced by the concept, encoded once by the (possibly fine-tuned) text encoder.
"""

from __future__ import annotations

import torch

from dreamdist.artifact import Artifact
from dreamdist.backbones import Backbone
from dreamdist.config import GenerateConfig
from dreamdist.methods import PromptSampler

DEFAULT_PREFIX = "a photo of"


def concept_prompt(config: GenerateConfig, concept: str) -> str:
    """``--prompt 'a photo of {} on the beach'`` (``{}`` -> concept), else ``--prefix concept --suffix``."""
    if config.prompt:
        if "{}" not in config.prompt:
            raise ValueError(
                f"--prompt must contain {{}} where the learned concept goes (here {concept!r}), "
                "e.g. --prompt 'a photo of {} on the beach'"
            )
        return config.prompt.replace("{}", concept)
    prefix = DEFAULT_PREFIX if config.prefix is None else config.prefix
    return " ".join(part for part in (prefix, concept, config.suffix or "") if part)


def expand_tokens(text: str, token_names: dict[str, list[str]]) -> str:
    """Write each multi-vector placeholder as its vector tokens (``<t>`` -> ``<t> <t>_1 ...``)."""
    for token, names in token_names.items():
        if len(names) > 1:
            text = text.replace(token, " ".join(names))
    return text


def concept_sampler(backbone: Backbone, artifacts: list[Artifact], config: GenerateConfig) -> PromptSampler:
    """The same prompt features for every image: ``(L, d)`` of the concept prompt (seed-independent)."""
    if len(artifacts) != 1:
        raise ValueError(
            f"{artifacts[0].method} artifacts cannot be mixed; --mix composes DreamDistribution artifacts only"
        )
    meta = artifacts[0].meta
    text = concept_prompt(config, meta["concept"])
    with torch.no_grad():
        hidden = backbone.encode_text([expand_tokens(text, meta.get("token_names", {}))])[0]  # (L, d)
    info = {"prompt": text, "concept": meta["concept"]}
    return lambda index, generator: (hidden, dict(info))
