"""DreamDistribution (Zhao et al., arXiv 2312.14216): prompt distribution learning, METHODS.md §1.

Two training objectives and two samplers (METHODS.md §8), named choices:

- objective ``gaussian`` (the paper): each image is denoised with S samples of ONE diagonal
  Gaussian fitted over the K prompts' features;
- objective ``mixture``: the K prompts are mixture components and every reference image has an
  owner among them (initially image i -> prompt i mod K). Each image is denoised with S
  candidates (``c_k + train_gamma * omega * sigma``): its owner and S - 1 other prompts. With the
  default S = 1 each image trains its own prompt; with S >= 2 a candidate that denoises it better
  than its owner by ``assign_margin`` takes most of the loss (relaxed winner-take-all) and becomes
  its owner: online hard EM, so each prompt learns the subset of references it explains. The
  owners' shares are saved as the components' weights. By default it trains 16 images per step
  (the paper's 4 images x 4 samples, same cost) on timesteps in [0.15, 0.7) of the noise schedule:
  below, the target hardly depends on the prompt; above, a prompt learns its one image's layout
  instead of its attributes (``bench/toy_quality.py`` measured each choice).
- sampler ``gaussian`` (the paper): ``mu + gamma * omega * sigma`` (weighted by the components'
  weights when the artifact has them);
- sampler ``mixture``: the component at ``spread(image seed)`` of the weights' CDF (consecutive
  seeds visit the components in proportion, not by chance), then ``c_k + (gamma / 2)^2 * sum_j z_j b_j``:
  around the learned prompt, a draw of the K prompts' full covariance (``spread_basis``; per channel
  the paper's ``sigma``, but moving along the directions in which the prompts differ), whole at
  gamma 2 and a quarter at the default gamma 1. gamma is the diversity knob: 0 gives exactly the
  learned prompts, 1 keeps their fidelity, 2 recombines their attributes (``mixture_scale``;
  docs/sampling.md has the measured curve).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from dreamdist.artifact import Artifact
from dreamdist.backbones import Backbone
from dreamdist.config import GenerateConfig, help_
from dreamdist.data import ReferenceSet
from dreamdist.methods import Conditioning, Method
from dreamdist.prompt_distribution import (
    PROMPT_SPACES,
    OutputTemplate,
    PromptDistribution,
    PromptTemplate,
    build_template,
    encode_prompts,
    gaussian_stats,
    mix_stats,
    mixture_draw,
    orthogonality_loss,
    reparameterize,
    spread,
    spread_basis,
    winner_take_all,
)

OBJECTIVES = ("gaussian", "mixture")
TIMESTEPS = (0.15, 0.7)  # mixture objective: the noise levels trained, fractions of the schedule
FULL_SPREAD_GAMMA = 2.0  # mixture sampler: the gamma at which a sample is a whole draw of the prompts' covariance


def mixture_scale(gamma: float) -> float:
    """Mixture sampler: the multiple of a covariance draw added to the prompt, ``(gamma / 2)^2``.

    Quadratic, by measurement (docs/sampling.md, ``bench/toy_quality.py --gamma-sweep``): a quarter
    draw (gamma 1, the default) keeps the learned prompts' fidelity on every concept measured, half
    a draw already lost some where the concept's attributes do not combine freely, and a whole draw
    (gamma 2) recombines attributes visibly. Linear in gamma, the default would have had to give up
    either its fidelity or the knob's reach.
    """
    return (gamma / FULL_SPREAD_GAMMA) ** 2


@dataclass
class DreamDistributionConfig:
    """DreamDistribution (Zhao et al. 2023): K soft prompts whose CLIP features form a distribution.

    Defaults are the paper's except ``objective``: the mixture objective keeps every mode of the
    references (measured in ``bench/toy_quality.py``); ``--objective gaussian`` is the paper's.
    """

    num_prompts: int = field(default=32, metadata=help_("K: learnable prompts per concept"))
    num_tokens: int = field(
        default=4, metadata=help_("M: learnable tokens per prompt (paper: 4 quantitative, 8 figures)")
    )
    num_samples: int | None = field(
        default=None,
        metadata=help_(
            "S, per image per step: Gaussian objective: reparameterized samples (default 4, the paper's); mixture: "
            "candidate prompts (default 1: each image trains its own prompt; >= 2 lets an image move to the "
            "candidate that fits it best, which clusters references when they outnumber the K prompts)"
        ),
    )
    ortho_weight: float = field(default=5e-3, metadata=help_("lambda: weight of the orthogonality loss"))
    ortho_kind: str = field(default="abs", metadata=help_("'abs' (paper eq. 5) or 'squared' (public code)"))
    prefix: str = field(default="", metadata=help_("fixed words before the learned tokens, e.g. 'a photo of'"))
    suffix: str = field(default="", metadata=help_("fixed words after the learned tokens"))
    init_std: float = field(default=0.02, metadata=help_("std of the N(0, std) init of the learned tokens"))
    objective: str = field(
        default="mixture",
        metadata=help_(
            "'gaussian' (paper: samples of one Gaussian over the K prompts) or 'mixture' (the K prompts as "
            "components; each image trains the candidate that fits it best)"
        ),
    )
    train_gamma: float = field(
        default=0.5, metadata=help_("mixture objective: noise scale around each candidate prompt (x its std over K)")
    )
    own_lr_scale: float = field(
        default=5.0,
        metadata=help_(
            "mixture objective: each prompt is a part shared by the K prompts (trained by every image, at the "
            "learning rate) plus its own part, trained at this multiple of the learning rate"
        ),
    )
    assign_margin: float = field(
        default=0.1,
        metadata=help_(
            "mixture objective: a candidate takes an image from its owner only if its loss is this much lower "
            "(relative; 0 = any lower loss)"
        ),
    )
    assign_smoothing: float = field(
        default=0.1, metadata=help_("mixture objective: loss share spread over the losing candidates (0 = hard)")
    )
    prompt_space: str = field(
        default="input",
        metadata=help_(
            "where the prompts live: 'input' (M token vectors pushed through the frozen text encoders, the "
            "paper's) or 'output' (rows of the encoders' output features at the M slots, plus the pooled row "
            "where the model has one; no encoder in the backward pass)"
        ),
    )

    def __post_init__(self) -> None:
        if self.num_samples is None:
            self.num_samples = 4 if self.objective == "gaussian" else 1
        if self.num_prompts < 2:
            raise ValueError("--num-prompts (K) must be >= 2: the std over prompts needs at least two")
        if self.num_tokens < 1 or self.num_samples < 1:
            raise ValueError("--num-tokens (M) and --num-samples (S) must be >= 1")
        if self.ortho_kind not in ("abs", "squared"):
            raise ValueError(f"--ortho-kind must be 'abs' or 'squared'; got {self.ortho_kind!r}")
        if self.ortho_weight < 0:
            raise ValueError("--ortho-weight must be >= 0")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}")
        if self.train_gamma < 0 or not 0 <= self.assign_smoothing <= 1 or self.own_lr_scale <= 0:
            raise ValueError("--train-gamma must be >= 0, --assign-smoothing in [0, 1], --own-lr-scale > 0")
        if self.prompt_space not in PROMPT_SPACES:
            raise ValueError(f"--prompt-space must be one of {', '.join(PROMPT_SPACES)}; got {self.prompt_space!r}")
        if not 0 <= self.assign_margin < 1:
            raise ValueError(f"--assign-margin is a relative loss margin in [0, 1); got {self.assign_margin}")


def all_ranks(values: torch.Tensor) -> torch.Tensor:
    """(B,) per process -> (P*B,) concatenated over the P data-parallel processes (itself when P = 1)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    parts = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, values.contiguous())
    return torch.cat(parts)


