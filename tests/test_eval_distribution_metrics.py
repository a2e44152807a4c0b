"""Vendi score, KID and CMMD: cross-checks against their reference implementations, and properties.

Vendi against the ``vendi-score`` package (``score_dual`` and the kernel form ``score``); KID
against a numpy transcription of Binkowski et al.'s reference code (``polynomial_mmd_averages``
with ``mmd_est="unbiased"``); CMMD against a numpy transcription of the "Rethinking FID"
reference code (``distance.mmd``). FD-DINOv2 is ``frechet_distance`` (tests/test_eval_metrics.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dreamdist.evaluation import metrics as M

vendi = pytest.importorskip("vendi_score.vendi", reason="pip install vendi-score (the dev extra)")


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rng, n, d, clusters, spread=0.05):
    """n rows around ``clusters`` random directions: a Vendi score near ``clusters``."""
    centres = rng.normal(size=(clusters, d))
    return centres[rng.integers(clusters, size=n)] + spread * rng.normal(size=(n, d))


# ---------------------------------------------------------------------------------------------
# Vendi


@pytest.mark.parametrize("q", [1, 0.5, 2, math.inf])
@pytest.mark.parametrize("n,d", [(200, 16), (12, 64)])
def test_vendi_matches_the_vendi_score_package(q, n, d):
    x = np.random.default_rng(n + d).normal(size=(n, d)) + 0.3
    order = "inf" if math.isinf(q) else q
    if d < n:
        reference = vendi.score_dual(x, q=order)  # (d, d) Gram of the normalised rows
    else:  # score_dual's (d, d) Gram has d - N round-off eigenvalues (~1e-17; their q-th powers add up
        reference = vendi.score_K(unit(x) @ unit(x).T, q=order)  # for q < 1): the (N, N) kernel is exact
    assert M.vendi_score(torch.from_numpy(x), q=q) == pytest.approx(reference, rel=1e-9)


def test_vendi_matches_the_package_kernel_form_and_both_routes_agree():
    x = np.random.default_rng(0).normal(size=(40, 8))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    reference = vendi.score(list(unit), lambda a, b: float(a @ b))  # the (N, N) cosine kernel, built pair by pair
    for route in ("auto", "kernel", "gram"):
        assert M.vendi_score(x, route=route) == pytest.approx(reference, rel=1e-9), route
    wide = np.random.default_rng(1).normal(size=(10, 50))  # d > N: the kernel is the smaller matrix
    assert M.vendi_score(wide, route="gram") == pytest.approx(M.vendi_score(wide, route="kernel"), rel=1e-9)


def test_vendi_counts_distinct_directions():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(1, 32))).expand(50, 32)  # 50 copies of one row
    assert M.vendi_score(x) == pytest.approx(1.0, abs=1e-9)
    assert M.vendi_score(torch.eye(7) * 3) == pytest.approx(7.0, rel=1e-12)  # orthogonal rows: N
    assert M.vendi_score(torch.eye(7), q=math.inf) == pytest.approx(7.0, rel=1e-12)
    assert M.vendi_score(clustered(rng, 300, 64, 4, spread=0.01)) == pytest.approx(4.0, rel=0.05)
    # scale does not matter (cosine kernel); order q is non-increasing in q
    x = rng.normal(size=(60, 10))
    assert M.vendi_score(x * 7.5) == pytest.approx(M.vendi_score(x), rel=1e-12)
    orders = [M.vendi_score(x, q=q) for q in (0.1, 0.5, 1, 2, math.inf)]
    assert all(a >= b - 1e-12 for a, b in zip(orders, orders[1:]))


def test_vendi_input_errors_are_clear():
    with pytest.raises(ValueError, match="all-zero"):
        M.vendi_score(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="at least 1"):
        M.vendi_score(torch.zeros(0, 4))
    with pytest.raises(ValueError, match="q"):
        M.vendi_score(torch.randn(3, 4), q=-1)
    with pytest.raises(ValueError, match="route"):
        M.vendi_score(torch.randn(3, 4), route="svd")


# ---------------------------------------------------------------------------------------------
# KID


def reference_mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree=3, gamma=None, coef0=1) -> float:
    """Binkowski et al.'s ``polynomial_mmd`` + ``_mmd2_and_variance(mmd_est="unbiased")``, in numpy."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    k_xx = (x @ x.T * gamma + coef0) ** degree
    k_yy = (y @ y.T * gamma + coef0) ** degree
    k_xy = (x @ y.T * gamma + coef0) ** degree
    m = k_xx.shape[0]
    kt_xx_sum = (k_xx.sum(axis=1) - np.diagonal(k_xx)).sum()
    kt_yy_sum = (k_yy.sum(axis=1) - np.diagonal(k_yy)).sum()
    return float((kt_xx_sum + kt_yy_sum) / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))


def reference_kid(real, fake, subsets, subset_size, seed, **kernel):
    """``polynomial_mmd_averages`` with the subsets drawn as ``kernel_inception_distance`` draws them."""
    generator = torch.Generator().manual_seed(seed)
    m = min(subset_size, len(real), len(fake))
    values = []
    for _ in range(subsets):
        r = real[torch.randperm(len(real), generator=generator)[:m].numpy()]
        f = fake[torch.randperm(len(fake), generator=generator)[:m].numpy()]
        values.append(reference_mmd2_unbiased(r, f, **kernel))
    return float(np.mean(values)), float(np.std(values))


