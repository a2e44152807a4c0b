"""The wall times the README and ``--help`` quote, measured as a new user meets them.

Each entry runs its command in a fresh process (start-up, imports and model loading included)
in a temporary folder and reports the wall time. ``--write`` stores the numbers in
``src/dreamdist/timings.json``, the one file the help texts and the README's sentences are
drawn from (``dreamdist.timings.claim``; ``tests/test_timings.py`` holds the README to it).

    python bench/bench_timings.py                 # measure everything (about 3 minutes on 2 cores)
    python bench/bench_timings.py --write         # ... and update src/dreamdist/timings.json
    python bench/bench_timings.py --quick         # CLI start-up only (seconds): what the tests run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DREAMDIST = [sys.executable, "-m", "dreamdist.cli"]
COMMANDS = {  # name: (arguments after ``dreamdist``, what the README calls it)
    "startup": (["--help"], "dreamdist --help (start-up)"),
    "demo_quick": (["demo", "--quick", "--out", "{tmp}/quick"], "dreamdist demo --quick"),
    "demo": (["demo", "--out", "{tmp}/demo"], "dreamdist demo"),
}
QUICK = ("startup",)


def measure(name: str, tmp: str) -> float:
    """Wall seconds of one command in a fresh process; raises SystemExit with its output if it fails."""
    args = [a.format(tmp=tmp) for a in COMMANDS[name][0]]
    start = time.perf_counter()
    done = subprocess.run([*DREAMDIST, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"dreamdist {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help=f"comma-separated entries of: {', '.join(COMMANDS)}")
    parser.add_argument("--quick", action="store_true", help="start-up only (a few seconds)")
    parser.add_argument("--write", action="store_true", help="store the numbers in src/dreamdist/timings.json")
    parser.add_argument("--keep", default=None, help="run the commands in this (new) folder and keep their output")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(QUICK if args.quick else COMMANDS)
    unknown = [n for n in names if n not in COMMANDS]
    if unknown:
        parser.error(f"unknown entries {unknown}; choose from {', '.join(COMMANDS)}")
    from dreamdist import timings

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    results = {}
    if args.keep and Path(args.keep).exists():
        parser.error(f"--keep {args.keep} exists; name a new folder")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        for name in names:
            seconds = measure(name, str(tmp))
            results[name] = {
                "seconds": round(seconds, 1), "cores": cores, "command": COMMANDS[name][1],
                "date": datetime.date.today().isoformat(),
            }  # fmt: skip
            print(f"{COMMANDS[name][1]}: {seconds:.1f} s on {cores} CPU cores", flush=True)
    if args.write:
        stored = json.loads(timings.PATH.read_text()) if timings.PATH.exists() else {"timings": {}}
        stored["timings"].update(results)
        stored["measured_by"] = "python bench/bench_timings.py --write"
        timings.PATH.write_text(json.dumps(stored, indent=1) + "\n")
        print(f"wrote {timings.PATH}")


if __name__ == "__main__":
    main()
