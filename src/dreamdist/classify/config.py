"""``ClassifyConfig``: every training setting of ``dreamdist classify``, validated, with per-arch recipes.

Fields left ``None`` take the chosen architecture's recipe (``models.ARCHS``), so ``--arch resnet50``
alone gives the real-data recipe (224 px, SGD, 300 epochs) and the default gives the toy-world one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dreamdist.classify.models import ARCHS, get_arch

OPTIMIZERS = ("adamw", "sgd")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class ClassifyConfig:
    """Settings of one classifier training run (the flags of ``dreamdist classify``)."""

    arch: str = field(default="cnn", metadata=_help(f"architecture: {', '.join(ARCHS)}"))
    epochs: int | None = field(default=None, metadata=_help("passes over the training set (default: the arch's)"))
    batch_size: int = field(default=128, metadata=_help("images per optimizer step"))
    image_size: int | None = field(
        default=None, metadata=_help("side in pixels images are resized to (default: 32 for cnn, 224 for resnet50)")
    )
    optimizer: str | None = field(
        default=None, metadata=_help("adamw or sgd (momentum 0.9, Nesterov) (default: adamw for cnn, sgd for resnet50)")
    )
    lr: float | None = field(
        default=None,
        metadata=_help("peak learning rate (default: 2e-3 for cnn; 0.05 for resnet50, i.e. 0.1 x batch / 256)"),
    )
    weight_decay: float | None = field(
        default=None, metadata=_help("weight decay, not applied to biases and norms (default: the arch's)")
    )
    warmup_epochs: float = field(default=1.0, metadata=_help("linear warm-up before the cosine decay"))
    mixup: float = field(default=0.2, metadata=_help("mixup Beta(alpha, alpha); 0 disables (paper: 0.2)"))
    augment: bool = field(default=True, metadata=_help("random resized crop + horizontal flip"))
    crop_scale: float | None = field(
        default=None, metadata=_help("smallest crop area fraction of the random resized crop (default: the arch's)")
    )
    seed: int = field(default=0, metadata=_help("seeds initialisation, data order, augmentation and mixup"))
    threads: int | None = field(default=None, metadata=_help("CPU threads for torch and decoding (default: torch's)"))
    device: str | None = field(default=None, metadata=_help("cpu, cuda, cuda:1, ... (default: cuda when available)"))
    progress: bool = field(default=True, metadata=_help("progress bars on stderr"))

    def __post_init__(self):
        arch = get_arch(self.arch)
        for name in ("epochs", "image_size", "optimizer", "lr", "weight_decay", "crop_scale"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(arch, name))
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown --optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}
        for name, value in positive.items():
            if not value > 0:  # NaN too
                raise ValueError(f"--{name.replace('_', '-')} must be > 0; got {value}")
        if self.image_size < 32:
            raise ValueError(f"--image-size must be >= 32 (the networks downsample 16-32x); got {self.image_size}")
        if self.weight_decay < 0 or self.mixup < 0 or self.warmup_epochs < 0:
            raise ValueError("--weight-decay, --mixup and --warmup-epochs must be >= 0")
        if not 0 < self.crop_scale <= 1:
            raise ValueError(f"--crop-scale must be in (0, 1]; got {self.crop_scale}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1; got {self.threads}")
