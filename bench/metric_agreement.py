"""Which standard metric tracks what? Each metric against the toy world's ground truth.

For every generated set of one or more ``bench/toy_quality.py`` output folders (layout
``<out>/seed<S>/<concept>/refs/`` and ``<out>/seed<S>/<concept>/generated/<variant>/``, ground truth
in ``<out>/seed<S>/<concept>/reports/<variant>.json`` or recomputed with the oracle), computes every
``dreamdist eval`` metric on the toy oracle's features (offline; FD-DINOv2 is FID there, so it is
left out) and prints the Spearman rank correlation of each metric with the ground truth: fidelity,
coverage of the references' triples, and attribute TV (mean total variation of colour, shape and
background). Correlations are oriented so that + means "agrees": the metric says better (lower
FID / KID / CMMD; higher density, coverage, Vendi, ...) where the ground truth says better (higher
fidelity and coverage, lower TV). "pooled" ranks all sets together; "within" is the mean of the
correlations across variants inside each (folder, seed, concept) group, which removes how hard a
concept is.

    python bench/metric_agreement.py bench_out/toy_quality            # one or more toy_quality --out folders
    python bench/metric_agreement.py --quick                          # renders its own small sets (seconds)

Writes ``agreement.md`` and ``agreement.json`` (every set's numbers and the correlations) into --out.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

METRICS = ("fid", "kid", "cmmd", "clip-i", "density", "coverage", "precision", "recall", "vendi")
LOWER_IS_BETTER = {"fid", "kid", "cmmd"}
TRUTH = ("fidelity", "coverage", "attr TV")
TRUTH_LOWER_IS_BETTER = {"attr TV"}
ATTRS = ("colour", "shape", "background")


def truth_of(report: dict) -> dict[str, float]:
    """The ground-truth columns of a ``toyworld.report.ConceptReport`` dict."""
    return {
        "fidelity": report["fidelity"],
        "coverage": report["coverage"],
        "attr TV": sum(report["tv"][a] for a in ATTRS) / len(ATTRS),
    }


def metrics_of(real, generated, k: int = 5) -> dict[str, float]:
    """Every metric of ``dreamdist eval`` from (N, d) / (M, d) toy-oracle features."""
    from dreamdist.evaluation import metrics as M

    kid, _ = M.kernel_inception_distance(real, generated)
    values = {
        "fid": M.frechet_distance(real, generated),
        "kid": kid,
        "cmmd": M.cmmd(real, generated),
        "clip-i": M.mean_cosine_similarity(generated, real),
        "vendi": M.vendi_score(generated),
    }
    values.update(M.manifold_metrics(real, generated, k=k, recall=len(generated) > k))
    return values


def find_sets(root: Path) -> list[dict]:
    """Every (seed, concept, variant) generated set under one toy_quality output folder."""
    found = []
    for concept_dir in sorted(root.glob("seed*/*")):
        generated = concept_dir / "generated"
        if not (concept_dir / "refs").is_dir() or not generated.is_dir():
            continue
        for folder in sorted(p for p in generated.iterdir() if p.is_dir()):
            found.append(
                {
                    "group": f"{root.name}/{concept_dir.parent.name}/{concept_dir.name}",
                    "variant": folder.name,
                    "refs": concept_dir / "refs",
                    "generated": folder,
                    "report": concept_dir / "reports" / f"{folder.name}.json",
                }
            )
    return found


def score_sets(sets: list[dict], oracle) -> list[dict]:
    """Metrics and ground truth of each set (reference features extracted once per group)."""
    from dreamdist.evaluation.images import load_image_set
    from dreamdist.toyworld.concepts import load_reference_manifest
    from dreamdist.toyworld.report import concept_report

    reference_features, rows = {}, []
    for item in sets:
        if item["refs"] not in reference_features:
            reference_features[item["refs"]] = oracle(load_image_set(item["refs"]).images)  # (N, 192)
        images = load_image_set(item["generated"]).images
        if item["report"].is_file():
            report = json.loads(item["report"].read_text())
        else:
            concept, combos = load_reference_manifest(item["refs"])
            report = concept_report(concept, images, combos, oracle.oracle).to_dict()
        if not report:  # a caption baseline with no caption for this concept
            continue
        generated = oracle(images)  # (M, 192)
        rows.append(
            {
                "group": item["group"],
                "variant": item["variant"],
                "truth": truth_of(report),
                "metrics": metrics_of(reference_features[item["refs"]], generated),
            }
        )
    return rows


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho (average ranks for ties); None with fewer than 3 points or a constant side."""
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def agreement(rows: list[dict]) -> dict[str, dict[str, dict[str, float | None]]]:
    """metric -> truth -> {"pooled": rho, "within": mean rho over groups}, oriented (+ = agrees)."""

    def oriented(row: dict, metric: str) -> float:
        return -row["metrics"][metric] if metric in LOWER_IS_BETTER else row["metrics"][metric]

    def good(row: dict, truth: str) -> float:
        return -row["truth"][truth] if truth in TRUTH_LOWER_IS_BETTER else row["truth"][truth]

    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    table = {}
    for metric in METRICS:
        present = [r for r in rows if metric in r["metrics"]]
        table[metric] = {}
        for truth in TRUTH:
            pooled = spearman([oriented(r, metric) for r in present], [good(r, truth) for r in present])
            inner = [
                spearman([oriented(r, metric) for r in g], [good(r, truth) for r in g])
                for g in groups.values()
                if all(metric in r["metrics"] for r in g)
            ]
            inner = [v for v in inner if v is not None]
            table[metric][truth] = {"pooled": pooled, "within": statistics.fmean(inner) if inner else None}
    return table


