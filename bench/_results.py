"""Benchmark tables as JSON in the one schema of ``docs/results/*.json``; ``scripts/bench_docs.py`` renders them.

A table file::

    {"table": NAME, "caption": "...", "command": "python bench/...", "settings": {...},
     "columns": [{"key": "fidelity", "label": "fidelity", "format": "{0:.2f} ± {1:.2f}"}, ...],
     "rows": [{"cells": {"variant": "...", "fidelity": [0.94, 0.03]}, "bold": ["fidelity"]}, ...]}

A cell is a number (rendered with its column's ``format``, default ``"{}"``), a list (the format's
positional fields, e.g. mean and std) or a string (its ``{fields}`` filled from the row's ``"values"``).
A row may carry its own ``id``, ``command``, ``settings`` and ``note`` (tables fed by several scripts).
Values transcribed by hand from an earlier page carry ``"transcribed_from"``; a bench run never does.
This module is plain Python (no torch), so the docs generator and the tests can import it.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import time
from pathlib import Path

MEAN_STD_2 = "{0:.2f} ± {1:.2f}"


def key_of(label: str) -> str:
    """A column key from a label: ``"attr TV"`` -> ``"attr_tv"``, ``"colour cov."`` -> ``"colour_cov"``."""
    return re.sub(r"\W+", "_", label).strip("_").lower()


def command_line(script: str, argv: list[str] | None) -> str:
    """The command as a user would type it again: ``python bench/x.py --flag value``."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", script, *map(shlex.quote, args)])


def machine() -> dict:
    """Where the numbers were measured (CPU count, platform, date)."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "measured": time.strftime("%Y-%m-%d")}


def write_table(path: str | Path, *, columns: list[dict], rows: list[dict], **fields) -> None:
    """Write one whole table (``fields``: caption, command, settings, ...) to ``path``; its name is the file stem."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = {"table": path.stem, **fields, "columns": columns, "rows": rows}
    path.write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n")


def write_row(path: str | Path, row: dict, *, columns: list[dict], **fields) -> None:
    """Replace the row with ``row["id"]`` in the table at ``path`` (or append it), keeping the other rows.

    For tables fed by several scripts (one row each). A transcribed row is replaced like any other;
    the table stays marked as transcribed while any of its rows is.
    """
    path = Path(path)
    table = json.loads(path.read_text()) if path.is_file() else {}
    rows = [r for r in table.get("rows", []) if r.get("id") != row["id"]]
    index = next((i for i, r in enumerate(table.get("rows", [])) if r.get("id") == row["id"]), len(rows))
    rows.insert(index, row)
    kept = {k: v for k, v in table.items() if k not in ("table", "columns", "rows", "transcribed_from")}
    if any("transcribed_from" in r for r in rows):
        kept["transcribed_from"] = table.get("transcribed_from", "README")
    write_table(path, columns=columns, rows=rows, **{**kept, **fields})


def write_mean_std_table(
    path: str | Path, table: dict, labels: dict, fields: list[str], fmt: str = MEAN_STD_2, **extra
) -> None:
    """A ``variant | field ...`` table of ``(mean, std)`` cells: ``table[name][field] = (mean, std)``."""
    columns = [{"key": "variant", "label": "variant"}] + [{"key": key_of(f), "label": f, "format": fmt} for f in fields]
    rows = [
        {"cells": {"variant": labels[name], **{key_of(f): list(cells[f]) for f in fields if f in cells}}}
        for name, cells in table.items()
    ]
    write_table(path, columns=columns, rows=rows, **extra)


# The speed table (docs/results/bench_speed.json): one row per script run, each with its own command
SPEED_COLUMNS = [{"key": k, "label": k} for k in ("benchmark", "reference", "dreamdist", "ratio")]


def write_speed_row(path: str | Path, row_id: str, command: str, settings: dict, values: dict, cells: dict) -> None:
    """Write one script's row of the speed table (cells are templates filled from ``values``)."""
    row = {"id": row_id, "command": command, "settings": {**settings, **machine()}, "values": values, "cells": cells}
    caption = "Each script prints its reference measured in the same run; the machine is in each row's settings"
    write_row(path, row, columns=SPEED_COLUMNS, caption=caption)
