"""``dreamdist classify`` end to end on rendered toy-world images: learns, is seeded, saves, reports, refuses."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dreamdist.classify import ClassifyConfig, evaluate, load_class_folders, load_classifier, train_classifier
from dreamdist.cli import main
from dreamdist.toyworld.attributes import BACKGROUNDS, COLOURS, SHAPES
from dreamdist.toyworld.render import render_images

CLASSES = ("blue", "green", "red")


def render_colour_folder(root, per_class: int, seed: int):
    """``root/<colour>/<i>.png``: random shapes on random backgrounds, one colour per class, 32 px."""
    for index, colour in enumerate(CLASSES):
        generator = torch.Generator().manual_seed(1000 * seed + index)
        combos = torch.stack(
            [
                torch.full((per_class,), COLOURS.index(colour)),
                torch.randint(len(SHAPES), (per_class,), generator=generator),
                torch.randint(len(BACKGROUNDS), (per_class,), generator=generator),
            ],
            dim=1,
        )  # (n, 3) colour, shape, background
        images = render_images(combos, size=32, seed=1000 * seed + index)  # (n, 3, 32, 32) in [0, 1]
        pixels = (images.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        (root / colour).mkdir(parents=True, exist_ok=True)
        for i, array in enumerate(pixels):
            Image.fromarray(array).save(root / colour / f"{i:03d}.png")
    return root


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify")
    train = render_colour_folder(root / "train", 24, seed=0)
    (train / "red" / "broken.png").write_bytes(b"\x89PNG cut short")
    test = render_colour_folder(root / "test", 20, seed=1)  # fresh renders: other shapes, textures, jitter
    return train, test, root


@pytest.fixture(scope="module")
def cli_run(folders):
    train, test, root = folders
    argv = ["classify", "--train", str(train), "--test", str(test), "--out", str(root / "out")]
    argv += ["--epochs", "4", "--batch-size", "16", "--threads", "1", "--no-progress", "--json"]
    code, out, err = run_cli(argv)
    assert code == 0, err
    return json.loads(out), err, root / "out"


def test_small_cnn_learns_toy_colours_well_above_chance(cli_run):
    report, _, _ = cli_run
    test = report["test"]
    assert test["top1"] > 0.8  # chance is 1/3
    assert test["k"] == 3 and test["top3"] == 1.0
    assert test["classes"] == list(CLASSES) and set(test["per_class"]) == set(CLASSES)
    assert sum(map(sum, test["confusion"])) == test["count"] == 60
    correct = sum(test["confusion"][i][i] for i in range(3))
    assert test["top1"] == pytest.approx(correct / 60)
    assert test["mean_class_accuracy"] == pytest.approx(sum(test["per_class"].values()) / 3)
    assert [h["epoch"] for h in report["history"]] == [1, 2, 3, 4]
    assert report["history"][-1]["loss"] < report["history"][0]["loss"]


def test_unusable_training_file_is_reported_not_fatal(cli_run):
    report, err, _ = cli_run
    assert report["train"]["count"] == 72
    assert [s["file"].endswith("broken.png") for s in report["train"]["skipped"]] == [True]
    assert "broken.png: not a readable image" in err


def test_out_folder_holds_model_report_and_plot(cli_run, folders):
    report, _, out = cli_run
    saved = json.loads((out / "report.json").read_text())
    assert saved["test"] == report["test"] and saved["config"]["epochs"] == 4
    with Image.open(out / "confusion.png") as plot:
        assert plot.size[0] > 200
    classifier = load_classifier(out)
    assert classifier.classes == list(CLASSES) and classifier.image_size == 32
    again = evaluate(classifier, folders[1])
    assert again.confusion == report["test"]["confusion"]  # the saved weights are the evaluated ones


def test_human_output_and_python_api_agree(folders, tmp_path):
    train, test, _ = folders
    data = load_class_folders(train, 32, progress=False)
    config = ClassifyConfig(epochs=1, batch_size=16, seed=3, progress=False)
    evaluation = evaluate(train_classifier(data, config), test)
    code, out, _ = run_cli(
        ["classify", "--train", str(train), "--test", str(test), "--epochs", "1", "--batch-size", "16"]
        + ["--seed", "3", "--no-progress"]
    )
    assert code == 0
    assert f"top-1 {evaluation.top1:.4f}   top-3 {evaluation.topk:.4f}" in out
    assert "cnn trained on 72 images of 3 classes" in out


def test_same_seed_same_result_other_seed_other_result(folders):
    data = load_class_folders(folders[0], 32, progress=False)
    test = load_class_folders(folders[1], 32, data.classes, progress=False)

    def run(seed):
        classifier = train_classifier(data, ClassifyConfig(epochs=1, batch_size=16, seed=seed, progress=False))
        return classifier, evaluate(classifier, test)

    before = torch.get_rng_state()
    (a, ev_a), (b, ev_b), (c, _) = run(0), run(0), run(1)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is left alone
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert ev_a.to_dict() == ev_b.to_dict()
    assert a.history[0]["loss"] != c.history[0]["loss"]


def test_bad_input_gets_one_error_line(folders, tmp_path):
    train, test, root = folders
    other = tmp_path / "other"
    for name in ("blue", "green", "yellow"):
        (other / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), (9, 9, 9)).save(other / name / "0.png")
    cases = [
        (["--train", str(train), "--test", str(other)], "missing red; unexpected yellow"),
        (["--train", str(tmp_path / "nope"), "--test", str(test)], "does not exist"),
        (["--train", str(train / "red"), "--test", str(test)], "has no class sub-folders"),
        (["--train", str(train), "--test", str(test), "--arch", "vgg"], "unknown --arch 'vgg'"),
        (["--train", str(train), "--test", str(test), "--image-size", "8"], "--image-size must be >= 32"),
    ]
    for argv, message in cases:
        code, out, err = run_cli(["classify", *argv, "--no-progress"])
        assert code == 2 and out == ""
        assert err.startswith("dreamdist: error: ") and message in err, err
        assert "Traceback" not in err


def test_resnet50_trains_and_evaluates_through_the_same_loop(folders):
    data = load_class_folders(folders[0], 32, progress=False)
    config = ClassifyConfig(arch="resnet50", image_size=32, epochs=1, batch_size=24, warmup_epochs=0, progress=False)
    assert (config.optimizer, config.crop_scale) == ("sgd", 0.08)  # the real-data recipe
    classifier = train_classifier(data, config)
    assert type(classifier.model).__name__ == "ResNet" and np.isfinite(classifier.history[0]["loss"])
    evaluation = evaluate(classifier, data)
    assert evaluation.count == 72 and sum(map(sum, evaluation.confusion)) == 72


def test_foreign_model_files_and_mismatched_inputs_are_refused(folders, tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="is not a dreamdist classifier"):
        load_classifier(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        load_classifier(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="written by `dreamdist classify --out`"):
        load_classifier(tmp_path / "absent")
    classifier = train_classifier(
        load_class_folders(folders[0], 32, progress=False), ClassifyConfig(epochs=1, batch_size=36, progress=False)
    )
    with pytest.raises(ValueError, match="test images are 48 px; the classifier takes 32 px"):
        evaluate(classifier, load_class_folders(folders[1], 48, progress=False))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without CUDA")
def test_cuda_request_without_cuda_is_a_clear_error(folders):
    train, test, _ = folders
    code, _, err = run_cli(
        ["classify", "--train", str(train), "--test", str(test), "--device", "cuda", "--no-progress"]
    )
    assert code == 2 and "CUDA is not available on this machine; use --device cpu" in err
