"""The studio's runs folder: one sub-folder per run, read from disk (what the trainer writes there).

A run folder holds ``studio-run.json`` (the request the page made: train and method configs),
``train_config.json``, ``checkpoints/``, ``samples/step-N.png`` and ``dreamdist.safetensors`` (the
trainer's files), and ``studio/`` (the worker's ``progress.jsonl``, ``status.json`` and ``worker.log``).
Runs trained with ``dreamdist train --out RUNS/NAME`` are listed too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from dreamdist.artifact import ARTIFACT_NAME
from dreamdist.atomic import atomic_write_json
from dreamdist.training.checkpoint import list_checkpoints

REQUEST = "studio-run.json"
WORKER_DIR = "studio"
PROGRESS = "progress.jsonl"
STATUS = "status.json"
LOG = "worker.log"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str) -> str:
    """A run name usable as one folder name; raises with the rule otherwise."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"run name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def write_json(path: Path, value) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    atomic_write_json(path, value, default=str)


def read_json(path: Path, default=None):
    """JSON of ``path``, or ``default`` when missing or unreadable (a file being written)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def is_run(folder: Path) -> bool:
    """Whether ``folder`` looks like a run (the studio's or the CLI's)."""
    return folder.is_dir() and any((folder / f).exists() for f in (REQUEST, "train_config.json", ARTIFACT_NAME))


def list_run_dirs(root: Path) -> list[Path]:
    """Run folders under ``root``, newest first."""
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if NAME.fullmatch(p.name) and is_run(p)]
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)


def read_progress(folder: Path) -> list[dict]:
    """The worker's per-step records ``{"step", "total", "loss", "time"}`` (a torn last line is skipped)."""
    path = folder / WORKER_DIR / PROGRESS
    records = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def samples_of(folder: Path) -> list[Path]:
    """Sample grids written during training (``samples/step-N.png``), oldest first."""
    grids = (folder / "samples").glob("step-*.png")
    return sorted(grids, key=lambda p: int(p.stem.split("-")[1]) if p.stem.split("-")[1].isdigit() else -1)


def log_tail(folder: Path, lines: int = 12) -> str:
    """The last lines of the worker's log (progress-bar redraws folded to their last state)."""
    try:
        text = (folder / WORKER_DIR / LOG).read_bytes().decode(errors="replace")  # keep the \r of redraws
    except OSError:
        return ""
    rows = [row.rsplit("\r", 1)[-1] for row in text.split("\n")]
    return "\n".join([row for row in rows if row.strip()][-lines:])


def run_summary(folder: Path, state: str) -> dict:
    """What the page shows of a run: settings, state, step, last loss, sample grids, checkpoints."""
    request = read_json(folder / REQUEST, {}) or {}
    trained = read_json(folder / "train_config.json", {}) or {}
    train = request.get("train") or trained.get("train_config") or {}
    method_config = request.get("method") or trained.get("method_config") or {}
    progress = read_progress(folder)
    checkpoints = [int(p.name.split("-")[1]) for p in list_checkpoints(folder)]
    last = progress[-1] if progress else {}
    status = read_json(folder / WORKER_DIR / STATUS, {}) or {}
    return {
        "name": folder.name,
        "method": train.get("method") or trained.get("method"),
        "images": train.get("images"),
        "model": train.get("model"),
        "train": train,
        "method_config": method_config,
        "state": state,
        "error": status.get("error"),
        "step": max([last.get("step", 0), *checkpoints]),
        "total": last.get("total") or train.get("steps"),
        "loss": last.get("loss"),
        "checkpoints": checkpoints,
        "samples": [p.name for p in samples_of(folder)],
        "has_artifact": (folder / ARTIFACT_NAME).is_file(),
        "created": request.get("created"),
        "from_studio": bool(request),  # the page can resume it (it knows the request)
    }
