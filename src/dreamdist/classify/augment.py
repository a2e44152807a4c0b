"""Training-time augmentation as batched torch ops (any device): random resized crop, flip, mixup.

Random parameters come from explicit generators, so a seed fixes every crop, flip and mixing weight.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# ImageNet channel statistics: the usual input normalisation, for toy and real images alike
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) in 0..255 -> float (B, 3, H, W), channel-standardised."""
    mean = torch.tensor(MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def random_resized_crop_flip(
    images: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> torch.Tensor:
    """Crop a random box of each image (area fraction in ``scale``, aspect in ``ratio``), resize it
    back to the input size (bilinear) and mirror it left-right with probability 1/2.

    One ``affine_grid`` + ``grid_sample`` for the whole batch: the crop box is an axis-aligned
    scaling and translation of the sampling grid, the flip a negated x scale. Boxes wider or taller
    than the image are clipped to it.

    Args:
        images: float (B, C, H, W).
        generator: CPU generator for the box, aspect and flip draws.

    Returns:
        float (B, C, H, W).
    """
    b = images.shape[0]
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(b, generator=generator)  # (B,)
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(b, generator=generator)
    aspect = torch.exp(log_ratio)  # width / height
    half_w = torch.sqrt(area * aspect).clamp(max=1.0)  # (B,) box half-width in grid units ([-1, 1] spans 2)
    half_h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1 - half_w) * (2 * torch.rand(b, generator=generator) - 1)  # box centre keeps it inside the image
    cy = (1 - half_h) * (2 * torch.rand(b, generator=generator) - 1)
    sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = half_w * sign, cx  # x_in = ±half_w * x_out + cx
    theta[:, 1, 1], theta[:, 1, 2] = half_h, cy  # y_in = half_h * y_out + cy
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def mixup(
    images: torch.Tensor, labels: torch.Tensor, alpha: float, rng: np.random.Generator, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al., 2018): blend each image with a partner from the same batch.

    ``lam ~ Beta(alpha, alpha)``, once per batch; the loss is ``lam * CE(y) + (1 - lam) * CE(y_partner)``.
    ``alpha <= 0`` returns the batch unchanged with ``lam = 1``.

    Args:
        images: float (B, C, H, W).
        labels: long (B,).

    Returns:
        mixed images (B, C, H, W), labels (B,), partner labels (B,), lam.
    """
    if alpha <= 0:
        return images, labels, labels, 1.0
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(images.shape[0], generator=generator).to(images.device)  # (B,)
    return lam * images + (1 - lam) * images[perm], labels, labels[perm], lam
