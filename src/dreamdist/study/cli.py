"""``dreamdist study create | serve | report``: argparse sub-commands -> the study functions."""

from __future__ import annotations

import argparse
import json
import os
import sys


def register(subparsers) -> None:
    """Add ``study`` and its sub-commands to the main CLI's sub-parser group."""
    study = subparsers.add_parser(
        "study",
        help="blind A/B human preference study: create, serve the voting page, report",
        description="A blind pairwise preference study between image sets (methods): raters see the references "
        "and two anonymous images and pick Left, Right or Tie.",
    )
    sub = study.add_subparsers(dest="study_command", required=True, metavar="SUBCOMMAND")

    create = sub.add_parser("create", help="make a study file from two or more image folders")
    create.add_argument("study", help="the study file to create (e.g. study.sqlite); never overwritten")
    create.add_argument(
        "--set",
        dest="sets",
        action="extend",
        nargs="+",
        required=True,
        metavar="NAME=DIR",
        help="a named image folder (a method's images); two or more",
    )
    create.add_argument("--refs", default=None, help="folder of reference images shown above every pair")
    create.add_argument("--pairs", type=int, default=None, help="pairs to draw (default: largest set x set pairs)")
    create.add_argument("--question", default=None, help="the question raters answer")
    create.add_argument("--per-rater", type=int, default=0, help="pairs asked of each rater (default 0: all)")
    create.add_argument("--seed", type=int, default=0, help="seed of the pairs and left/right order (default: 0)")
    create.add_argument(
        "--invites",
        type=int,
        default=0,
        metavar="N",
        help="print N one-time rater links; only raters with one may vote (default 0: anyone who opens the page)",
    )
    create.add_argument(
        "--max-side",
        type=int,
        default=768,
        help="longest side of the set images as served; all get one size (default: 768)",
    )
    create.set_defaults(func=cmd_create)

    serve = sub.add_parser("serve", help="serve the voting page")
    serve.add_argument("study", help="the study file")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0 picks a free one)")
    serve.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name raters may use in the address (e.g. the machine's LAN name); repeatable. IP addresses "
        "and localhost always work",
    )
    serve.set_defaults(func=cmd_serve)

    report = sub.add_parser("report", help="per-set votes, win rates, Bradley-Terry scores, intervals, agreement")
    report.add_argument("study", help="the study file")
    report.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    report.add_argument("--out", default=None, help="also write report.json, report.md and preference.png here")
    report.add_argument("--bootstrap", type=int, default=1000, help="bootstrap rounds (default: 1000)")
    report.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    report.set_defaults(func=cmd_report)


def cmd_create(args: argparse.Namespace) -> int:
    from dreamdist.study.create import DEFAULT_QUESTION, create_study, parse_set
    from dreamdist.study.words import counted

    sets = [parse_set(spec) for spec in args.sets]
    summary = create_study(
        args.study,
        sets,
        refs=args.refs,
        n_pairs=args.pairs,
        question=args.question or DEFAULT_QUESTION,
        seed=args.seed,
        per_rater=args.per_rater,
        invites=args.invites,
        max_side=args.max_side,
    )
    images = ", ".join(f"{name}: {n}" for name, n in summary["sets"].items())
    width, height = summary["size"]
    pairs, sets, refs = counted(summary["pairs"], "pair"), counted(len(summary["sets"]), "set"), summary["refs"]
    print(f"wrote {args.study}: {pairs} over {sets} ({images}), {counted(refs, 'reference image')}; "
          f"images served at {width}x{height}")  # fmt: skip
    if summary["invites"]:
        n = len(summary["invites"])
        ways = (
            "it works in one browser; only its rater may vote"
            if n == 1
            else "each works in one browser; only they may vote"
        )
        print(f"{counted(n, 'one-time rater link')} ({ways}).")
        print("Replace http://127.0.0.1:8765/ with the address 'study serve' prints:")
        for token in summary["invites"]:
            print(f"  http://127.0.0.1:8765/?invite={token}")
    print(f"next: dreamdist study serve {args.study}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from dreamdist.study.server import make_server
    from dreamdist.study.words import counted

    server = make_server(args.study, args.host, args.port, args.allow_host)
    study = server.study
    pairs, sets = counted(study.n_pairs, "pair"), counted(study.n_sets, "set")
    print(f"serving {args.study} ({pairs}, {sets}) on {server.url}", flush=True)
    if study.invites:
        links = counted(study.invites, "one-time link")
        print(f"invite-only: {links}; open {'them' if study.invites != 1 else 'it'} as {server.url}?invite=TOKEN",
              flush=True)  # fmt: skip
    elif args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: serving on {args.host}: anyone who can reach it can vote (create with --invites to limit)",
              file=sys.stderr)  # fmt: skip
    if not os.access(args.study, os.W_OK) or not os.access(os.path.dirname(os.path.abspath(args.study)), os.W_OK):
        print("note: the study file or its folder is read-only: votes will be refused (503)", file=sys.stderr)
    print("Ctrl-C stops; every acknowledged vote is already on disk", flush=True)
    server.run()
    print("stopped")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dreamdist.study.report import build_report, format_text, json_summary, write_report

    report = build_report(args.study, rounds=args.bootstrap, seed=args.seed)
    if args.json:
        print(json.dumps(json_summary(report), indent=2))
    else:
        print(format_text(report))
    if args.out:
        paths = write_report(report, args.out)
        print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr if args.json else sys.stdout)
    return 0
