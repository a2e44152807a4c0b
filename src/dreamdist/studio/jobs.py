"""Training jobs: one child process per running run (``python -m dreamdist.studio.worker``).

A child process, not a thread: the trainer's stop mechanism is SIGTERM (it saves a checkpoint and
exits), a crash cannot take the server down, and the server stays responsive while a run trains.
The worker holds the run's lock (``dreamdist.runlock``) while it lives, so a run has one trainer
whatever happens (two studios, a restart, a second Resume), and it stops itself with a checkpoint
when the studio dies (``worker.watch_parent``), so it never outlives the studio.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from dreamdist.runlock import holder
from dreamdist.studio.runs import LOG, REQUEST, STATUS, WORKER_DIR, check_name, read_json, write_json


class Jobs:
    """The running training processes of one runs folder."""

    def __init__(self, root: Path):
        self.root = root
        self.processes: dict[str, subprocess.Popen] = {}
        self.lock = threading.Lock()

    def state(self, name: str) -> str:
        """running, done, stopped, failed, interrupted (its process vanished) or idle (never started here)."""
        if holder(self.root / name) is not None:  # a live trainer, whoever started it
            return "running"
        with self.lock:
            process = self.processes.get(name)
            if process is not None and process.poll() is None:  # starting
                return "running"
        status = read_json(self.root / name / WORKER_DIR / STATUS, {}) or {}
        state = status.get("state")
        if state == "running":  # the worker died without a word (killed, or the server restarted)
            return "interrupted"
        if state is None and (self.root / name / "dreamdist.safetensors").is_file():
            return "done"
        return state or "idle"

    def start(self, name: str, train_config, method_config) -> None:
        """Create ``RUNS/name`` with its request and start training it."""
        folder = self.root / check_name(name)
        if folder.exists():
            raise FileExistsError(f"a run named {name!r} already exists in {self.root}; choose another name")
        request = {"train": asdict(train_config), "method": asdict(method_config), "created": time.time()}
        write_json(folder / REQUEST, request)
        self._spawn(name, resume=False)

    def resume(self, name: str) -> None:
        """Continue a stopped run from its newest checkpoint (the trainer's ``--resume``)."""
        folder = self.root / check_name(name)
        if not (folder / REQUEST).is_file():
            raise ValueError(f"{name!r} was not started from the studio; resume it with `dreamdist train ... --resume`")
        if self.state(name) == "running":
            raise ValueError(f"{name!r} is already running; stop it first")
        self._spawn(name, resume=True)  # without a checkpoint the trainer starts again from step 0

    def stop(self, name: str) -> None:
        """SIGTERM: the loop saves a checkpoint after the current step and exits."""
        with self.lock:
            process = self.processes.get(check_name(name))
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            return
        pid = holder(self.root / name)  # a trainer this studio did not start (another studio's)
        if pid is None or pid <= 0:
            raise ValueError(f"{name!r} is not running")
        os.kill(pid, signal.SIGTERM)

    def stop_all(self, timeout: float = 30.0) -> None:
        """Stop every running job and wait for the checkpoints (server shutdown)."""
        with self.lock:
            running = [p for p in self.processes.values() if p.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        for process in running:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()

    def _spawn(self, name: str, resume: bool) -> None:
        folder = self.root / name
        (folder / WORKER_DIR).mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "dreamdist.studio.worker", str(folder), "--parent", str(os.getpid())]
        command += ["--resume"] if resume else []
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.lock, open(folder / WORKER_DIR / LOG, "a") as log:
            self.processes[name] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
