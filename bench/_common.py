"""Shared pieces of the training benchmarks: component sizes, step timing, one process per variant."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch

SIZES = {  # "small": a text encoder / UNet balance closer to SD's (text encoding is a real share of a step)
    "tiny": dict(hidden_size=32),
    "small": dict(hidden_size=256, text_layers=6, unet_channels=(32, 64), sample_size=16),
}


def time_steps(step: Callable[[], None], steps: int, warmup: int = 2) -> tuple[float, float]:
    """Run ``warmup + steps`` calls of ``step``; return (median seconds, peak MiB of this process).

    Peak is CUDA's max allocated memory on a GPU, else the process's peak RSS.
    """
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return sorted(times)[len(times) // 2], peak


def run_isolated(script: str, args: list[str]) -> dict:
    """Run ``script --variant ...`` in a fresh process (so peak memory is its own); parse its JSON line."""
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
