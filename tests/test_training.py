"""The shared training loop with DreamDistribution: what trains, resume, signals, NaN guard."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from dreamdist.artifact import load_artifact
from dreamdist.backbones import Backbone, SDBackbone
from dreamdist.config import TrainConfig
from dreamdist.methods.dreamdistribution import DreamDistribution, DreamDistributionConfig
from dreamdist.testing import write_images
from dreamdist.training.checkpoint import list_checkpoints
from dreamdist.training.loop import TrainingAborted, TrainingInterrupted, train

SMALL = DreamDistributionConfig(num_prompts=4, num_tokens=2, num_samples=2)


def config(refs, model, out, **kw) -> TrainConfig:
    base = dict(images=str(refs), model=str(model), out=str(out), steps=4, batch_size=2, progress=False)
    return TrainConfig(**{**base, **kw})


def test_trains_only_the_prompt_vectors_and_writes_artifact(refs, tiny_model, tmp_path):
    out = train(config(refs, tiny_model, tmp_path / "run", checkpoint_every=2, keep_checkpoints=1), SMALL)
    art = load_artifact(out)
    assert art.method == "dreamdistribution"
    assert art.tensors["vectors"].shape == (1, 4, 2, 32)
    meta = art.meta
    assert meta["backbone"]["model_id"] == str(tiny_model) and meta["step"] == 4
    assert meta["method_config"]["num_prompts"] == 4 and meta["dreamdist_version"]
    assert meta["shapes"]["vectors"] == [1, 4, 2, 32]
    init = DreamDistribution(SMALL)
    backbone = Backbone.from_pretrained(tiny_model, device="cpu")
    from dreamdist.data import ReferenceSet

    init.setup(backbone, ReferenceSet.from_folder(refs, 32), torch.Generator().manual_seed(0))
    assert not torch.equal(init.prompts.vectors.detach(), art.tensors["vectors"])  # V moved
    # the frozen model is untouched on disk and in a reload
    reloaded = Backbone.from_pretrained(tiny_model, device="cpu")
    for a, b in zip(backbone.unet.parameters(), reloaded.unet.parameters()):
        assert torch.equal(a, b)
    assert [p.name for p in list_checkpoints(out)] == ["step-0000004"]  # pruned to keep=1


@pytest.mark.parametrize("objective", ["gaussian", "mixture"])
def test_k_prompts_are_encoded_once_per_step(refs, backbone, objective):
    method = DreamDistribution(dataclasses.replace(SMALL, objective=objective))
    from dreamdist.data import ReferenceSet

    method.setup(backbone, ReferenceSet.from_folder(refs, 32), torch.Generator().manual_seed(0))
    calls = []
    handle = backbone.text_encoder.encoder.register_forward_hook(
        lambda m, i, o: calls.append(i[0].shape if i else None)
    )
    try:
        handle_kw = backbone.text_encoder.encoder.register_forward_pre_hook(
            lambda m, args, kwargs: calls.append(kwargs["inputs_embeds"].shape), with_kwargs=True
        )
        labels, indices = torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 2, 0])
        cond = method.condition(backbone, labels, torch.Generator().manual_seed(1), indices)
    finally:
        handle.remove()
        handle_kw.remove()
    shapes = [c for c in calls if c is not None]
    assert shapes == [torch.Size([4, 77, 32])]  # one pass over the K=4 prompts for a batch of 4 images
    assert cond.hidden.shape == (2 * 4, 77, 32) and cond.repeats == 2
    assert cond.aux_loss is not None and cond.aux_loss.requires_grad


def test_resume_is_exact(refs, tiny_model, tmp_path):
    full = train(config(refs, tiny_model, tmp_path / "full", steps=6, flip=True), SMALL)
    part = tmp_path / "part"
    train(config(refs, tiny_model, part, steps=3, flip=True), SMALL)
    train(config(refs, tiny_model, part, steps=6, flip=True, resume=True), SMALL)
    a, b = load_artifact(full).tensors["vectors"], load_artifact(part).tensors["vectors"]
    assert torch.equal(a, b)
    with pytest.raises(FileExistsError, match="--resume"):
        train(config(refs, tiny_model, part, steps=6), SMALL)


def test_resume_refuses_changed_images(refs, tiny_model, tmp_path):
    out = tmp_path / "run"
    train(config(refs, tiny_model, out, steps=2), SMALL)
    write_images(refs, 1, seed=9, size=(90, 90))  # overwrite one image
    with pytest.raises(ValueError, match="images fingerprint"):
        train(config(refs, tiny_model, out, steps=3, resume=True), SMALL)


def test_sigterm_saves_checkpoint_and_resume_matches(refs, tiny_model, tmp_path, monkeypatch):
    reference = train(config(refs, tiny_model, tmp_path / "ref", steps=5), SMALL)
    original = DreamDistribution.after_step
    count = {"n": 0}

    def after_step(self):
        original(self)
        count["n"] += 1
        if count["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(DreamDistribution, "after_step", after_step)
    out = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted, match="--resume") as info:
        train(config(refs, tiny_model, out, steps=5), SMALL)
    assert info.value.signum == signal.SIGTERM
    assert [p.name for p in list_checkpoints(out)] == ["step-0000002"]
    assert not (out / "dreamdist.safetensors").exists()
    monkeypatch.setattr(DreamDistribution, "after_step", original)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    train(config(refs, tiny_model, out, steps=5, resume=True), SMALL)
    assert torch.equal(load_artifact(out).tensors["vectors"], load_artifact(reference).tensors["vectors"])


def test_nonfinite_losses_skip_then_abort_with_checkpoint(refs, tiny_model, tmp_path, monkeypatch):
    import dreamdist.training.loop as loop

    real = loop.diffusion_loss
    calls = {"n": 0}

    def flaky(*args, **kw):
        calls["n"] += 1
        loss = real(*args, **kw)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(loop, "diffusion_loss", flaky)
    out = train(config(refs, tiny_model, tmp_path / "skip", steps=3), SMALL)
    assert load_artifact(out).meta["step"] == 3 and calls["n"] == 4  # one skipped attempt
    assert torch.isfinite(load_artifact(out).tensors["vectors"]).all()

    monkeypatch.setattr(loop, "diffusion_loss", lambda *a, **k: real(*a, **k) * float("inf"))
    with pytest.raises(TrainingAborted, match="non-finite"):
        train(config(refs, tiny_model, tmp_path / "abort", steps=3, max_nonfinite=2), SMALL)
    assert list_checkpoints(tmp_path / "abort")


def test_interrupted_checkpoint_write_is_ignored(refs, tiny_model, tmp_path):
    out = tmp_path / "run"
    train(config(refs, tiny_model, out, steps=2), SMALL)
    (out / "checkpoints" / ".tmp-step-0000009-1").mkdir()
    (out / "checkpoints" / "step-0000009").mkdir()  # a rename that never completed its contents
    assert [p.name for p in list_checkpoints(out)] == ["step-0000002"]
    state = load_file(str(list_checkpoints(out)[-1] / "state.safetensors"))
    assert {"method.vectors", "rng.generator"} <= set(state)


def test_multiclass_v_prediction_accumulation_tensorboard_and_grids(tmp_path, tiny_model_v):
    write_images(tmp_path / "data" / "red_car", 2, seed=1)
    write_images(tmp_path / "data" / "blue_boat", 2, seed=2)
    out = train(
        config(
            tmp_path / "data",
            tiny_model_v,
            tmp_path / "run",
            multiclass=True,
            gradient_accumulation=2,
            tensorboard=True,
            sample_every=2,
            gradient_checkpointing=True,
            steps=2,
        ),
        SMALL,
    )
    art = load_artifact(out)
    assert art.tensors["vectors"].shape == (2, 4, 2, 32)
    assert art.meta["class_names"] == ["blue boat", "red car"] and art.meta["multiclass"]
    assert (out / "samples" / "step-0000002.png").exists()
    assert any((out / "logs").rglob("events.out.tfevents*"))


def test_bf16_autocast_keeps_trainables_fp32(refs, tiny_model, tmp_path):
    out = train(config(refs, tiny_model, tmp_path / "run", steps=1, mixed_precision="bf16", dtype="fp32"), SMALL)
    assert load_artifact(out).tensors["vectors"].dtype == torch.float32


def test_config_validation_names_the_flag():
    with pytest.raises(ValueError, match="--mixed-precision"):
        TrainConfig(images="x", out="y", mixed_precision="fp8")
    with pytest.raises(ValueError, match="--num-prompts"):
        DreamDistributionConfig(num_prompts=1)


def test_timesteps_span_the_method_default_or_the_given_range(refs, tiny_model, tmp_path, monkeypatch):
    total = Backbone.from_pretrained(str(tiny_model)).scheduler.config.num_train_timesteps
    seen: list[int] = []
    real = SDBackbone.denoise

    def spy(self, noisy, timesteps, hidden):
        seen.extend(timesteps.tolist())
        return real(self, noisy, timesteps, hidden)

    monkeypatch.setattr(SDBackbone, "denoise", spy)
    cases = [
        ("mixture", {}, (0.15, 0.7)),
        ("gaussian", {}, (0.0, 1.0)),
        ("mixture", {"min_timestep": 0.5}, (0.5, 0.7)),
        ("mixture", {"max_timestep": 1.0}, (0.15, 1.0)),
        ("gaussian", {"min_timestep": 0.2, "max_timestep": 0.4}, (0.2, 0.4)),
    ]
    for n, (objective, given, (low, high)) in enumerate(cases):
        seen.clear()
        method = dataclasses.replace(SMALL, objective=objective)
        train(config(refs, tiny_model, tmp_path / f"run{n}", steps=8, **given), method)
        assert round(low * total) <= min(seen) and max(seen) < round(high * total)
        middle = (low + high) / 2 * total
        assert min(seen) < middle < max(seen)  # both halves of the range are drawn
    with pytest.raises(ValueError, match="min-timestep"):
        TrainConfig(images="x", out="y", min_timestep=1.0)
    with pytest.raises(ValueError, match="max-timestep"):
        TrainConfig(images="x", out="y", max_timestep=0.0)
    with pytest.raises(ValueError, match="empty"):
        train(config(refs, tiny_model, tmp_path / "empty", steps=8, min_timestep=0.8), SMALL)  # mixture: below 0.7
