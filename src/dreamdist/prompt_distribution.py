"""PromptDistribution: K learnable soft prompts per concept and the distributions they induce on
CLIP text features: the paper's Gaussian (METHODS.md §1) and the mixture of its K prompts (§8).

A prompt is ``[BOS] PREFIX V_k SUFFIX [EOS] [PAD]...`` (the family lays it out per tokenizer:
``Backbone.prompt_template``): only ``V`` (M token embeddings per prompt) is learned; PREFIX/SUFFIX
are ordinary words embedded with the frozen token table(s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dreamdist.backbones import Backbone, PromptTemplate

PROMPT_SPACES = ("input", "output")


@dataclass
class OutputTemplate:
    """A soft prompt in the encoders' output space: the template's features, encoded once, and the rows
    that each learned prompt replaces (``Backbone.encode_template_features``).

    ``features`` (L', D) of ``prefix <M neutral slots> suffix``; ``rows`` (R,) the slots' positions in
    them, then the pooled row where the family has a pooled vector. A prompt is R learned rows of width D.
    """

    features: torch.Tensor
    rows: torch.Tensor

    @classmethod
    def build(cls, backbone: Backbone, num_tokens: int, prefix: str = "", suffix: str = "") -> OutputTemplate:
        """Encode the family's template of ``num_tokens`` slots between PREFIX and SUFFIX."""
        template = PromptTemplate.build(backbone, num_tokens, prefix, suffix)
        return cls(*backbone.encode_template_features(template, num_tokens))

    def initial_rows(self) -> torch.Tensor:
        """(R, D) fp32 CPU: the template's own features at the learned rows."""
        return self.features[self.rows.to(self.features.device)].float().cpu()

    def splice(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, R, D) learned rows -> features (N, L', D) (the template's elsewhere) and (N, R * D) the rows
        themselves as the prompts' pooled features (the orthogonality loss); differentiable w.r.t. ``vectors``."""
        if vectors.shape[-2:] != (len(self.rows), self.features.shape[-1]):
            raise ValueError(
                f"output-space prompts of {tuple(vectors.shape[-2:])} rows x width do not fit this backbone's "
                f"template ({len(self.rows)} rows x {self.features.shape[-1]}): it was trained on another layout"
            )
        n = vectors.shape[0]
        base = self.features.expand(n, -1, -1)  # (N, L', D)
        rows = self.rows.to(base.device)
        features = base.index_copy(1, rows, vectors.to(base.device, base.dtype))  # (N, L', D)
        return features, vectors.flatten(1)


def build_template(
    backbone: Backbone, space: str, num_tokens: int, prefix: str = "", suffix: str = ""
) -> PromptTemplate | OutputTemplate:
    """The template of soft prompts living in ``space``: ``input`` (token vectors pushed through the encoders)
    or ``output`` (rows of the encoded features, ``OutputTemplate``)."""
    if space not in PROMPT_SPACES:
        raise ValueError(f"prompt space must be one of {', '.join(PROMPT_SPACES)}; got {space!r}")
    if space == "output":
        return OutputTemplate.build(backbone, num_tokens, prefix, suffix)
    return PromptTemplate.build(backbone, num_tokens, prefix, suffix)


def encode_prompts(backbone: Backbone, vectors: torch.Tensor, template: PromptTemplate | OutputTemplate) -> tuple:
    """Soft prompts -> their features, in the space they live in.

    Input space (``PromptTemplate``): through the frozen text encoder(s), as the backbone's family lays them
    out. Output space (``OutputTemplate``): spliced into the template's encoded features, no encoder run.

    Args:
        vectors: (N, M, d_tok) learned token embeddings, or (N, R, D) learned output rows (N prompts).
        template: fixed words around them (``build_template``).
    Returns:
        prompt features (N, L, d) and pooled features (N, d_pool), differentiable w.r.t. ``vectors``.
    """
    if isinstance(template, OutputTemplate):
        return template.splice(vectors)
    return backbone.encode_soft_prompts(vectors, template)


def gaussian_stats(hidden: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, L, d) features of K prompts -> per position/channel mean and std, each (L, d).

    ``weights`` (K,): component weights (normalised here); prompts of weight 0 do not count.
    The std is unbiased: ``sum_k w_k (c_k - mu)^2 / (1 - sum_k w_k^2)``, which for equal weights is
    the paper's ``std`` over K (denominator K - 1).
    """
    if weights is None:
        return hidden.mean(dim=-3), hidden.std(dim=-3)
    w = (weights / weights.sum()).to(hidden)[:, None, None]  # (K, 1, 1)
    mean = (w * hidden).sum(dim=0)  # (L, d)
    denominator = (1 - w.pow(2).sum()).clamp_min(1e-12)
    return mean, ((w * (hidden - mean).pow(2)).sum(dim=0) / denominator).sqrt()


def reparameterize(mean: torch.Tensor, std: torch.Tensor, omega: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``mean + gamma * omega * std``; mean/std (B, L, d), omega (B, L, d) standard normal."""
    return mean + gamma * omega * std


GOLDEN = (5**0.5 - 1) / 2  # Weyl sequence step: consecutive seeds spread evenly over [0, 1)


def spread(seed: int) -> float:
    """A point in [0, 1) for an image seed; any n consecutive seeds are nearly evenly spread."""
    return (seed * GOLDEN) % 1.0


def spread_basis(hidden: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Rows whose random combinations are draws of the K prompts' full (weighted) covariance.

    Args:
        hidden: (K, L, d) features of the K prompts.
        weights: (K,) component weights (normalised here; weight-0 prompts get a zero row), or None: equal.
    Returns:
        (K, L, d) rows ``b_j = sqrt(w_j / (1 - sum w^2)) (c_j - mu)``, ``mu`` the weighted mean. For
        ``z ~ N(0, I_K)``, ``sum_j z_j b_j ~ N(0, Sigma)`` with ``Sigma`` the prompts' covariance over all
        (L x d) channels: its diagonal is ``gaussian_stats``' std squared (the paper's sigma), but the
        channels move together, the way the learned prompts differ from each other.
    """
    weights = torch.ones(hidden.shape[0]) if weights is None else weights
    w = (weights / weights.sum()).to(hidden)  # (K,)
    mean = (w[:, None, None] * hidden).sum(dim=0)  # (L, d)
    scale = (w / (1 - w.pow(2).sum()).clamp_min(1e-12)).sqrt()  # (K,)
    return scale[:, None, None] * (hidden - mean)  # (K, L, d)


def mixture_draw(
    hidden: torch.Tensor,
    basis: torch.Tensor,
    weights: torch.Tensor,
    u: float,
    generator: torch.Generator,
    scale: float = 1.0,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """One sample of the mixture of the K prompts: the component at ``u`` of the weights' CDF, plus spread.

    Args:
        hidden: (K, L, d) features of the K prompts.
        basis: (K, L, d) ``spread_basis`` rows.
        weights: (K,) non-negative component weights (need not be normalised).
        u: a point in [0, 1) that picks the component (``spread(seed)``: stratified over seeds).
        generator: CPU generator; draws z (K,), always the same count, whatever the component or scale.
        scale: the spread's multiple (0: exactly the learned prompt; the sampler's gamma sets it).
        groups: (K,) long, for a mixture of several distributions: which one each row belongs to; a
            component spreads only along its own distribution's rows (None: one distribution).
    Returns:
        ``c_k + scale * sum_j z_j b_j`` (L, d) and k. ``scale = 0`` returns ``hidden[k]`` exactly.
    """
    cdf = torch.cumsum(weights.double().cpu(), 0)
    k = min(int(torch.searchsorted(cdf, u * float(cdf[-1]), right=True)), len(cdf) - 1)
    z = torch.randn(basis.shape[0], generator=generator).to(basis)  # (K,)
    if groups is not None:
        z = z * (groups.to(z.device) == groups[k]).to(z)  # (K,) only the component's own distribution
    return hidden[k] + scale * torch.tensordot(z, basis, dims=1), k  # (L, d)


def winner_take_all(losses: torch.Tensor, smoothing: float, margin: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Relaxed winner-take-all over candidates: (S, B) losses -> (scalar loss, winners (B,)).

    Row 0 holds each image's current owner. The lowest-loss candidate wins only if it beats the
    owner by the relative ``margin`` (``loss < (1 - margin) * owner's loss``; all candidates share
    the noise and timestep, so this is a paired comparison): one lucky draw of an untrained prompt
    does not take an image over. The winner gets weight ``1 - smoothing``, and every candidate
    ``smoothing / S`` more, so losing prompts still learn a little.
    """
    s, detached = losses.shape[0], losses.detach()
    best = detached.argmin(dim=0)  # (B,)
    beats_owner = detached.gather(0, best[None])[0] < (1 - margin) * detached[0]  # (B,)
    winner = torch.where(beats_owner, best, torch.zeros_like(best))  # (B,)
    weights = torch.full_like(losses, smoothing / s)  # (S, B)
    weights.scatter_add_(0, winner[None], torch.full_like(losses[:1], 1 - smoothing))
    return (weights * losses).sum(dim=0).mean(), winner


