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


def readme_python_blocks() -> list[str]:
    """The README's ```python blocks, in order."""
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


# Sizes the README's Python blocks run at here (the code runs as written; only these are capped)
SMALL_TRAIN = {"steps": 2, "batch_size": 2}
SMALL_GENERATE = {"num_images": 2, "num_inference_steps": 2, "batch_size": 2}


@pytest.mark.parametrize("index", range(len(readme_python_blocks())))
def test_readme_python_block_runs(index, tmp_path, monkeypatch, capsys):
    """Each Python block runs for real on the toy model, in a folder with ``refs/`` of toy references.

    ``dreamdist.train`` / ``dreamdist.generate`` (what ``from dreamdist import ...`` hands out) are
    wrapped to cap the sizes in SMALL_TRAIN / SMALL_GENERATE; configs are built and validated as written.
    """
    import dataclasses

    from dreamdist import api
    from dreamdist.toyworld.concepts import render_concept

    render_concept("circles", tmp_path / "refs", n=4)
    monkeypatch.chdir(tmp_path)
    train, generate, calls = api.train, api.generate, []

    def small_train(config, *args, **kwargs):
        calls.append("train")
        return train(dataclasses.replace(config, **SMALL_TRAIN, progress=False), *args, **kwargs)

    def small_generate(config, *args, **kwargs):
        calls.append("generate")
        caps = {k: min(v, getattr(config, k) or v) for k, v in SMALL_GENERATE.items()}
        return generate(dataclasses.replace(config, **caps, progress=False), *args, **kwargs)

    monkeypatch.setattr(api, "train", small_train)
    monkeypatch.setattr(api, "generate", small_generate)
    block = readme_python_blocks()[index]
    exec(compile(block, f"README.md python block {index + 1}", "exec"), {"__name__": "__readme__"})
    for name in ("train", "generate"):  # the calls it shows did run
        assert (f"{name}(" in block) <= (name in calls), f"the block calls {name}() but it did not run"
    if "print(" in block:
        assert capsys.readouterr().out.strip()
    assert any(p.relative_to(tmp_path).parts[0] != "refs" for p in tmp_path.rglob("*") if p.is_file())
