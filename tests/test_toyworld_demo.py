"""Toy world: the offline demo runs end to end in its reduced (CI) mode, also from the CLI."""

from __future__ import annotations

import json

from dreamdist.cli import main
from dreamdist.toyworld.demo import GAMMAS, PAPER


def test_quick_demo_runs_and_reports(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--quick"]) == 0
    result = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert result["concept"] == "cool-patterned"
    assert set(result["reports"]) == {f"gamma {g:g}" for g in GAMMAS} | {PAPER}
    for report in result["reports"].values():
        assert report["num_images"] > 0
        assert 0.0 <= report["fidelity"] <= 1.0 and 0.0 <= report["coverage"] <= 1.0
        assert 0.0 <= report["novelty"] <= report["fidelity"]
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "oracle report" in printed and "verdict: " in printed and result["verdict"] in printed
    assert "--quick: a smoke run" in result["verdict"]  # a failing smoke verdict says it is expected
    for report in result["reports"].values():
        assert set(report["tv"]) == {"colour", "shape", "background", "joint"}
        assert set(report["entropy"]) == {"colour", "shape", "background", "joint"}
    # the diversity knob: one row per gamma of the default sampler, printed; gamma 0 is its own baseline
    assert "diversity knob" in printed and [row["gamma"] for row in result["knob"]] == list(GAMMAS)
    assert result["knob"][0]["change"] == 0.0 and all(row["change"] >= 0 for row in result["knob"])
    assert all(1.0 <= row["vendi"] <= report["num_images"] for row in result["knob"])


def test_toy_refs_command_writes_a_reference_folder(tmp_path, capsys):
    assert main(["toy-refs", "warm-pointy", "--out", str(tmp_path / "refs"), "--n", "5"]) == 0
    assert len(list((tmp_path / "refs").glob("*.png"))) == 5
    assert "(none names this concept)" in capsys.readouterr().out
