"""The dataset folder, written so that a run killed at any moment (SIGKILL included) and started
again with the same command ends byte-identical to an uninterrupted run.

While the job runs, each image goes to ``DIR/.synth-work/<class>/<file>.png`` (tmp file + rename)
and THEN its row is appended to ``DIR/.synth-work/rows-<rank>.jsonl``: a row exists only for a
complete file. An image is done when it has a row and its file. When every image is done, the
last process to finish (under a file lock) selects the kept images (a pure function of the rows),
moves them into ``DIR/<class>/`` (or writes tar shards), writes ``DIR/manifest.jsonl`` (one row per
generated image) and removes the work folder. ``DIR/synth.json`` holds the request: a rerun with
other settings is refused instead of mixing two datasets (``--overwrite`` replaces it), unless the
earlier request has no image yet (it failed before its first one): then it is simply replaced.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import random
import shutil
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dreamdist.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, fsync_dir
from dreamdist.generation import read_rows
from dreamdist.outputs import NEW, SYNTH, check_output, read_record, remove_owned
from dreamdist.synth.config import PASS_THROUGH, SynthConfig
from dreamdist.synth.plan import Plan

WORK, TRASH = ".synth-work", ".synth-work.trash"
MANIFEST, REQUEST = "manifest.jsonl", "synth.json"
FORMAT_VERSION = 1

Key = tuple[str, int]  # (class folder, image index)


def request_of(config: SynthConfig, plan: Plan) -> dict:
    """Everything that decides the dataset's bytes (not the batch size, process count or engine)."""
    request = {
        "format_version": FORMAT_VERSION,
        "classes": [
            {"folder": c.folder, "name": c.name, "artifact_sha256": c.sha256, "row": c.row} for c in plan.classes
        ],
        "model": config.model or plan.classes[0].model_id,
        "dtype": config.dtype,
        "per_class": config.per_class,
        "keep": config.keep,
        "filter": config.filter,
        "format": config.format,
        "seed": config.seed,
        "generation": {name: getattr(config, name) for name in PASS_THROUGH},
    }
    if config.filter == "clip":
        request.update(clip_model=config.clip_model, clip_prompt=config.clip_prompt)
    if config.format == "webdataset":
        request["shard_size"] = config.shard_size
    return request


def select_kept(rows: list[dict], keep: int, by_score: bool) -> set[Key]:
    """Per class, the ``keep`` best rows by score (ties: lower index), or the first ``keep`` by index."""
    by_class: dict[str, list[dict]] = {}
    for row in rows:
        by_class.setdefault(row["class"], []).append(row)
    kept = set()
    for members in by_class.values():
        order = sorted(members, key=lambda r: (-r["score"], r["index"]) if by_score else r["index"])
        kept.update((r["class"], r["index"]) for r in order[:keep])
    return kept


class RowWriter:
    """Appends one process's rows; each after its image file is complete."""

    def __init__(self, folder: SynthFolder, path: Path):
        self.folder, self.path = folder, path
        if path.is_file():  # a killed write may have left a torn last line: cut it before appending
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(path, "r+b") as handle:
                    handle.truncate(data.rfind(b"\n") + 1)
        self.handle = open(path, "a")  # noqa: SIM115 (closed by close(), through SynthFolder.writer)

    def write(self, row: dict, png: bytes) -> None:
        atomic_write_bytes(self.folder.work / row["file"], png)  # raises (and leaves no file) on a full disk
        self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


