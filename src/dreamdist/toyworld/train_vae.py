"""Stage 1 of the base model: a tiny AutoencoderKL trained on rendered images.

Reconstruction (L1 + MSE in [-1, 1]) plus a small KL term. After training, the latents' std is
measured so that ``vae.config.scaling_factor`` makes scaled latents unit-variance.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from dreamdist.toyworld.components import build_vae
from dreamdist.toyworld.render import render


def vae_loss(vae: AutoencoderKL, pixels: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Total loss and the reconstruction MSE for one batch.

    Args:
        vae: the autoencoder.
        pixels: (B, 3, H, W) in [-1, 1].
        kl_weight: weight of the mean per-element KL(q(z|x) || N(0, I)).
    """
    posterior = vae.encode(pixels).latent_dist
    recon = vae.decode(posterior.sample()).sample  # (B, 3, H, W)
    mse = F.mse_loss(recon, pixels)
    kl = posterior.kl().mean() / posterior.mean[0].numel()  # per latent element
    return F.l1_loss(recon, pixels) + mse + kl_weight * kl, mse


@torch.no_grad()
def latent_std(vae: AutoencoderKL, n: int = 1024, seed: int = 99, device: str = "cpu") -> float:
    """Std of sampled latents of ``n`` fresh renders (to set ``scaling_factor = 1 / std``)."""
    pixels = render(n, seed=seed, split="seen").images.to(device) * 2 - 1
    latents = torch.cat([vae.encode(chunk).latent_dist.sample() for chunk in pixels.split(128)])
    return float(latents.std())


def train_vae(
    minutes: float = 7.0,
    batch_size: int = 32,
    lr: float = 2e-3,
    kl_weight: float = 1e-4,
    seed: int = 0,
    device: str = "cpu",
    max_steps: int | None = None,
    log: list[dict] | None = None,
) -> AutoencoderKL:
    """Train the toy VAE for a time budget (or ``max_steps``); returns it with scaling_factor set.

    Args:
        minutes: wall-clock budget.
        batch_size, lr, kl_weight: optimisation settings (AdamW, 100-step warmup, then constant).
        seed: seeds the init and the data.
        device: torch device.
        max_steps: stop after this many steps even if time is left.
        log: if given, receives one dict per 50 steps (step, minutes, mse).
    """
    torch.manual_seed(seed)
    vae = build_vae().to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start, step = time.time(), 0
    while time.time() - start < minutes * 60 and (max_steps is None or step < max_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100)
        pixels = render(batch_size, seed=seed * 1_000_003 + step, split="seen").images.to(device) * 2 - 1
        loss, mse = vae_loss(vae, pixels, kl_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0:
            row = {"step": step, "minutes": (time.time() - start) / 60, "mse": mse.item()}
            if log is not None:
                log.append(row)
            print(f"vae step {step:5d}  mse {row['mse']:.5f}  {row['minutes']:5.1f} min", flush=True)
        step += 1
    vae.eval()
    std = latent_std(vae, device=device)
    vae.register_to_config(scaling_factor=1.0 / std)
    print(f"vae done: {step} steps, latent std {std:.4f} -> scaling_factor {1.0 / std:.4f}", flush=True)
    return vae