def class_suffix(class_name: str | None, suffix: str) -> str:
    """Multi-class prompts read '[V] <class name>.' followed by any user suffix."""
    return " ".join(part for part in (f"{class_name}." if class_name else "", suffix) if part)


class DreamDistribution(Method):
    """K soft prompts per concept; the UNet sees samples of their CLIP features (Gaussian or mixture)."""

    name = "dreamdistribution"
    default_steps = 1500
    default_learning_rate = 1e-3

    def __init__(self, config: DreamDistributionConfig):
        self.config = config
        self.prompts: PromptDistribution | None = None
        self.templates: list[PromptTemplate | OutputTemplate] = []
        self.class_names: list[str] = []
        self.multiclass = False
        self.owners: torch.Tensor | None = None  # (N,) mixture objective: each reference's prompt

    def setup(self, backbone: Backbone, data: ReferenceSet, generator: torch.Generator, run_dir=None) -> None:
        cfg = self.config
        self.class_names = list(data.class_names)
        self.multiclass = len(self.class_names) > 1 or data.multiclass
        self.templates = [
            build_template(
                backbone,
                cfg.prompt_space,
                cfg.num_tokens,
                cfg.prefix,
                class_suffix(name if self.multiclass else None, cfg.suffix),
            )
            for name in self.class_names
        ]
        output = cfg.prompt_space == "output"
        self.prompts = PromptDistribution(
            len(self.class_names),
            cfg.num_prompts,
            len(self.templates[0].rows) if output else cfg.num_tokens,  # output: R rows (slots + pooled)
            self.templates[0].features.shape[-1] if output else backbone.token_dim,  # SDXL: both token widths
            cfg.init_std,
            generator,
            shared=cfg.objective == "mixture",
        )
        if output:
            self._init_output_rows()
        self.prompts.to(backbone.device)
        # image i of its class owns prompt (rank of i within the class) mod K
        labels = self.labels = data.labels.long().cpu()
        rank = torch.stack([(labels[:i] == labels[i]).sum() for i in range(len(labels))]) if len(labels) else labels
        self.owners = rank % cfg.num_prompts  # (N,)

    @torch.no_grad()
    def _init_output_rows(self) -> None:
        """Output space: every prompt starts at its template's features at the learned rows, plus the
        N(0, init_std) draw scaled by each row's RMS (the features' scale differs by encoder, CLIP or T5),
        where the feature is not zero (padding channels stay zero): the K prompts differ slightly, as
        input-space prompts do from their N(0, init_std) token vectors."""
        base = torch.stack([template.initial_rows() for template in self.templates])[:, None]  # (C, 1, R, D)
        rms = base.pow(2).mean(dim=-1, keepdim=True).sqrt()  # (C, 1, R, 1)
        noise = self.prompts.vectors * rms * (base != 0)  # (C, K, R, D)
        if self.prompts.shared is None:
            self.prompts.vectors.copy_(base + noise)
        else:  # the template is the part the K prompts share
            self.prompts.shared.copy_(base)
            self.prompts.vectors.copy_(noise)

    # mixture objective (bench/toy_quality.py): 16 images per step, each training its own prompt, on the
    # timesteps where the prompt shapes the image; the paper's: 4 images x S = 4 samples, every timestep
    @property
    def default_batch_size(self) -> int:
        return 16 if self.config.objective == "mixture" else Method.default_batch_size

    @property
    def default_timesteps(self) -> tuple[float, float]:
        return TIMESTEPS if self.config.objective == "mixture" else Method.default_timesteps

    def trainable_modules(self) -> list[nn.Module]:
        return [self.prompts]

    def param_groups(self, learning_rate: float) -> list[dict]:
        """Mixture objective: the shared part at the learning rate, each prompt's own part faster."""
        if self.prompts.shared is None:
            return [{"params": [self.prompts.vectors]}]
        own = {"params": [self.prompts.vectors], "lr": learning_rate * self.config.own_lr_scale}
        return [{"params": [self.prompts.shared], "lr": learning_rate}, own]

    def condition(
        self, backbone: Backbone, labels: torch.Tensor, generator: torch.Generator, indices: torch.Tensor | None = None
    ) -> Conditioning:
        """Encode each present concept's K prompts ONCE, then draw S samples per image.

        labels (B,) -> hidden (S*B, L, d), ordered sample-major. Gaussian objective: samples of
        the Gaussian over the K prompts; mixture objective: S candidate prompts per image plus
        noise, combined by relaxed winner-take-all.
        """
        cfg = self.config
        present = labels.unique()  # (C',) sorted
        vectors = self.prompts(present.to(backbone.device))  # (C', K, M, d_tok)
        features, stds, ortho = [], [], 0.0
        for c, class_vectors in zip(present.tolist(), vectors):
            hidden, pooled = encode_prompts(backbone, class_vectors, self.templates[c])  # (K, L, d), (K, d)
            features.append(hidden)
            stds.append(hidden.std(dim=0))  # (L, d)
            ortho = ortho + orthogonality_loss(pooled, cfg.ortho_kind)
        ortho = ortho / len(present)
        slot = torch.searchsorted(present, labels).to(backbone.device)  # (B,) row of each image's concept
        features, std = torch.stack(features), torch.stack(stds)[slot]  # (C', K, L, d), (B, L, d)
        omega = torch.randn((cfg.num_samples, *std.shape), generator=generator).to(std)  # (S, B, L, d)
        logs = {"ortho": float(ortho.detach())}
        if cfg.objective == "gaussian":
            samples = reparameterize(features.mean(dim=1)[slot][None], std[None], omega)  # (S, B, L, d)
            combine = None
        else:
            if indices is None:
                raise ValueError("the mixture objective needs the batch's reference indices")
            pick = torch.stack(
                [self._candidates(int(self.owners[i]), generator) for i in indices.tolist()], 1
            )  # (S, B)
            centres = features[slot[None], pick.to(slot.device)]  # (S, B, L, d)
            samples = centres + cfg.train_gamma * omega * std[None]

            def combine(losses: torch.Tensor) -> torch.Tensor:
                loss, winner = winner_take_all(losses, cfg.assign_smoothing, cfg.assign_margin)  # (B,) in 0..S-1
                best = pick.gather(0, winner.cpu()[None])[0]  # (B,) the best candidate owns the image
                self.owners[all_ranks(indices.cpu())] = all_ranks(best)  # every process keeps the same owners
                return loss

        return Conditioning(
            hidden=samples.flatten(0, 1),  # (S*B, L, d)
            repeats=cfg.num_samples,
            aux_loss=cfg.ortho_weight * ortho,
            logs=logs,
            combine=combine,
        )

    def _candidates(self, owner: int, generator: torch.Generator) -> torch.Tensor:
        """The owner first, then S - 1 other prompts (distinct while S <= K), shape (S,)."""
        s, k = self.config.num_samples, self.config.num_prompts
        others = torch.randperm(k - 1, generator=generator)  # (K-1,) over the prompts except the owner
        others = others + (others >= owner).long()
        if s - 1 > len(others):
            others = torch.cat([others, torch.randint(0, k, (s - 1 - len(others),), generator=generator)])
        return torch.cat([torch.tensor([owner]), others[: s - 1]])

    def component_weights(self) -> torch.Tensor:
        """(C, K): per concept, the share of its references that each prompt owns."""
        weights = torch.zeros(len(self.class_names), self.config.num_prompts)
        weights.index_put_((self.labels, self.owners), torch.ones(len(self.owners)), accumulate=True)
        return weights / weights.sum(dim=1, keepdim=True).clamp_min(1)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        state = {"vectors": self.prompts.vectors.detach().float().cpu()}
        if self.config.objective == "mixture":
            state["owners"] = self.owners.clone()
            state["shared"] = self.prompts.shared.detach().float().cpu()
        return state

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.prompts.vectors.copy_(tensors["vectors"])
            if "shared" in tensors:
                self.prompts.shared.copy_(tensors["shared"])
        if "owners" in tensors:
            self.owners = tensors["owners"].long().clone()

    def artifact(self, backbone: Backbone) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {"vectors": self.prompts.prompts().detach().float().cpu()}  # (C, K, M, d_tok), shared part added
        if self.config.objective == "mixture":
            tensors["weights"] = self.component_weights()  # (C, K)
        return tensors, {
            "method_config": asdict(self.config),
            "class_names": self.class_names,
            "multiclass": self.multiclass,
        }


