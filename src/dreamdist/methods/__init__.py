"""Method protocol and registry.

A method is a small config dataclass plus an object with the protocol below; the one training
loop (``dreamdist.training.loop``) and the one generator (``dreamdist.generation``) drive them.
Every artifact names its method, so ``load_artifact`` + ``REGISTRY[meta["method"]]`` opens any.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from dreamdist.artifact import Artifact
from dreamdist.backbone import Backbone
from dreamdist.config import GenerateConfig
from dreamdist.data import ReferenceSet


@dataclass
class Conditioning:
    """What a method hands the loop for one batch of B images.

    ``hidden`` (R*B, L, d): text features for the UNet, ordered repeat-major (row r*B + b);
    the loop repeats the noisy latents R times to match (R = S samples for DreamDistribution).
    ``aux_loss``: an extra scalar added to the diffusion loss (already weighted), or None.
    """

    hidden: torch.Tensor
    repeats: int = 1
    aux_loss: torch.Tensor | None = None
    logs: dict[str, float] = field(default_factory=dict)


# (image index, the image's own CPU generator) -> (prompt features (L, d), manifest fields)
PromptSampler = Callable[[int, torch.Generator], tuple[torch.Tensor, dict]]


class Method(Protocol):
    """The small protocol every method implements (composition, not a base class)."""

    name: str
    default_steps: int
    default_learning_rate: float

    def setup(self, backbone: Backbone, data: ReferenceSet, generator: torch.Generator) -> None:
        """Add tokens/processors/adapters, create trainable state, freeze everything else."""

    def trainable_modules(self) -> list[nn.Module]:
        """Modules holding the trainable parameters (prepared by accelerate for DDP)."""

    def condition(self, backbone: Backbone, labels: torch.Tensor, generator: torch.Generator) -> Conditioning:
        """Text conditioning for a batch with concept ``labels`` (B,)."""

    def after_step(self) -> None:
        """Called after each optimizer step (e.g. restore untouched embedding rows)."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Trainable state for checkpoints (safetensors-compatible)."""

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what ``state_tensors`` returned."""

    def artifact(self, backbone: Backbone) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and method metadata of the final artifact."""


def _registry() -> dict[str, tuple[type, type, Callable]]:
    from dreamdist.methods import dreamdistribution as dd

    return {
        "dreamdistribution": (dd.DreamDistributionConfig, dd.DreamDistribution, dd.prompt_sampler),
    }


def method_names() -> list[str]:
    return sorted(_registry())


def get_method(name: str) -> tuple[type, type, Callable]:
    """(config class, implementation class, generation sampler factory) of a method."""
    registry = _registry()
    key = name.lower().replace("_", "-").replace("-", "")
    for known, entry in registry.items():
        if known.replace("_", "").replace("-", "") == key:
            return entry
    raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(registry))}")


def sampler_for(backbone: Backbone, artifacts: list[Artifact], config: GenerateConfig) -> PromptSampler:
    """The generation-time prompt sampler of the artifacts' method."""
    methods = {a.method for a in artifacts}
    if len(methods) != 1:
        raise ValueError(f"cannot mix artifacts of different methods: {sorted(methods)}")
    return get_method(methods.pop())[2](backbone, artifacts, config)
