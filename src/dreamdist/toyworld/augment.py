"""Mild image corruptions (blur, noise) that a robust oracle must shrug off."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own Gaussian.

    Args:
        images: (N, C, H, W).
        sigma: (N,) standard deviations in pixels (0 leaves an image unchanged).

    Returns:
        (N, C, H, W), reflect-padded at the borders.
    """
    n, c, h, w = images.shape
    offsets = torch.arange(-3, 4, dtype=images.dtype)  # (7,)
    s = sigma.clamp_min(1e-3)[:, None]  # (N, 1)
    kernel = torch.exp(-0.5 * (offsets[None] / s) ** 2)
    kernel = kernel / kernel.sum(-1, keepdim=True)  # (N, 7)
    x = images.reshape(1, n * c, h, w)
    k = kernel.repeat_interleave(c, dim=0)  # (N*C, 7)
    x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * c)
    x = F.conv2d(F.pad(x, (0, 0, 3, 3), mode="reflect"), k[:, None, :, None], groups=n * c)
    return x.reshape(n, c, h, w)


def corrupt(
    images: torch.Tensor,
    generator: torch.Generator,
    max_blur: float = 0.8,
    max_noise: float = 0.06,
) -> torch.Tensor:
    """Random mild blur and additive Gaussian noise per image, result clamped to [0, 1].

    Args:
        images: (N, 3, H, W) in [0, 1].
        generator: torch RNG.
        max_blur: blur sigma drawn from U(0, max_blur) pixels.
        max_noise: noise std drawn from U(0, max_noise).
    """
    n = images.shape[0]
    sigma = max_blur * torch.rand(n, generator=generator)
    noise = max_noise * torch.rand(n, generator=generator)[:, None, None, None]
    out = gaussian_blur(images, sigma) + noise * torch.randn(images.shape, generator=generator)
    return out.clamp(0.0, 1.0)