def test_kid_on_whole_sets_matches_the_reference_formula():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(80, 24)), rng.normal(size=(80, 24)) * 1.2 + 0.3
    mean, std = M.kernel_inception_distance(torch.from_numpy(real), torch.from_numpy(fake), subsets=3)
    # every subset is a permutation of both whole sets: one value, std 0
    assert mean == pytest.approx(reference_mmd2_unbiased(real, fake), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kernel", [{}, {"degree": 2, "gamma": 0.5, "coef0": 0.0}])
def test_kid_over_subsets_matches_the_reference_averages(kernel):
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(150, 12)), rng.normal(size=(120, 12)) + 0.2
    ours = M.kernel_inception_distance(
        real, fake, subsets=20, subset_size=50, generator=torch.Generator().manual_seed(7), **kernel
    )
    expected = reference_kid(real, fake, 20, 50, seed=7, **kernel)
    assert ours[0] == pytest.approx(expected[0], rel=1e-10)
    assert ours[1] == pytest.approx(expected[1], rel=1e-8)
    assert ours[1] > 0  # different subsets, different estimates


def test_kid_properties():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same, _ = M.kernel_inception_distance(a, b, subsets=20, subset_size=200)
    shifts = [M.kernel_inception_distance(a, b + s, subsets=20, subset_size=200)[0] for s in (0.25, 0.5, 1.0)]
    assert abs(same) < 0.1 * shifts[0]  # ~0 for one distribution (unbiased: either sign)
    assert shifts[0] < shifts[1] < shifts[2]
    assert M.kernel_inception_distance(a, b + 0.5) == M.kernel_inception_distance(a, b + 0.5)  # seeded default
    a32, b32 = torch.from_numpy(a).float(), torch.from_numpy(b + 1).float()
    assert M.kernel_inception_distance(a32, b32)[0] == pytest.approx(
        M.kernel_inception_distance(a32.double(), b32.double())[0], rel=1e-12
    )


def test_kid_input_errors_are_clear():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="at least 2"):
        M.kernel_inception_distance(x[:1], x)
    with pytest.raises(ValueError, match="different feature sizes"):
        M.kernel_inception_distance(x, torch.randn(10, 5))
    with pytest.raises(ValueError, match="subset_size"):
        M.kernel_inception_distance(x, x, subset_size=1)
    with pytest.raises(ValueError, match="subsets"):
        M.kernel_inception_distance(x, x, subsets=0)


# ---------------------------------------------------------------------------------------------
# CMMD


def reference_cmmd(x: np.ndarray, y: np.ndarray, sigma=10.0, scale=1000.0) -> float:
    """google-research/cmmd ``distance.mmd`` (jax) in numpy; x, y already unit-normalised."""
    x_sqnorms, y_sqnorms = np.diag(x @ x.T), np.diag(y @ y.T)
    gamma = 1 / (2 * sigma**2)
    k_xx = np.mean(np.exp(-gamma * (-2 * (x @ x.T) + x_sqnorms[:, None] + x_sqnorms[None, :])))
    k_xy = np.mean(np.exp(-gamma * (-2 * (x @ y.T) + x_sqnorms[:, None] + y_sqnorms[None, :])))
    k_yy = np.mean(np.exp(-gamma * (-2 * (y @ y.T) + y_sqnorms[:, None] + y_sqnorms[None, :])))
    return float(scale * (k_xx + k_yy - 2 * k_xy))


@pytest.mark.parametrize("n1,n2,d", [(60, 45, 32), (300, 200, 16)])
def test_cmmd_matches_the_reference_formula(n1, n2, d):
    rng = np.random.default_rng(n1)
    real, fake = rng.normal(size=(n1, d)) + 0.5, rng.normal(size=(n2, d)) * 2 + 0.2
    expected = reference_cmmd(unit(real), unit(fake))
    assert M.cmmd(real, fake, chunk_size=17) == pytest.approx(expected, rel=1e-9)  # normalises itself
    assert M.cmmd(unit(real), unit(fake), normalize=False) == pytest.approx(expected, rel=1e-9)
    assert M.cmmd(real, fake, sigma=1.0, scale=1.0) == pytest.approx(
        reference_cmmd(unit(real), unit(fake), sigma=1.0, scale=1.0), rel=1e-9
    )


def test_cmmd_properties():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(100, 8))
    assert M.cmmd(x, x) == pytest.approx(0.0, abs=1e-12)
    assert M.cmmd(x, x * 3.0) == pytest.approx(0.0, abs=1e-12)  # unit-normalised: scale is invisible
    near, far = M.cmmd(x, x + 0.3), M.cmmd(x, x + 3.0)
    assert 0 < near < far
    assert M.cmmd(x, x + 1.0) == pytest.approx(M.cmmd(x + 1.0, x), rel=1e-12)
    with pytest.raises(ValueError, match="all-zero"):
        M.cmmd(np.zeros((2, 8)), x)
    with pytest.raises(ValueError, match="sigma"):
        M.cmmd(x, x, sigma=0)
