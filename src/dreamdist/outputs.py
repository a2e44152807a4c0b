"""One output policy for every command that writes a folder: an earlier output is never replaced silently.

``check_output(path, spec, overwrite, resumable=...)`` is called by train, generate, synth, eval,
classify, demo and toy-refs before they do any work. What it decides, for the folder ``path``:

- missing, empty, or holding only this command's leftovers without results (a run that failed
  before its first image / checkpoint / report): ``NEW``. A failed command never blocks its own
  corrected rerun; the caller replaces its leftovers.
- holding files this command did not write, and no record of this command: refused whatever the
  flags (``--overwrite`` never removes anything the command did not write): choose another folder.
  (A folder whose every entry has a name the command writes counts as its own, ``OutputSpec.by_name``.)
- holding this command's results: ``RESUME`` when the caller can continue them (same request, or
  ``train --resume``); else ``REPLACED`` with ``--overwrite``, which first removes the entries this
  command writes (``OutputSpec.owns``) and says so, keeping anything else; else refused in one
  line that names ``--overwrite`` (and how to continue, where the command can).

The specs list, per command, the top-level entries it writes (``fnmatch`` patterns), the record
files that mark a folder as its own, and the results whose loss matters (``glob`` patterns).
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

NEW, RESUME, REPLACED = "new", "resume", "replaced"
OVERWRITE_HELP = (
    "replace this command's earlier output in the output folder: only the files the command writes are "
    "removed first (anything else there is kept); without it an earlier output is continued where the "
    "command can, else refused"
)
LITTER = (".DS_Store", "Thumbs.db", "desktop.ini")  # file-manager droppings: never count as content
ATOMIC_LEFTOVER = ".*.tmp-*"  # a temporary file of an interrupted atomic write (``dreamdist.atomic``)
SHOWN = 3  # entries named in a message


@dataclass(frozen=True)
class OutputSpec:
    """What one command writes into its output folder.

    Attributes:
        what: the command, as messages name it (``"dreamdist generate"``).
        owns: ``fnmatch`` patterns of the top-level entries the command writes.
        records: top-level names that mark the folder as the command's (any one of them present).
        results: ``glob`` patterns (relative to the folder) of what would be lost; a matched folder
            counts only when it holds a file.
        flag: the flag that names the folder.
        by_name: without a record, a folder whose every entry has a name in ``owns`` counts as the
            command's (leftovers of a run that failed early); False for generic names such as ``run``.
    """

    what: str
    owns: tuple[str, ...]
    records: tuple[str, ...]
    results: tuple[str, ...]
    flag: str = "--out"
    by_name: bool = True

    def owning(self, *names: str) -> OutputSpec:
        """The same spec also owning ``names`` (e.g. the class folders of an earlier synth dataset)."""
        return replace(self, owns=(*self.owns, *names))


TRAIN = OutputSpec(
    "dreamdist train",
    owns=(
        "train_config.json", "references.json", "checkpoints", "dreamdist.safetensors", "artifact.json", "logs",
        "samples", ".lock", "class_images", "pipeline", "*.safetensors",
    ),
    records=("train_config.json", "checkpoints", "dreamdist.safetensors"),
    results=("checkpoints/step-*", "dreamdist.safetensors"),  # step-* only once complete (``save_checkpoint``)
)  # fmt: skip
GENERATE = OutputSpec(
    "dreamdist generate",
    owns=("request.json", "manifest.jsonl", "grid.png", "[0-9][0-9][0-9][0-9][0-9]*.png"),
    records=("request.json", "manifest.jsonl"),
    results=("[0-9][0-9][0-9][0-9][0-9]*.png",),
)
SYNTH = OutputSpec(  # + the class folders named in synth.json (``owning``)
    "dreamdist synth",
    owns=("synth.json", "manifest.jsonl", ".synth-work", ".synth-work.trash", "shard-*.tar"),
    records=("synth.json",),
    results=(".synth-work/*/*.png", "manifest.jsonl", "shard-*.tar"),
)
EVAL = OutputSpec(
    "dreamdist eval",
    owns=("report.json", "report.md", "metrics.png"),
    records=("report.json",),
    results=("report.json", "report.md", "metrics.png"),
)
CLASSIFY = OutputSpec(
    "dreamdist classify",
    owns=("classifier.safetensors", "report.json", "confusion.png"),
    records=("classifier.safetensors",),
    results=("classifier.safetensors", "report.json", "confusion.png"),
)
DEMO = OutputSpec(  # the demo writes its record first (``.demo.json``): its other names are too common to go by
    "dreamdist demo",
    owns=(".demo.json", "references", "run", "samples_*", "report.json", "demo.png"),
    records=(".demo.json", "report.json"),
    results=("report.json", "demo.png"),
    by_name=False,
)
TOY_REFS = OutputSpec(  # + one ``<concept>_*.png`` pattern per built-in concept (``dreamdist.toyworld.cli``)
    "dreamdist toy-refs", owns=(".toyworld.json",), records=(".toyworld.json",), results=("*.png",)
)


def read_record(path: Path) -> dict | None:
    """A command's JSON record of its earlier request: None when there is none, ``{}`` when it is
    unreadable (a torn or foreign file: it then matches no request)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def add_overwrite_flag(parser) -> None:
    """``--overwrite`` on an argparse (sub-)parser, with the one help text (once: adding it twice is harmless)."""
    if "--overwrite" not in parser._option_string_actions:
        parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def _entries(folder: Path) -> list[Path]:
    """The folder's top-level entries, file-manager litter aside."""
    return sorted(p for p in folder.iterdir() if p.name not in LITTER)


