"""Training noise processes: how timesteps are drawn, how the noisy input is made, what the
denoiser must predict. One small class per process (as k-diffusion's ``external.py`` wraps one
parameterisation per class); a family picks one (``Backbone.noise_process``) and the training loop
calls only ``sample_timesteps``, ``add_noise`` and ``target``.

A flow-matching process (continuous t in [0, 1], ``x_t = (1 - t) x0 + t noise``, target
``noise - x0``, a shifted timestep density) implements the same three methods.
"""

from __future__ import annotations

from typing import Protocol

import torch


class NoiseProcess(Protocol):
    """The noise process of one family's training objective."""

    def sample_timesteps(
        self, batch: int, timestep_range: tuple[float, float], generator: torch.Generator
    ) -> torch.Tensor:
        """(batch,) CPU timesteps drawn from ``generator``, within ``timestep_range`` (fractions of the schedule)."""

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) clean latents and noise, (B,) timesteps -> (B, C, h, w) noisy latents."""

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) what the denoiser must predict."""


class DDPMNoise:
    """Discrete DDPM noise (a diffusers ``DDPMScheduler``): integer timesteps drawn uniformly,
    ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise``, and the target of the scheduler's ``prediction_type``:
    noise (``epsilon``), velocity (``v_prediction``) or the clean latents (``sample``)."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    def sample_timesteps(
        self, batch: int, timestep_range: tuple[float, float], generator: torch.Generator
    ) -> torch.Tensor:
        """(batch,) integers drawn uniformly from ``[low * T, high * T)`` (T: the schedule's length)."""
        steps = self.scheduler.config.num_train_timesteps
        low, high = (round(fraction * steps) for fraction in timestep_range)
        return torch.randint(low, max(high, low + 1), (batch,), generator=generator)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(latents, noise, timesteps)  # (B, C, h, w)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        kind = self.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, timesteps)
        if kind == "sample":
            return latents
        raise ValueError(f"unsupported prediction_type {kind!r} in the scheduler config")
