"""Statistics of the preference study against cases whose answers are known by hand or by construction."""

from __future__ import annotations

import numpy as np
import pytest

from dreamdist.study import stats


def votes(*rows):
    """(a, b, s) arrays from (a, b, s) tuples."""
    a, b, s = zip(*rows)
    return np.array(a), np.array(b), np.array(s, dtype=float)


def test_win_rate_counts_ties_as_half_whatever_the_side():
    # set 0 beats 1 twice, ties twice, loses once (once as the left image, once as the right)
    a, b, s = votes((0, 1, 1.0), (1, 0, 0.0), (0, 1, 0.5), (1, 0, 0.5), (1, 0, 1.0))
    np.testing.assert_allclose(stats.win_rates(a, b, s, 3)[:2], [3 / 5, 2 / 5])
    assert np.isnan(stats.win_rates(a, b, s, 3)[2])  # set 2 never voted on
    n, wins, ties = stats.win_counts(a, b, s, 3)
    assert n.tolist() == [5, 5, 0] and wins.tolist() == [2, 1, 0] and ties.tolist() == [2, 2, 0]
    # the same votes written with the sides swapped give the same rates
    np.testing.assert_allclose(stats.win_rates(b, a, 1.0 - s, 3)[:2], [3 / 5, 2 / 5])


def test_win_matrix_rows_against_columns():
    a, b, s = votes((0, 1, 1.0), (2, 0, 1.0), (0, 2, 0.5), (1, 2, 0.0))
    points, counts = stats.win_matrix(a, b, s, 3)
    assert points[0, 1] == 1 and points[1, 0] == 0
    assert points[0, 2] == 0.5 and points[2, 0] == 1.5
    assert points[2, 1] == 1 and points[1, 2] == 0
    np.testing.assert_array_equal(counts, counts.T)
    assert counts[0, 2] == 2 and counts.trace() == 0


def test_bradley_terry_recovers_known_strengths_from_expected_counts():
    beta = np.array([1.2, 0.3, -0.4, -1.1])
    p = 1.0 / (1.0 + np.exp(-(beta[:, None] - beta[None, :])))
    points = 100.0 * p * (1 - np.eye(4))  # 100 votes per ordered pair, wins at their expected rate
    np.testing.assert_allclose(stats.bradley_terry(points, l2=0.0), beta - beta.mean(), atol=1e-8)
    assert np.argsort(-stats.bradley_terry(points)).tolist() == [0, 1, 2, 3]


def test_bradley_terry_orders_simulated_votes():
    rng = np.random.default_rng(0)
    beta = np.array([-0.8, 0.9, 0.0])
    a = rng.integers(0, 3, 3000)
    b = (a + rng.integers(1, 3, 3000)) % 3  # never a == b
    s = (rng.random(3000) < 1 / (1 + np.exp(-(beta[a] - beta[b])))).astype(float)
    scores = stats.bradley_terry(stats.win_matrix(a, b, s, 3)[0])
    assert np.argsort(-scores).tolist() == [1, 2, 0]
    np.testing.assert_allclose(scores, beta - beta.mean(), atol=0.15)