def orthogonality_loss(pooled: torch.Tensor, kind: str = "abs") -> torch.Tensor:
    """Orthogonality of K pooled prompt features, (K, d) -> scalar.

    ``abs`` (paper eq. 5): ``1/(K(K-1)) * sum_{i<j} |cos(p_i, p_j)|``.
    ``squared`` (public code): mean over the K(K-1) off-diagonal entries of ``cos^2``.
    """
    k = pooled.shape[0]
    if k < 2:
        return pooled.new_zeros(())
    unit = F.normalize(pooled.float(), dim=-1)
    cos = unit @ unit.T  # (K, K)
    off = ~torch.eye(k, dtype=torch.bool, device=cos.device)
    if kind == "abs":
        return cos.triu(1).abs().sum() / (k * (k - 1))
    if kind == "squared":
        return cos[off].pow(2).mean()
    raise ValueError(f"orthogonality loss kind must be 'abs' or 'squared', got {kind!r}")


def mix_stats(
    stats: list[tuple[torch.Tensor, torch.Tensor]],
    weights: list[float],
    rule: str = "paper",
    tol: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compose N learned distributions (paper eq. 7).

    ``paper``: ``mu* = sum a_i mu_i``, ``sigma* = sum sqrt(a_i) sigma_i``.
    ``public-code``: ``sigma* = sqrt(sum (a_i sigma_i)^2)``.

    Args:
        stats: N pairs (mean, std), each (L, d).
        weights: N non-negative weights that sum to 1 within ``tol``.
    """
    if len(stats) != len(weights) or not stats:
        raise ValueError(f"need one weight per distribution; got {len(stats)} distributions, {len(weights)} weights")
    if any(w < 0 for w in weights) or not math.isclose(sum(weights), 1.0, abs_tol=tol):
        raise ValueError(
            f"mixing weights must be >= 0 and sum to 1 (within {tol}); got {weights} (sum {sum(weights):.4f})"
        )
    mean = sum(w * m for w, (m, _) in zip(weights, stats))
    if rule == "paper":
        std = sum(math.sqrt(w) * s for w, (_, s) in zip(weights, stats))
    elif rule == "public-code":
        std = torch.sqrt(sum((w * s) ** 2 for w, (_, s) in zip(weights, stats)))
    else:
        raise ValueError(f"mix rule must be 'paper' or 'public-code', got {rule!r}")
    return mean, std


class PromptDistribution(nn.Module):
    """Learnable token embeddings ``V`` of shape (C, K, M, d_tok): C concepts x K prompts x M tokens.

    With ``shared=True`` each prompt is ``shared_c + V_k``: a part common to a concept's K prompts
    (trained by every image of the concept) plus each prompt's own part (zeros / the usual init).
    """

    def __init__(
        self,
        num_classes: int,
        num_prompts: int,
        num_tokens: int,
        token_dim: int,
        init_std: float = 0.02,
        generator: torch.Generator | None = None,
        shared: bool = False,
    ):
        super().__init__()
        if num_prompts < 2:
            raise ValueError("num_prompts (K) must be >= 2: a distribution needs a spread (paper default 32)")
        if num_tokens < 1:
            raise ValueError("num_tokens (M) must be >= 1")
        init = torch.randn(num_classes, num_prompts, num_tokens, token_dim, generator=generator) * init_std
        self.vectors = nn.Parameter(init)  # (C, K, M, d_tok), always fp32
        # (C, 1, M, d_tok) part common to the K prompts of a concept, or None
        self.shared = nn.Parameter(torch.zeros(num_classes, 1, num_tokens, token_dim)) if shared else None

    @property
    def num_prompts(self) -> int:
        return self.vectors.shape[1]

    @property
    def num_tokens(self) -> int:
        return self.vectors.shape[2]

    def forward(self, class_ids: torch.Tensor) -> torch.Tensor:
        """(C',) class ids -> their prompts' vectors, (C', K, M, d_tok). (A forward for DDP.)"""
        if self.shared is None:
            return self.vectors[class_ids]
        return self.vectors[class_ids] + self.shared[class_ids]

    def prompts(self) -> torch.Tensor:
        """Every concept's K prompts as token embeddings, (C, K, M, d_tok) (shared part added)."""
        return self.vectors if self.shared is None else self.vectors + self.shared

    @torch.no_grad()
    def fit(self, backbone: Backbone, templates: list[PromptTemplate]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode every class's K prompts with its template; return mean and std, each (C, L, d)."""
        means, stds = [], []
        for c, template in enumerate(templates):
            hidden, _ = encode_prompts(backbone, self.prompts()[c].to(backbone.device), template)  # (K, L, d)
            mean, std = gaussian_stats(hidden.float())
            means.append(mean)
            stds.append(std)
        return torch.stack(means), torch.stack(stds)


def nearest_tokens(backbone: Backbone, vectors: torch.Tensor, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """Nearest vocabulary words (cosine) of each learned token, averaged over the K prompts.

    Args:
        vectors: (K, M, d_tok) learned embeddings of one concept.
    Returns:
        M lists of ``top_k`` (token, cosine) pairs.
    """
    rows = backbone.token_rows(torch.arange(backbone.token_embedding.weight.shape[0]))  # (V, d_tok)
    table = F.normalize(rows, dim=-1)
    mean = F.normalize(vectors.detach().float().cpu().mean(dim=0), dim=-1)  # (M, d_tok)
    scores, index = (mean @ table.T).topk(top_k, dim=-1)  # (M, top_k)
    decode = backbone.tokenizer.convert_ids_to_tokens
    return [
        [(decode(int(i)).replace("</w>", ""), float(s)) for s, i in zip(row_s, row_i)]
        for row_s, row_i in zip(scores, index)
    ]
