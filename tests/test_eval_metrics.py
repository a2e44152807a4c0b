"""Metrics: cross-checks against SciPy / prdc on the same features, and exact properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from prdc import compute_prdc
from scipy import linalg

from dreamdist.evaluation import metrics as M


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The pytorch-fid / TTUR reference: scipy.linalg.sqrtm of the covariance product."""
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # as pytorch-fid does for singular products
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def correlated(rng, n, d, scale=0.3, shift=0.0):
    return rng.normal(size=(n, d)) @ (rng.normal(size=(d, d)) * scale) + shift


# ---------------------------------------------------------------------------------------------
# FID


@pytest.mark.parametrize("n1,n2,d", [(400, 300, 64), (2000, 1500, 16)])
def test_fid_matches_scipy_full_rank(n1, n2, d):
    rng = np.random.default_rng(n1)
    a, b = correlated(rng, n1, d), correlated(rng, n2, d, scale=0.4, shift=0.2)
    reference = scipy_fid(a, b)
    ours = M.frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
    from_stats = M.frechet_distance_from_stats(*M.gaussian_stats(a), *M.gaussian_stats(b))
    assert ours == pytest.approx(reference, rel=1e-9)
    assert from_stats == pytest.approx(reference, rel=1e-9)


def test_fid_rank_deficient_both_routes_agree_and_match_scipy_loosely():
    """N < d (few references): the Gram (SVD) route and the (d, d) route agree; sqrtm is less exact."""
    rng = np.random.default_rng(1)
    a, b = correlated(rng, 12, 128), correlated(rng, 40, 128, shift=0.1)
    gram = M.frechet_distance(a, b)  # 12 * 40 * 12 << 128^3: the Gram route
    stats = M.frechet_distance_from_stats(*M.gaussian_stats(a), *M.gaussian_stats(b))
    assert gram == pytest.approx(stats, rel=1e-10)
    assert gram == pytest.approx(scipy_fid(a, b), rel=1e-6)  # sqrtm of a singular product: ~5e-8


def test_fid_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(2)
    for n, d in ((300, 32), (10, 64)):  # full rank and rank deficient
        x = torch.from_numpy(correlated(rng, n, d))
        assert M.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9 * float(x.var(0).sum()))


@pytest.mark.parametrize("n,d", [(500, 32), (8, 100)])
def test_fid_with_equal_covariances_is_squared_mean_distance(n, d):
    rng = np.random.default_rng(3)
    x = torch.from_numpy(correlated(rng, n, d))
    shift = torch.from_numpy(rng.normal(size=d))
    expected = float(shift.square().sum())
    assert M.frechet_distance(x, x + shift) == pytest.approx(expected, rel=1e-12)
    mu, sigma = M.gaussian_stats(x)
    assert M.frechet_distance_from_stats(mu, sigma, mu + shift, sigma) == pytest.approx(expected, rel=1e-12)


def test_fid_is_symmetric_and_dtype_independent():
    rng = np.random.default_rng(4)
    a, b = correlated(rng, 200, 24), correlated(rng, 150, 24, shift=0.5)
    assert M.frechet_distance(a, b) == pytest.approx(M.frechet_distance(b, a), rel=1e-10)
    a32, b32 = torch.from_numpy(a).float(), torch.from_numpy(b).float()
    assert M.frechet_distance(a32, b32) == pytest.approx(M.frechet_distance(a32.double(), b32.double()), rel=1e-12)


def test_fid_input_errors_are_clear():
    x = torch.randn(10, 8)
    with pytest.raises(ValueError, match="at least 2"):
        M.frechet_distance(x[:1], x)
    with pytest.raises(ValueError, match="different feature sizes"):
        M.frechet_distance(x, torch.randn(10, 9))
    with pytest.raises(ValueError, match="NaN"):
        M.frechet_distance(x, torch.full((10, 8), float("nan")))
    with pytest.raises(ValueError, match="2-D"):
        M.frechet_distance(torch.randn(10), x)


# ---------------------------------------------------------------------------------------------
# cosine similarities


