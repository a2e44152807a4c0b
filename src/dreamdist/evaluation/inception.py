"""The InceptionV3 network of FID (TF "2015-12-05" graph), written out so torchvision is not needed.

Why here: every PyPI route to FID's Inception (pytorch-fid, torch-fidelity, clean-fid,
torchmetrics[image], timm) depends on torchvision, which has no build for every torch we run on.
The network below is the FID variant of InceptionV3 (TF average pools exclude padding; the last
block max-pools its pool branch), with module names equal to the standard converted weights
``pt_inception-2015-12-05-6726825d.pth``, so that file loads into it key for key.

Weights are never downloaded. Pass a local path to either
- ``pt_inception-2015-12-05-6726825d.pth`` (a plain state dict): read with
  ``torch.load(weights_only=True)``, PyTorch's restricted unpickler that accepts tensors and
  containers only and refuses code; no path here ever calls ``torch.load(weights_only=False)``;
- a ``.safetensors`` copy made by :func:`convert_weights` (no pickle at all).
TorchScript / pickled-module files (clean-fid's ``inception-2015-12-05.pt``) are refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_SHA256_PREFIX = "6726825d"  # torch.hub convention: the file name carries its sha256 prefix
FEATURE_DIM = 2048
INPUT_SIZE = 299


class InceptionWeightsError(OSError):
    """The Inception weights file is missing, unsafe, or does not fit the FID network."""


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, TF's) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool that, like TF, does not count the zero padding."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 5x5 | double 3x3 | pool -> 224 + pool_features channels."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionB(nn.Module):
    """35 -> 17 reduction: strided 3x3 | double 3x3 | max pool -> 480 + c_in channels."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions -> 768 channels."""

    def __init__(self, c_in: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3):
            bd = layer(bd)
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(bd))
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """17 -> 8 reduction: 3x3 | 7x7 then 3x3 | max pool -> 512 + c_in channels."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 3x3 convolutions -> 2048 channels.

    ``max_pool``: the FID graph's last block max-pools its pool branch (the first one averages).
    """

    def __init__(self, c_in: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """InceptionV3 up to the 2048-d global average pool, as used by FID.

    Input: (B, 3, 299, 299) floats in [-1, 1]. Output: (B, 2048) pool features.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)  # ends at (B, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # (B, 2048)


# keys of the converted TF checkpoint that the pool-feature network does not use
_UNUSED_PREFIXES = ("fc.", "AuxLogits.")


def sha256_of_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read Inception weights from ``.safetensors`` or a plain-state-dict ``.pth`` (weights only).

    Returns:
        The state dict and provenance: ``sha256`` of the source checkpoint (for a converted
        safetensors file, the sha256 of the ``.pth`` it came from) and ``standard`` ("true" when
        it is the standard FID checkpoint, whose FIDs are comparable with published numbers).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InceptionWeightsError(
            f"Inception weights {str(path)!r} not found. FID needs the standard FID Inception checkpoint "
            f"{FID_WEIGHTS_NAME} (pytorch-fid's release) on disk: download it once on a connected machine, "
            "then pass its path with --inception-weights or DREAMDIST_INCEPTION_WEIGHTS, or drop fid from "
            "--metrics"
        )
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        source_sha = meta.get("source_sha256", sha256_of_file(path))
        state = load_file(str(path))
    else:
        source_sha = sha256_of_file(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # the restricted unpickler refuses anything but tensors/containers
            raise InceptionWeightsError(
                f"could not read {path} as a plain state dict with torch.load(weights_only=True): {exc}. "
                f"Pickled modules and TorchScript files are refused; use {FID_WEIGHTS_NAME} or a "
                ".safetensors copy of it"
            ) from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise InceptionWeightsError(f"{path} does not hold a state dict (name -> tensor)")
    standard = source_sha.startswith(FID_WEIGHTS_SHA256_PREFIX)
    return state, {"sha256": source_sha, "standard": str(standard).lower()}


def load_fid_inception(path: str | Path) -> tuple[FIDInceptionV3, dict[str, str]]:
    """Build :class:`FIDInceptionV3` and load weights from ``path``; strict on every used key.

    Returns:
        The network in eval mode and the provenance from :func:`read_state_dict`.
    """
    state, provenance = read_state_dict(path)
    state = {
        key: value
        for key, value in state.items()
        if not key.startswith(_UNUSED_PREFIXES) and not key.endswith("num_batches_tracked")
    }
    network = FIDInceptionV3()
    expected = {k for k in network.state_dict() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise InceptionWeightsError(
            f"{path} is not an FID Inception checkpoint: {len(missing)} missing key(s) "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
            f"expected the layout of {FID_WEIGHTS_NAME}"
        )
    try:
        network.load_state_dict(state, strict=False)  # only num_batches_tracked may be absent
    except RuntimeError as exc:
        raise InceptionWeightsError(f"{path} has tensors of the wrong shape for FID Inception: {exc}") from None
    return network.eval(), provenance


def convert_weights(source: str | Path, target: str | Path) -> Path:
    """Copy a ``.pth`` FID Inception state dict into ``.safetensors`` (with its source sha256)."""
    state, provenance = read_state_dict(source)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.contiguous() for key, value in state.items()}
    save_file(tensors, str(target), metadata={"source_sha256": provenance["sha256"], "format": FID_WEIGHTS_NAME})
    return target
