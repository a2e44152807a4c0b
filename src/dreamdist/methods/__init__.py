"""Method protocol and registry.

A method is a small config dataclass plus an object with the protocol below; the one training
loop (``dreamdist.training.loop``) and the one generator (``dreamdist.generation``) drive them.
Every artifact names its method, so ``load_artifact`` + ``REGISTRY[meta["method"]]`` opens any.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

from dreamdist.artifact import Artifact
from dreamdist.backbones import Backbone
from dreamdist.config import GenerateConfig
from dreamdist.data import ReferenceSet


@dataclass
class PriorBatch:
    """A second batch the loop denoises with the same loss, weighted by ``weight`` (prior preservation).

    ``latents`` (B', C, h, w): scaled clean latents; ``hidden`` (B', L, d): their text features.
    """

    latents: torch.Tensor
    hidden: torch.Tensor
    weight: float = 1.0


@dataclass
class Conditioning:
    """What a method hands the loop for one batch of B images.

    ``hidden`` (R*B, L, d): text features for the UNet, ordered repeat-major (row r*B + b);
    the loop repeats the noisy latents R times to match (R = S samples for DreamDistribution).
    ``aux_loss``: an extra scalar added to the diffusion loss (already weighted), or None.
    ``prior``: an extra batch whose denoising loss the loop adds with ``prior.weight``, or None.
    ``combine``: (R, B) per-row denoising losses -> the scalar loss (e.g. the best of R per image);
    None = their mean.
    """

    hidden: torch.Tensor
    repeats: int = 1
    aux_loss: torch.Tensor | None = None
    logs: dict[str, float] = field(default_factory=dict)
    prior: PriorBatch | None = None
    combine: Callable[[torch.Tensor], torch.Tensor] | None = None


# (image index, the image's own CPU generator) -> (prompt features (L, d), manifest fields)
PromptSampler = Callable[[int, torch.Generator], tuple[torch.Tensor, dict]]


class Method(Protocol):
    """The small protocol every method implements (composition, not a base class).

    Methods subclass it explicitly to inherit the defaults of its optional hooks (``param_groups``,
    ``begin_step``, ``checkpoint_steps``, ``stage``, ``export``, ``after_step``); the loop calls
    every hook unconditionally.
    """

    name: str
    default_steps: int
    default_learning_rate: float
    default_batch_size: int = 4
    default_timesteps: tuple[float, float] = (0.0, 1.0)  # noise levels trained, [low, high) fractions of the schedule
    checkpoint_steps: tuple[int, ...] | set[int] = ()  # extra steps after which a checkpoint is written
    stage: int | None = None  # recorded in checkpoint metadata (multi-stage methods)

    def param_groups(self, learning_rate: float) -> list[dict] | None:
        """Optimizer groups (e.g. one learning rate per stage); None: one group of the trainables."""
        return None

    def begin_step(self, step: int, total_steps: int) -> None:
        """Before each step (e.g. switch stages; may raise on a bad plan at step 0)."""

    def export(self, backbone: Backbone, folder: Path) -> dict[str, Any]:
        """Write diffusers-format files beside the artifact; the dict is merged into its metadata."""
        return {}

    def setup(
        self, backbone: Backbone, data: ReferenceSet, generator: torch.Generator, run_dir: Path | None = None
    ) -> None:
        """Add tokens/processors/adapters, create trainable state, freeze everything else.

        ``run_dir`` is the run folder (for caches such as prior-preservation class images).
        """

    def trainable_modules(self) -> list[nn.Module]:
        """Modules holding the trainable parameters (prepared by accelerate for DDP)."""

    def condition(
        self, backbone: Backbone, labels: torch.Tensor, generator: torch.Generator, indices: torch.Tensor | None = None
    ) -> Conditioning:
        """Text conditioning for a batch with concept ``labels`` (B,).

        ``indices`` (B,): which reference images are in the batch (rows of ``ReferenceSet``), for
        methods that keep per-image state; None when the batch is not made of references.
        """

    def after_step(self) -> None:
        """Called after each optimizer step (e.g. restore untouched embedding rows)."""
        return None

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Trainable state for checkpoints (safetensors-compatible)."""

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what ``state_tensors`` returned."""

    def artifact(self, backbone: Backbone) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and method metadata of the final artifact."""


# (backbone, artifacts) -> None: load an artifact's weights/tokens into a backbone before generation
Prepare = Callable[[Backbone, list[Artifact]], None]


class MethodEntry(NamedTuple):
    """A registry line: config dataclass, implementation, generation sampler factory, and the
    optional generation-time preparation (load the method's weights into the backbone)."""

    config: type
    implementation: type
    sampler: Callable
    prepare: Prepare | None = None


def _registry() -> dict[str, MethodEntry]:
    from dreamdist.methods import custom_diffusion as cd
    from dreamdist.methods import dreambooth as db
    from dreamdist.methods import dreamdistribution as dd
    from dreamdist.methods import textual_inversion as ti
    from dreamdist.methods import two_stage as ts
    from dreamdist.methods.concept import concept_sampler

    return {
        "dreamdistribution": MethodEntry(dd.DreamDistributionConfig, dd.DreamDistribution, dd.prompt_sampler),
        "textual-inversion": MethodEntry(ti.TextualInversionConfig, ti.TextualInversion, concept_sampler, ti.prepare),
        "dreambooth": MethodEntry(db.DreamBoothConfig, db.DreamBooth, concept_sampler, db.prepare),
        "custom-diffusion": MethodEntry(cd.CustomDiffusionConfig, cd.CustomDiffusion, concept_sampler, cd.prepare),
        "two-stage": MethodEntry(ts.TwoStageConfig, ts.TwoStage, concept_sampler, ts.prepare),
    }


def method_names() -> list[str]:
    return sorted(_registry())


def get_method(name: str) -> MethodEntry:
    """(config class, implementation class, generation sampler factory, prepare) of a method."""
    registry = _registry()
    key = name.lower().replace("_", "-").replace("-", "")
    for known, entry in registry.items():
        if known.replace("_", "").replace("-", "") == key:
            return entry
    raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(registry))}")


def _method_of(artifacts: list[Artifact]) -> MethodEntry:
    methods = {a.method for a in artifacts}
    if len(methods) != 1:
        raise ValueError(f"cannot mix artifacts of different methods: {sorted(methods)}")
    return get_method(methods.pop())


def prepare_backbone(backbone: Backbone, artifacts: list[Artifact]) -> None:
    """Load the artifacts' weights/tokens into ``backbone`` (in place; once, before sampling)."""
    prepare = _method_of(artifacts).prepare
    if prepare is not None:
        prepare(backbone, artifacts)


def sampler_for(backbone: Backbone, artifacts: list[Artifact], config: GenerateConfig) -> PromptSampler:
    """The generation-time prompt sampler of the artifacts' method (on a prepared backbone)."""
    return _method_of(artifacts).sampler(backbone, artifacts, config)
