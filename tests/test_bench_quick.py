"""Every script in bench/ still runs: each one's ``--quick`` smoke mode, in its own process.

Scripts are found by globbing, so a new benchmark is covered as soon as it exists (and must
accept ``--quick``). The numbers are not checked: tiny sizes on a shared machine measure noise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(path.name for path in BENCH.glob("*.py") if not path.name.startswith("_"))  # not _common.py
# The toy benchmarks' --quick is a smoke run of the real protocol (minutes); these flags, which win
# over --quick's defaults, shrink it to seconds.
SMALLER = {
    "toy_quality.py": ["--concepts", "circles", "--steps", "2", "--images", "2"],
    "toy_synthetic.py": [
        *("--references", "2", "--per-class", "2", "--keep", "2", "--test", "2", "--large", "2"),
        *("--steps", "2", "--epochs", "1", "--threads", "1"),
    ],
}
SLOW = {"toy_quality.py", "toy_synthetic.py"}  # train and sample every method / arm: over a minute each


def test_the_scripts_are_found():
    assert {"bench_train_step.py", "bench_methods.py", "toy_quality.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.slow) if s in SLOW else s for s in SCRIPTS])
def test_bench_script_runs_in_quick_mode(script, tmp_path):
    argv = [sys.executable, str(BENCH / script), "--quick", *SMALLER.get(script, [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny tensors: one thread (see conftest.py)
    # cwd: scripts that write results default to folders relative to it
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stderr[-4000:]}"
    assert done.stdout.strip(), f"{script} printed no result"
