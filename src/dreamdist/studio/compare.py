"""Compare runs side by side: the toy world's oracle report (toy model) and ``dreamdist eval`` reports.

Toy-model runs: generate a set per run with the same sampler settings (through ``Explorer``), run the
oracle, and report fidelity / coverage / novelty / attribute TV against the run's references
(``dreamdist.toyworld.report``). Any run: ``report.json`` files found in the run folder (written
by ``dreamdist eval --out RUN/eval``) are read with ``dreamdist.evaluation.compare.collect``.
Each comparison is written to ``RUNS/_compare/<id>/`` (``comparison.json``, ``plot.png``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

from dreamdist.evaluation.report import label as eval_label
from dreamdist.studio.explore import EXPLORE_DIR, Explorer, new_folder
from dreamdist.studio.runs import check_name, read_json, write_json

COMPARE_DIR = "_compare"
TOY_METRICS = ("fidelity", "coverage", "novelty", "attribute_tv")
# display names with the better direction (novelty has none: copying and wandering off both score badly)
LABELS = {"fidelity": "fidelity ↑", "coverage": "coverage ↑", "novelty": "novelty", "attribute_tv": "attribute TV ↓"}


def is_toy_run(folder: Path) -> bool:
    """Whether the run was trained on the built-in toy model (so the oracle can score it)."""
    from dreamdist.toyworld import model_dir

    model = ((read_json(folder / "train_config.json", {}) or {}).get("train_config") or {}).get("model")
    if model == "toy":
        return True
    try:
        return model is not None and Path(model).resolve() == model_dir().resolve()
    except OSError:
        return False


def reference_truth(images_folder: Path, oracle):
    """(concept or None, reference triples long (n, 3), note): the toy manifest's, else the oracle's reading."""
    from dreamdist.data import IMAGE_EXTENSIONS
    from dreamdist.toyworld.concepts import MANIFEST, load_reference_manifest
    from dreamdist.toyworld.report import predict_attributes

    if (images_folder / MANIFEST).is_file():
        concept, combos = load_reference_manifest(images_folder)
        return concept, combos, f"concept {concept.name}"
    files = sorted(p for p in images_folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no reference images in {images_folder} to compare against")
    triples = predict_attributes([Image.open(p).convert("RGB") for p in files], oracle)
    return None, triples, "references read by the oracle; support = their combinations"


def toy_row(explorer: Explorer, root: Path, name: str, settings: dict, oracle) -> dict:
    """Generate a set from run ``name`` and score it with the oracle report."""
    from dreamdist.toyworld.concepts import Concept
    from dreamdist.toyworld.report import as_combos, concept_report

    folder = root / name
    train = (read_json(folder / "train_config.json", {}) or {}).get("train_config") or {}
    concept, references, note = reference_truth(Path(train["images"]), oracle)
    if concept is None:
        support = frozenset(as_combos(references))
        concept = Concept(name, "references of the run", support, None, "")
    result = explorer.generate({**settings, "runs": [name], "weights": None})
    images = [Image.open(root / EXPLORE_DIR / result["id"] / f).convert("RGB") for f in result["files"]]
    report = concept_report(concept, images, references, oracle)
    return {
        "run": name,
        "method": train.get("method"),
        "fidelity": report.fidelity,
        "coverage": report.coverage,
        "novelty": report.novelty,
        "attribute_tv": report.attribute_tv_mean,
        "num_images": report.num_images,
        "summary": report.summary(),
        "samples": result["id"],
        "note": note,
    }


def eval_rows(root: Path, names: list[str]) -> tuple[list[dict], list[str]]:
    """Mean metrics of the ``report.json`` files inside each run folder (``dreamdist eval`` output)."""
    from dreamdist.evaluation.compare import collect, metric_order

    groups = [(name, sorted((root / name).rglob("report.json"))) for name in names]
    groups = [(name, paths) for name, paths in groups if paths]
    if not groups:
        return [], []
    methods, warnings = collect(groups, allow_mixed=True)
    metrics = metric_order(methods)
    rows = [{"run": m.name, **{metric: m.mean_std(metric)[0] for metric in metrics}} for m in methods]
    return rows, warnings


def plot_rows(
    rows: list[dict], metrics: tuple[str, ...] | list[str], labels: dict[str, str], path: Path, title: str
) -> Path:
    """One small panel per metric (its label carries the better direction, its own y scale), a bar
    per run in the same colour in every panel; metrics in [0, 1] on a 0-1 axis."""
    from dreamdist.evaluation.report import require_matplotlib

    Figure = require_matplotlib()
    columns = min(4, len(metrics))
    panels = -(-len(metrics) // columns)
    fig = Figure(figsize=(0.6 + 2.4 * columns, 0.6 + 2.3 * panels), layout="constrained")
    axes = fig.subplots(panels, columns, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        values = [row.get(metric) if row.get(metric) is not None else 0.0 for row in rows]
        ax.bar(range(len(rows)), values, color=[f"C{i % 10}" for i in range(len(rows))])
        ax.set_xticks(range(len(rows)), [row["run"] for row in rows], rotation=30, ha="right", fontsize=8)
        ax.set_title(labels.get(metric, metric), fontsize=10)
        if all(0.0 <= v <= 1.0 for v in values):
            ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def compare_runs(explorer: Explorer, root: Path, request: dict) -> dict:
    """The page's compare request ``{"runs": [...], "gamma", "sampler", "seed", "num_images",
    "num_inference_steps"}`` -> toy rows, eval rows, plot file names and the comparison id."""
    names = [check_name(n) for n in request.get("runs") or []]
    if not names:
        raise ValueError("pick at least one run to compare")
    for name in names:
        if not (root / name / "dreamdist.safetensors").is_file():
            raise ValueError(f"run {name!r} has no artifact yet; compare finished runs")
    compare_id, out = new_folder(root / COMPARE_DIR)
    try:
        return _compare(explorer, root, names, compare_id, out, request)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # a failed comparison leaves nothing behind
        raise


def _compare(explorer: Explorer, root: Path, names: list[str], compare_id: str, out: Path, request: dict) -> dict:
    """``compare_runs`` writing into the new folder ``out``."""
    settings = {k: request.get(k) for k in ("gamma", "sampler", "seed", "num_images", "num_inference_steps")}
    toy_names = [n for n in names if is_toy_run(root / n)]
    toy = []
    if toy_names:
        from dreamdist.toyworld.oracle import load_oracle

        oracle = load_oracle()
        toy = [toy_row(explorer, root, name, settings, oracle) for name in toy_names]
    evals, warnings = eval_rows(root, names)
    labels = {**LABELS, **{m: eval_label(m) for row in evals for m in row if m != "run"}}
    plots = {}
    if toy:
        plots["toy"] = plot_rows(toy, TOY_METRICS, labels, out / "toy.png", "toy-world oracle report").name
    if evals:
        metrics = [m for m in evals[0] if m != "run"]
        plots["eval"] = plot_rows(evals, metrics, labels, out / "eval.png", "dreamdist eval reports (mean)").name
    if not toy and not evals:
        raise ValueError(
            "nothing to compare: these runs are not on the toy model and hold no report.json; "
            "score them first with `dreamdist eval --out RUNS/NAME/eval ...`"
        )
    result = {"id": compare_id, "toy": toy, "eval": evals, "warnings": warnings, "plots": plots, "settings": settings}
    result["labels"] = labels  # metric -> display name with the better direction
    write_json(out / "comparison.json", result)
    return result
