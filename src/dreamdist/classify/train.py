"""Train a classifier on an ImageFolder and evaluate it on another: the loop, written out.

Determinism: one seed fixes the initialisation (global RNG, forked so the caller's state is left
alone), the data order, every augmentation draw and every mixup weight; on CPU with the same thread
count the same seed gives bit-identical weights and metrics.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dreamdist.classify import metrics
from dreamdist.classify.augment import mixup, normalize, random_resized_crop_flip
from dreamdist.classify.config import ClassifyConfig
from dreamdist.classify.folders import ClassFolders, load_class_folders
from dreamdist.classify.models import build_model

TOP_K = 5


@dataclass
class Classifier:
    """A trained model with what is needed to use it: class names, input size, settings, history.

    ``history`` holds one dict per epoch: ``epoch``, ``loss`` (mean mixup cross-entropy), ``lr`` (at the
    epoch's end), ``seconds``.
    """

    model: nn.Module
    classes: list[str]
    config: ClassifyConfig
    history: list[dict] = field(default_factory=list)
    train_count: int = 0

    @property
    def image_size(self) -> int:
        return self.config.image_size


@dataclass
class Evaluation:
    """Metrics of a classifier on a labelled folder (see ``metrics``); ``k`` = min(5, classes)."""

    classes: list[str]
    count: int
    k: int
    top1: float
    topk: float
    mean_class_accuracy: float
    per_class: dict[str, float]
    confusion: list[list[int]]
    skipped: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "count": self.count,
            "top1": self.top1,
            f"top{self.k}": self.topk,
            "k": self.k,
            "mean_class_accuracy": self.mean_class_accuracy,
            "per_class": self.per_class,
            "classes": self.classes,
            "confusion": self.confusion,
            "skipped": self.skipped,
        }


def resolve_device(device: str | None) -> torch.device:
    """``None`` -> cuda when available, else cpu; an unavailable cuda request is a clear error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return resolved


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run with ``threads`` intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weights of convolutions and linear layers only, not biases or norm parameters."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, config: ClassifyConfig) -> torch.optim.Optimizer:
    """AdamW, or SGD with momentum 0.9 and Nesterov, at the peak learning rate."""
    groups = param_groups(model, config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear from 1/warmup to 1 over ``warmup`` steps, then cosine to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch as index batches; a last batch of one image is dropped (BatchNorm needs two)."""
    order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and batches[-1].numel() == 1:
        batches.pop()
    return batches


def train_classifier(train: ClassFolders | str | Path, config: ClassifyConfig | None = None) -> Classifier:
    """Train ``config.arch`` from scratch on an ImageFolder (or already-loaded ``ClassFolders``).

    Each step: uint8 batch -> device -> normalise -> random resized crop + flip -> mixup ->
    cross-entropy of both label sets weighted by lam -> backward -> optimizer and schedule step.
    """
    config = config or ClassifyConfig()
    device = resolve_device(config.device)
    with torch_threads(config.threads), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if not isinstance(train, ClassFolders):
            train = load_class_folders(train, config.image_size, threads=config.threads, progress=config.progress)
        if train.image_size != config.image_size:
            raise ValueError(f"training images are {train.image_size} px but image_size is {config.image_size}")
        torch.manual_seed(config.seed)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        model = build_model(config.arch, len(train.classes)).to(device)
        classifier = Classifier(model, list(train.classes), config, train_count=len(train))
        _fit(classifier, train, device)
    return classifier


def _fit(classifier: Classifier, train: ClassFolders, device: torch.device) -> None:
    """The epoch loop of ``train_classifier`` (appends to ``classifier.history``)."""
    config, model = classifier.config, classifier.model
    generator = torch.Generator().manual_seed(config.seed)  # data order, crops, flips, mixup partners
    rng = np.random.default_rng(config.seed)  # mixup weights
    optimizer = make_optimizer(model, config)
    steps_per_epoch = len(epoch_batches(len(train), config.batch_size, torch.Generator().manual_seed(0)))
    total, warmup = config.epochs * steps_per_epoch, round(config.warmup_epochs * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    bar = tqdm(total=total, desc="training", unit="step", disable=not config.progress, leave=False)
    model.train()
    for epoch in range(config.epochs):
        start, loss_sum, seen = time.perf_counter(), 0.0, 0
        for index in epoch_batches(len(train), config.batch_size, generator):
            images = normalize(train.pixels[index].to(device, non_blocking=True))  # (B, 3, S, S)
            labels = train.labels[index].to(device)  # (B,)
            if config.augment:
                images = random_resized_crop_flip(images, generator, scale=(config.crop_scale, 1.0))
            images, labels_a, labels_b, lam = mixup(images, labels, config.mixup, rng, generator)
            with autocast:
                logits = model(images).float()  # (B, C)
            loss = lam * F.cross_entropy(logits, labels_a) + (1 - lam) * F.cross_entropy(logits, labels_b)
            if not torch.isfinite(loss):
                raise ValueError(f"training diverged (loss {loss.item()}) in epoch {epoch + 1}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum, seen = loss_sum + loss.item() * len(index), seen + len(index)
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        classifier.history.append(
            {
                "epoch": epoch + 1,
                "loss": loss_sum / max(seen, 1),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - start,
            }
        )
    bar.close()
    model.eval()


@torch.no_grad()
def predict_logits(classifier: Classifier, pixels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """uint8 (N, 3, S, S) images at the classifier's size -> float (N, C) logits on the CPU."""
    model = classifier.model
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model(normalize(chunk.to(device))).float().cpu() for chunk in pixels.split(batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, len(classifier.classes))


def evaluate(
    classifier: Classifier, test: ClassFolders | str | Path, batch_size: int = 256, progress: bool = False
) -> Evaluation:
    """Top-1, top-k (k = min(5, C)), per-class accuracy and confusion matrix on a labelled folder.

    The test folder must hold the training classes (same sub-folder names); its images are resized
    and centre-cropped to the training size, without augmentation.
    """
    if not isinstance(test, ClassFolders):
        threads = classifier.config.threads
        with torch_threads(threads):
            test = load_class_folders(test, classifier.image_size, classifier.classes, threads, progress)
    elif test.classes != classifier.classes:
        raise ValueError(f"test classes {test.classes} differ from the training classes {classifier.classes}")
    elif test.image_size != classifier.image_size:
        raise ValueError(f"test images are {test.image_size} px; the classifier takes {classifier.image_size} px")
    with torch_threads(classifier.config.threads):
        logits = predict_logits(classifier, test.pixels, batch_size)  # (N, C)
    k = min(TOP_K, len(classifier.classes))
    confusion = metrics.confusion_matrix(logits.argmax(dim=1), test.labels, len(classifier.classes))
    per_class = metrics.per_class_accuracy(confusion)
    return Evaluation(
        classes=list(classifier.classes),
        count=len(test),
        k=k,
        top1=metrics.topk_accuracy(logits, test.labels, 1),
        topk=metrics.topk_accuracy(logits, test.labels, k),
        mean_class_accuracy=metrics.mean_class_accuracy(confusion),
        per_class={name: float(value) for name, value in zip(classifier.classes, per_class.tolist())},
        confusion=confusion.tolist(),
        skipped=[{"file": str(path), "reason": reason} for path, reason in test.report.skipped],
    )