def test_bradley_terry_equals_a_generic_logistic_regression():
    """The FastChat formulation (rows +1/-1, sample weights W[i, j]) fitted by a generic optimiser."""
    optimize = pytest.importorskip("scipy.optimize")
    a, b, s = votes(*[(0, 1, 1.0)] * 5, *[(1, 0, 1.0)] * 2, *[(1, 2, 0.5)] * 3, (2, 0, 1.0), (0, 2, 0.0), (2, 1, 1.0))
    points = stats.win_matrix(a, b, s, 3)[0]
    rows, ys, ws = [], [], []
    for i in range(3):
        for j in range(i + 1, 3):  # one row pair per set pair: every vote counted once
            if points[i, j] + points[j, i] > 0:
                x = np.zeros(3)
                x[i], x[j] = 1.0, -1.0
                rows += [x, x]
                ys += [1.0, 0.0]
                ws += [points[i, j], points[j, i]]
    X, y, w = np.array(rows), np.array(ys), np.array(ws)

    def loss(beta):
        z = X @ beta
        return np.sum(w * (np.logaddexp(0, -z) * y + np.logaddexp(0, z) * (1 - y))) + 0.5 * stats.L2 * beta @ beta

    reference = optimize.minimize(loss, np.zeros(3), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(stats.bradley_terry(points), reference - reference.mean(), atol=1e-5)


def test_bradley_terry_stays_finite_when_one_set_wins_everything():
    a, b, s = votes(*[(0, 1, 1.0)] * 10, *[(2, 1, 1.0)] * 3, *[(0, 2, 0.5)] * 2)
    scores = stats.bradley_terry(stats.win_matrix(a, b, s, 3)[0])
    assert np.isfinite(scores).all() and abs(scores.sum()) < 1e-9
    assert scores[1] < scores[2] and scores[1] < scores[0]


def simulated(n, rate, seed):
    rng = np.random.default_rng(seed)
    left = rng.random(n) < 0.5  # set 0 shown on the left half of the time
    won = rng.random(n) < rate
    a, b = np.where(left, 0, 1), np.where(left, 1, 0)
    s = np.where(left, won, ~won).astype(float)
    return a, b, s


def test_bootstrap_contains_the_estimate_and_narrows_with_more_votes():
    widths = []
    for n in (40, 400):
        a, b, s = simulated(n, 0.7, seed=n)
        ci = stats.bootstrap(a, b, s, 2, rounds=400, seed=0)
        rate = stats.win_rates(a, b, s, 2)
        score = stats.bradley_terry(stats.win_matrix(a, b, s, 2)[0])
        assert (ci["win_rate"][0] <= rate).all() and (rate <= ci["win_rate"][1]).all()
        assert (ci["score"][0] <= score).all() and (score <= ci["score"][1]).all()
        widths.append(ci["win_rate"][1, 0] - ci["win_rate"][0, 0])
    assert widths[1] < 0.6 * widths[0]  # about 1/sqrt(10) as wide
    assert 0.15 < widths[0] < 0.4  # 40 votes at 70%: 2 x 1.96 x sqrt(.21 / 40) = 0.28


def test_bootstrap_is_seeded_and_marks_sets_without_votes():
    a, b, s = simulated(60, 0.6, seed=1)
    first = stats.bootstrap(a, b, s, 3, rounds=100, seed=5)
    again = stats.bootstrap(a, b, s, 3, rounds=100, seed=5)
    np.testing.assert_array_equal(first["win_rate"], again["win_rate"])
    assert np.isnan(first["win_rate"][:, 2]).all() and not np.isnan(first["win_rate"][:, :2]).any()


def test_agreement_by_hand():
    # pair 1: three raters all say left (3 agreeing rater pairs); pair 2: left vs right (1 disagreeing);
    # pair 3: a single vote, left out
    result = stats.agreement([1, 1, 1, 2, 2, 3], ["left", "left", "left", "left", "right", "tie"])
    assert result["pairs"] == 2 and result["rater_pairs"] == 4
    assert result["percent"] == pytest.approx(3 / 4)
    expected = 0.8**2 + 0.2**2  # answers given: left 4 of 5, right 1 of 5
    assert result["kappa"] == pytest.approx((0.75 - expected) / (1 - expected))
    assert stats.agreement([1, 2], ["left", "right"])["percent"] is None


def test_agreement_matches_fleiss_kappa_with_equal_raters_per_pair():
    rng = np.random.default_rng(3)
    choices = ["left", "right", "tie"]
    table = rng.multinomial(5, [0.5, 0.3, 0.2], size=12)  # (pairs, answers): 5 raters per pair
    pair_ids, given = [], []
    for pair, counts in enumerate(table):
        for answer, k in zip(choices, counts):
            pair_ids += [pair] * k
            given += [answer] * k
    # Fleiss (1971), written out
    p_i = (table * (table - 1)).sum(axis=1) / (5 * 4)
    p_j = table.sum(axis=0) / table.sum()
    kappa = (p_i.mean() - (p_j**2).sum()) / (1 - (p_j**2).sum())
    result = stats.agreement(pair_ids, given)
    assert result["percent"] == pytest.approx(p_i.mean()) and result["kappa"] == pytest.approx(kappa)
