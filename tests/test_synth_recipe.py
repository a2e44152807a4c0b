"""The ImageNet-100 recipe of docs/synth.md (train -> synth -> classify), dry-run with tiny components."""

from __future__ import annotations

import json

from dreamdist.cli import main
from dreamdist.evaluation.tiny import save_tiny_clip
from dreamdist.testing import write_images

CLASSES = ("goldfish", "great_white_shark", "tench")  # folder names as the recipe lays them out


def test_train_synth_classify_on_the_recipe_layout(tiny_model, tmp_path, capsys):
    for i, name in enumerate(CLASSES):
        write_images(tmp_path / "in100" / "refs" / name, 2, seed=i)
        write_images(tmp_path / "in100" / "val" / name, 2, seed=10 + i)
    clip = save_tiny_clip(tmp_path / "clip")
    train = ["train", "--images", str(tmp_path / "in100" / "refs"), "--multiclass", "--model", str(tiny_model)]
    train += ["--out", str(tmp_path / "runs" / "in100"), "--steps", "2", "--num-prompts", "2", "--num-tokens", "1"]
    assert main([*train, "--num-samples", "1", "--no-progress"]) == 0
    synth = ["synth", str(tmp_path / "runs" / "in100"), "--per-class", "4", "--keep", "3"]
    synth += ["--clip-model", str(clip), "--out", str(tmp_path / "data" / "in100-dd"), "--num-inference-steps", "2"]
    assert main([*synth, "--guidance-scale", "2", "--no-progress"]) == 0
    data = tmp_path / "data" / "in100-dd"
    assert sorted(p.name for p in data.iterdir() if p.is_dir()) == list(CLASSES)  # lines up with val/
    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    assert rows[4]["class"] == "great_white_shark" and rows[4]["prompt"] == "great white shark"
    capsys.readouterr()
    classify = ["classify", "--train", str(data), "--test", str(tmp_path / "in100" / "val"), "--json"]
    assert main([*classify, "--arch", "cnn", "--epochs", "1", "--batch-size", "8", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    text = json.dumps(report)
    assert all(name in text for name in CLASSES)
