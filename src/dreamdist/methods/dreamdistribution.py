"""DreamDistribution (Zhao et al., arXiv 2312.14216): prompt distribution learning, METHODS.md §1."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from dreamdist.artifact import Artifact
from dreamdist.backbone import Backbone
from dreamdist.config import GenerateConfig, help_
from dreamdist.data import ReferenceSet
from dreamdist.methods import Conditioning
from dreamdist.prompt_distribution import (
    PromptDistribution,
    PromptTemplate,
    encode_prompts,
    gaussian_stats,
    mix_stats,
    orthogonality_loss,
    reparameterize,
)


@dataclass
class DreamDistributionConfig:
    """DreamDistribution (Zhao et al. 2023): K soft prompts whose CLIP features form a Gaussian (paper defaults)."""

    num_prompts: int = field(default=32, metadata=help_("K: learnable prompts per concept"))
    num_tokens: int = field(
        default=4, metadata=help_("M: learnable tokens per prompt (paper: 4 quantitative, 8 figures)")
    )
    num_samples: int = field(default=4, metadata=help_("S: reparameterized prompt samples per image per step"))
    ortho_weight: float = field(default=5e-3, metadata=help_("lambda: weight of the orthogonality loss"))
    ortho_kind: str = field(default="abs", metadata=help_("'abs' (paper eq. 5) or 'squared' (public code)"))
    prefix: str = field(default="", metadata=help_("fixed words before the learned tokens, e.g. 'a photo of'"))
    suffix: str = field(default="", metadata=help_("fixed words after the learned tokens"))
    init_std: float = field(default=0.02, metadata=help_("std of the N(0, std) init of the learned tokens"))

    def __post_init__(self) -> None:
        if self.num_prompts < 2:
            raise ValueError("--num-prompts (K) must be >= 2: the std over prompts needs at least two")
        if self.num_tokens < 1 or self.num_samples < 1:
            raise ValueError("--num-tokens (M) and --num-samples (S) must be >= 1")
        if self.ortho_kind not in ("abs", "squared"):
            raise ValueError(f"--ortho-kind must be 'abs' or 'squared'; got {self.ortho_kind!r}")
        if self.ortho_weight < 0:
            raise ValueError("--ortho-weight must be >= 0")


def class_suffix(class_name: str | None, suffix: str) -> str:
    """Multi-class prompts read '[V] <class name>.' followed by any user suffix."""
    return " ".join(part for part in (f"{class_name}." if class_name else "", suffix) if part)


class DreamDistribution:
    """K soft prompts per concept; the UNet sees Gaussian samples of their CLIP features."""

    name = "dreamdistribution"
    default_steps = 1500
    default_learning_rate = 1e-3

    def __init__(self, config: DreamDistributionConfig):
        self.config = config
        self.prompts: PromptDistribution | None = None
        self.templates: list[PromptTemplate] = []
        self.class_names: list[str] = []
        self.multiclass = False

    def setup(self, backbone: Backbone, data: ReferenceSet, generator: torch.Generator, run_dir=None) -> None:
        cfg = self.config
        self.class_names = list(data.class_names)
        self.multiclass = len(self.class_names) > 1 or data.multiclass
        self.prompts = PromptDistribution(
            len(self.class_names),
            cfg.num_prompts,
            cfg.num_tokens,
            backbone.token_embedding.weight.shape[1],
            cfg.init_std,
            generator,
        ).to(backbone.device)
        self.templates = [
            PromptTemplate.build(
                backbone,
                cfg.num_tokens,
                cfg.prefix,
                class_suffix(name if self.multiclass else None, cfg.suffix),
            )
            for name in self.class_names
        ]

    def trainable_modules(self) -> list[nn.Module]:
        return [self.prompts]

    def condition(self, backbone: Backbone, labels: torch.Tensor, generator: torch.Generator) -> Conditioning:
        """Encode each present concept's K prompts ONCE, then draw S samples per image.

        labels (B,) -> hidden (S*B, L, d), ordered sample-major.
        """
        cfg = self.config
        present = labels.unique()  # (C',) sorted
        vectors = self.prompts(present.to(backbone.device))  # (C', K, M, d_tok)
        means, stds, ortho = [], [], 0.0
        for c, class_vectors in zip(present.tolist(), vectors):
            hidden, pooled = encode_prompts(backbone, class_vectors, self.templates[c])  # (K, L, d), (K, d)
            mean, std = gaussian_stats(hidden)  # (L, d) each
            means.append(mean)
            stds.append(std)
            ortho = ortho + orthogonality_loss(pooled, cfg.ortho_kind)
        ortho = ortho / len(present)
        slot = torch.searchsorted(present, labels).to(backbone.device)  # (B,) row of each image's concept
        mean, std = torch.stack(means)[slot], torch.stack(stds)[slot]  # (B, L, d)
        omega = torch.randn((cfg.num_samples, *mean.shape), generator=generator).to(mean)  # (S, B, L, d)
        samples = reparameterize(mean[None], std[None], omega)  # (S, B, L, d)
        return Conditioning(
            hidden=samples.flatten(0, 1),  # (S*B, L, d)
            repeats=cfg.num_samples,
            aux_loss=cfg.ortho_weight * ortho,
            logs={"ortho": float(ortho.detach())},
        )

    def after_step(self) -> None:
        pass

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"vectors": self.prompts.vectors.detach().float().cpu()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.prompts.vectors.copy_(tensors["vectors"])

    def artifact(self, backbone: Backbone) -> tuple[dict[str, torch.Tensor], dict]:
        return self.state_tensors(), {
            "method_config": asdict(self.config),
            "class_names": self.class_names,
            "multiclass": self.multiclass,
        }


def artifact_stats(
    backbone: Backbone, artifact: Artifact, prefix: str, suffix: str, class_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refit one concept of an artifact with (possibly new) prefix/suffix -> mean, std (L, d)."""
    meta = artifact.meta
    vectors = artifact.tensors["vectors"]  # (C, K, M, d_tok)
    name = meta["class_names"][class_index] if meta.get("multiclass") else None
    template = PromptTemplate.build(backbone, vectors.shape[2], prefix, class_suffix(name, suffix))
    with torch.no_grad():
        hidden, _ = encode_prompts(backbone, vectors[class_index].to(backbone.device), template)
    return gaussian_stats(hidden.float())


