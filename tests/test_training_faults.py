"""Faults and precision in the shared loop: skip reports, bf16 sample grids for every method, fp16
refusal, LR schedules and clipping, resume with changed settings, durable checkpoints, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from dreamdist.artifact import load_artifact
from dreamdist.cli import main
from dreamdist.config import TrainConfig
from dreamdist.methods import method_names
from dreamdist.methods.dreambooth import DreamBoothConfig
from dreamdist.methods.dreamdistribution import DreamDistributionConfig
from dreamdist.testing import example_config, write_images
from dreamdist.training.checkpoint import TrainingState, list_checkpoints, load_checkpoint, save_checkpoint
from dreamdist.training.loop import _lr_schedule, train

SMALL = DreamDistributionConfig(num_prompts=2, num_tokens=1, num_samples=2)


def config(refs, model, out, **kw) -> TrainConfig:
    base = dict(images=str(refs), model=str(model), out=str(out), steps=2, batch_size=1, progress=False)
    return TrainConfig(**{**base, **kw})


def test_skipped_files_are_printed_recorded_and_shown_by_info(tiny_model, tmp_path, capsys):
    refs = write_images(tmp_path / "refs", 3)
    (refs / "notes.txt").write_text("not an image")
    (refs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (refs / "tiny.png").write_bytes((refs / "img_00.png").read_bytes()[:100])  # truncated
    out = train(config(refs, tiny_model, tmp_path / "run", checkpoint_every=0), SMALL)
    err = capsys.readouterr().err
    assert "3 image(s) kept, 3 skipped" in err
    for name in ("notes.txt", "broken.png", "tiny.png"):
        assert f"skipped {name}:" in err
    recorded = json.loads((out / "references.json").read_text())
    assert sorted(recorded["kept"]) == ["img_00.png", "img_01.png", "img_02.png"]
    reasons = {os.path.basename(row["file"]): row["reason"] for row in recorded["skipped"]}
    assert set(reasons) == {"notes.txt", "broken.png", "tiny.png"} and all(reasons.values())
    assert json.loads((out / "train_config.json").read_text())["references"] == recorded
    assert load_artifact(out).meta["references"] == recorded
    assert main(["info", str(out)]) == 0
    assert "broken.png" in capsys.readouterr().out


# every method of the registry (dreamdist.testing.example_config with these options), plus variants
OPTIONS = {
    "dreambooth": dict(class_images=1, class_inference_steps=1),
    "custom-diffusion": dict(init_word="toy"),
    "two-stage": dict(init_word="red", stage1_steps=1),
}
METHODS = {
    **{name: example_config(name, **OPTIONS.get(name, {})) for name in method_names()},
    "dreamdistribution": SMALL,
    "dreambooth-lora": DreamBoothConfig(class_noun="dog", lora=True, rank=2, prior_preservation=False),
}


def assert_shows_images(grid: Image.Image, tiles: int = 4) -> None:
    """Each tile of a 2 x 2 sample grid holds an image: finite, not one flat colour, not black."""
    pixels = np.asarray(grid.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    assert np.isfinite(pixels).all()
    height, width = pixels.shape[0] // 2, pixels.shape[1] // 2
    for i in range(tiles):
        tile = pixels[(i // 2) * height : (i // 2 + 1) * height, (i % 2) * width : (i % 2 + 1) * width]
        assert tile.std() > 2.0, f"tile {i} is one flat colour (NaN latents decode to one)"
        assert tile.max() > 8.0, f"tile {i} is black"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_samples_under_bf16_mixed_precision(name, refs, tiny_model, tmp_path):
    method = name.removesuffix("-lora")
    out = train(
        config(refs, tiny_model, tmp_path / name, method=method, mixed_precision="bf16", sample_every=1),
        METHODS[name],
    )
    grids = sorted((out / "samples").iterdir())
    assert [p.name for p in grids] == ["step-0000001.png", "step-0000002.png"]
    for path in grids:
        with Image.open(path) as grid:
            assert_shows_images(grid)
    assert (out / "dreamdist.safetensors").is_file()


def test_fp16_weights_without_loss_scaling_are_refused_in_one_line(refs, tiny_model, tmp_path, capsys):
    with pytest.raises(ValueError, match="loss scaling"):
        config(refs, tiny_model, tmp_path / "x", dtype="fp16", mixed_precision="no")
    code = main(["train", "--images", str(refs), "--out", str(tmp_path / "y"), "--dtype", "fp16"])
    assert code == 2 and "--mixed-precision fp16" in capsys.readouterr().err


def test_enum_flags_are_argparse_choices_and_train_help_explains_method_flags(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "x", "--out", "y", "--scheduler", "nope"])
    err = capsys.readouterr().err
    assert "invalid choice" in err and "unipc" in err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--method NAME --help" in text and "toy model" in text
    for flag in ("--max-grad-norm", "--lr-scheduler", "--lr-warmup-steps", "--validation-prompt", "--resume-from"):
        assert flag in text


def test_train_without_model_says_it_uses_the_toy_model(tmp_path, capsys):
    code = main(["train", "--images", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    assert code == 2 and "built-in toy model" in capsys.readouterr().err


def test_lr_schedules_warm_up_then_decay():
    cosine = _lr_schedule(config("i", "m", "o", lr_scheduler="cosine", lr_warmup_steps=4), 104)
    assert [round(cosine(s), 3) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert cosine(4) == pytest.approx(1.0) and cosine(54) == pytest.approx(0.5) and cosine(103) < 0.01
    linear = _lr_schedule(config("i", "m", "o", lr_scheduler="linear"), 10)
    assert linear(0) == 1.0 and linear(5) == pytest.approx(0.5)
    constant = _lr_schedule(config("i", "m", "o"), 10)
    assert {constant(s) for s in range(10)} == {1.0}


def test_grad_clipping_bounds_the_update(refs, tiny_model, tmp_path):
    def moved(**kw):
        out = train(config(refs, tiny_model, tmp_path / str(len(kw)), steps=1, learning_rate=1.0, **kw), SMALL)
        start = load_checkpoint(list_checkpoints(out)[-1]).optimizer["state"][0]["exp_avg"]
        return start.abs().max()

    free, clipped = moved(), moved(max_grad_norm=1e-6)
    assert clipped < free * 1e-2  # Adam's first moment holds (1 - beta1) * the clipped gradient


def test_resume_honours_a_new_learning_rate_and_refuses_fewer_steps(refs, tiny_model, tmp_path, caplog):
    out = tmp_path / "run"
    train(config(refs, tiny_model, out, steps=2, checkpoint_every=1), SMALL)
    with pytest.raises(ValueError, match="already trained further"):
        train(config(refs, tiny_model, out, steps=1, resume=True), SMALL)
    seen = []
    original = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append([g["lr"] for g in self.param_groups])
        return original(self, *a, **k)

    with pytest.MonkeyPatch.context() as patch, caplog.at_level("WARNING", logger="dreamdist"):
        patch.setattr(torch.optim.AdamW, "step", spy)
        train(config(refs, tiny_model, out, steps=4, resume=True, learning_rate=0.123), SMALL)
    assert len(seen) == 2 and all(rates[0] == pytest.approx(0.123) for rates in seen)
    assert "--learning-rate changed" in caplog.text


def test_resume_from_a_named_checkpoint_folder(refs, tiny_model, tmp_path):
    out = tmp_path / "run"
    train(config(refs, tiny_model, out, steps=3, checkpoint_every=1, keep_checkpoints=3), SMALL)
    first = list_checkpoints(out)[0]
    again = train(config(refs, tiny_model, tmp_path / "again", steps=3, resume_from=str(first)), SMALL)
    assert load_artifact(again).meta["step"] == 3
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        train(config(refs, tiny_model, tmp_path / "bad", resume_from=str(tmp_path)), SMALL)


def _state(step: int) -> TrainingState:
    return TrainingState(
        step,
        {"w": torch.full((2,), float(step))},
        {"state": {}, "param_groups": []},
        torch.Generator().get_state(),
        {"method": "x"},
    )


def test_checkpoints_clean_stale_temporaries_and_survive_a_crash_between_renames(tmp_path):
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-0000005-999").mkdir(parents=True)  # a save killed mid-way
    save_checkpoint(tmp_path, _state(5), keep=1)
    assert [p.name for p in root.iterdir()] == ["step-0000005"]
    # a re-save of step 5 interrupted after moving the old copy aside: the old one still resumes
    os.replace(root / "step-0000005", root / ".old-step-0000005")
    assert [p.name for p in list_checkpoints(tmp_path)] == [".old-step-0000005"]
    save_checkpoint(tmp_path, _state(5), keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000005"]
    assert not (root / ".old-step-0000005").exists()


def test_a_second_signal_stops_at_once(refs, tiny_model, tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from dreamdist.training import loop
        def slow_save(*a, **k):
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C arrives while the first one saves
            time.sleep(60)
        loop.save_checkpoint = slow_save
        from dreamdist.methods.dreamdistribution import DreamDistribution
        first = DreamDistribution.after_step
        def after_step(self):
            first(self)
            os.kill(os.getpid(), signal.SIGINT)
        DreamDistribution.after_step = after_step
        from dreamdist.cli import main
        sys.exit(main(["train", "--images", {str(refs)!r}, "--model", {str(tiny_model)!r}, "--out",
                       {str(tmp_path / "run")!r}, "--steps", "5", "--batch-size", "1", "--no-progress"]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50)
    assert done.returncode == 128 + signal.SIGINT, done.stderr
    assert "second signal" in done.stderr


def test_validation_prompt_drives_the_sample_grids(refs, tiny_model, tmp_path):
    def grid(name, **kw):
        out = train(config(refs, tiny_model, tmp_path / name, steps=1, sample_every=1, **kw), SMALL)
        return np.asarray(Image.open(out / "samples" / "step-0000001.png"))

    plain, edited = grid("plain"), grid("edited", validation_prompt="a photo of {} at night")
    assert plain.shape == edited.shape and np.abs(plain.astype(int) - edited.astype(int)).mean() > 1
