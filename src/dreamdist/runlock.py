"""One trainer per run folder: an exclusive ``flock`` on ``RUN/.lock`` held by the training process.

The kernel drops the lock when the process dies, however it dies (``kill -9`` included), so a held
lock means a live trainer and a free one means none: no stale pid files to guess about. The holder
writes its pid into the file so others can name it.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_NAME = ".lock"
ATTEMPTS = 20


class RunLocked(OSError):
    """Another live process trains this run."""


class RunLock:
    """``with RunLock(folder):`` or ``acquire()`` / ``release()``; raises :class:`RunLocked` when held."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        for attempt in range(ATTEMPTS):  # a reader's brief shared lock (``holder``) must not refuse us
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt < ATTEMPTS - 1:
                    time.sleep(0.05)
        else:
            os.close(fd)
            pid = holder(self.path.parent)
            who = f"process {pid}" if pid else "another process"
            raise RunLocked(f"{self.path.parent.name} is being trained by {who}; stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder(folder: str | Path) -> int | None:
    """The pid of the live process holding ``folder``'s lock, or None when no process holds it."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
