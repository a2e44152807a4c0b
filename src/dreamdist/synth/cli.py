"""``dreamdist synth``: argparse sub-command -> ``dreamdist.synth.synth``."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add ``synth`` to the main CLI's sub-parsers."""
    from dreamdist.cli import add_dataclass_args
    from dreamdist.outputs import add_overwrite_flag
    from dreamdist.synth.config import SynthConfig

    parser = subparsers.add_parser(
        "synth",
        help="a synthetic dataset (ImageFolder or WebDataset) from DreamDistribution runs",
        description="Generate N images per class from a multi-class run (or one run per class with --run), "
        "score them with CLIP against the class name, keep the best K. Resumable: rerun the same command "
        "after an interruption. Several processes (torchrun, accelerate launch) split the work; --engine ray "
        "runs it on a Ray cluster. See docs/synth.md.",
    )
    parser.add_argument("artifact", nargs="?", default=None, help="multi-class run folder or artifact file")
    parser.add_argument(
        "--run",
        action="extend",
        nargs="+",
        metavar="CLASS=RUN",
        default=None,
        help="one single-class run per class, e.g. --run goldfish=runs/goldfish --run tench=runs/tench",
    )
    add_dataclass_args(parser, SynthConfig, skip=("artifact", "run"))
    add_overwrite_flag(parser)
    parser.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    from dreamdist.cli import from_args
    from dreamdist.synth import synth
    from dreamdist.synth.config import SynthConfig
    from dreamdist.synth.plan import process_rank

    result = synth(from_args(SynthConfig, args), overwrite=args.overwrite)
    rank, world = process_rank()
    who = "" if world == 1 or args.engine == "ray" else f"process {rank}/{world}: "
    print(f"{who}generated {result.generated} images")
    if result.complete:
        print(
            f"dataset complete: {len(result.classes)} classes x {result.kept_per_class} images in {result.out}, "
            f"one row per generated image in {result.manifest}"
        )
    else:
        print("other processes are still generating; the last one to finish writes the dataset")
    return 0