def _edit_text(artifact: Artifact, config: GenerateConfig) -> tuple[str, str]:
    """Prefix/suffix for generation: ``--prompt 'a photo of {} at night'`` or --prefix/--suffix."""
    trained = artifact.meta["method_config"]
    prefix = trained["prefix"] if config.prefix is None else config.prefix
    suffix = trained["suffix"] if config.suffix is None else config.suffix
    if config.prompt:
        if "{}" not in config.prompt:
            raise ValueError("with a DreamDistribution artifact, --prompt must contain {} where the learned tokens go")
        prefix, suffix = (part.strip() for part in config.prompt.split("{}", 1))
    return prefix, suffix


def prompt_sampler(backbone: Backbone, artifacts: list[Artifact], config: GenerateConfig):
    """Per-image prompt features ``mu + gamma * omega * sigma`` (omega seeded by the image's seed).

    One artifact: each image samples its concept (multi-class: round robin, or --class-name).
    Several: their distributions are composed with the given weights (paper eq. 7).
    """
    edits = [_edit_text(a, config) for a in artifacts]
    if len(artifacts) == 1:
        names = artifacts[0].meta["class_names"]
        if config.class_name is not None and config.class_name not in names:
            raise ValueError(f"--class-name {config.class_name!r} is not in this artifact; classes: {names}")
        chosen = [names.index(config.class_name)] if config.class_name is not None else range(len(names))
        stats = [(names[c], artifact_stats(backbone, artifacts[0], *edits[0], c)) for c in chosen]
    else:
        parts = [artifact_stats(backbone, a, *e, 0) for a, e in zip(artifacts, edits)]
        stats = [("mix", mix_stats(parts, list(config.weights), config.mix_rule))]

    def sample(index: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        name, (mean, std) = stats[index % len(stats)]
        omega = torch.randn(mean.shape, generator=generator).to(mean)  # (L, d)
        prefix, suffix = edits[0]
        label = name if len(artifacts) == 1 and artifacts[0].meta.get("multiclass") else ""
        text = " ".join(part for part in (prefix, label, suffix) if part)
        info = {"class": name, "gamma": config.gamma, "prefix": prefix, "suffix": suffix, "prompt": text}
        return reparameterize(mean, std, omega, config.gamma), info

    return sample
