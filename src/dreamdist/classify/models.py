"""Image classifiers in plain ``torch.nn``: a small CNN for the toy world and the standard ResNet-50.

Every model maps normalised images (B, 3, S, S) to logits (B, C) and works at any S >= 32
(global average pooling before the head). ``ARCHS`` is the registry: one line per architecture,
with the training recipe that suits it (resolution, optimizer, learning rate, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU, 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Four stages of two 3x3 conv-BN-ReLU layers, each followed by 2x2 max-pooling (VGG-style).

    About 1.2 M parameters at ``width=32``; at 32 x 32 input the last stage sees 4 x 4 maps.
    """

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.1):
        super().__init__()
        channels = [3, width, 2 * width, 4 * width, 8 * width]
        stages = []
        for cin, cout in zip(channels[:-1], channels[1:]):
            stages += [conv_bn(cin, cout), conv_bn(cout, cout), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, C)."""
        x = self.features(x)  # (B, 8w, S/16, S/16)
        x = x.mean(dim=(2, 3))  # (B, 8w) global average pool
        return self.head(x)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1x1 reduce, 3x3 (carries the stride), 1x1 expand x4, plus shortcut."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, H, W) -> (B, 4 * width, H / stride, W / stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with bottleneck blocks (He et al., 2016; stride on the 3x3 conv as in torchvision v1.5).

    Parameter names follow torchvision's ``resnet50`` (``conv1``, ``layer1.0.conv1``, ``fc``), so
    its state dicts load with ``load_state_dict`` when such weights are at hand.
    """

    def __init__(self, num_classes: int, layers: tuple[int, ...] = (3, 4, 6, 3), zero_init_residual: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        for index, (blocks, width) in enumerate(zip(layers, (64, 128, 256, 512))):
            stride = 1 if index == 0 else 2
            stage = []
            for b in range(blocks):
                stage.append(Bottleneck(cin, width, stride if b == 0 else 1))
                cin = width * Bottleneck.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.fc = nn.Linear(cin, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:  # each block starts as the identity: steadier early training (Goyal et al.)
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, C)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, S/4, S/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 2048, S/32, S/32)
        return self.fc(x.mean(dim=(2, 3)))  # (B, C)


def resnet50(num_classes: int) -> ResNet:
    """The standard ResNet-50: bottleneck stages of 3, 4, 6 and 3 blocks, 25.6 M parameters at C = 1000."""
    return ResNet(num_classes, layers=(3, 4, 6, 3))


@dataclass(frozen=True)
class Arch:
    """An architecture and the training recipe that suits it (each value a default of ``ClassifyConfig``)."""

    build: Callable[[int], nn.Module]
    image_size: int
    epochs: int
    optimizer: str
    lr: float
    weight_decay: float
    crop_scale: float  # smallest crop area of random-resized-crop, as a fraction of the image
    summary: str


ARCHS: dict[str, Arch] = {
    "cnn": Arch(SmallCNN, 32, 30, "adamw", 2e-3, 0.05, 0.35, "small VGG-style CNN, 1.2 M parameters (toy world)"),
    "resnet50": Arch(
        resnet50, 224, 300, "sgd", 0.05, 1e-4, 0.08, "ResNet-50, 23.7 M parameters at 100 classes (real data)"
    ),
}


def get_arch(name: str) -> Arch:
    """The registry entry of ``name``; a clear error lists the choices."""
    if name not in ARCHS:
        raise ValueError(f"unknown --arch {name!r}; choose one of {', '.join(ARCHS)}")
    return ARCHS[name]


def build_model(name: str, num_classes: int) -> nn.Module:
    """A freshly initialised model (uses the global torch RNG: seed it first)."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes; got {num_classes}")
    return get_arch(name).build(num_classes)