def _owned(name: str, spec: OutputSpec) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in (*spec.owns, ATOMIC_LEFTOVER))


def _has_file(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(p.is_file() for p in path.rglob("*")))


def results_in(folder: str | Path, spec: OutputSpec) -> list[Path]:
    """The command's results present in ``folder`` (what ``--overwrite`` would lose)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = {p for pattern in spec.results for p in folder.glob(pattern) if _has_file(p)}
    return sorted(found)


def _names(paths: list[Path], folder: Path) -> str:
    shown = ", ".join(str(p.relative_to(folder)) for p in paths[:SHOWN])
    return shown + (f", ... ({len(paths)} in all)" if len(paths) > SHOWN else "")


def remove_owned(folder: str | Path, spec: OutputSpec) -> list[Path]:
    """Remove the top-level entries of ``folder`` that ``spec`` owns; return them (others are kept)."""
    folder = Path(folder)
    removed = [p for p in _entries(folder) if _owned(p.name, spec)] if folder.is_dir() else []
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def check_output(
    path: str | Path,
    spec: OutputSpec,
    overwrite: bool = False,
    resumable: bool = False,
    resume_hint: str = "",
    reason: str = "",
) -> str:
    """Apply the output policy (module docstring) to ``path``; return ``NEW``, ``RESUME`` or ``REPLACED``.

    Args:
        path: the output folder.
        spec: what the command writes (``TRAIN``, ``GENERATE``, ...).
        overwrite: ``--overwrite`` was given.
        resumable: the command can continue the results in ``path`` (it has compared their record
            with this request); they are then kept, with or without ``--overwrite``.
        resume_hint: how to continue instead, for the refusal (e.g. ``"pass --resume to continue it, "``).
        reason: why the results cannot be continued, for the refusal (e.g. ``"made with other settings"``).
    Raises:
        FileExistsError: the folder holds files the command did not write, or results it would replace
            without ``--overwrite``; NotADirectoryError: ``path`` is a file.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{spec.flag} {folder} is a file; give a folder")
    entries = _entries(folder) if folder.is_dir() else []
    if not entries:
        return NEW
    if not any((folder / name).exists() for name in spec.records):
        foreign = [p for p in entries if not (spec.by_name and _owned(p.name, spec))]
        if foreign:
            raise FileExistsError(
                f"{spec.flag} {folder} holds files that {spec.what} did not write ({_names(foreign, folder)}); "
                f"choose an empty or new {spec.flag}"
            )
    results = results_in(folder, spec)
    if not results:
        return NEW  # leftovers of a run that failed before its first result: the caller replaces them
    if resumable:
        return RESUME
    if overwrite:
        removed = remove_owned(folder, spec)
        kept = _entries(folder)
        note = f"; kept {_names(kept, folder)}" if kept else ""
        print(f"--overwrite: removed {_names(removed, folder)} from {folder}{note}", file=sys.stderr)
        return REPLACED
    because = f" ({reason})" if reason else ""
    raise FileExistsError(
        f"{spec.flag} {folder} already holds output of {spec.what}{because}: {_names(results, folder)}; "
        f"{resume_hint}pass --overwrite to replace it, or choose another {spec.flag}"
    )
