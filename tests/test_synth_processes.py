"""dreamdist synth across processes: SIGKILL + rerun == uninterrupted; RANK/WORLD_SIZE split the work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from dreamdist.cli import main
from dreamdist.synth.plan import Plan
from test_synth import make_job, rows, synth_argv, tree

SETTINGS = dict(per_class=6, keep=3, batch=2)  # 18 images in 9 blocks


def command(job, out, **env) -> tuple[list[str], dict]:
    argv = [sys.executable, "-m", "dreamdist.cli", *synth_argv(job, out, **SETTINGS)]
    # one thread, as in the test process: the same kernels, so the same bits
    return argv, {**os.environ, "OMP_NUM_THREADS": "1", **env}


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_model):
    return make_job(tmp_path_factory.mktemp("synth_proc_job"), tiny_model)


@pytest.fixture(scope="module")
def uninterrupted(job, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "ds"
    assert main(synth_argv(job, out, **SETTINGS)) == 0
    return out


def test_sigkill_then_rerun_is_byte_identical_to_an_uninterrupted_run(job, uninterrupted, tmp_path):
    out = tmp_path / "ds"
    argv, env = command(job, out)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = out / ".synth-work" / "rows-0.jsonl"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if log.is_file() and log.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    written = log.read_bytes().count(b"\n")
    assert 3 <= written < 18 and not (out / "manifest.jsonl").exists()  # killed mid-run
    assert main(synth_argv(job, out, **SETTINGS)) == 0
    assert tree(out) == tree(uninterrupted)


def test_two_processes_split_the_work_without_overlap(job, uninterrupted, tmp_path):
    out = tmp_path / "ds"
    procs = []
    for rank in (0, 1):
        argv, env = command(job, out, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    plan = Plan((None,) * 3, SETTINGS["per_class"], SETTINGS["batch"], 0)
    counts = []
    for rank, (stdout, _) in enumerate(outputs):
        expected = sum(len(block) for block in plan.blocks(rank, 2))
        assert f"process {rank}/2: generated {expected} images" in stdout
        counts.append(expected)
    assert counts == [10, 8] and sum(counts) == len(rows(uninterrupted))  # each image made once
    assert any("dataset complete" in stdout for stdout, _ in outputs)
    assert tree(out) == tree(uninterrupted)  # the union is the single-process dataset, byte for byte


def test_blocks_of_the_processes_partition_the_items():
    plan = Plan((None,) * 3, 7, 4, 0)  # 21 items, blocks of 4
    for world in (1, 2, 3, 5):
        items = [k for rank in range(world) for block in plan.blocks(rank, world) for k in block]
        assert sorted(items) == list(range(21)) and len(items) == len(set(items))
        assert {tuple(b) for r in range(world) for b in plan.blocks(r, world)} == {tuple(b) for b in plan.blocks()}