def artifact_features(
    backbone: Backbone, artifact: Artifact, prefix: str, suffix: str, class_index: int
) -> torch.Tensor:
    """Re-encode one concept's K prompts with (possibly new) prefix/suffix -> (K, L, d).

    Output-space prompts (``prompt_space`` in the artifact) are spliced into the edit text's encoded template.
    """
    meta = artifact.meta
    vectors = artifact.tensors["vectors"]  # (C, K, M, d_tok) or, in output space, (C, K, R, D)
    name = meta["class_names"][class_index] if meta.get("multiclass") else None
    trained = meta.get("method_config", {})
    space, num_tokens = trained.get("prompt_space", "input"), trained.get("num_tokens", vectors.shape[2])
    template = build_template(backbone, space, num_tokens, prefix, class_suffix(name, suffix))
    with torch.no_grad():
        hidden, _ = encode_prompts(backbone, vectors[class_index].to(backbone.device), template)
    return hidden.float()


def artifact_stats(
    backbone: Backbone, artifact: Artifact, prefix: str, suffix: str, class_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refit one concept of an artifact with (possibly new) prefix/suffix -> mean, std (L, d),
    weighted by the components' weights when the artifact has them."""
    hidden = artifact_features(backbone, artifact, prefix, suffix, class_index)
    saved = artifact.tensors.get("weights")
    return gaussian_stats(hidden, artifact_weights(artifact, class_index) if saved is not None else None)


def artifact_weights(artifact: Artifact, class_index: int) -> torch.Tensor:
    """(K,) mixture weights of one concept: the saved responsibilities, else equal weights."""
    vectors = artifact.tensors["vectors"]
    saved = artifact.tensors.get("weights")
    if saved is not None and float(saved[class_index].sum()) > 0:
        return saved[class_index].float()
    return torch.ones(vectors.shape[1])


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


def mix_class(artifact: Artifact, class_name: str | None) -> int:
    """The class row of an artifact in a mix: ``--class-name`` in a multi-class artifact, else its only class."""
    if not artifact.meta.get("multiclass"):
        return 0
    names = artifact.meta["class_names"]
    if class_name is None:
        raise ValueError(f"{artifact.path} holds {len(names)} classes {names}; pick the one to mix with --class-name")
    if class_name not in names:
        raise ValueError(f"--class-name {class_name!r} is not in {artifact.path}; classes: {names}")
    return names.index(class_name)


def _gaussian(backbone: Backbone, artifacts: list[Artifact], edits, config: GenerateConfig, chosen):
    """[(name, draw)] for the paper's sampler: ``mu + gamma * omega * sigma`` (mixing: paper eq. 7)."""
    if len(artifacts) == 1:
        names = artifacts[0].meta["class_names"]
        stats = [(names[c], artifact_stats(backbone, artifacts[0], *edits[0], c)) for c in chosen]
    else:
        parts = [artifact_stats(backbone, a, *e, mix_class(a, config.class_name)) for a, e in zip(artifacts, edits)]
        stats = [("mix", mix_stats(parts, list(config.weights), config.mix_rule))]

    def draw(mean: torch.Tensor, std: torch.Tensor):
        def one(seed: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
            omega = torch.randn(mean.shape, generator=generator).to(mean)  # (L, d)
            return reparameterize(mean, std, omega, config.gamma), {}

        return one

    return [(name, draw(mean, std)) for name, (mean, std) in stats]


def _mixture(backbone: Backbone, artifacts: list[Artifact], edits, config: GenerateConfig, chosen):
    """[(name, draw)] for the mixture sampler: component k by the weights, plus spread.

    Each image's features are ``c_k + mixture_scale(gamma) * sum_j z_j b_j``, ``b_j`` the
    ``spread_basis`` rows of the component's own artifact (its prompts' weighted covariance).
    Mixing several artifacts is a mixture of their mixtures: component weights times alpha_i, each
    component spreading along its own artifact's prompts.
    """
    if len(artifacts) == 1:
        names = artifacts[0].meta["class_names"]
        groups = [(names[c], [(artifacts[0], edits[0], c, 1.0)]) for c in chosen]
    else:
        groups = [
            ("mix", [(a, e, mix_class(a, config.class_name), w) for a, e, w in zip(artifacts, edits, config.weights)])
        ]

    def draw(parts):
        hidden, bases, weights, owners = [], [], [], []
        for i, (artifact, edit, c, alpha) in enumerate(parts):
            features = artifact_features(backbone, artifact, *edit, c)  # (K_i, L, d)
            w = artifact_weights(artifact, c)  # (K_i,)
            hidden.append(features)
            bases.append(spread_basis(features, w))  # (K_i, L, d)
            weights.append(alpha * w / w.sum())
            owners.append(torch.full((len(w),), i))
        hidden, bases, weights = torch.cat(hidden), torch.cat(bases), torch.cat(weights)  # (sum K, ...)
        owners = torch.cat(owners) if len(parts) > 1 else None  # (sum K,) artifact of each component
        scale = mixture_scale(config.gamma)

        def one(seed: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
            features, k = mixture_draw(hidden, bases, weights, spread(seed), generator, scale, owners)
            return features, {"component": k}

        return one

    return [(name, draw(parts)) for name, parts in groups]


def prompt_sampler(backbone: Backbone, artifacts: list[Artifact], config: GenerateConfig):
    """Per-image prompt features from the learned distribution (seeded by the image's generator).

    ``config.sampler``: ``gaussian`` (paper) or ``mixture`` (METHODS.md §8). One artifact: each
    image samples its concept (multi-class: round robin, or --class-name). Several: their
    distributions are composed with the given weights.
    """
    edits = [_edit_text(a, config) for a in artifacts]
    names = artifacts[0].meta["class_names"]
    if len(artifacts) == 1 and config.class_name is not None and config.class_name not in names:
        raise ValueError(f"--class-name {config.class_name!r} is not in this artifact; classes: {names}")
    single = len(artifacts) == 1 and config.class_name is not None
    chosen = [names.index(config.class_name)] if single else range(len(names))  # a mix picks with mix_class
    build = {"gaussian": _gaussian, "mixture": _mixture}[config.sampler]  # keys: config.SAMPLERS
    draws = build(backbone, artifacts, edits, config, chosen)

    def sample(index: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        name, draw = draws[index % len(draws)]
        features, extra = draw(config.seed + index, generator)
        prefix, suffix = edits[0]
        label = name if len(artifacts) == 1 and artifacts[0].meta.get("multiclass") else ""
        text = " ".join(part for part in (prefix, label, suffix) if part)
        info = {"class": name, "gamma": config.gamma, "sampler": config.sampler, "prefix": prefix, "suffix": suffix}
        return features, {**info, "prompt": text, **extra}

    return sample
