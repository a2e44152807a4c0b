"""Classifier proxy parts without training: metrics, models, augmentation, ImageFolder loading, config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from dreamdist.classify import ClassifyConfig, build_model, load_class_folders, metrics
from dreamdist.classify.augment import mixup, normalize, random_resized_crop_flip
from dreamdist.classify.train import epoch_batches, warmup_cosine


# ---------------------------------------------------------------- metrics
def test_topk_accuracy_on_a_known_case():
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.3],  # order 1, 3, 0, 2
            [0.8, 0.1, 0.2, 0.6],  # order 0, 3, 2, 1
            [0.2, 0.3, 0.5, 0.1],  # order 2, 1, 0, 3
            [0.4, 0.3, 0.2, 0.1],  # order 0, 1, 2, 3
        ]
    )
    targets = torch.tensor([1, 2, 0, 3])
    assert metrics.topk_correct(logits, targets, 1).tolist() == [True, False, False, False]
    assert metrics.topk_accuracy(logits, targets, 1) == 0.25
    assert metrics.topk_accuracy(logits, targets, 2) == 0.25
    assert metrics.topk_accuracy(logits, targets, 3) == 0.75
    assert metrics.topk_accuracy(logits, targets, 4) == 1.0
    assert metrics.topk_accuracy(logits, targets, 9) == 1.0  # k is capped at the class count


def test_topk_matches_a_sorting_reference():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 7, generator=generator)
    targets = torch.randint(7, (200,), generator=generator)
    for k in (1, 3, 5):
        ranks = [sorted(range(7), key=lambda c, row=row: -row[c]).index(t) for row, t in zip(logits.tolist(), targets)]
        expected = sum(rank < k for rank in ranks) / 200
        assert metrics.topk_accuracy(logits, targets, k) == pytest.approx(expected)


def test_confusion_and_per_class_accuracy_on_a_known_case():
    predictions = torch.tensor([0, 1, 1, 2, 2, 2])
    targets = torch.tensor([0, 0, 1, 2, 2, 1])
    confusion = metrics.confusion_matrix(predictions, targets, 4)
    assert confusion.tolist() == [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 2, 0], [0, 0, 0, 0]]
    per_class = metrics.per_class_accuracy(confusion)
    assert per_class[:3].tolist() == [0.5, 0.5, 1.0]
    assert math.isnan(per_class[3])  # class 3 has no samples
    assert metrics.mean_class_accuracy(confusion) == pytest.approx(2 / 3)
    assert confusion.sum() == 6 and confusion.trace() == 4


def test_metrics_reject_bad_inputs():
    with pytest.raises(ValueError, match="logits"):
        metrics.topk_accuracy(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        metrics.topk_accuracy(torch.zeros(2, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="k must be"):
        metrics.topk_accuracy(torch.zeros(2, 2), torch.tensor([0, 1]), k=0)
    with pytest.raises(ValueError, match="predictions"):
        metrics.confusion_matrix(torch.tensor([0, 5]), torch.tensor([0, 1]), 3)


# ---------------------------------------------------------------- models
def test_resnet50_is_the_standard_one():
    model = build_model("resnet50", 1000)
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision resnet50's count
    keys = model.state_dict().keys()
    assert {"conv1.weight", "layer3.5.bn3.running_var", "layer4.0.downsample.0.weight", "fc.bias"} <= set(keys)
    assert model.layer2[0].conv2.stride == (2, 2)  # v1.5: the stride sits on the 3x3 conv


def test_resnet50_forward_backward_on_a_tiny_batch():
    torch.manual_seed(0)
    model = build_model("resnet50", 7)
    images = torch.randn(2, 3, 64, 64)
    logits = model(images)
    assert logits.shape == (2, 7)
    logits.logsumexp(dim=1).sum().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
    assert model.fc.weight.grad.shape == (7, 2048)


def test_small_cnn_takes_any_size_and_rejects_one_class():
    model = build_model("cnn", 4).eval()
    for size in (32, 64):
        assert model(torch.randn(3, 3, size, size)).shape == (3, 4)
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_model("cnn", 1)


# ---------------------------------------------------------------- augmentation and schedule
def test_full_crop_without_flip_is_the_identity():
    images = torch.rand(4, 3, 16, 16)
    out = random_resized_crop_flip(images, torch.Generator().manual_seed(0), scale=(1, 1), ratio=(1, 1), flip=False)
    assert torch.allclose(out, images, atol=1e-5)


def test_full_crop_with_flip_mirrors_some_images_and_is_seeded():
    images = torch.rand(16, 3, 8, 8)
    out = random_resized_crop_flip(images, torch.Generator().manual_seed(1), scale=(1, 1), ratio=(1, 1))
    flipped = [torch.allclose(o, i.flip(-1), atol=1e-5) for o, i in zip(out, images)]
    kept = [torch.allclose(o, i, atol=1e-5) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    again = random_resized_crop_flip(images, torch.Generator().manual_seed(1), scale=(1, 1), ratio=(1, 1))
    assert torch.equal(out, again)


def test_small_crops_zoom_in():
    """A crop of a quarter of the area of a left-dark/right-bright image is mostly one colour."""
    images = torch.zeros(64, 1, 32, 32)
    images[..., 16:] = 1.0
    out = random_resized_crop_flip(images, torch.Generator().manual_seed(0), scale=(0.05, 0.05), ratio=(1, 1))
    spread = out.amax(dim=(1, 2, 3)) - out.amin(dim=(1, 2, 3))  # (64,)
    assert (spread < 0.5).float().mean() > 0.5  # most small crops miss the edge


def test_mixup_blends_images_and_labels_consistently():
    images = torch.eye(6)[:, :, None, None].expand(6, 6, 2, 2)  # image i is one-hot in channel i
    labels = torch.arange(6)
    mixed, a, b, lam = mixup(images, labels, 0.2, np.random.default_rng(0), torch.Generator().manual_seed(0))
    assert 0 <= lam <= 1 and torch.equal(a, labels)
    expected = lam * torch.eye(6)[a] + (1 - lam) * torch.eye(6)[b]  # (6, 6)
    assert torch.allclose(mixed[:, :, 0, 0], expected)
    same, *_ = mixup(images, labels, 0.0, np.random.default_rng(0), torch.Generator())
    assert same is images


def test_normalize_uses_imagenet_statistics():
    pixels = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    assert torch.allclose(
        normalize(pixels)[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    )


def test_warmup_then_cosine_schedule():
    factors = [warmup_cosine(step, total=10, warmup=2) for step in range(10)]
    assert factors[0] == 0.5 and factors[1] == 1.0 and factors[2] == 1.0
    assert all(a > b for a, b in zip(factors[2:], factors[3:]))  # decreasing after warm-up
    assert warmup_cosine(10, total=10, warmup=2) == pytest.approx(0.0)


def test_epoch_batches_cover_the_set_and_never_leave_a_single_image():
    batches = epoch_batches(10, 4, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(batches).tolist()) == list(range(10)) and [len(b) for b in batches] == [4, 4, 2]
    batches = epoch_batches(9, 4, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [4, 4]  # the last single image waits for the next epoch


# ---------------------------------------------------------------- config
def test_config_takes_the_arch_recipe_and_rejects_bad_values():
    toy, real = ClassifyConfig(), ClassifyConfig(arch="resnet50")
    assert (toy.image_size, toy.optimizer) == (32, "adamw")
    assert (real.image_size, real.optimizer, real.epochs) == (224, "sgd", 300)
    assert ClassifyConfig(arch="resnet50", lr=0.05).lr == 0.05
    with pytest.raises(ValueError, match="unknown --arch 'vgg'; choose one of cnn, resnet50"):
        ClassifyConfig(arch="vgg")
    with pytest.raises(ValueError, match="--optimizer"):
        ClassifyConfig(optimizer="adam")
    with pytest.raises(ValueError, match="--image-size must be >= 32"):
        ClassifyConfig(image_size=16)
    with pytest.raises(ValueError, match="--epochs must be > 0"):
        ClassifyConfig(epochs=0)


# ---------------------------------------------------------------- ImageFolder loading
def _save(path, size=(40, 30), colour=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_loads_sorted_classes_resized_and_reports_bad_files(tmp_path):
    for name, colour in (("zebra", (0, 0, 0)), ("apple", (255, 0, 0))):
        for i in range(3):
            _save(tmp_path / name / f"{i}.png", colour=colour)
    (tmp_path / "apple" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "apple" / "notes.txt").write_text("hello")
    Image.new("RGBA", (48, 48), (0, 0, 255, 0)).save(tmp_path / "zebra" / "clear.png")  # transparent -> white
    data = load_class_folders(tmp_path, 32, progress=False)
    assert data.classes == ["apple", "zebra"]
    assert data.pixels.shape == (7, 3, 32, 32) and data.pixels.dtype == torch.uint8
    assert data.counts() == [3, 4]
    assert data.pixels[0, :, 0, 0].tolist() == [255, 0, 0]  # apple images come first
    assert data.pixels[-1, :, 0, 0].tolist() == [255, 255, 255]  # alpha composited on white
    reasons = {path.name: why for path, why in data.report.skipped}
    assert set(reasons) == {"broken.png", "notes.txt"} and "not a readable image" in reasons["broken.png"]


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "does not exist"),
        ("flat", "has no class sub-folders"),
        ("one", "a classifier needs at least 2"),
        ("empty", "class folder(s) b of"),
        ("unusable", "class folder(s) b of"),
    ],
)
def test_bad_image_folders_are_clear_errors(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout == "flat":
        _save(root / "img.png")
    elif layout == "one":
        _save(root / "a" / "img.png")
    elif layout in ("empty", "unusable"):
        _save(root / "a" / "img.png")
        (root / "b").mkdir()
        if layout == "unusable":
            _save(root / "b" / "tiny.png", size=(4, 4))
    with pytest.raises((ValueError, OSError)) as info:
        load_class_folders(root, 32, progress=False)
    assert message in str(info.value)


def test_test_classes_must_match_the_training_classes(tmp_path):
    for name in ("a", "c"):
        _save(tmp_path / name / "0.png")
    with pytest.raises(ValueError, match="missing b; unexpected c; both folders need the same class"):
        load_class_folders(tmp_path, 32, classes=["a", "b"], progress=False)
