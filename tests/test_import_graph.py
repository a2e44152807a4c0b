"""The package's import graph has no loop: low modules never import the high ones that use them."""

from __future__ import annotations

import ast
from pathlib import Path

import dreamdist

ROOT = Path(dreamdist.__file__).parent


def imports_of(path: Path) -> set[str]:
    """Every ``dreamdist.*`` module a file imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dreamdist"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("dreamdist"))
    return found


def test_nothing_under_methods_imports_generation():
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in imports_of(path) if m.startswith("dreamdist.generation"))
        for path in (ROOT / "methods").glob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_low_modules_stay_low():
    low = ["pipeline.py", "backbone.py", "data.py", "artifact.py", "atomic.py", "config.py"]
    high = ("dreamdist.generation", "dreamdist.methods", "dreamdist.training", "dreamdist.cli")
    for name in low:
        bad = sorted(m for m in imports_of(ROOT / name) if m.startswith(high))
        assert not bad, f"{name} imports {bad}"
