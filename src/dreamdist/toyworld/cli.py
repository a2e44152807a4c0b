"""``dreamdist demo`` and ``dreamdist toy-refs``: the toy world's sub-commands.

The main CLI finds :func:`register` here and calls ``args.func(args)``; both return exit code 0
(bad input raises ``ValueError``/``KeyError``-derived errors, which the main CLI reports).
"""

from __future__ import annotations

import argparse

from dreamdist import outputs
from dreamdist.timings import claim
from dreamdist.toyworld.concepts import CONCEPTS


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the demo (shared by ``dreamdist demo`` and ``python -m dreamdist.toyworld.demo``)."""
    parser.add_argument("--out", default="dreamdist-demo", help="output folder (default: dreamdist-demo)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run for CI ({claim('demo_quick')}): too short to learn the concept, so its verdict is "
        "expected to say so",
    )
    parser.add_argument(
        "--concept",
        default="cool-patterned",
        choices=sorted(CONCEPTS),
        help="built-in concept (default: cool-patterned)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds references, training and sampling")
    outputs.add_overwrite_flag(parser)


def cmd_demo(args: argparse.Namespace) -> int:
    from dreamdist.toyworld.demo import run_demo

    run_demo(args.out, quick=args.quick, concept=args.concept, seed=args.seed, overwrite=args.overwrite)
    return 0


TOY_REFS = outputs.TOY_REFS.owning(*(f"{name}_[0-9][0-9][0-9]*.png" for name in CONCEPTS))  # render_concept's names


def cmd_toy_refs(args: argparse.Namespace) -> int:
    from dreamdist.data import MIN_SIDE
    from dreamdist.toyworld.concepts import get_concept, render_concept

    if args.n < 1:
        raise ValueError(f"--n must be >= 1 image; got {args.n}")
    if args.size < MIN_SIDE:  # train skips smaller reference images
        raise ValueError(f"--size must be >= {MIN_SIDE} pixels (training skips smaller references); got {args.size}")
    outputs.check_output(args.out, TOY_REFS, args.overwrite)
    refs = render_concept(args.concept, args.out, n=args.n, seed=args.seed, size=args.size)
    concept = get_concept(args.concept)
    print(f"wrote {len(refs.paths)} images of '{concept.name}' ({concept.description}) to {refs.folder}")
    print(f"short caption: {concept.short_caption or '(none names this concept)'}")
    print(f"long caption: {concept.long_caption}")
    return 0


def register(subparsers) -> None:
    """Add ``demo`` and ``toy-refs`` to an argparse sub-parser group."""
    demo = subparsers.add_parser(
        "demo",
        help=f"offline demo in the built-in toy world ({claim('demo')})",
        description="Render toy reference images, learn a prompt distribution on the built-in toy model, "
        "generate at several gamma and with the paper's Gaussian sampler, score each set with the oracle and "
        "print a faithful-and-diverse verdict (report.json, demo.png).",
    )
    add_demo_arguments(demo)
    demo.set_defaults(func=cmd_demo)

    refs = subparsers.add_parser(
        "toy-refs",
        help="render a built-in toy concept as a folder of reference images",
        description="Concepts: " + "; ".join(f"{c.name} ({c.description})" for c in CONCEPTS.values()),
    )
    refs.add_argument("concept", choices=sorted(CONCEPTS), help="built-in concept name")
    refs.add_argument("--out", required=True, help="folder to write the PNGs into")
    refs.add_argument("--n", type=int, default=12, help="number of images (default: 12)")
    refs.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    refs.add_argument("--size", type=int, default=64, help="saved side in pixels, >= 64 (default: 64)")
    outputs.add_overwrite_flag(refs)
    refs.set_defaults(func=cmd_toy_refs)
