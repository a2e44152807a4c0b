"""One trainer per run folder: the lock is exclusive, names its holder, and dies with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from dreamdist.cli import main
from dreamdist.runlock import RunLock, RunLocked, holder


def test_the_lock_is_exclusive_and_names_its_holder(tmp_path):
    assert holder(tmp_path) is None
    with RunLock(tmp_path):
        assert holder(tmp_path) == os.getpid()
        with pytest.raises(RunLocked, match=f"process {os.getpid()}"):
            RunLock(tmp_path).acquire()
    assert holder(tmp_path) is None
    RunLock(tmp_path).acquire().release()  # free again


def test_a_killed_holder_frees_the_lock(tmp_path):
    code = f"from dreamdist.runlock import RunLock; RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); input()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        assert holder(tmp_path) == child.pid
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        deadline = time.time() + 5
        while holder(tmp_path) is not None and time.time() < deadline:
            time.sleep(0.05)
        assert holder(tmp_path) is None
    finally:
        child.kill()


def test_train_refuses_a_run_folder_another_process_trains(tmp_path, capsys):
    refs = tmp_path / "refs"
    refs.mkdir()
    out = tmp_path / "run"
    with RunLock(out):
        code = main(["train", "--images", str(refs), "--out", str(out), "--steps", "1"])
    assert code == 2
    assert "being trained by process" in capsys.readouterr().err
