"""Metrics: pure functions of feature tensors (no models, no files, no global state).

Every function takes features as ``(N, d)`` tensors (rows are images) and returns Python floats.
Statistics are computed in float64 whatever the input dtype, so a metric does not change with
the precision the features were extracted in. Inputs too small for a metric raise ``ValueError``
with the count that is needed: a metric never returns NaN.

Conventions, and where they differ from reference libraries:
- FID: unbiased covariance (N - 1), as ``numpy.cov`` / pytorch-fid; ``tr((S1 S2)^(1/2))`` comes
  from eigenvalues of a symmetric matrix (or singular values of A1 A2^T for small sets) instead of
  ``scipy.linalg.sqrtm`` of the non-symmetric product: the same value, no complex round-off, and
  exact for singular covariances (fewer images than feature dimensions).
- FD-DINOv2 (Stein et al. 2023) is ``frechet_distance`` on DINOv2 features: no function of its own.
- KID: the unbiased MMD^2 estimator of Binkowski et al.'s reference code (cross term over m^2
  pairs) on subsets of equal size m = min(subset_size, N1, N2), drawn without replacement.
- CMMD: the biased (full-matrix, V-statistic) MMD^2 of the "Rethinking FID" reference code.
- Vendi: eigenvalues of the d x d Gram when d < N instead of the N x N kernel (same non-zero
  eigenvalues); the ``vendi-score`` package's ``score_dual`` does the same.
- Density / coverage / precision / recall (Naeem et al., 2020): the k-NN ball is closed
  (``||y - x|| <= r``) by default; the ``prdc`` package uses an open ball (``<``). Both are
  offered (``boundary="inclusive" | "exclusive"``); they differ only for points exactly on a ball's
  boundary, e.g. a set scored against itself (inclusive: coverage 1, density 1 + 1/k;
  exclusive: density 1, and coverage < 1 when k + 1 points coincide).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "gaussian_stats",
    "frechet_distance_from_stats",
    "frechet_distance",
    "mean_cosine_similarity",
    "clip_t",
    "knn_radii",
    "manifold_metrics",
    "vendi_score",
    "kernel_inception_distance",
    "cmmd",
]

# ---------------------------------------------------------------------------------------------
# input checks


def _as_features(x: torch.Tensor, name: str, min_rows: int = 1, why: str = "") -> torch.Tensor:
    """Validate a feature matrix and return it as float64 on its own device.

    Args:
        x: (N, d) features; a numpy array is accepted too.
        name: what the caller calls it, for the error message.
        min_rows: the least N the metric can be computed from.
        why: the metric that needs ``min_rows``, for the error message.
    """
    x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, d) feature matrix; got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(
            f"{name} has {x.shape[0]} row(s) but {why or 'this metric'} needs at least {min_rows}; "
            "evaluate with more images"
        )
    if not x.is_floating_point():
        x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the feature extractor's input")
    return x.to(torch.float64)


def _same_width(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{names} have different feature sizes ({a.shape[1]} vs {b.shape[1]}); "
            "extract both sets with the same model"
        )


# ---------------------------------------------------------------------------------------------
# Frechet distance (FID when the features are InceptionV3 pool features)


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance of a feature set, in float64.

    Args:
        features: (N, d), N >= 2.

    Returns:
        mu (d,) and sigma (d, d).
    """
    x = _as_features(features, "features", min_rows=2, why="a covariance (FID)")
    mu = x.mean(dim=0)  # (d,)
    centered = x - mu  # (N, d)
    sigma = centered.T @ centered / (x.shape[0] - 1)  # (d, d)
    return mu, sigma


def _clip_round_off(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Zero the eigenvalues of a PSD matrix that are round-off (below d * eps * the largest).

    Their square roots (~1e-8 relative each) would otherwise add up to a visible error when the
    matrix is singular, e.g. FID from fewer images than feature dimensions.
    """
    floor = eigenvalues.shape[0] * torch.finfo(eigenvalues.dtype).eps * eigenvalues.abs().max()
    return torch.where(eigenvalues > floor, eigenvalues, torch.zeros_like(eigenvalues))


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (round-off eigenvalues zeroed)."""
    matrix = (matrix + matrix.T) / 2  # (d, d) exact symmetry for eigh
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)  # (d,), (d, d)
    return (eigenvectors * _clip_round_off(eigenvalues).sqrt()) @ eigenvectors.T


