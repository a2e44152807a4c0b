"""Data-parallel training on 2 CPU processes (torchrun, gloo): identical trainables on both ranks,
a NaN on one rank only does not hang, and SIGTERM on one rank + --resume equals an uninterrupted run."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not installed")

# Runs inside each torchrun process: patches the method so every rank dumps its trainables, and
# applies the fault the test asks for (FAULT=nan|sigterm on rank 1 at step 2) before calling the CLI.
WORKER = textwrap.dedent("""
    import os, signal, sys
    import torch
    from safetensors.torch import save_file
    from dreamdist.methods.dreamdistribution import DreamDistribution
    from dreamdist.training import loop

    rank, dump, fault = int(os.environ["RANK"]), os.environ["DUMP"], os.environ.get("FAULT", "")
    os.makedirs(dump, exist_ok=True)
    count = {"steps": 0, "losses": 0}

    def save(tag, method):
        state = {k: v.detach().clone().contiguous() for k, v in method.state_tensors().items()}
        save_file(state, os.path.join(dump, f"{tag}-rank{rank}.safetensors"))

    setup = DreamDistribution.setup
    def patched_setup(self, *args, **kwargs):
        setup(self, *args, **kwargs)
        save("setup", self)
    DreamDistribution.setup = patched_setup

    def after_step(self):
        count["steps"] += 1
        save(f"step{count['steps']}", self)
        if fault == "sigterm" and rank == 1 and count["steps"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
    DreamDistribution.after_step = after_step

    method_loss = loop.method_loss
    def patched_loss(*args, **kwargs):
        total, loss, logs = method_loss(*args, **kwargs)
        count["losses"] += 1
        if fault == "nan" and rank == 1 and count["losses"] == 2:
            total = total * float("nan")
        return total, loss, logs
    loop.method_loss = patched_loss

    from dreamdist.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def torchrun(tmp_path: Path, args: list[str], dump: Path, fault: str = "") -> subprocess.CompletedProcess:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "DUMP": str(dump), "FAULT": fault, "OMP_NUM_THREADS": "1"}
    command = ["torchrun", "--standalone", "--nproc_per_node", "2", str(script), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


def train_args(refs, model, out, *extra) -> list[str]:
    return [
        "train", "--images", str(refs), "--model", str(model), "--out", str(out), "--steps", "4",
        "--batch-size", "1", "--num-prompts", "2", "--num-tokens", "1", "--num-samples", "2",
        "--checkpoint-every", "1", "--no-progress", "--seed", "3", *extra,
    ]  # fmt: skip


def same(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_ranks_start_and_stay_identical_and_a_nan_on_one_rank_does_not_hang(refs, tiny_model, tmp_path):
    dump = tmp_path / "dump"
    done = torchrun(tmp_path, train_args(refs, tiny_model, tmp_path / "run"), dump)
    assert done.returncode == 0, done.stderr[-3000:]
    for tag in ("setup", "step1", "step4"):
        assert same(dump / f"{tag}-rank0.safetensors", dump / f"{tag}-rank1.safetensors"), tag
    assert not same(dump / "setup-rank0.safetensors", dump / "step4-rank0.safetensors")  # it trained

    nan_dump = tmp_path / "nan"
    done = torchrun(tmp_path, train_args(refs, tiny_model, tmp_path / "nan-run"), nan_dump, fault="nan")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "non-finite loss at step 2" in done.stderr
    assert same(nan_dump / "step4-rank0.safetensors", nan_dump / "step4-rank1.safetensors")
    assert not (nan_dump / "step5-rank0.safetensors").exists()  # the skipped step was redone, not extra


def test_sigterm_on_one_rank_then_resume_equals_an_uninterrupted_run(refs, tiny_model, tmp_path):
    full = torchrun(tmp_path, train_args(refs, tiny_model, tmp_path / "full"), tmp_path / "d1")
    assert full.returncode == 0, full.stderr[-3000:]
    stopped = torchrun(tmp_path, train_args(refs, tiny_model, tmp_path / "cut"), tmp_path / "d2", fault="sigterm")
    assert stopped.returncode != 0 and "--resume" in stopped.stderr
    assert not (tmp_path / "cut" / "dreamdist.safetensors").exists()
    resumed = torchrun(tmp_path, train_args(refs, tiny_model, tmp_path / "cut", "--resume"), tmp_path / "d3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(tmp_path / "full" / "dreamdist.safetensors"))
    b = load_file(str(tmp_path / "cut" / "dreamdist.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # rank 1 too continued exactly (the resumed process counts its steps from 1: its 2nd step is step 4)
    assert same(tmp_path / "d1" / "step4-rank1.safetensors", tmp_path / "d3" / "step2-rank1.safetensors")