def test_mean_cosine_similarity_equals_mean_over_all_pairs():
    rng = np.random.default_rng(5)
    g, r = torch.from_numpy(rng.normal(size=(17, 12)) + 0.5), torch.from_numpy(rng.normal(size=(9, 12)))
    brute = torch.nn.functional.cosine_similarity(g[:, None, :], r[None, :, :], dim=-1).mean()  # (17, 9)
    assert M.mean_cosine_similarity(g, r) == pytest.approx(float(brute), abs=1e-12)
    assert M.mean_cosine_similarity(r, r) < 1.0  # all pairs, the diagonal is not the only term
    assert M.mean_cosine_similarity(r[:1], r[:1]) == pytest.approx(1.0)


def test_clip_t_per_image_and_single_prompt():
    rng = np.random.default_rng(6)
    images, texts = torch.from_numpy(rng.normal(size=(6, 8))), torch.from_numpy(rng.normal(size=(6, 8)))
    per_image = torch.nn.functional.cosine_similarity(images, texts, dim=1).mean()
    assert M.clip_t(images, texts) == pytest.approx(float(per_image), abs=1e-12)
    single = torch.nn.functional.cosine_similarity(images, texts[:1].expand(6, 8), dim=1).mean()
    assert M.clip_t(images, texts[:1]) == pytest.approx(float(single), abs=1e-12)
    with pytest.raises(ValueError, match="one prompt per image"):
        M.clip_t(images, texts[:2])
    with pytest.raises(ValueError, match="all-zero"):
        M.clip_t(torch.zeros(2, 8), texts[:1])


# ---------------------------------------------------------------------------------------------
# density / coverage / precision / recall


def test_knn_radii_match_brute_force():
    rng = np.random.default_rng(7)
    x = torch.from_numpy(rng.normal(size=(50, 5)))
    brute = torch.cdist(x, x).sort(dim=1).values[:, 3]  # column 0 is the point itself
    assert torch.allclose(M.knn_radii(x, k=3, chunk_size=7), brute, rtol=0, atol=1e-10)


@pytest.mark.parametrize("k", [1, 5])
def test_exclusive_boundary_reproduces_prdc_exactly(k):
    rng = np.random.default_rng(8 + k)
    real, fake = rng.normal(size=(600, 32)), rng.normal(size=(500, 32)) * 1.1 + 0.15
    reference = compute_prdc(real, fake, nearest_k=k)  # float64 in, float64 distances
    ours = M.manifold_metrics(torch.from_numpy(real), torch.from_numpy(fake), k=k, boundary="exclusive", chunk_size=128)
    for name in ("precision", "recall", "coverage"):  # counts over 500/600 points: identical
        assert ours[name] == reference[name], name
    assert ours["density"] == pytest.approx(reference["density"], abs=1e-12)


def test_float32_features_agree_with_prdc_within_one_point():
    rng = np.random.default_rng(9)
    real, fake = rng.normal(size=(400, 16)).astype(np.float32), rng.normal(size=(300, 16)).astype(np.float32)
    reference = compute_prdc(real, fake, nearest_k=5)  # prdc keeps float32 distances
    ours = M.manifold_metrics(torch.from_numpy(real), torch.from_numpy(fake), k=5, boundary="exclusive")
    for name in ("precision", "recall", "coverage"):
        assert abs(ours[name] - reference[name]) <= 1 / 300 + 1e-12, name
    assert ours["density"] == pytest.approx(reference["density"], abs=1 / (5 * 300) + 1e-12)


def brute_inclusive(real: torch.Tensor, fake: torch.Tensor, k: int) -> dict[str, float]:
    """The paper's definitions with closed balls, written out with full distance matrices."""
    r_real = torch.cdist(real, real).sort(dim=1).values[:, k]  # (N,)
    r_fake = torch.cdist(fake, fake).sort(dim=1).values[:, k]  # (M,)
    d = torch.cdist(real, fake)  # (N, M)
    inside = d <= r_real[:, None]
    return {
        "density": float(inside.sum().double() / (k * fake.shape[0])),
        "coverage": float(inside.any(dim=1).double().mean()),
        "precision": float(inside.any(dim=0).double().mean()),
        "recall": float((d <= r_fake[None, :]).any(dim=1).double().mean()),
    }


def test_inclusive_boundary_matches_the_written_out_definition():
    rng = np.random.default_rng(10)
    real, fake = torch.from_numpy(rng.normal(size=(300, 8))), torch.from_numpy(rng.normal(size=(250, 8)) + 0.2)
    ours = M.manifold_metrics(real, fake, k=5, chunk_size=64)
    expected = brute_inclusive(real, fake, 5)
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name


