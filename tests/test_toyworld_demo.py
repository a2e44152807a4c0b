"""Toy world: the offline demo runs end to end in its reduced (CI) mode."""

from __future__ import annotations

import json

from dreamdist.toyworld.demo import GAMMAS, run_demo


def test_quick_demo_runs_and_reports(tmp_path):
    result = run_demo(tmp_path / "demo", quick=True)
    assert set(result["reports"]) == {f"{g:g}" for g in GAMMAS}
    for report in result["reports"].values():
        assert report["num_images"] > 0
        assert 0.0 <= report["fidelity"] <= 1.0 and 0.0 <= report["coverage"] <= 1.0
        assert 0.0 <= report["novelty"] <= report["fidelity"]
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 1000
    assert json.loads((tmp_path / "demo" / "report.json").read_text())["concept"] == "cool-patterned"
