"""``dreamdist eval`` and ``dreamdist compare``: argparse sub-commands -> typed functions.

The main CLI calls :func:`register` on its sub-parsers and then ``args.func(args)``; both
functions return an exit code: 0, or 2 with a one-paragraph message (no traceback) when the
input is at fault (missing folder, too few images, unknown metric, model not available offline).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dreamdist.evaluation import defaults as D
from dreamdist.evaluation.defaults import (
    DEFAULT_METRICS,
    FEATURE_SETS,
    METRICS,
    TOY_DEFAULT_METRICS,
    TOY_SETS,
    default_cache_dir,
    metric_name,
)
from dreamdist.evaluation.report import fmt, label

# input at fault: NoUsableImagesError / ManifestError are ValueErrors, weight errors are OSErrors
USER_ERRORS = (ValueError, OSError, ImportError)


def register(subparsers) -> None:
    """Add ``eval`` and ``compare`` to an argparse sub-parser group."""
    ev = subparsers.add_parser(
        "eval",
        help="score generated images against reference images (FID, KID, CMMD, Vendi, CLIP-I, DINO, coverage, ...)",
        description="Score a generated image folder against a reference folder; writes report.json, report.md "
        "and metrics.png into --out. Features are cached per (model, preprocessing, image set).",
    )
    ev.add_argument("--real", required=True, help="folder of reference images")
    ev.add_argument(
        "--generated", required=True, help="folder of generated images (its manifest.jsonl, if any, lists them)"
    )
    ev.add_argument("--out", required=True, help="output folder for report.json, report.md, metrics.png")
    ev.add_argument(
        "--metrics",
        default=None,
        help=f"comma-separated subset of {','.join(METRICS)} (default: {','.join(DEFAULT_METRICS)}, "
        f"plus clip-t when --prompt is given; with a toy --features: {','.join(TOY_DEFAULT_METRICS)})",
    )
    ev.add_argument(
        "--features",
        choices=FEATURE_SETS,
        default="standard",
        help="feature space of the metrics: standard (Inception for FID, CLIP, DINO, DINOv2: hub models); for "
        "toy-world images only, offline, every metric in one space of the toy world's oracle: toy-oracle (its "
        "penultimate features: how the images look) or toy-attributes (its predicted colour/shape/background "
        "one-hots: what they show)",
    )
    ev.add_argument("--prompt", default=None, help="text for CLIP-T (overrides per-image prompts of manifest.jsonl)")
    ev.add_argument("--k", type=int, default=5, help="k of the k-NN radii for density/coverage/precision/recall")
    ev.add_argument(
        "--boundary",
        choices=("inclusive", "exclusive"),
        default="inclusive",
        help="k-NN balls closed (paper, default) or open (identical to the prdc package)",
    )
    ev.add_argument("--clip-model", default=D.DEFAULT_CLIP, help="CLIP hub id or local folder (CLIP-I, CLIP-T, CMMD)")
    ev.add_argument("--dino-model", default=D.DEFAULT_DINO, help="DINO v1 ViT hub id or local folder (DINO)")
    ev.add_argument(
        "--dinov2-model",
        default=D.DEFAULT_DINOV2,
        help="DINOv2 hub id or local folder (density, coverage, FD-DINOv2, Vendi, ...)",
    )
    ev.add_argument(
        "--inception-weights",
        default=os.environ.get(D.INCEPTION_ENV),
        help="local pt_inception-2015-12-05-6726825d.pth or .safetensors copy, for FID and KID "
        "(default: $DREAMDIST_INCEPTION_WEIGHTS)",
    )
    ev.add_argument("--method", default=None, help="method label stored in the report (for compare)")
    ev.add_argument("--scenario", default=None, help="scenario label stored in the report (default: --real's name)")
    ev.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    ev.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    ev.add_argument(
        "--cache-dir",
        default=None,
        help=f"feature cache folder (default: {default_cache_dir()}, or $DREAMDIST_CACHE/features)",
    )
    ev.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    ev.add_argument("--offline", action="store_true", help="load models only from local folders or the HF cache")
    ev.add_argument("--no-manifest", action="store_true", help="ignore manifest.jsonl; use every image in the folders")
    ev.add_argument("--no-progress", action="store_true", help="hide progress bars")
    ev.set_defaults(func=run_eval)

    cmp = subparsers.add_parser(
        "compare",
        help="compare methods: one table (mean ± std over scenarios) and plots",
        description="Each REPORT folder is one method holding one report.json or several (one per scenario, in "
        "sub-folders). Writes comparison.md, comparison.json, metrics.png and fidelity_diversity.png.",
    )
    cmp.add_argument("reports", nargs="+", metavar="REPORT", help="report folder(s) written by `dreamdist eval`")
    cmp.add_argument("--out", required=True, help="output folder for the table and plots")
    cmp.add_argument(
        "--allow-mixed", action="store_true", help="accept reports computed with different feature models or k"
    )
    cmp.set_defaults(func=run_compare)


def _fail(exc: BaseException) -> int:
    print(f"dreamdist: error: {exc}", file=sys.stderr)
    return 2


def metric_names(args: argparse.Namespace) -> tuple[str, ...]:
    """``--metrics`` as names (unchecked), or the defaults of ``--features`` (+ clip-t with ``--prompt``)."""
    if args.metrics is None:
        defaults = TOY_DEFAULT_METRICS if args.features in TOY_SETS else DEFAULT_METRICS
        return defaults + (("clip-t",) if args.prompt is not None else ())
    return tuple(metric_name(m) for m in args.metrics.split(",") if m.strip())


def check_models(args: argparse.Namespace) -> None:
    """Fail in about a second, before torch loads or images decode, when a needed hub model is missing offline."""
    from dreamdist.evaluation import hub

    models = {"clip": args.clip_model, "dino": args.dino_model, "dinov2": args.dinov2_model}
    hub.require_available(hub.model_needs(metric_names(args), args.features, models), args.offline)


def config_from_args(args: argparse.Namespace):
    """Typed settings (``EvalConfig``, which validates them) from the parsed flags."""
    from dreamdist.evaluation.pipeline import EvalConfig

    metrics = metric_names(args)
    if args.no_cache:
        cache_dir = None
    else:
        cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    return EvalConfig(
        metrics=metrics,
        features=args.features,
        k=args.k,
        boundary=args.boundary,
        prompt=args.prompt,
        clip_model=args.clip_model,
        dino_model=args.dino_model,
        dinov2_model=args.dinov2_model,
        inception_weights=args.inception_weights,
        device=args.device,
        batch_size=args.batch_size,
        cache_dir=cache_dir,
        local_files_only=args.offline,
        progress=not args.no_progress,
    )


def run_eval(args: argparse.Namespace) -> int:
    """``dreamdist eval``: load both folders, compute the metrics, write the report."""
    from dreamdist.outputs import EVAL, check_output  # one output policy for every command (dreamdist.outputs)

    try:
        check_output(args.out, EVAL, getattr(args, "overwrite", False))  # --overwrite: added by dreamdist.cli
    except OSError as exc:
        return _fail(exc)
    try:
        check_models(args)  # before torch is imported and the images are decoded
    except USER_ERRORS as exc:
        return _fail(exc)
    from dreamdist.evaluation.images import load_image_set
    from dreamdist.evaluation.pipeline import evaluate
    from dreamdist.evaluation.report import write_report

    try:
        config = config_from_args(args)
        real = load_image_set(args.real, use_manifest=not args.no_manifest, role="reference (--real)")
        generated = load_image_set(args.generated, use_manifest=not args.no_manifest, role="generated (--generated)")
        for name, image_set in (("reference", real), ("generated", generated)):
            if image_set.report.skipped:
                print(f"{name} {image_set.folder}: {image_set.report.summary()}", file=sys.stderr)
        methods = {r.get("method") for r in generated.records if isinstance(r.get("method"), str)}
        labels = {
            "method": args.method or (methods.pop() if len(methods) == 1 else None),
            "scenario": args.scenario or Path(args.real).resolve().name,
        }
        report = evaluate(real, generated, config, labels)
        report["arguments"] = {k: v for k, v in vars(args).items() if k != "func"}  # flags as given
        written = write_report(report, args.out)
    except USER_ERRORS as exc:
        return _fail(exc)
    for metric, value in report["metrics"].items():
        print(f"{label(metric):>12}  {fmt(metric, value)}")
    for note in report["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """``dreamdist compare``: aggregate reports per method, write table and plots."""
    from dreamdist.evaluation.compare import collect, render_table, write_comparison
    from dreamdist.evaluation.report import find_reports

    try:
        groups = []
        for item in args.reports:
            path = Path(item).resolve()
            default_name = path.parent.name if path.is_file() else path.name
            groups.append((default_name, find_reports(path)))
        methods, warnings = collect(groups, allow_mixed=args.allow_mixed)
        written = write_comparison(methods, warnings, args.out)
    except USER_ERRORS as exc:
        return _fail(exc)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(render_table(methods), end="")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m dreamdist.evaluation.cli eval ...``), same as ``dreamdist``."""
    parser = argparse.ArgumentParser(prog="dreamdist", description="dreamdist evaluation")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
