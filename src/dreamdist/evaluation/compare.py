"""Compare methods over scenarios: one table (mean ± std over scenarios) and two kinds of plots.

Each folder passed to ``dreamdist compare`` is one method (its name is the label unless the
reports were written with ``eval --method``); it holds one ``report.json`` or several (one per
scenario, i.e. reference set, in sub-folders). Std is the sample std (ddof = 1) over scenarios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from dreamdist.atomic import atomic_path, atomic_write_json, atomic_write_text
from dreamdist.evaluation.defaults import METRICS, space_of
from dreamdist.evaluation.report import fmt, label, read_report, require_matplotlib

# (fidelity, diversity) pairs for the scatter plot, first available wins
SCATTER_PAIRS = (("density", "coverage"), ("precision", "recall"), ("clip-i", "coverage"), ("dino", "coverage"))


@dataclass
class MethodResults:
    """One method's per-scenario metric values."""

    name: str
    scenarios: dict[str, dict[str, float]] = field(default_factory=dict)  # scenario -> metric -> value
    sources: dict[str, str] = field(default_factory=dict)  # scenario -> report path

    def values(self, metric: str) -> list[float]:
        return [m[metric] for m in self.scenarios.values() if m.get(metric) is not None]

    def mean_std(self, metric: str) -> tuple[float | None, float | None, int]:
        values = self.values(metric)
        if not values:
            return None, None, 0
        mean = sum(values) / len(values)
        if len(values) < 2:
            return mean, None, 1
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        return mean, std, len(values)


def _setting_of(report: dict, metric: str) -> tuple:
    """What must match for a metric's numbers to be comparable across reports."""
    space = space_of(report, metric)
    identity = (space.get("model_id"), space.get("weights"), space.get("preprocessing"), space.get("dim"))
    if metric in ("density", "coverage", "precision", "recall"):
        settings = report.get("settings", {})
        identity += (settings.get("k"), settings.get("boundary"))
    return identity


def collect(groups: list[tuple[str, list[Path]]], allow_mixed: bool = False) -> tuple[list[MethodResults], list[str]]:
    """Read reports grouped by method; check that each metric was computed the same way everywhere.

    Args:
        groups: (default method name, report paths) per compare argument.
        allow_mixed: accept reports whose feature models / k differ (otherwise ``ValueError``).

    Returns:
        Methods in argument order (a report's own ``method`` label may add or merge groups) and
        warnings for the user.
    """
    methods: dict[str, MethodResults] = {}
    settings: dict[str, dict[tuple, str]] = {}
    for default_name, paths in groups:
        for path in paths:
            report = read_report(path)
            name = report.get("method") or default_name
            scenario = report.get("scenario") or path.parent.name
            result = methods.setdefault(name, MethodResults(name))
            if scenario in result.scenarios:
                raise ValueError(
                    f"method {name!r} has two reports for scenario {scenario!r} ({result.sources[scenario]} and "
                    f"{path}); pass each report once or label them with `dreamdist eval --scenario`"
                )
            result.scenarios[scenario] = dict(report["metrics"])
            result.sources[scenario] = str(path)
            for metric in report["metrics"]:
                settings.setdefault(metric, {}).setdefault(_setting_of(report, metric), str(path))
    mixed = {metric: seen for metric, seen in settings.items() if len(seen) > 1}
    warnings = []
    for metric, seen in mixed.items():
        message = (
            f"{metric} was computed with different models or settings in {sorted(seen.values())[:2]} "
            f"(model, weights, preprocessing, dim[, k, boundary]: {list(seen)[:2]})"
        )
        if not allow_mixed:
            raise ValueError(
                message + "; its numbers are not comparable. Re-run eval with the same settings or pass --allow-mixed"
            )
        warnings.append(message)
    scenario_sets = {frozenset(m.scenarios) for m in methods.values()}
    if len(scenario_sets) > 1:
        warnings.append("methods were evaluated on different scenarios; their means average different sets")
    return list(methods.values()), warnings


def metric_order(methods: list[MethodResults]) -> list[str]:
    present = {metric for m in methods for s in m.scenarios.values() for metric in s}
    return [m for m in METRICS if m in present] + sorted(present - set(METRICS))