class SynthFolder:
    """The output folder of one synth request (see the module docstring)."""

    def __init__(self, config: SynthConfig, plan: Plan, overwrite: bool = False):
        self.config, self.plan, self.overwrite = config, plan, overwrite
        self.out = Path(config.out)
        self.work = self.out / WORK
        self.request = request_of(config, plan)

    # ------------------------------------------------------------------ state
    def open(self) -> bool:
        """Record (or check) the request; True when the dataset is already complete."""
        self.out.mkdir(parents=True, exist_ok=True)
        with self.lock():  # processes started together: one writes the request, the others check it
            return self._open()

    def _open(self) -> bool:
        """The output policy (``dreamdist.outputs``): the same request continues; another request's
        dataset is refused unless ``--overwrite``; one without a single image yet (a run that failed
        before its first image) is replaced, so a corrected command is never blocked by its failed try."""
        path = self.out / REQUEST
        previous = read_record(path)
        classes = previous.get("classes", []) if previous else []
        spec = SYNTH.owning(*(c["folder"] for c in classes if isinstance(c, dict) and c.get("folder")))
        same, changed = previous == self.request, []
        if previous is not None and not same:
            changed = sorted(k for k in {*previous, *self.request} if previous.get(k) != self.request.get(k))
        reason = f"made with other settings (different: {', '.join(changed)})" if changed else ""
        hint = "rerun with the original settings to continue it, or " if changed else ""
        verdict = check_output(self.out, spec, self.overwrite, same, hint, reason)
        if not same:
            if verdict == NEW:
                remove_owned(self.out, spec)  # another request's leftovers without an image
            self.work.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, self.request, sort_keys=True)
        shutil.rmtree(self.out / TRASH, ignore_errors=True)
        complete = (self.out / MANIFEST).is_file() and not self.work.exists()
        if not complete:
            self.work.mkdir(parents=True, exist_ok=True)
        return complete

    def _has_file(self, row: dict) -> bool:
        return (self.work / row["file"]).is_file() or (self.out / row["file"]).is_file()

    def done(self) -> dict[Key, dict]:
        """Rows of the finished images (row present, file present), from every process's log."""
        rows = {}
        for log in sorted(self.work.glob("rows-*.jsonl")):
            for row in read_rows(log):
                if self._has_file(row):
                    rows[(row["class"], row["index"])] = row
        return rows

    @contextmanager
    def writer(self, rank: int) -> Iterator[RowWriter]:
        writer = RowWriter(self, self.work / f"rows-{rank}.jsonl")
        try:
            yield writer
        finally:
            writer.close()

    @contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock on the folder itself (released by the OS if the process dies)."""
        fd = os.open(self.out, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ the end
    def finalize(self) -> bool:
        """Write the dataset if every image is done; False (nothing written) while some are missing."""
        with self.lock():
            if (self.out / MANIFEST).is_file() and not self.work.exists():
                return True  # another process finished it
            done = self.done()
            if len(done) < self.plan.total:
                return False
            order = [(c.folder, i) for c in self.plan.classes for i in range(self.plan.per_class)]
            rows = [done[key] for key in order]
            kept = select_kept(rows, self.config.keep, self.config.filter == "clip")
            chosen = [row for row in rows if (row["class"], row["index"]) in kept]
            files = self._write_shards(chosen) if self.config.format == "webdataset" else self._place_images(chosen)
            final = []
            for row in rows:  # rejected images are not in the dataset: no file
                key = (row["class"], row["index"])
                final.append({**row, "kept": key in kept, "file": files.get(key, row["file"]) if key in kept else None})
            atomic_write_text(self.out / MANIFEST, "".join(json.dumps(row) + "\n" for row in final))
            os.replace(self.work, self.out / TRASH)  # one rename: the dataset is complete from here on
            fsync_dir(self.out)
            shutil.rmtree(self.out / TRASH, ignore_errors=True)
            return True

    def _place_images(self, kept: list[dict]) -> dict[Key, str]:
        """Move the kept images into ``DIR/<class>/``; rejected ones stay behind in the work folder."""
        for row in kept:
            source, target = self.work / row["file"], self.out / row["file"]
            if source.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
        for folder in {(self.out / row["file"]).parent for row in kept}:
            fsync_dir(folder)
        return {}  # the files keep their names

    def _write_shards(self, kept: list[dict]) -> dict[Key, str]:
        """Tar shards of ``shard_size`` kept images in a seeded shuffled order (classes mixed in every shard).

        Each sample is ``<key>.png``, ``<key>.cls`` (class position) and ``<key>.json`` (its row).
        """
        order = list(kept)
        random.Random(self.config.seed).shuffle(order)
        positions = {c.folder: p for p, c in enumerate(self.plan.classes)}
        files = {}
        size = self.config.shard_size
        for start in range(0, len(order), size):
            name = f"shard-{start // size:06d}.tar"
            members = []
            for row in order[start : start + size]:
                key = f"{positions[row['class']]:04d}_{row['index']:06d}"
                files[(row["class"], row["index"])] = f"{name}/{key}.png"
                members.append((key, row))
            self._write_tar(self.out / name, members)
        return files

    def _write_tar(self, path: Path, members: list[tuple[str, dict]]) -> None:
        """One shard through a temporary file and a rename; fixed metadata, so equal input gives equal bytes."""
        positions = {c.folder: p for p, c in enumerate(self.plan.classes)}
        with atomic_path(path) as tmp, tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, row in members:
                png = (self.work / row["file"]).read_bytes()
                label = str(positions[row["class"]]).encode()
                for suffix, data in (("png", png), ("cls", label), ("json", json.dumps(row).encode())):
                    _add(tar, f"{key}.{suffix}", data)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))