def test_boundary_conventions_differ_exactly_on_ties():
    """Integer lattice: fakes lie exactly on k-NN spheres, where closed and open balls disagree."""
    real = torch.arange(10, dtype=torch.float64)[:, None]  # 0..9 on a line, k=1 radius 1 each
    fake = torch.tensor([[10.0], [-1.0], [4.5], [20.0]])
    inclusive = M.manifold_metrics(real, fake, k=1, recall=False)
    exclusive = M.manifold_metrics(real, fake, k=1, boundary="exclusive", recall=False)
    reference = compute_prdc(real.numpy(), fake.numpy(), nearest_k=1)
    # 10 and -1 are at distance exactly 1 from reals 9 and 0 (on their spheres); 4.5 is inside two balls
    assert inclusive["precision"] == 3 / 4 and exclusive["precision"] == 1 / 4
    assert inclusive["density"] == (1 + 1 + 2) / 4 and exclusive["density"] == 2 / 4
    assert inclusive["coverage"] == 4 / 10 and exclusive["coverage"] == 2 / 10
    for name in ("precision", "density", "coverage"):
        assert exclusive[name] == pytest.approx(reference[name], abs=1e-12)


@pytest.mark.parametrize("k", [2, 5])
def test_a_set_against_itself(k):
    """Inclusive: coverage 1 and density 1 + 1/k (centre + k neighbours per ball); exclusive: density 1."""
    x = torch.from_numpy(np.random.default_rng(11).normal(size=(200, 6)))
    inclusive = M.manifold_metrics(x, x, k=k, chunk_size=50)
    exclusive = M.manifold_metrics(x, x, k=k, boundary="exclusive", chunk_size=50)
    assert inclusive["coverage"] == 1.0 and inclusive["precision"] == 1.0 and inclusive["recall"] == 1.0
    assert inclusive["density"] == pytest.approx(1 + 1 / k, abs=1e-12)
    assert exclusive["density"] == pytest.approx(1.0, abs=1e-12)
    assert exclusive["density"] == pytest.approx(compute_prdc(x.numpy(), x.numpy(), k)["density"], abs=1e-12)


def test_coverage_of_duplicated_points_is_one_only_with_closed_balls():
    x = torch.from_numpy(np.random.default_rng(12).normal(size=(10, 3)))
    duplicated = torch.cat([x, x[:1].expand(5, 3)])  # 6 copies of x[0]: its 5-NN radius is 0
    assert M.manifold_metrics(duplicated, duplicated, k=5)["coverage"] == 1.0
    exclusive = M.manifold_metrics(duplicated, duplicated, k=5, boundary="exclusive")["coverage"]
    assert exclusive == pytest.approx(compute_prdc(duplicated.numpy(), duplicated.numpy(), 5)["coverage"])
    assert exclusive < 1.0


def test_chunk_size_does_not_change_results():
    rng = np.random.default_rng(13)
    real, fake = torch.from_numpy(rng.normal(size=(130, 10))), torch.from_numpy(rng.normal(size=(90, 10)))
    results = [M.manifold_metrics(real, fake, k=3, chunk_size=c) for c in (1, 17, 1000)]
    assert results[0] == results[1] == results[2]


def test_manifold_metrics_too_few_samples_raise_not_nan():
    real, fake = torch.randn(5, 4), torch.randn(20, 4)
    with pytest.raises(ValueError, match="at least 6"):
        M.manifold_metrics(real, fake, k=5)
    with pytest.raises(ValueError, match="recall with k=5"):
        M.manifold_metrics(torch.randn(20, 4), torch.randn(5, 4), k=5)
    few_fakes = M.manifold_metrics(torch.randn(20, 4), torch.randn(2, 4), k=5, recall=False)
    assert "recall" not in few_fakes and all(math.isfinite(v) for v in few_fakes.values())
    with pytest.raises(ValueError, match="positive integer"):
        M.manifold_metrics(torch.randn(20, 4), torch.randn(20, 4), k=0)
    with pytest.raises(ValueError, match="inclusive"):
        M.manifold_metrics(torch.randn(20, 4), torch.randn(20, 4), boundary="open")
