"""Toy world: the flow model's training script writes a plain FluxPipeline folder and resumes exactly."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxPipeline
from safetensors.torch import load_file

from dreamdist.toyworld.flow_components import GENERATION_DEFAULTS
from dreamdist.toyworld.train_flow import main as train_main


def run(out, steps, resume=False):
    args = ["--out", str(out), "--max-steps", str(steps), "--eval-images", "0", "--batch-size", "4",
            "--threads", "1", "--warmup-steps", "2", "--ema-decay", "0.9"]  # fmt: skip
    train_main(args + (["--resume"] if resume else []))
    return out


def test_flow_training_resumes_exactly_and_loads_in_flux_pipeline(tmp_path):
    straight = run(tmp_path / "straight", 3)
    run(tmp_path / "split", 1)
    run(tmp_path / "split", 3, resume=True)
    for name in ("transformer", "t5", "clip", "ema_transformer", "ema_t5"):
        a = load_file(tmp_path / "straight_state" / f"{name}.safetensors")
        b = load_file(tmp_path / "split_state" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    pipe = FluxPipeline.from_pretrained(straight)  # an ordinary diffusers folder, no dreamdist code
    pipe.set_progress_bar_config(disable=True)
    kwargs = {**GENERATION_DEFAULTS, "num_inference_steps": 2, "output_type": "pt"}
    image = pipe("a red circle on a plain background", generator=torch.Generator().manual_seed(0), **kwargs).images
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()
    again = pipe("a red circle on a plain background", generator=torch.Generator().manual_seed(0), **kwargs).images
    assert torch.equal(image, again)


def test_flow_training_flags_are_checked():
    with pytest.raises(ValueError, match="--max-steps"):
        train_main(["--lr-schedule", "cosine", "--out", "/nonexistent/never-written"])


def test_warm_start_from_a_half_precision_folder_trains_in_fp32(tmp_path):
    from dreamdist.toyworld.train_flow import FlowTrainConfig, initial_models

    first = run(tmp_path / "first", 1)
    pipe = FluxPipeline.from_pretrained(first, torch_dtype=torch.float16)
    pipe.save_pretrained(tmp_path / "half")  # a compact warm-start checkpoint
    tokenizers = (pipe.tokenizer, pipe.tokenizer_2)
    models = initial_models(FlowTrainConfig(init_from=str(tmp_path / "half")), tokenizers, "cpu")
    assert all(p.dtype == torch.float32 for model in models for p in model.parameters())
    half = pipe.transformer.state_dict()
    warm = models[2].state_dict()
    assert all(torch.equal(warm[k], half[k].float()) for k in half)
