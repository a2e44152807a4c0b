"""The README and docs stay true: every command they show parses with the real parser (the CLI's or the
script's), their links resolve, their benchmark tables equal what docs/results renders, and the
README's Python blocks and toy-model commands run."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import runpy
import shlex
import shutil
import sys
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
    assert {"demo", "train", "generate", "eval", "compare", "synth", "studio", "study"} <= names


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


# ---- every command block of README.md and docs/*.md ----------------------------------------------

ROOT = README.parent
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def bash_lines(page: Path) -> list[str]:
    """Command lines of a page's ```bash blocks: continuations joined, comments cut, ``&&`` split."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)
    lines = []
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        line = line.strip()
        if line.startswith("#"):
            continue
        line = re.split(r"\s#\s?", line, maxsplit=1)[0].strip()  # a trailing comment
        lines += [part.strip() for part in line.split("&&") if part.strip()]
    return lines


def doc_commands(prefix: str) -> list[tuple[str, str]]:
    """(page, command) for every line of every page's bash blocks that runs ``prefix ...`` (e.g. via torchrun)."""
    found = []
    for page in PAGES:
        for line in bash_lines(page):
            at = line.find(prefix)
            if at == 0 or (at > 0 and line[at - 1] == " " and prefix == "dreamdist "):
                found.append((page.relative_to(ROOT).as_posix(), line[at:]))
    return found


def shell_argv(command: str) -> list[str]:
    """The words of a command up to a shell redirection or pipe (``> result.json``, ``| tee log``)."""
    words = shlex.split(command)
    cut = next((i for i, w in enumerate(words) if w in ("|", "&") or w.lstrip("12&").startswith(">")), len(words))
    return words[:cut]


def _known_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Option strings of the (sub)command that ``argv`` names."""
    flags = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and argv and argv[0] in action.choices:
            return flags | _known_flags(action.choices[argv[0]], argv[1:])
    return flags


@pytest.mark.parametrize(("page", "command"), doc_commands("dreamdist "), ids=lambda v: v[:60])
def test_doc_dreamdist_command_parses(page, command):
    """The real CLI parser accepts each command; one with a ``...`` placeholder uses only known flags."""
    argv = shell_argv(command)[1:]
    parser = build_parser(_method_of(argv), resuming="--resume" in argv)
    if "..." in argv:  # "dreamdist train ... --resume": the flags shown must exist
        unknown = [
            a.split("=")[0] for a in argv if a.startswith("--") and a.split("=")[0] not in _known_flags(parser, argv)
        ]
        assert not unknown, f"{page}: {command!r} uses flags the CLI does not have: {unknown}"
        return
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{page}: {command!r} does not parse (exit {exc.code})")


class _Parsed(Exception):
    """Raised instead of running a script once its arguments parsed."""


def parse_script(script: Path, argv: list[str], monkeypatch) -> None:
    """Run ``script`` as ``__main__`` until its argparse parser has parsed ``argv``; stop there."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)  # SystemExit on an unknown flag
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(script), *argv])
    monkeypatch.syspath_prepend(str(script.parent))
    with pytest.raises(_Parsed):
        runpy.run_path(str(script), run_name="__main__")


SCRIPT_LINES = doc_commands("python bench/") + doc_commands("python scripts/")


def test_doc_script_commands_are_found():
    assert any("toy_quality.py" in c for _, c in SCRIPT_LINES)
    assert any("bench_docs.py" in c for _, c in SCRIPT_LINES)


@pytest.mark.parametrize(("page", "command"), SCRIPT_LINES, ids=lambda v: v[:60])
def test_doc_script_command_parses(page, command, monkeypatch):
    """``python bench/X.py ...`` / ``python scripts/X.py ...`` lines parse with the script's own parser."""
    _, path, *argv = shell_argv(command)
    script = ROOT / path
    assert script.is_file(), f"{page}: {command!r} names a script that does not exist"
    if "argparse" not in script.read_text() and "import main" not in script.read_text():
        return  # a script without options (e.g. positional sys.argv): existing is all we can check
    try:
        parse_script(script, argv, monkeypatch)
    except SystemExit as exc:
        pytest.fail(f"{page}: {command!r} does not parse (exit {exc.code})")


