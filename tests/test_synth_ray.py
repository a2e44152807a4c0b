"""dreamdist synth --engine ray on a local Ray cluster (2 CPUs): the same bytes as the local engine."""

from __future__ import annotations

import signal

import pytest

from dreamdist.cli import main
from test_synth import make_job, rows, synth_argv, tree

ray = pytest.importorskip("ray")  # the 'ray' extra (in dev, so CI has it)


@pytest.fixture(scope="module")
def cluster():
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    for sig, handler in handlers.items():  # Ray installs its own; later tests expect the defaults
        signal.signal(sig, handler)


def test_ray_engine_continues_a_local_run_and_gives_the_same_bytes(cluster, tmp_path, tiny_model, monkeypatch):
    job = make_job(tmp_path / "job", tiny_model)
    local = tmp_path / "local"
    assert main(synth_argv(job, local, "--format", "webdataset", "--shard-size", "4")) == 0
    out = tmp_path / "ray"
    with monkeypatch.context() as env:  # a local process does half the blocks, then stops
        env.setenv("RANK", "0")
        env.setenv("WORLD_SIZE", "2")
        assert main(synth_argv(job, out, "--format", "webdataset", "--shard-size", "4")) == 0
    assert len((out / ".synth-work" / "rows-0.jsonl").read_text().splitlines()) == 6  # blocks 0 and 2 of 4
    argv = synth_argv(job, out, "--format", "webdataset", "--shard-size", "4", "--engine", "ray", "--ray-workers", "2")
    assert main(argv) == 0
    assert tree(out) == tree(local)
    assert sum(r["kept"] for r in rows(out)) == 6
