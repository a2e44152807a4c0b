"""``dreamdist classify``: train a classifier on one ImageFolder, report its accuracy on another.

The main CLI calls :func:`register` on its sub-parsers and then ``args.func(args)``, which returns
0, or 2 with one ``dreamdist: error: ...`` line when the input is at fault.
"""

from __future__ import annotations

import argparse
import json
import sys

USER_ERRORS = (ValueError, OSError, ImportError)


def register(subparsers) -> None:
    """Add ``classify`` to an argparse sub-parser group."""
    from dreamdist.classify.config import ClassifyConfig
    from dreamdist.classify.models import ARCHS
    from dreamdist.cli import add_dataclass_args
    from dreamdist.outputs import add_overwrite_flag

    parser = subparsers.add_parser(
        "classify",
        help="train an image classifier on an ImageFolder and test it on another (top-1/top-5, per class)",
        description="Train a classifier from scratch on TRAIN/<class>/<image> and report top-1, top-k "
        "(k = min(5, classes)), per-class accuracy and the confusion matrix on TEST/<class>/<image> "
        "(same class folders). Architectures: " + "; ".join(f"{n}: {a.summary}" for n, a in ARCHS.items()) + ".",
    )
    parser.add_argument("--train", required=True, metavar="DIR", help="training ImageFolder (DIR/<class>/<image>)")
    parser.add_argument("--test", required=True, metavar="DIR", help="test ImageFolder with the same class folders")
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="write classifier.safetensors, report.json, confusion.png here"
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    add_dataclass_args(parser, ClassifyConfig)
    add_overwrite_flag(parser)
    parser.set_defaults(func=run_classify_command)


def _fail(exc: BaseException) -> int:
    print(f"dreamdist: error: {exc}", file=sys.stderr)
    return 2


def summary(result) -> str:
    """Human-readable report: accuracy, per-class accuracy, files."""
    ev, classifier = result.evaluation, result.classifier
    lines = [
        f"{classifier.config.arch} trained on {classifier.train_count} images of {len(ev.classes)} classes "
        f"({classifier.config.epochs} epochs, {result.seconds:.1f} s); tested on {ev.count} images",
        f"top-1 {ev.top1:.4f}   top-{ev.k} {ev.topk:.4f}   mean per-class {ev.mean_class_accuracy:.4f}",
    ]
    width = max(len(name) for name in ev.classes)
    for name, row in zip(ev.classes, ev.confusion):
        lines.append(f"  {name:<{width}}  {ev.per_class[name]:.4f}  ({row[ev.classes.index(name)]}/{sum(row)})")
    if result.files:
        lines.append("wrote " + ", ".join(str(p) for p in result.files))
    return "\n".join(lines)


def run_classify_command(args: argparse.Namespace) -> int:
    """Build the config from the flags, train, evaluate, print (text or JSON)."""
    from dreamdist.classify.config import ClassifyConfig
    from dreamdist.classify.run import classify
    from dreamdist.cli import from_args

    try:
        config = from_args(ClassifyConfig, args)
        result = classify(args.train, args.test, config, out=args.out, overwrite=args.overwrite)
    except USER_ERRORS as exc:
        return _fail(exc)
    skipped = result.train_skipped + result.evaluation.skipped
    if skipped:
        print(f"skipped {len(skipped)} file(s):", file=sys.stderr)
        for item in skipped:
            print(f"  {item['file']}: {item['reason']}", file=sys.stderr)
    if args.json:
        from dreamdist.classify.outputs import json_safe

        print(json.dumps(json_safe(result.to_dict()), allow_nan=False))
    else:
        print(summary(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m dreamdist.classify.cli classify ...``), same as ``dreamdist``."""
    parser = argparse.ArgumentParser(prog="dreamdist", description="dreamdist classifier proxy")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
