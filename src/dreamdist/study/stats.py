"""Statistics of a pairwise preference study (METHODS.md §10), as pure numpy functions.

Votes are three arrays of equal length n: ``a`` and ``b`` (int set indices of the two images of
the pair, a != b) and ``s`` (float, 1.0 when a was preferred, 0.0 when b was, 0.5 for a tie).
Ties count half a win for each side, in the win rates and in the Bradley-Terry fit alike (as
Chatbot Arena does).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

L2 = 0.01  # weak Gaussian prior on the Bradley-Terry scores: finite when one set wins every vote


def win_counts(a: np.ndarray, b: np.ndarray, s: np.ndarray, n_sets: int) -> tuple[np.ndarray, ...]:
    """Per set: votes it took part in, outright wins and ties, each (n_sets,) int."""
    votes = np.bincount(a, minlength=n_sets) + np.bincount(b, minlength=n_sets)
    wins = np.bincount(a, weights=s == 1.0, minlength=n_sets) + np.bincount(b, weights=s == 0.0, minlength=n_sets)
    ties = np.bincount(a, weights=s == 0.5, minlength=n_sets) + np.bincount(b, weights=s == 0.5, minlength=n_sets)
    return votes.astype(int), wins.astype(int), ties.astype(int)


def win_rates(a: np.ndarray, b: np.ndarray, s: np.ndarray, n_sets: int) -> np.ndarray:
    """Per set (n_sets,): (wins + ties / 2) / votes; NaN for a set without votes."""
    points = np.bincount(a, weights=s, minlength=n_sets) + np.bincount(b, weights=1.0 - s, minlength=n_sets)
    votes = np.bincount(a, minlength=n_sets) + np.bincount(b, minlength=n_sets)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(votes > 0, points / np.maximum(votes, 1), np.nan)


def win_matrix(a: np.ndarray, b: np.ndarray, s: np.ndarray, n_sets: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``W`` (n_sets, n_sets), W[i, j] = wins of i over j with ties as half, and vote counts
    ``N`` (symmetric, N = W + W.T)."""
    points = np.zeros((n_sets, n_sets))
    np.add.at(points, (a, b), s)
    np.add.at(points, (b, a), 1.0 - s)
    return points, points + points.T


def bradley_terry(points: np.ndarray, l2: float = L2, iters: int = 100, tol: float = 1e-10) -> np.ndarray:
    """Bradley-Terry scores from a points matrix, by (L2-penalised) logistic regression.

    The model: P(i preferred over j) = sigmoid(score_i - score_j). It is the logistic regression of
    FastChat's ``compute_mle_elo`` (one row per ordered pair, features +1 for i and -1 for j, sample
    weight W[i, j]), solved here by Newton's method on the (n_sets,) scores directly.

    Args:
        points: (n_sets, n_sets) W[i, j] = wins of i over j (ties half), from :func:`win_matrix`.
        l2: penalty weight (a Gaussian prior); it also centres the scores (they sum to zero).

    Returns:
        (n_sets,) scores on the natural-log odds scale, mean zero.
    """
    n = points.shape[0]
    counts = points + points.T  # (n, n)
    beta = np.zeros(n)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(beta[:, None] - beta[None, :])))  # (n, n) P(i beats j)
        grad = (points - counts * p).sum(axis=1) - l2 * beta  # (n,)
        w = counts * p * (1.0 - p)  # (n, n) Fisher information per pair
        hess = np.diag(w.sum(axis=1)) - w + l2 * np.eye(n)  # (n, n) minus the Hessian, positive definite
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]  # least squares: singular when l2 = 0 (scores float)
        beta = beta + step
        if np.abs(step).max() < tol:
            break
    return beta - beta.mean()


def bootstrap(
    a: np.ndarray, b: np.ndarray, s: np.ndarray, n_sets: int, rounds: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, np.ndarray]:
    """Percentile bootstrap over votes: resample the n votes with replacement ``rounds`` times.

    Returns:
        ``{"win_rate": (2, n_sets), "score": (2, n_sets)}``: rows are the lower and upper bounds of
        the ``level`` interval (NaN for a set without votes).
    """
    rng = np.random.default_rng(seed)
    n = len(a)
    rates, scores = np.full((rounds, n_sets), np.nan), np.full((rounds, n_sets), np.nan)
    if n:
        for r in range(rounds):
            idx = rng.integers(0, n, size=n)  # (n,) one resample of the votes
            ra, rb, rs = a[idx], b[idx], s[idx]
            rates[r] = win_rates(ra, rb, rs, n_sets)
            scores[r] = bradley_terry(win_matrix(ra, rb, rs, n_sets)[0])
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    out = {}
    for key, samples in (("win_rate", rates), ("score", scores)):
        seen = ~np.isnan(samples).all(axis=0)
        bounds = np.full((2, n_sets), np.nan)
        if seen.any():
            bounds[:, seen] = np.nanpercentile(samples[:, seen], q, axis=0)
        out[key] = bounds
    return out


def agreement(pair_ids: list, choices: list[str]) -> dict[str, float | int | None]:
    """Agreement between raters who judged the same pair.

    ``percent``: the share of rater pairs (two raters, same pair) who gave the same answer (left,
    right or tie); ``kappa``: Fleiss' kappa, the same corrected for chance agreement given how often
    each answer was given, generalised to a varying number of raters per pair. Pairs with a
    single vote are left out; both are None when no pair has two votes.
    """
    by_pair: dict = defaultdict(list)
    for pair, choice in zip(pair_ids, choices):
        by_pair[pair].append(choice)
    shared = [c for c in by_pair.values() if len(c) >= 2]
    if not shared:
        return {"pairs": 0, "rater_pairs": 0, "percent": None, "kappa": None}
    agree = total = 0
    tally: dict[str, int] = defaultdict(int)
    for items in shared:
        counts = defaultdict(int)
        for c in items:
            counts[c] += 1
            tally[c] += 1
        agree += sum(k * (k - 1) for k in counts.values())  # ordered agreeing rater pairs
        total += len(items) * (len(items) - 1)
    observed = agree / total
    n_votes = sum(tally.values())
    expected = sum((k / n_votes) ** 2 for k in tally.values())
    kappa = None if expected >= 1.0 else (observed - expected) / (1.0 - expected)
    return {"pairs": len(shared), "rater_pairs": total // 2, "percent": observed, "kappa": kappa}
