"""``dreamdist study report``: votes -> per-set statistics, a text table, JSON, and a plot.

The numbers come from :mod:`dreamdist.study.stats`; this module only gathers the votes from the
study file, names the sets and formats.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from dreamdist.atomic import atomic_path, atomic_write_bytes
from dreamdist.study import stats, store
from dreamdist.study.words import counted

SCORE_OF = {"left": 1.0, "right": 0.0, "tie": 0.5}  # score of the left image's set


def _num(x: float) -> float | None:
    """A float for JSON: rounded, None for NaN."""
    return None if x is None or math.isnan(x) else round(float(x), 6)


def build_report(study: str | Path, rounds: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Every statistic of a study, as a JSON-ready dict (see docs/study.md for the fields)."""
    if rounds < 1:
        raise ValueError(f"--bootstrap must be at least 1; got {rounds}")
    conn = store.open_study(study)
    try:
        names = store.set_names(conn)
        rows = store.vote_rows(conn)
        meta = store.read_meta(conn)
        n_pairs = conn.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
    finally:
        conn.close()
    k = len(names)
    a = np.array([r[2] for r in rows], dtype=int)  # (n,) set of the left image
    b = np.array([r[3] for r in rows], dtype=int)  # (n,) set of the right image
    s = np.array([SCORE_OF[r[4]] for r in rows], dtype=float)  # (n,) 1 left won, 0 right won, 0.5 tie
    votes, wins, ties = stats.win_counts(a, b, s, k)
    rates = stats.win_rates(a, b, s, k)
    points, counts = stats.win_matrix(a, b, s, k)
    scores = stats.bradley_terry(points)
    ci = stats.bootstrap(a, b, s, k, rounds=rounds, seed=seed, level=level)
    sets = {}
    for i, name in enumerate(names):
        sets[name] = {
            "votes": int(votes[i]),
            "wins": int(wins[i]),
            "ties": int(ties[i]),
            "win_rate": _num(rates[i]),
            "ci_low": _num(ci["win_rate"][0, i]),
            "ci_high": _num(ci["win_rate"][1, i]),
            "score": _num(scores[i]) if votes[i] else None,
            "score_ci_low": _num(ci["score"][0, i]),
            "score_ci_high": _num(ci["score"][1, i]),
        }
    matrix = {
        row: {
            col: {"votes": int(counts[i, j]), "win_rate": _num(points[i, j] / counts[i, j]) if counts[i, j] else None}
            for j, col in enumerate(names)
            if j != i
        }
        for i, row in enumerate(names)
    }
    agree = stats.agreement([r[0] for r in rows], [r[4] for r in rows])
    return {
        "question": meta["question"],
        "votes": len(rows),
        "raters": len({r[1] for r in rows}),
        "pairs": n_pairs,
        "sets": sets,
        "matrix": matrix,
        "agreement": {key: _num(v) if isinstance(v, float) else v for key, v in agree.items()},
        "bootstrap": {"rounds": rounds, "level": level, "seed": seed},
    }


