"""The README stays true: every `dreamdist ...` command it shows parses with the real CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from dreamdist.cli import _method_of, build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    """`dreamdist` command lines of the README's bash blocks (continuations joined, comments cut)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        for part in line.split("&&"):
            part = part.strip()
            if part.startswith("dreamdist ") and " ... " not in part:
                commands.append(part)
    return commands


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    argv = shlex.split(command.replace("<any>", "any"))[1:]
    build_parser(_method_of(argv)).parse_args(argv)  # SystemExit (bad flag) fails the test


def test_readme_shows_the_main_commands():
    names = {c.split()[1] for c in readme_commands()}
    assert {"demo", "train", "generate", "interpret", "eval"} <= names


def test_readme_python_api_imports():
    block = re.search(r"```python\n(.*?)```", README.read_text(), flags=re.S).group(1)
    imports = "\n".join(line for line in block.splitlines() if line.startswith(("from ", "import ")))
    exec(compile(imports, "README", "exec"), {})
