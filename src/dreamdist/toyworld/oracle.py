"""The oracle: one small CNN classifier per attribute, trained on rendered images.

It reads any RGB image of the toy world (resized to 32 x 32) and predicts its colour, shape and
background. Shipped weights: ``assets/oracle.safetensors`` (train with ``train_oracle``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from dreamdist.toyworld.attributes import ATTRIBUTES

ORACLE_FILE = Path(__file__).parent / "assets" / "oracle.safetensors"
INPUT_SIZE = 32


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv + GroupNorm + SiLU layers."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.GroupNorm(8, c_out),
        nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.GroupNorm(8, c_out),
        nn.SiLU(),
    )


class AttributeClassifier(nn.Module):
    """A small CNN: (N, 3, 32, 32) in [0, 1] -> (N, num_classes) logits."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            _block(3, width),  # 32 x 32
            nn.MaxPool2d(2),
            _block(width, 2 * width),  # 16 x 16
            nn.MaxPool2d(2),
            _block(2 * width, 4 * width),  # 8 x 8
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (N, 3, 32, 32) in [0, 1]. Returns logits (N, num_classes)."""
        x = self.features(images * 2 - 1)  # (N, 4w, 1, 1)
        return self.head(x.flatten(1))


class Oracle(nn.Module):
    """One ``AttributeClassifier`` per attribute (colour, shape, background)."""

    def __init__(self):
        super().__init__()
        self.classifiers = nn.ModuleDict({name: AttributeClassifier(len(v)) for name, v in ATTRIBUTES.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args: images (N, 3, H, W) in [0, 1]. Returns {attribute: logits (N, classes)}."""
        images = to_oracle_input(images)
        return {name: net(images) for name, net in self.classifiers.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Predicted attribute indices, long (N, 3): colour, shape, background."""
        was_training = self.training
        self.eval()
        out = []
        for chunk in images.split(batch_size):
            logits = self(chunk)
            out.append(torch.stack([logits[name].argmax(-1) for name in ATTRIBUTES], dim=1))
        self.train(was_training)
        return torch.cat(out) if out else torch.empty(0, 3, dtype=torch.long)


def to_oracle_input(images: torch.Tensor) -> torch.Tensor:
    """Resize (N, 3, H, W) images in [0, 1] to the oracle's 32 x 32 (area-averaging when larger)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
    if images.shape[-2:] == (INPUT_SIZE, INPUT_SIZE):
        return images.float()
    mode = "area" if min(images.shape[-2:]) > INPUT_SIZE else "bilinear"
    return F.interpolate(images.float(), size=(INPUT_SIZE, INPUT_SIZE), mode=mode)


def images_to_tensor(images: list[Image.Image] | torch.Tensor) -> torch.Tensor:
    """PIL images (any size/mode) or a tensor -> float (N, 3, 32, 32) in [0, 1].

    A tensor must already be (N, 3, H, W) in [0, 1].
    """
    if isinstance(images, torch.Tensor):
        return to_oracle_input(images)
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (INPUT_SIZE, INPUT_SIZE):
            image = image.resize((INPUT_SIZE, INPUT_SIZE), Image.BOX)
        arrays.append(np.asarray(image, dtype=np.float32) / 255.0)
    if not arrays:
        return torch.empty(0, 3, INPUT_SIZE, INPUT_SIZE)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)


def save_oracle(oracle: Oracle, path: str | Path = ORACLE_FILE) -> None:
    """Write the oracle's weights as safetensors."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in oracle.state_dict().items()}
    save_file(state, str(path), metadata={"attributes": ",".join(ATTRIBUTES)})


def load_oracle(path: str | Path | None = None) -> Oracle:
    """The shipped (or given) oracle, in eval mode on CPU."""
    path = Path(path) if path is not None else ORACLE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"oracle weights not found at {path}; train them with "
            "`python -m dreamdist.toyworld.train_oracle` (about 5 minutes on one CPU core)"
        )
    oracle = Oracle()
    oracle.load_state_dict(load_file(str(path)))
    return oracle.eval()