def test_a_wrong_flag_fails(monkeypatch):
    """The checks above do fail on a flag the parser lacks."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "runs/x", "--out", "o", "--num-imgs", "2"])
    with pytest.raises(SystemExit):
        parse_script(ROOT / "bench" / "toy_quality.py", ["--seedz", "0"], monkeypatch)


# ---- links and generated tables ------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    """Every relative link or image of a page names a file or folder that exists."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'src="([^"]+)"', text)
    missing = []
    for target in targets:
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (page.parent / target.split("#")[0]).exists():
            missing.append(target)
    assert not missing, f"{page.name}: links to missing files {missing}"


def _bench_docs():
    spec = importlib.util.spec_from_file_location("bench_docs", ROOT / "scripts" / "bench_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_tables_equal_the_generator():
    """The pages hold exactly what scripts/bench_docs.py renders from docs/results (they cannot drift)."""
    rendered = _bench_docs().render_all(ROOT)
    assert {p.name for p in rendered} >= {"README.md", "benchmarks.md"}
    for path, text in rendered.items():
        assert path.read_text() == text, f"{path.name} differs from docs/results: run python scripts/bench_docs.py"


def test_a_changed_number_is_caught(tmp_path):
    """Edit one number of the JSON (in a copy): --check fails, and a rewrite shows the new number."""
    bench_docs = _bench_docs()
    shutil.copy(README, tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("*.png"))
    assert bench_docs.main(["--check", "--root", str(tmp_path)]) == 0
    path = tmp_path / "docs" / "results" / "toy_quality.json"
    table = json.loads(path.read_text())
    table["rows"][0]["cells"]["fidelity"][0] = 0.51
    path.write_text(json.dumps(table))
    assert bench_docs.main(["--check", "--root", str(tmp_path)]) == 1
    assert bench_docs.main(["--root", str(tmp_path)]) == 0
    assert "**0.51 ± 0.03**" in (tmp_path / "README.md").read_text()
    assert bench_docs.main(["--check", "--root", str(tmp_path)]) == 0


# ---- the README's commands, run for real on the toy model ------------------------------------------

RUN_README = ("toy-refs", "train", "generate", "eval", "compare", "study")  # offline, quick once made small


def _small(argv: list[str]) -> list[str]:
    """The command with its sizes cut (steps, images), the flags as written."""
    sizes = {"--steps": "2", "--num-images": "8"}
    out = [sizes.get(argv[i - 1], a) if i else a for i, a in enumerate(argv)]
    if out[0] == "train" and "--resume" in out:
        out[out.index("--steps") + 1] = "3"
    if out[0] == "generate":
        out += ["--num-inference-steps", "2", "--no-progress"]
    return out


@pytest.mark.slow
def test_readme_commands_run(tmp_path, monkeypatch):
    """The README's command block runs in order on the toy model (sizes cut), each with exit status 0."""
    from dreamdist.cli import main

    monkeypatch.chdir(tmp_path)
    ran = []
    for command in readme_commands():
        argv = _small(shlex.split(command)[1:])
        if argv[0] not in RUN_README or "..." in argv:
            continue
        if "--mix" in argv and not Path("runs/other").exists():  # the block mixes with a second run
            shutil.copytree("runs/toy", "runs/other")
        if argv[0] == "compare":  # the block compares with a second method's report (here: the paper's sampler)
            assert main(
                [
                    "eval",
                    "--real",
                    "refs",
                    "--generated",
                    "paper",
                    "--out",
                    "report-ti",
                    "--features",
                    "toy-oracle",
                    "--offline",
                    "--method",
                    "paper-sampler",
                ]
            ) in (0, None)
        assert main(argv) in (0, None), f"README command failed: {command}"
        ran.append(argv[0])
    assert {"toy-refs", "train", "generate", "eval", "compare"} <= set(ran)
    assert len(list(Path("samples").glob("*.png"))) >= 8
    assert (Path("comparison") / "comparison.md").is_file()