def render_table(methods: list[MethodResults]) -> str:
    """Markdown table: one row per method, mean ± std over scenarios per metric."""
    metrics = metric_order(methods)
    lines = [
        "| method | scenarios | " + " | ".join(label(m) for m in metrics) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in metrics) + " |",
    ]
    for method in methods:
        cells = []
        for metric in metrics:
            mean, std, n = method.mean_std(metric)
            cell = fmt(metric, mean) + (f" ± {fmt(metric, std)}" if std is not None else "")
            cells.append(cell + (f" (n={n})" if mean is not None and n != len(method.scenarios) else ""))
        lines.append(f"| {method.name} | {len(method.scenarios)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_bars(methods: list[MethodResults], path: Path) -> Path:
    """One panel per metric: a bar per method (mean, std error bar) and its scenarios as dots."""
    Figure = require_matplotlib()
    metrics = metric_order(methods)
    columns = min(4, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    fig = Figure(figsize=(3.2 * columns, 2.8 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    colours = [f"C{i % 10}" for i in range(len(methods))]
    for ax, metric in zip(axes, metrics):
        for i, method in enumerate(methods):
            mean, std, _ = method.mean_std(metric)
            if mean is None:
                continue
            ax.bar(i, mean, yerr=std or 0.0, color=colours[i], alpha=0.8, capsize=3)
            values = method.values(metric)
            ax.plot([i] * len(values), values, "o", color="black", ms=2.5, alpha=0.6)
        ax.set_title(label(metric))
        ax.set_xticks(range(len(methods)), [m.name for m in methods], rotation=30, ha="right")
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    fig.suptitle("mean ± std over scenarios (dots: scenarios)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    return path


def plot_scatter(methods: list[MethodResults], path: Path) -> Path | None:
    """Fidelity (x) vs diversity (y), e.g. density vs coverage; None when no pair was measured."""
    metrics = set(metric_order(methods))
    pair = next((p for p in SCATTER_PAIRS if set(p) <= metrics), None)
    if pair is None:
        return None
    Figure = require_matplotlib()
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.subplots()
    x_metric, y_metric = pair
    for i, method in enumerate(methods):
        points = [(s[x_metric], s[y_metric]) for s in method.scenarios.values() if x_metric in s and y_metric in s]
        if not points:
            continue
        colour = f"C{i % 10}"
        ax.scatter(*zip(*points), color=colour, alpha=0.35, s=14)
        (mx, sx, _), (my, sy, _) = method.mean_std(x_metric), method.mean_std(y_metric)
        ax.errorbar(mx, my, xerr=sx or 0.0, yerr=sy or 0.0, fmt="o", color=colour, ms=8, capsize=3, label=method.name)
    ax.set_xlabel(f"{label(x_metric)} (fidelity)")
    ax.set_ylabel(f"{label(y_metric)} (diversity)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    return path


def write_comparison(methods: list[MethodResults], warnings: list[str], out: str | Path) -> list[Path]:
    """Write ``comparison.json``, ``comparison.md``, ``metrics.png`` and ``fidelity_diversity.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = render_table(methods)
    summary = {
        "methods": [
            {
                "name": m.name,
                "scenarios": m.scenarios,
                "reports": m.sources,
                "mean": {metric: m.mean_std(metric)[0] for metric in metric_order(methods)},
                "std": {metric: m.mean_std(metric)[1] for metric in metric_order(methods)},
            }
            for m in methods
        ],
        "std": "sample standard deviation over scenarios (ddof=1); null with one scenario",
        "warnings": warnings,
    }
    atomic_write_json(out / "comparison.json", summary)
    notes = "".join(f"\n- {w}" for w in warnings)
    markdown = f"# dreamdist compare\n\nMean ± std over scenarios.\n\n{table}" + (
        f"\nWarnings:{notes}\n" if notes else ""
    )
    atomic_write_text(out / "comparison.md", markdown)
    written = [out / "comparison.json", out / "comparison.md", plot_bars(methods, out / "metrics.png")]
    scatter = plot_scatter(methods, out / "fidelity_diversity.png")
    return written + ([scatter] if scatter else [])
