"""``dreamdist studio``: start the local web page (train, explore, compare).

The main CLI calls :func:`register` on its sub-parsers and then ``args.func(args)``.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    """Add ``studio`` to an argparse sub-parser group."""
    studio = subparsers.add_parser(
        "studio",
        help="local web page to train runs, explore them (gamma, text, mixing) and compare them",
        description="Serve a local web page that trains runs in the background (live loss, sample grids, stop and "
        "resume), samples from them (gamma, sampler, prefix/suffix, mixing with weights, zip download) and compares "
        "their reports side by side. Runs live in --runs; nothing is downloaded for the toy model.",
    )
    studio.add_argument("--model", default="toy", help="backbone for new runs (default: toy, the built-in model)")
    studio.add_argument("--runs", default="studio-runs", help="folder of runs (default: ./studio-runs)")
    studio.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    studio.add_argument("--port", type=int, default=7860, help="port (default: 7860; 0 picks a free one)")
    studio.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another host name the page may be opened under (e.g. this machine's name on the LAN); repeatable. "
        "IP addresses and localhost always work; other names are refused (DNS rebinding)",
    )
    studio.add_argument("--device", default=None, help="device for exploring (default: best available)")
    studio.set_defaults(func=cmd_studio)


def cmd_studio(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C; running trainings are stopped with a checkpoint (resume them later)."""
    from dreamdist.studio.server import Studio, make_server

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0-65535; got {args.port}")
    studio = Studio(args.runs, args.model, args.device)
    server = make_server(studio, args.host, args.port, tuple(args.allow_host))
    print(f"dreamdist studio: {server.url}  (runs in {studio.root}; Ctrl-C to quit)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("warning: the studio has no login; anyone who can reach this address can use it", file=sys.stderr)
    try:
        server.run()  # SIGINT / SIGTERM: stop serving, then stop the trainings with a checkpoint
    finally:
        studio.close()
    return 0
