"""Write and read evaluation reports: ``report.json`` (everything), ``report.md`` and ``metrics.png``."""

from __future__ import annotations

import json
from pathlib import Path

from dreamdist.atomic import atomic_path, atomic_write_json, atomic_write_text
from dreamdist.evaluation.defaults import space_of

REPORT_JSON = "report.json"
LABELS = {
    "fid": "FID",
    "clip-i": "CLIP-I",
    "clip-t": "CLIP-T",
    "dino": "DINO",
    "density": "Density",
    "coverage": "Coverage",
    "precision": "Precision",
    "recall": "Recall",
    "kid": "KID",
    "cmmd": "CMMD",
    "fd-dinov2": "FD-DINOv2",
    "vendi": "Vendi",
}
LOWER_IS_BETTER = {"fid", "kid", "cmmd", "fd-dinov2"}
UNBOUNDED = ("fid", "fd-dinov2", "kid", "cmmd", "vendi")  # not on a [0, 1]-ish scale: one plot panel each


def label(metric: str) -> str:
    """Display name with the better direction, e.g. ``FID ↓``."""
    return f"{LABELS.get(metric, metric)} {'↓' if metric in LOWER_IS_BETTER else '↑'}"


def fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if metric in ("fid", "fd-dinov2") else f"{value:.3f}" if metric == "vendi" else f"{value:.4f}"


def require_matplotlib():
    """matplotlib's object API with the Agg canvas (no pyplot, no global backend switch)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'dreamdist[eval]'") from None
    return Figure


def render_markdown(report: dict) -> str:
    """One evaluation as a Markdown page: metric table, inputs, settings, notes."""
    title = " / ".join(x for x in (report.get("method"), report.get("scenario")) if x) or "evaluation"
    lines = [f"# dreamdist eval: {title}", "", "| metric | value | features |", "| --- | --- | --- |"]
    for metric, value in report["metrics"].items():
        space = space_of(report, metric)
        shown = fmt(metric, value)
        if metric == "kid" and "kid" in report:
            shown += f" ± {fmt('kid', report['kid']['std'])}"
        lines.append(f"| {label(metric)} | {shown} | {space.get('model_id', '')} ({space.get('dim', '?')}-d) |")
    lines.append("")
    if "kid" in report:
        kid = report["kid"]
        lines += [f"KID: mean ± std over {kid['subsets']} subsets of {kid['subset_size']} images per set.", ""]
    if report.get("vendi"):
        lines += ["Vendi score (effective number of distinct images) per feature space:", ""]
        lines += ["| features | generated | reference |", "| --- | --- | --- |"]
        for kind, sides in report["vendi"].items():
            lines.append(f"| {kind} | {fmt('vendi', sides.get('generated'))} | {fmt('vendi', sides.get('real'))} |")
        lines.append("")
    for side, name in (("real", "Reference"), ("generated", "Generated")):
        info = report[side]
        skipped = f", {len(info['skipped'])} skipped" if info["skipped"] else ""
        manifest = " (manifest.jsonl)" if info.get("manifest") else ""
        lines.append(
            f"- {name}: `{info['folder']}`{manifest}: {info['count']} images{skipped}; sha256 `{info['sha256'][:16]}`"
        )
    settings, versions = report["settings"], report["versions"]
    lines.append(f"- k = {settings['k']} ({settings['boundary']} k-NN balls); device {settings['device']}")
    if settings.get("prompt_source"):
        lines.append(f"- CLIP-T prompts from {settings['prompt_source']}")
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if report.get("notes"):
        lines += ["", "Notes:", *[f"- {note}" for note in report["notes"]]]
    skipped = [(side, s) for side in ("real", "generated") for s in report[side]["skipped"]]
    if skipped:
        lines += ["", "Skipped files:", *[f"- {side}: `{s['file']}`: {s['reason']}" for side, s in skipped]]
    return "\n".join(lines) + "\n"


def plot_report(report: dict, path: Path) -> Path:
    """Bar chart of one evaluation's metrics (FID, KID, CMMD, FD-DINOv2, Vendi each on its own axis: other scales)."""
    Figure = require_matplotlib()
    bounded = [m for m in report["metrics"] if m not in UNBOUNDED]
    single = [m for m in report["metrics"] if m in UNBOUNDED]
    panels = int(bool(bounded)) + len(single)
    fig = Figure(figsize=(3 + 0.8 * len(bounded) + 1.5 * len(single), 3.2), layout="constrained")
    ratios = [max(len(bounded), 1)] * bool(bounded) + [1] * len(single)
    axes = fig.subplots(1, panels, width_ratios=ratios, squeeze=False)[0]
    if bounded:
        values = [report["metrics"][m] for m in bounded]
        axes[0].bar([label(m) for m in bounded], values, color="tab:blue")
        axes[0].axhline(1.0, color="grey", lw=0.8, ls="--")
        axes[0].tick_params(axis="x", labelrotation=30)
        for i, v in enumerate(values):
            axes[0].annotate(f"{v:.3f}", (i, v), ha="center", va="bottom", fontsize=8)
    for ax, metric in zip(axes[int(bool(bounded)) :], single):
        value = report["metrics"][metric]
        ax.bar([label(metric)], [value], color="tab:red" if metric in LOWER_IS_BETTER else "tab:green")
        ax.annotate(fmt(metric, value), (0, value), ha="center", va="bottom")
    fig.suptitle(" / ".join(x for x in (report.get("method"), report.get("scenario")) if x) or "evaluation")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    return path


def write_report(report: dict, out: str | Path, plot: bool = True) -> list[Path]:
    """Write ``report.json``, ``report.md`` and (``plot``) ``metrics.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / REPORT_JSON, report, ensure_ascii=False, default=str)
    atomic_write_text(out / "report.md", render_markdown(report))
    written = [out / REPORT_JSON, out / "report.md"]
    if plot:
        written.append(plot_report(report, out / "metrics.png"))
    return written


def find_reports(path: str | Path) -> list[Path]:
    """``report.json`` files at ``path`` (a file, a report folder, or a folder of report folders)."""
    path = Path(path)
    if path.is_file() and path.name.endswith(".json"):
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist; pass folders written by `dreamdist eval --out`")
    if (path / REPORT_JSON).is_file():
        return [path / REPORT_JSON]
    found = sorted(path.rglob(REPORT_JSON))
    if not found:
        raise ValueError(
            f"no {REPORT_JSON} in {path} or its sub-folders; pass folders written by `dreamdist eval --out`"
        )
    return found


def read_report(path: Path) -> dict:
    """Load one ``report.json`` and check it has what ``compare`` uses."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable report ({exc}); re-run `dreamdist eval`") from None
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
        raise ValueError(f'{path} has no "metrics" table; is it a report written by `dreamdist eval`?')
    return report
