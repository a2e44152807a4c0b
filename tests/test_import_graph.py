"""The package's import graph has no loop: low modules never import the high ones that use them; and
family knowledge stays in ``dreamdist.backbones``: nothing else branches on a family name or imports a
family's diffusers pipeline class."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import dreamdist
from dreamdist.backbones import FAMILIES, FAMILY_NAMES

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
    low = ["pipeline.py", *(f"backbones/{p.name}" for p in (ROOT / "backbones").glob("*.py"))]
    low += ["data.py", "artifact.py", "atomic.py", "config.py"]
    high = ("dreamdist.generation", "dreamdist.methods", "dreamdist.training", "dreamdist.cli")
    for name in low:
        bad = sorted(m for m in imports_of(ROOT / name) if m.startswith(high))
        assert not bad, f"{name} imports {bad}"


# built by construction as one family's models: the toy world ships an SD pipeline, and testing
# writes tiny SD and SDXL pipeline folders
FAMILY_BUILDERS = ("toyworld/", "testing.py")
GENERIC_PIPELINES = {"DiffusionPipeline"}  # diffusers' family-independent loader


def family_branches(path: Path) -> list[str]:
    """Where a file compares a backbone's ``.family`` (or a ``.name`` with a family's name) with a string
    literal, imports a family class or module, or names a family's diffusers pipeline class."""
    family_code = {family.__name__ for family in FAMILIES} | {family.__module__ for family in FAMILIES}
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            literals = [c.value for s in sides for c in ast.walk(s) if isinstance(c, ast.Constant)]
            literals = [value for value in literals if isinstance(value, str)]
            attrs = {s.attr for s in sides if isinstance(s, ast.Attribute)}
            if literals and ("family" in attrs or ("name" in attrs and set(literals) & set(FAMILY_NAMES))):
                found.append(f"line {node.lineno}: compares a family with {literals[0]!r}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "diffusers":
            for alias in node.names:
                if alias.name.endswith("Pipeline") and alias.name not in GENERIC_PIPELINES:
                    found.append(f"line {node.lineno}: imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dreamdist"):
            names = {node.module} | {f"{node.module}.{a.name}" for a in node.names} | {a.name for a in node.names}
            if names & family_code:
                found.append(f"line {node.lineno}: imports {sorted(names & family_code)}")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and len(node.args) > 1:
            name = node.args[1]
            if isinstance(name, ast.Constant) and str(name.value).endswith("Pipeline"):
                found.append(f"line {node.lineno}: getattr(..., {name.value!r})")
    return found


def test_only_backbones_know_the_families():
    offenders = {}
    for path in sorted(ROOT.rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if name.startswith("backbones/") or name.startswith(FAMILY_BUILDERS):
            continue
        if found := family_branches(path):
            offenders[name] = found
    assert offenders == {}, "family-specific code outside dreamdist.backbones: " + json.dumps(offenders, indent=1)


def test_the_family_check_sees_branches(tmp_path):
    file = tmp_path / "bad.py"
    file.write_text(
        "from diffusers import StableDiffusionXLPipeline, DiffusionPipeline\n"
        "from dreamdist.backbones import Backbone, SDXLBackbone\n"
        "def f(backbone):\n"
        "    return backbone.family == 'sdxl' or backbone.family in ('sd',) or type(backbone).name != 'sd'\n"
        "def g(method):\n"
        "    return method.name == 'dreambooth'\n"
    )
    found = family_branches(file)
    assert len(found) == 5, found
    assert "StableDiffusionXLPipeline" in found[0] and "SDXLBackbone" in found[1] and "'sdxl'" in found[2]
