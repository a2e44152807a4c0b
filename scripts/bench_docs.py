"""Render the benchmark tables of README.md and docs/*.md from the JSON in docs/results/.

A page marks where a table goes; everything between the two comments is rewritten::

    <!-- table: toy_quality -->
    <!-- end table -->

``<!-- table: toy_quality rows=0,1 columns=variant,fidelity -->`` shows a subset (row indices,
column keys). The JSON schema is described in ``bench/_results.py``; the bench scripts write it with
``--json docs/results/NAME.json``, so after a new run:

    python scripts/bench_docs.py            # rewrite the tables in README.md and docs/*.md
    python scripts/bench_docs.py --check    # exit 1 if a page differs from its JSON (what the tests run)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
MARKER = re.compile(r"(<!-- table: (?P<name>[\w-]+)(?P<options>[^>]*?) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


def pages(root: Path = ROOT) -> list[Path]:
    """The pages that may hold tables: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def load_tables(folder: Path = RESULTS) -> dict[str, dict]:
    """Every ``NAME.json`` of ``folder``, by name."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def render_cell(value, column: dict, row: dict) -> str:
    """One cell: a string template filled from the row's values, a list (mean, std), a number or none."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value.format(**row.get("values", {}))
    fmt = column.get("format", "{}")
    return fmt.format(*value) if isinstance(value, list) else fmt.format(value)


def render_table(table: dict, rows: list[int] | None = None, columns: list[str] | None = None) -> str:
    """A Markdown table (optionally a subset of rows / columns) and a line naming its source."""
    cols = [c for c in table["columns"] if columns is None or c["key"] in columns]
    picked = [table["rows"][i] for i in rows] if rows is not None else table["rows"]
    lines = ["| " + " | ".join(c["label"] for c in cols) + " |", "|---" * len(cols) + "|"]
    for row in picked:
        cells = []
        for column in cols:
            text = render_cell(row["cells"].get(column["key"]), column, row)
            cells.append(f"**{text}**" if column["key"] in row.get("bold", ()) else text)
        lines.append("| " + " | ".join(cells) + " |")
    source = f"[`docs/results/{table['table']}.json`](results/{table['table']}.json)"
    if table.get("command"):
        source = f"`{table['command']}`; numbers: {source}"
    if table.get("transcribed_from"):
        source += f" (transcribed from the {table['transcribed_from']}'s earlier table)"
    return "\n".join(lines) + f"\n\n<sub>{source}</sub>\n"


def _options(text: str) -> dict:
    """``rows=0,1 columns=a,b`` -> {"rows": [0, 1], "columns": ["a", "b"]}."""
    options = {}
    for part in text.split():
        key, _, value = part.partition("=")
        if key not in ("rows", "columns"):
            raise ValueError(f"unknown table option {key!r} (use rows=0,1 or columns=key,key)")
        options[key] = [int(v) for v in value.split(",")] if key == "rows" else value.split(",")
    return options


def render_page(text: str, tables: dict[str, dict], page: str = "page", prefix: str = "") -> str:
    """``text`` with every marked table rewritten; ``prefix`` makes the source link relative to the page."""

    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in tables:
            raise SystemExit(f"{page}: table {name!r} has no docs/results/{name}.json (have: {', '.join(tables)})")
        body = render_table(tables[name], **_options(match["options"]))
        body = body.replace("](results/", f"]({prefix}results/")
        return match[1] + body + match[5]

    return MARKER.sub(replace, text)


def render_all(root: Path = ROOT) -> dict[Path, str]:
    """Each page that holds a table marker -> its text with the tables rendered from ``root/docs/results``."""
    tables = load_tables(root / "docs" / "results")
    out = {}
    for path in pages(root):
        text = path.read_text()
        if MARKER.search(text):
            prefix = "docs/" if path.parent == root else ""
            out[path] = render_page(text, tables, path.name, prefix)
    return out


def main(argv: list[str] | None = None) -> int:
    """Rewrite the pages (or, with ``--check``, report those that differ and return 1)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page differs from its JSON")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    stale = []
    for path, text in render_all(args.root).items():
        if path.read_text() != text:
            stale.append(path)
            if not args.check:
                path.write_text(text)
    verb = "differ from docs/results (run python scripts/bench_docs.py)" if args.check else "rewritten"
    for path in stale:
        print(f"{path.relative_to(args.root)}: {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
