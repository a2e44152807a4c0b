"""``bench/bench_gpu.py``'s real-size configs: every family built on the meta device (no memory, no
weights) has the published parameter counts of its checkpoint; ``--quick --json`` writes a table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"

# billions of parameters of the published checkpoints (denoiser, text encoders in pipeline order)
PUBLISHED = {
    "sd": (0.866, [0.340]),  # SD 2.1 base: UNet, OpenCLIP-H text tower
    "sdxl": (2.567, [0.123, 0.695]),  # SDXL base: UNet, CLIP-L, CLIP-G
    "sd3": (2.243, [0.124, 0.695, 4.762]),  # SD3.5 medium: MMDiT-X, CLIP-L, CLIP-G (with projections), T5-XXL
    "flux": (11.901, [0.123, 4.762]),  # Flux.1-dev: transformer, CLIP-L, T5-XXL
}


@pytest.fixture(scope="module")
def bench_gpu():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_gpu

        yield bench_gpu
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("family", sorted(PUBLISHED))
def test_real_size_parameter_counts(bench_gpu, family, tmp_path):
    backbone = bench_gpu.build_backbone(family, False, torch.device("meta"), torch.bfloat16, tmp_path)
    billions = lambda module: sum(p.numel() for p in module.parameters()) / 1e9  # noqa: E731
    denoiser, encoders = PUBLISHED[family]
    assert billions(backbone.denoiser) == pytest.approx(denoiser, abs=0.002)
    assert [billions(e) for e in backbone.text_encoders] == pytest.approx(encoders, abs=0.002)
    assert backbone.dtype == torch.bfloat16 and backbone.sample_size == bench_gpu.REAL[family]["size"]
    assert backbone.scheduler_config["_class_name"]  # the pipeline gets the checkpoint's inference scheduler


def test_quick_json_table(tmp_path):
    out = tmp_path / "gpu.json"
    argv = [sys.executable, str(BENCH / "bench_gpu.py"), "--quick", "--families", "flux", "--json", str(out)]
    argv += ["--methods", "dreamdistribution", "--cache-text"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "--cache-text: not supported" in done.stdout
    table = json.loads(out.read_text())
    cells = [row["cells"] for row in table["rows"]]
    assert [c["method"] for c in cells] == ["dreamdistribution", "generation"]
    assert cells[0]["step_s"] > 0 and cells[0]["tflop_step"] > 0 and cells[1]["ratio"] > 0
    assert table["settings"]["not_supported"] == ["cache_text"]