def markdown(table: dict, rows: list[dict]) -> str:
    groups = len({r["group"] for r in rows})
    cell = lambda v: "n/a" if v is None or math.isnan(v) else f"{v:+.2f}"  # noqa: E731
    head = " | ".join(f"{t} (pooled / within)" for t in TRUTH)
    lines = [
        f"Spearman rank correlation with the ground truth, toy-oracle features; {len(rows)} generated sets in "
        f"{groups} (seed, concept) groups; + = the metric agrees (better where the ground truth is better).",
        "",
        f"| metric | {head} |",
        "|---" * (len(TRUTH) + 1) + "|",
    ]
    for metric, cells in table.items():
        values = " | ".join(f"{cell(cells[t]['pooled'])} / {cell(cells[t]['within'])}" for t in TRUTH)
        lines.append(f"| {metric} | {values} |")
    return "\n".join(lines)


def render_quick_sets(root: Path, seeds=(0, 1), concepts=("cool-patterned", "warm-pointy"), n_refs=12, n_gen=16):
    """Small sets of known quality in the toy_quality layout, no training: copies, collapses, off-concept mixes."""
    import numpy as np
    import torch
    from PIL import Image

    from dreamdist.toyworld.concepts import get_concept, reference_combos, render_concept
    from dreamdist.toyworld.render import render_images

    for seed in seeds:
        for i, name in enumerate(concepts):
            concept, other = get_concept(name), get_concept(concepts[(i + 1) % len(concepts)])
            folder = root / f"seed{seed}" / name
            refs = render_concept(concept, folder / "refs", n=n_refs, seed=seed).combos  # (n_refs, 3)
            elsewhere = reference_combos(other, n_gen, seed + 500)  # another concept's triples
            variants = {
                "copy": refs.repeat(2, 1)[:n_gen],  # the references' triples, new nuisance draws
                "resample": reference_combos(concept, n_gen, seed + 1000),  # the support, novel triples too
                "collapse-3": refs[:3].repeat(n_gen, 1)[:n_gen],
                "collapse-1": refs[:1].repeat(n_gen, 1),
                "half-off": torch.cat([refs[: n_gen // 2], elsewhere[: n_gen - n_gen // 2]]),
                "off-concept": elsewhere,
            }
            for j, (variant, combos) in enumerate(variants.items()):
                out = folder / "generated" / variant
                out.mkdir(parents=True, exist_ok=True)
                images = render_images(combos, size=32, seed=seed * 100 + j + 1)  # (n, 3, 32, 32) in [0, 1]
                pixels = (images.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
                for index, array in enumerate(pixels):
                    Image.fromarray(array).save(out / f"{index:03d}.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", help="bench/toy_quality.py --out folders")
    parser.add_argument("--quick", action="store_true", help="render small sets of known quality and score them")
    parser.add_argument("--out", default="bench_out/metric_agreement", help="where agreement.md / .json go")
    args = parser.parse_args(argv)
    if not args.folders and not args.quick:
        parser.error("pass bench/toy_quality.py output folders, or --quick")
    start = time.time()
    out = Path(args.out)
    folders = [Path(f) for f in args.folders]
    if args.quick:
        render_quick_sets(out / "quick_sets")
        folders.append(out / "quick_sets")
    sets = [item for folder in folders for item in find_sets(folder)]
    if not sets:
        raise SystemExit(f"no generated sets under {', '.join(map(str, folders))} (seed*/<concept>/generated/*)")

    from dreamdist.evaluation.toy_oracle import ToyOracleFeatures

    rows = score_sets(sets, ToyOracleFeatures("toy-oracle", device="cpu"))
    table = agreement(rows)
    text = markdown(table, rows)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "agreement.md").write_text(text + "\n")
    summary = {"folders": [str(f) for f in folders], "agreement": table, "sets": rows}
    (out / "agreement.json").write_text(json.dumps(summary, indent=1))
    print(f"scored {len(rows)} sets in {time.time() - start:.1f} s; wrote {out / 'agreement.md'}")


if __name__ == "__main__":
    main()
