"""The training child process: ``python -m dreamdist.studio.worker RUN_DIR``.

Reads ``RUN_DIR/studio-run.json`` (the train and method configs the page asked for), calls
``dreamdist.training.loop.train`` in this process's main thread (so SIGTERM from the page's Stop
button reaches the loop's own handler, which saves a checkpoint), appends one line per step to
``studio/progress.jsonl`` and leaves ``studio/status.json`` = done / stopped / failed.

It holds the run's lock (``dreamdist.runlock``) for its whole life and exits at once (code 3,
touching nothing) when another process holds it; it stops itself with a checkpoint when the
studio that started it dies, however it dies.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from dreamdist.studio.runs import PROGRESS, REQUEST, STATUS, WORKER_DIR, read_json, write_json


def step_recorder(path: Path):
    """``on_step`` for the trainer: append ``{"step", "total", "loss", "time"}`` to ``path`` per step."""

    def record(step: int, total: int, logs: dict) -> None:
        row = {"step": step, "total": total, "loss": float(logs["loss"]), "time": time.time()}
        with open(path, "a") as handle:
            handle.write(json.dumps(row) + "\n")

    return record


def watch_parent(parent: int, interval: float = 0.5) -> threading.Thread:
    """A daemon thread that sends this process SIGTERM (checkpoint, then exit) once ``parent`` is
    gone: the studio was killed, even with ``kill -9``, so its trainer must not outlive it."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="watch-parent", daemon=True)
    thread.start()
    return thread


def run(folder: Path, resume: bool, parent: int | None = None) -> int:
    """Train the run described by ``folder/studio-run.json``; returns the exit code."""
    from dreamdist.runlock import RunLock, RunLocked

    try:
        lock = RunLock(folder).acquire()
    except RunLocked as exc:
        print(f"not started: {exc}", file=sys.stderr)
        return 3
    try:
        if parent is not None:
            watch_parent(parent)
        return _train(folder, resume)
    finally:
        lock.release()


def _train(folder: Path, resume: bool) -> int:
    """The training itself, under the run's lock."""
    from dreamdist.config import TrainConfig
    from dreamdist.methods import get_method
    from dreamdist.training import loop

    status_path = folder / WORKER_DIR / STATUS
    request = read_json(folder / REQUEST)
    if not request:
        print(f"{folder / REQUEST} is missing or unreadable", file=sys.stderr)
        return 2
    write_json(status_path, {"state": "running", "resume": resume, "started": time.time()})

    def early_stop(signum, _frame):  # before the loop's own handler is installed, and after it is removed
        raise loop.TrainingInterrupted(f"stopped by signal {signum} outside the training steps", signum)

    signal.signal(signal.SIGTERM, early_stop)
    try:
        config = TrainConfig(**{**request["train"], "resume": resume, "progress": True})
        method_config = get_method(config.method).config(**request["method"])
        loop.train(config, method_config, on_step=step_recorder(folder / WORKER_DIR / PROGRESS))
    except loop.TrainingInterrupted as exc:
        write_json(status_path, {"state": "stopped", "message": str(exc), "time": time.time()})
        return 0
    except Exception as exc:  # reported on the page; the traceback stays in worker.log
        write_json(status_path, {"state": "failed", "error": f"{type(exc).__name__}: {exc}", "time": time.time()})
        raise
    write_json(status_path, {"state": "done", "time": time.time()})
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m dreamdist.studio.worker RUN_DIR [--resume]``."""
    import argparse
    import logging

    parser = argparse.ArgumentParser(description="Train one studio run (started by `dreamdist studio`).")
    parser.add_argument("folder", help="run folder holding studio-run.json")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    parser.add_argument("--parent", type=int, default=None, help="pid of the studio: stop when it is gone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from dreamdist.cli import quiet_libraries

    quiet_libraries(verbose=False)  # the page's log shows the run, not library notes
    return run(Path(args.folder), args.resume, args.parent)


if __name__ == "__main__":
    sys.exit(main())
