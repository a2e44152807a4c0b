"""Crash-safe file writes: a temporary file in the same folder, fsync, rename, fsync the folder.

A reader (or a rerun after SIGKILL / power loss) sees the old file or the new one, never a part.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_path(path: Path) -> Path:
    """A hidden sibling name for ``path`` that is unique to this process and call (threads of one
    process writing the same file each get their own)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for any writer; when the block ends without an error,
    fsync it and rename it over ``path``; on an error, remove it.

    The temporary name does not end in ``path``'s suffix: writers that pick a format from the
    name (matplotlib, PIL) need it passed explicitly.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, value, **dumps) -> Path:
    """Write ``value`` as indented JSON (plus a newline) atomically and durably."""
    return atomic_write_text(path, json.dumps(value, indent=2, **dumps) + "\n")


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (before renaming it into place)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with open(Path(root) / name, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(Path(root))


def remove_stale(folder: Path, pattern: str) -> list[Path]:
    """Delete leftovers of interrupted writes matching ``pattern`` in ``folder``; return them."""
    stale = sorted(folder.glob(pattern)) if folder.is_dir() else []
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale
