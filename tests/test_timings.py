"""Timing claims: one measured number each, quoted the same way by --help and the README."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dreamdist import timings
from dreamdist.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def test_rounding_reads_like_speech():
    assert [timings.rounded(s) for s in (0.4, 4.0, 48.9, 61.0, 104.9, 108.0, 176.0)] == [5, 5, 50, 60, 100, 110, 180]


def test_claims_come_from_the_measured_file():
    table = json.loads(timings.PATH.read_text())["timings"]
    for name, entry in table.items():
        assert entry["seconds"] > 0 and entry["cores"] >= 1 and entry["command"]
        assert timings.claim(name) == f"about {timings.rounded(entry['seconds'])} s on {entry['cores']} CPU cores"
    with pytest.raises(KeyError, match="measured: "):
        timings.claim("no-such-command")


def _help(*args: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return " ".join((sub.choices[args[0]].format_help() if args else parser.format_help()).split())


def test_help_quotes_the_measured_numbers():
    assert timings.claim("demo") in _help() and timings.claim("demo_quick") in _help("demo")


def test_readme_quotes_the_measured_demo_time():
    text = " ".join((ROOT / "README.md").read_text().split()).lower()
    demo, quick = timings.claim("demo"), f"about {timings.rounded(timings.measured()['demo_quick']['seconds'])} s"
    assert demo.lower() in text and f"--quick`, a smoke run: {quick}" in text
    stated = set(re.findall(r"about (\d+) s on \d+ cpu cores", text))
    assert stated == {demo.split()[1]}, f"the README states other demo times: {stated}"
