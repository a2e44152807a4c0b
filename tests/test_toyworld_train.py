"""Toy world: the base-model training script warm-starts, checkpoints and resumes exactly."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from dreamdist.toyworld import model_dir
from dreamdist.toyworld.train_base import BaseTrainConfig, learning_rate, parse_args, state_dir, train_base


def run(out, steps, resume=False):
    args = ["--init-from", "toy", "--out", str(out), "--max-steps", str(steps), "--eval-images", "0",
            "--batch-size", "4", "--threads", "1", "--lr", "5e-4", "--warmup-steps", "2", "--ema-decay", "0.9"]  # fmt: skip
    return train_base(parse_args(args + (["--resume"] if resume else [])))


def test_interrupted_training_resumes_exactly(tmp_path):
    straight = run(tmp_path / "straight", 3)
    run(tmp_path / "split", 1)
    assert (state_dir(BaseTrainConfig(out=tmp_path / "split")) / "meta.json").is_file()
    split = run(tmp_path / "split", 3, resume=True)
    for name in ("unet", "ema_unet", "text_encoder", "ema_text_encoder"):
        a = load_file(tmp_path / "straight_state" / f"{name}.safetensors")
        b = load_file(tmp_path / "split_state" / f"{name}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), name
    shipped = load_file(straight.parent / "straight" / "unet" / "diffusion_pytorch_model.safetensors")
    assert (straight / "model_index.json").is_file() and (split / "model_index.json").is_file()
    original = load_file(model_dir() / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(shipped[k], original[k]) for k in original)  # it trained


def test_learning_rate_schedule_and_flag_checks():
    cosine = BaseTrainConfig(lr=1e-3, warmup_steps=10, lr_schedule="cosine", max_steps=100)
    assert learning_rate(cosine, 0) == pytest.approx(1e-4)  # warmup
    assert learning_rate(cosine, 9) == pytest.approx(1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * 0.09))))
    assert learning_rate(cosine, 50) == pytest.approx(0.55e-3)  # half way: the middle of 1 and 0.1
    assert learning_rate(cosine, 100) == pytest.approx(1e-4)  # decays to 10 %
    assert learning_rate(BaseTrainConfig(lr=1e-3, warmup_steps=1), 50) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="max-steps"):
        BaseTrainConfig(lr_schedule="cosine")
    with pytest.raises(ValueError, match="lr-schedule"):
        BaseTrainConfig(lr_schedule="step")