def json_summary(report: dict) -> dict:
    """The ``--json`` object: ``{"votes": N, "sets": {NAME: {votes, wins, win_rate, ci_low, ci_high, score}}}``."""
    keys = ("votes", "wins", "win_rate", "ci_low", "ci_high", "score")
    return {"votes": report["votes"], "sets": {n: {k: v[k] for k in keys} for n, v in report["sets"].items()}}


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_text(report: dict) -> str:
    """The report as a plain-text table (also the body of report.md)."""
    level = round(100 * report["bootstrap"]["level"])
    votes, raters, pairs = counted(report["votes"], "vote"), counted(report["raters"], "rater"), report["pairs"]
    lines = [
        f"question: {report['question']}",
        f"{votes} by {raters} on {counted(pairs, 'pair')}",
        "",
        f"{'set':<20} {'votes':>6} {'wins':>5} {'ties':>5} {'win rate':>9} {f'{level}% CI':>13} {'BT score':>9}",
    ]
    order = sorted(report["sets"].items(), key=lambda kv: -(kv[1]["score"] if kv[1]["score"] is not None else -1e9))
    for name, row in order:
        ci = f"{_fmt(row['ci_low'])}-{_fmt(row['ci_high'])}" if row["ci_low"] is not None else "-"
        lines.append(
            f"{name:<20} {row['votes']:>6} {row['wins']:>5} {row['ties']:>5} {_fmt(row['win_rate']):>9} "
            f"{ci:>13} {_fmt(row['score']):>9}"
        )
    lines += ["", "win rate of the row set against the column set (votes):"]
    names = [n for n, _ in order]
    lines.append(" " * 20 + "".join(f"{n[:14]:>16}" for n in names))
    for row in names:
        cells = []
        for col in names:
            cell = report["matrix"][row].get(col)
            cells.append("-" if cell is None else f"{_fmt(cell['win_rate'])} ({cell['votes']})")
        lines.append(f"{row[:20]:<20}" + "".join(f"{c:>16}" for c in cells))
    agree = report["agreement"]
    lines.append("")
    if agree["pairs"]:
        kappa, rater_pairs = _fmt(agree["kappa"]), counted(agree["rater_pairs"], "rater pair")
        lines.append(
            f"agreement: {counted(agree['pairs'], 'pair')} judged by 2+ raters, {rater_pairs}, "
            f"{100 * agree['percent']:.0f}% gave the same answer (Fleiss' kappa {kappa})"
        )
    else:
        lines.append("agreement: no pair was judged by two raters yet")
    lines.append("BT score: P(row preferred over col) = 1 / (1 + exp(score_col - score_row))")
    return "\n".join(lines)


def plot_report(report: dict, path: Path) -> None:
    """Win rates with their bootstrap intervals, and the pairwise win matrix, in one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("the study plot needs matplotlib: pip install 'dreamdist[eval]'") from None
    names = sorted(report["sets"], key=lambda n: report["sets"][n]["score"] or 0.0)
    rows = [report["sets"][n] for n in names]
    rate = np.array([r["win_rate"] if r["win_rate"] is not None else np.nan for r in rows])
    low = np.array([r["ci_low"] if r["ci_low"] is not None else np.nan for r in rows])
    high = np.array([r["ci_high"] if r["ci_high"] is not None else np.nan for r in rows])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.5 * len(names) + 3))
    ax1.barh(names, rate, color="#4C72B0")
    ax1.errorbar(rate, names, xerr=[rate - low, high - rate], fmt="none", ecolor="black", capsize=4)
    ax1.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax1.set_xlim(0, 1)
    ax1.set_xlabel(f"win rate (ties half), {round(100 * report['bootstrap']['level'])}% bootstrap interval")
    ax1.set_title(f"{counted(report['votes'], 'vote')}, {counted(report['raters'], 'rater')}")
    grid = np.full((len(names), len(names)), np.nan)
    for i, row in enumerate(names):
        for j, col in enumerate(names):
            cell = report["matrix"][row].get(col)
            if cell and cell["win_rate"] is not None:
                grid[i, j] = cell["win_rate"]
                ax2.text(j, i, f"{cell['win_rate']:.2f}\n({cell['votes']})", ha="center", va="center", fontsize=8)
    ax2.imshow(grid, cmap="RdBu", vmin=0, vmax=1)
    ax2.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax2.set_yticks(range(len(names)), names)
    ax2.set_title("row beats column")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_report(report: dict, out: str | Path) -> list[Path]:
    """Write report.json (everything), report.md (the table) and preference.png into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md", out / "preference.png"]
    atomic_write_bytes(paths[0], (json.dumps(report, indent=2) + "\n").encode())
    atomic_write_bytes(paths[1], ("# Preference study\n\n```\n" + format_text(report) + "\n```\n").encode())
    plot_report(report, paths[2])
    return paths
