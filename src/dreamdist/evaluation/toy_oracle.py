"""Toy-world features from the oracle: two feature spaces that need no download.

The toy world's oracle (``toyworld/oracle.py``) is three small CNNs, one per attribute (colour,
shape, background), each ending in a 64-d average-pooled feature and a linear head. It gives
two embeddings, both meaningful for toy-world images only (for photos use the standard models):

- ``toy-oracle``: the three head inputs (penultimate features) concatenated, 192-d. Images of
  one attribute triple cluster tightly whatever their nuisance, triples that differ in any
  attribute lie far apart, and how an image is drawn (a render or a model's sample) still shows:
  the perceptual space, for FID-like comparisons.
- ``toy-attributes``: the predicted attributes as one-hots, concatenated, 6 + 5 + 4 = 15-d.
  Every image of one predicted triple is the same point, so the k-NN metrics count triples
  (coverage = share of the reference images whose triple was generated, when each triple has at
  least k + 1 references) and the cosine of two images is the share of attributes they agree on
  / 3: the semantic space.

``tests/test_eval_toy.py`` checks every metric in both against the toy world's ground truth.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dreamdist.evaluation.features import FeatureInfo, Images, _device, as_pil_images
from dreamdist.toyworld.oracle import INPUT_SIZE, ORACLE_FILE, images_to_tensor, load_oracle

KINDS = {
    "toy-oracle": "input of each attribute head (colour, shape, background), concatenated",
    "toy-attributes": "one-hot of each predicted attribute (colour, shape, background), concatenated",
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ToyOracleFeatures(nn.Module):
    """The oracle's penultimate features (``toy-oracle``, (N, 192)) or attribute one-hots (``toy-attributes``, (N, 15)).

    Args:
        kind: ``toy-oracle`` or ``toy-attributes``.
        weights: oracle safetensors (default: the shipped ``toyworld/assets/oracle.safetensors``).
        device: where to run (default: CUDA when available; the network is tiny, CPU is fine).
    """

    def __init__(self, kind: str = "toy-oracle", weights: str | Path | None = None, device=None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown toy feature space {kind!r}; choose {' or '.join(KINDS)}")
        self.kind = kind
        path = Path(weights).expanduser() if weights is not None else ORACLE_FILE
        self.oracle = load_oracle(path)  # FileNotFoundError (an OSError) names the fix
        heads = [classifier.head for classifier in self.oracle.classifiers.values()]
        captured: list[torch.Tensor] = []  # the hooks hold this list, not self: no reference cycle
        for head in heads:  # the head's input is the penultimate feature, however forward computes it
            head.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
        self._captured = captured
        preprocessing = {
            "input": "uint8 RGB / 255",
            "resize": [INPUT_SIZE, INPUT_SIZE],
            "resample": "PIL box (area average; nearest-upsampled renders come back exactly)",
            "features": KINDS[kind],
        }
        dim = sum(head.in_features if kind == "toy-oracle" else head.out_features for head in heads)
        self.info = FeatureInfo(
            kind,
            kind if weights is None else str(weights),
            "sha256:" + _sha256(path),
            json.dumps(preprocessing, sort_keys=True),
            dim,
        )
        self.eval().to(_device(device))

    @torch.no_grad()
    def forward(self, images: Images) -> torch.Tensor:
        """Images (any size; resized to 32 x 32) -> (N, 192) penultimate features or (N, 15) one-hots."""
        device = next(self.oracle.parameters()).device
        pixels = images_to_tensor(as_pil_images(images)).to(device)  # (N, 3, 32, 32) in [0, 1]
        self._captured.clear()
        logits = self.oracle(pixels)  # {attribute: (N, classes)}; fills _captured with one (N, 64) per attribute
        if self.kind == "toy-oracle":
            features = torch.cat(self._captured, dim=1)  # (N, 192)
        else:
            features = torch.cat([F.one_hot(x.argmax(-1), x.shape[-1]) for x in logits.values()], dim=1)  # (N, 15)
        self._captured.clear()
        return features.float().cpu()