def _trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """``tr((S1 S2)^(1/2))`` for symmetric PSD (d, d) matrices.

    With any F such that F F^T = S1, ``F^T S2 F`` is symmetric PSD with the eigenvalues of
    ``S1 S2``; F is the Cholesky factor (cheap) or, when S1 is singular, its PSD square root.
    Only eigenvalues are computed (``eigvalsh``), never ``sqrtm`` of a non-symmetric matrix.
    """
    factor, info = torch.linalg.cholesky_ex(sigma1)  # (d, d) lower triangular
    if int(info) != 0:  # not positive definite (fewer samples than dimensions): use S1^(1/2)
        factor = _psd_sqrt(sigma1)
    inner = factor.T @ sigma2 @ factor  # (d, d)
    return _clip_round_off(torch.linalg.eigvalsh((inner + inner.T) / 2)).sqrt().sum()


def frechet_distance_from_stats(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``; the trace of the square root
    is a sum of square-rooted eigenvalues of a symmetric PSD matrix similar to ``S1 S2``, so it
    stays real and exact for singular covariances (where ``scipy.linalg.sqrtm(S1 @ S2)`` needs an
    epsilon and drops an imaginary part). The result is clipped at 0 (round-off can make
    ``fd(x, x)`` -1e-12).

    Args:
        mu1, mu2: (d,) means.
        sigma1, sigma2: (d, d) covariances.
    """
    mu1, mu2 = torch.as_tensor(mu1, dtype=torch.float64), torch.as_tensor(mu2, dtype=torch.float64)
    sigma1 = torch.as_tensor(sigma1, dtype=torch.float64)
    sigma2 = torch.as_tensor(sigma2, dtype=torch.float64)
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"inconsistent Gaussian statistics: mu1 {tuple(mu1.shape)}, sigma1 {tuple(sigma1.shape)}, "
            f"mu2 {tuple(mu2.shape)}, sigma2 {tuple(sigma2.shape)}; expected (d,) and (d, d) for one d"
        )
    trace_sqrt = _trace_sqrt_product(sigma1, sigma2)
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return max(float(distance), 0.0)


def frechet_distance(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (FID on Inception features).

    Same value as ``frechet_distance_from_stats(*gaussian_stats(x1), *gaussian_stats(x2))``.
    When the sets are small next to d (the usual few-reference case), it never forms a (d, d)
    matrix: with centred features A1 (N1, d), A2 (N2, d),
    ``tr((S1 S2)^(1/2)) = ||A1 A2^T||_* / sqrt((N1 - 1)(N2 - 1))`` (nuclear norm: the eigenvalues
    of S1 S2 are the squared singular values of A1 A2^T, scaled), an (N1, N2) SVD.

    Args:
        features1: (N1, d), N1 >= 2.
        features2: (N2, d), N2 >= 2.
    """
    x1 = _as_features(features1, "features1", min_rows=2, why="a covariance (FID)")
    x2 = _as_features(features2, "features2", min_rows=2, why="a covariance (FID)")
    _same_width(x1, x2, "the two feature sets")
    (n1, d), n2 = x1.shape, x2.shape[0]
    if n1 * n2 * min(n1, n2) > d**3:  # the (d, d) route is cheaper
        return frechet_distance_from_stats(*gaussian_stats(x1), *gaussian_stats(x2))
    mu1, mu2 = x1.mean(dim=0), x2.mean(dim=0)  # (d,)
    a1, a2 = x1 - mu1, x2 - mu2  # (N1, d), (N2, d) centred
    trace_sqrt = torch.linalg.svdvals(a1 @ a2.T).sum() / ((n1 - 1) * (n2 - 1)) ** 0.5
    traces = a1.square().sum() / (n1 - 1) + a2.square().sum() / (n2 - 1)  # tr(S1) + tr(S2)
    distance = (mu1 - mu2).square().sum() + traces - 2 * trace_sqrt
    return max(float(distance), 0.0)


# ---------------------------------------------------------------------------------------------
# cosine similarities (CLIP-I, DINO, CLIP-T)


def _unit_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    norms = x.norm(dim=1, keepdim=True)  # (N, 1)
    if (norms == 0).any():
        raise ValueError(f"{name} has an all-zero feature row; a cosine similarity is undefined for it")
    return x / norms


def mean_cosine_similarity(generated: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean cosine similarity over all |G| x |R| pairs (CLIP-I on CLIP, DINO on DINO features).

    The mean of ``g_i . r_j`` over all pairs of unit vectors equals ``mean_i(g_i) . mean_j(r_j)``,
    so no |G| x |R| matrix is built.

    Args:
        generated: (G, d) features of the generated images.
        reference: (R, d) features of the reference images.
    """
    g = _unit_rows(_as_features(generated, "generated features"), "generated features")  # (G, d)
    r = _unit_rows(_as_features(reference, "reference features"), "reference features")  # (R, d)
    _same_width(g, r, "generated and reference features")
    return float(g.mean(dim=0) @ r.mean(dim=0))


def clip_t(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """CLIP-T: mean cosine between each image's CLIP embedding and its prompt's text embedding.

    A raw cosine in [-1, 1], not CLIPScore's ``max(100 * cos, 0)`` or ``2.5 * cos``.

    Args:
        image_features: (N, d) CLIP image embeddings.
        text_features: (N, d), one prompt per image, or (1, d), one prompt for all images.
    """
    images = _unit_rows(_as_features(image_features, "image features"), "image features")  # (N, d)
    texts = _unit_rows(_as_features(text_features, "text features"), "text features")  # (N|1, d)
    _same_width(images, texts, "image and text features")
    if texts.shape[0] not in (1, images.shape[0]):
        raise ValueError(
            f"got {texts.shape[0]} text embeddings for {images.shape[0]} images; "
            "pass one prompt per image or a single prompt"
        )
    return float((images * texts).sum(dim=1).mean())


# ---------------------------------------------------------------------------------------------
# k-NN manifold metrics: density, coverage (Naeem et al. 2020), precision, recall (Kynkaanniemi
# et al. 2019, in Naeem et al.'s k-NN form)

DEFAULT_CHUNK = 1024  # rows per distance block: 1024 x 10k float64 = 80 MB


def _squared_distances(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """(A, B) squared Euclidean distances between rows of ``a`` (A, d) and ``b`` (B, d).

    ``|a|^2 + |b|^2 - 2 a.b`` (one matmul) leaves round-off of ~eps * (|a|^2 + |b|^2) where the
    true distance is 0; values below 8 eps times that scale are set to exactly 0, so duplicated
    points are at distance 0 from each other, as in an exact computation.
    """
    scale = a.square().sum(dim=1, keepdim=True) + b_sq[None, :]  # (A, B) |a|^2 + |b|^2
    d2 = torch.addmm(scale, a, b.T, alpha=-2)  # (A, B), one fused BLAS call
    return d2.masked_fill_(d2 <= scale.mul_(8 * torch.finfo(d2.dtype).eps), 0.0)


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k (nearest neighbours) must be a positive integer; got {k!r}")


def knn_radii(features: torch.Tensor, k: int = 5, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Distance from each point to its k-th nearest *other* point of the same set.

    Args:
        features: (N, d), N >= k + 1.
        k: neighbour rank.
        chunk_size: rows per distance block (memory is ``chunk_size * N`` float64).

    Returns:
        (N,) float64 radii.
    """
    _check_k(k)
    x = _as_features(features, "features", min_rows=k + 1, why=f"a k-NN radius with k={k}")
    return _knn_sq_radii(x, k, chunk_size).sqrt()


def _knn_sq_radii(x: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """(N,) squared k-NN radii of float64 ``x`` (N, d); the point itself is at distance 0."""
    x_sq = x.square().sum(dim=1)  # (N,)
    radii = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], chunk_size):
        block = _squared_distances(x[start : start + chunk_size], x, x_sq)  # (c, N)
        rows = torch.arange(block.shape[0], device=x.device)
        block[rows, rows + start] = 0.0  # self-distance exactly 0, as sklearn does for X vs X
        radii[start : start + block.shape[0]] = block.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


def manifold_metrics(
    real: torch.Tensor,
    fake: torch.Tensor,
    k: int = 5,
    boundary: str = "inclusive",
    recall: bool = True,
    chunk_size: int = DEFAULT_CHUNK,
) -> dict[str, float]:
    """Density, coverage, precision and recall of ``fake`` against ``real`` with k-NN balls.

    With ``B(x, r) = {y : ||y - x|| <= r}`` (``boundary="inclusive"``, the paper's closed ball)
    and ``r_i`` the distance from real ``X_i`` to its k-th nearest other real:

    - density   = 1/(k M) sum_j sum_i 1[Y_j in B(X_i, r_i)]
    - coverage  = 1/N sum_i 1[exists j: Y_j in B(X_i, r_i)]
    - precision = 1/M sum_j 1[exists i: Y_j in B(X_i, r_i)]
    - recall    = 1/N sum_i 1[exists j: X_i in B(Y_j, s_j)], s_j the k-NN radius among fakes

    ``boundary="exclusive"`` uses open balls (``<``) and reproduces the ``prdc`` package exactly.
    Inclusive: a set scored against itself has coverage 1 (always) and density 1 + 1/k (points in
    general position: each ball holds its centre and its k neighbours). Exclusive: density 1.
    Distances are computed in float64 blocks of ``chunk_size`` rows, so 10k x 10k sets never
    materialise an N x M matrix (memory ~ ``chunk_size * max(N, M) * 8`` bytes).

    Args:
        real: (N, d) reference features, N >= k + 1.
        fake: (M, d) generated features; M >= k + 1 when ``recall`` is requested.
        k: neighbour rank of the radii (paper: 5).
        boundary: ``"inclusive"`` (closed balls, default) or ``"exclusive"`` (open, as ``prdc``).
        recall: also compute recall (needs the fakes' own k-NN radii).
        chunk_size: rows per distance block.

    Returns:
        ``{"density", "coverage", "precision"}`` and ``"recall"`` when requested.
    """
    _check_k(k)
    if boundary not in ("inclusive", "exclusive"):
        raise ValueError(f"boundary must be 'inclusive' or 'exclusive'; got {boundary!r}")
    real = _as_features(real, "real features", min_rows=k + 1, why=f"density/coverage with k={k}")
    fake_rows = k + 1 if recall else 1
    fake = _as_features(fake, "generated features", min_rows=fake_rows, why=f"recall with k={k}")
    _same_width(real, fake, "real and generated features")
    inside = torch.le if boundary == "inclusive" else torch.lt

    real_r2 = _knn_sq_radii(real, k, chunk_size)  # (N,)
    fake_r2 = _knn_sq_radii(fake, k, chunk_size) if recall else None  # (M,)
    fake_sq = fake.square().sum(dim=1)  # (M,)
    counts = torch.zeros(fake.shape[0], dtype=torch.float64, device=real.device)  # balls per fake
    covered = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    recalled = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    for start in range(0, real.shape[0], chunk_size):
        stop = min(start + chunk_size, real.shape[0])
        d2 = _squared_distances(real[start:stop], fake, fake_sq)  # (c, M)
        within = inside(d2, real_r2[start:stop, None])  # (c, M): fake j in real ball i
        counts += within.sum(dim=0)
        covered[start:stop] = within.any(dim=1)
        if fake_r2 is not None:
            recalled[start:stop] = inside(d2, fake_r2[None, :]).any(dim=1)  # real i in a fake ball
    result = {
        "density": float(counts.sum() / (k * fake.shape[0])),
        "coverage": float(covered.double().mean()),
        "precision": float((counts > 0).double().mean()),
    }
    if fake_r2 is not None:
        result["recall"] = float(recalled.double().mean())
    return result


# ---------------------------------------------------------------------------------------------
# Vendi score (Friedman & Dieng 2023): diversity of one set, no reference needed


def _renyi_entropy(p: torch.Tensor, q: float) -> torch.Tensor:
    """Order-q Renyi entropy (nats) of a probability vector ``p`` (K,); zeros are dropped (0 log 0 = 0)."""
    p = p[p > 0]
    if q == 1:
        return -(p * p.log()).sum()  # Shannon
    if math.isinf(q):
        return -p.max().log()
    return p.pow(q).sum().log() / (1 - q)


def vendi_score(features: torch.Tensor, q: float = 1.0, route: str = "auto") -> float:
    """Vendi score: the effective number of distinct rows under the cosine-similarity kernel.

    ``VS_q = exp(H_q(lambda))`` with ``lambda`` the eigenvalues of ``K / N``, ``K_ij = cos(x_i, x_j)``
    (so ``sum(lambda) = tr(K) / N = 1``) and ``H_q`` the order-q Renyi entropy: q = 1 Shannon
    (the paper's default), q = inf ``-log max(lambda)``, else ``log(sum lambda^q) / (1 - q)``.
    Ranges from 1 (all rows parallel) to N (all rows orthogonal).

    With X the (N, d) unit rows, ``K / N = X X^T / N`` and ``X^T X / N`` (d, d) have the same
    non-zero eigenvalues (those of a product AB and BA), so when d < N the (d, d) Gram is
    decomposed instead: O(N d^2 + d^3) rather than O(N^2 d + N^3). Eigenvalues below round-off
    (d * eps * the largest) count as 0.

    Args:
        features: (N, d) features, N >= 1, no all-zero row.
        q: order of the entropy, >= 0 (``math.inf`` allowed).
        route: ``"auto"`` (the smaller matrix), ``"kernel"`` (N, N) or ``"gram"`` (d, d).

    Returns:
        The score, in [1, min(N, d)].
    """
    if not (isinstance(q, (int, float)) and q >= 0):
        raise ValueError(f"q (the order of the Vendi score's entropy) must be a number >= 0 or math.inf; got {q!r}")
    if route not in ("auto", "kernel", "gram"):
        raise ValueError(f"route must be 'auto', 'kernel' or 'gram'; got {route!r}")
    x = _unit_rows(_as_features(features, "features", min_rows=1, why="a Vendi score"), "features")  # (N, d)
    n, d = x.shape
    gram = route == "gram" or (route == "auto" and d < n)
    similarity = x.T @ x / n if gram else x @ x.T / n  # (d, d) or (N, N), same non-zero eigenvalues
    eigenvalues = _clip_round_off(torch.linalg.eigvalsh((similarity + similarity.T) / 2))
    return float(_renyi_entropy(eigenvalues, float(q)).exp())


# ---------------------------------------------------------------------------------------------
# kernel MMDs: KID (Binkowski et al. 2018) and CMMD (Jayasumana et al. 2024)


def _polynomial_mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, degree: int, gamma: float, coef0: float) -> float:
    """Unbiased MMD^2 of two equal-size sets x, y (m, d) with ``k(a, b) = (gamma a.b + coef0)^degree``.

    As Binkowski et al.'s reference code (``mmd_est="unbiased"``): within-set sums leave out the
    diagonal (m (m - 1) pairs), the cross sum keeps all m^2 pairs.
    """
    m = x.shape[0]
    k_xx = (x @ x.T * gamma + coef0).pow(degree)  # (m, m)
    k_yy = (y @ y.T * gamma + coef0).pow(degree)  # (m, m)
    k_xy = (x @ y.T * gamma + coef0).pow(degree)  # (m, m)
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def kernel_inception_distance(
    real: torch.Tensor,
    generated: torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """KID: unbiased MMD^2 with the polynomial kernel ``(x.y / d + 1)^3``, averaged over random subsets.

    For each of ``subsets`` draws, m = min(subset_size, N1, N2) rows of each set are taken without
    replacement (``torch.randperm(N)[:m]``, real first, then generated) and the unbiased MMD^2 of
    the pair is computed; KID is their mean (Binkowski et al. 2018, "Demystifying MMD GANs", and
    their reference code ``polynomial_mmd_averages``). Unbiased: it can be slightly negative for
    two samples of one distribution. Usually computed on Inception pool features (like FID) and
    often quoted x 1000.

    Args:
        real: (N1, d) reference features, N1 >= 2.
        generated: (N2, d) generated features, N2 >= 2.
        subsets: number of random subset pairs.
        subset_size: rows per subset (capped at the smaller set).
        degree, gamma, coef0: kernel ``(gamma x.y + coef0)^degree``; gamma None means 1 / d.
        generator: torch CPU generator for the subsets; None uses a fresh one seeded with 0, so
            the same features always give the same numbers.

    Returns:
        (mean, std) over subsets (std with ddof = 0, as the reference code).
    """
    x = _as_features(real, "real features", min_rows=2, why="KID (an unbiased MMD)")
    y = _as_features(generated, "generated features", min_rows=2, why="KID (an unbiased MMD)")
    _same_width(x, y, "real and generated features")
    if not isinstance(subsets, int) or subsets < 1:
        raise ValueError(f"subsets must be a positive integer; got {subsets!r}")
    if not isinstance(subset_size, int) or subset_size < 2:
        raise ValueError(f"subset_size must be an integer >= 2 (an unbiased MMD needs pairs); got {subset_size!r}")
    if not isinstance(degree, int) or degree < 1:
        raise ValueError(f"degree must be a positive integer; got {degree!r}")
    gamma = 1.0 / x.shape[1] if gamma is None else float(gamma)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    m = min(subset_size, x.shape[0], y.shape[0])
    estimates = torch.empty(subsets, dtype=torch.float64)
    for s in range(subsets):
        rows_x = torch.randperm(x.shape[0], generator=generator)[:m].to(x.device)  # (m,)
        rows_y = torch.randperm(y.shape[0], generator=generator)[:m].to(y.device)  # (m,)
        estimates[s] = _polynomial_mmd2_unbiased(x[rows_x], y[rows_y], degree, gamma, coef0)
    return float(estimates.mean()), float(estimates.std(unbiased=False))


def _rbf_kernel_mean(a: torch.Tensor, b: torch.Tensor, gamma: float, chunk_size: int) -> torch.Tensor:
    """Mean of ``exp(-gamma ||a_i - b_j||^2)`` over all (A, B) pairs, in blocks of ``chunk_size`` rows of a."""
    b_sq = b.square().sum(dim=1)  # (B,)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for start in range(0, a.shape[0], chunk_size):
        total += _squared_distances(a[start : start + chunk_size], b, b_sq).mul_(-gamma).exp_().sum()  # (c, B)
    return total / (a.shape[0] * b.shape[0])


def cmmd(
    real: torch.Tensor,
    generated: torch.Tensor,
    sigma: float = 10.0,
    scale: float = 1000.0,
    normalize: bool = True,
    chunk_size: int = DEFAULT_CHUNK,
) -> float:
    """CMMD: MMD^2 with a Gaussian RBF kernel on unit-normalised CLIP image embeddings, times 1000.

    ``scale * (mean k(x, x') + mean k(y, y') - 2 mean k(x, y))`` with
    ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2))``, sigma = 10, means over all pairs including
    i = j: the biased (V-statistic) estimator of Jayasumana et al. 2024 ("Rethinking FID") and
    their reference code (``distance.mmd``), which makes CMMD >= 0 and 0 for identical sets.
    Their embeddings are CLIP ViT-L/14@336px's, unit-normalised (``normalize=True`` does that here).

    Args:
        real: (N1, d) reference embeddings, N1 >= 1.
        generated: (N2, d) generated embeddings, N2 >= 1.
        sigma: RBF bandwidth.
        scale: multiplier of the reported value.
        normalize: divide each row by its norm first (no all-zero rows then).
        chunk_size: rows per kernel block (memory ``chunk_size * max(N1, N2)`` float64).
    """
    if sigma <= 0:
        raise ValueError(f"sigma (the RBF bandwidth) must be > 0; got {sigma!r}")
    x = _as_features(real, "real features", min_rows=1, why="CMMD")
    y = _as_features(generated, "generated features", min_rows=1, why="CMMD")
    _same_width(x, y, "real and generated features")
    if normalize:
        x, y = _unit_rows(x, "real features"), _unit_rows(y, "generated features")  # (N1, d), (N2, d)
    gamma = 1.0 / (2 * sigma**2)
    k_xx = _rbf_kernel_mean(x, x, gamma, chunk_size)
    k_yy = _rbf_kernel_mean(y, y, gamma, chunk_size)
    k_xy = _rbf_kernel_mean(x, y, gamma, chunk_size)
    return max(float(scale * (k_xx + k_yy - 2 * k_xy)), 0.0)
