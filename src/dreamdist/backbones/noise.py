"""Training noise processes: how timesteps are drawn, how the noisy input is made, what the
denoiser must predict. One small class per process (as k-diffusion's ``external.py`` wraps one
parameterisation per class); a family picks one (``Backbone.noise_process``) and the training loop
calls only ``sample_timesteps``, ``add_noise`` and ``target``.

``FlowMatchNoise`` is rectified flow (Flux.1, SD3): continuous t in (0, 1), ``x_t = (1 - t) x0 +
t noise``, target ``noise - x0``, a logit-normal timestep density shifted as SD3/Flux shift it.
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


class FlowMatchNoise:
    """Rectified flow (METHODS.md §12): ``x_t = (1 - t) x0 + t noise``, the denoiser predicts the
    velocity ``noise - x0``. Timesteps are continuous, drawn from a logit-normal density
    (``sigmoid(mean + std * n)``, SD3's default mean 0, std 1) and shifted towards noise by the
    scheduler config's ``shift`` as FlowMatchEulerDiscreteScheduler shifts its sigmas:
    ``t' = shift t / (1 + (shift - 1) t)``. The timesteps are the sigmas themselves, in (0, 1): what
    Flux's transformer takes (FluxPipeline passes ``timestep / 1000``, the scheduler's timesteps being
    sigma * 1000)."""

    prediction_type = "flow_matching"

    def __init__(self, shift: float = 1.0, logit_mean: float = 0.0, logit_std: float = 1.0):
        if not shift > 0:
            raise ValueError(f"the flow-matching shift must be > 0; got {shift}")
        self.shift = float(shift)
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)

    @classmethod
    def from_scheduler_config(cls, config: dict) -> FlowMatchNoise:
        """The process of a ``FlowMatchEulerDiscreteScheduler`` config (its ``shift``; 1 when absent)."""
        return cls(shift=float(config.get("shift", 1.0) or 1.0))

    def shifted(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) t in [0, 1] -> (B,) ``shift t / (1 + (shift - 1) t)`` (the identity at shift 1)."""
        return self.shift * t / (1 + (self.shift - 1) * t)

    def sample_timesteps(
        self, batch: int, timestep_range: tuple[float, float], generator: torch.Generator
    ) -> torch.Tensor:
        """(batch,) float t: a shifted logit-normal draw, mapped affinely into ``[low, high)``.

        ``timestep_range`` holds fractions of the noise level t itself; (0, 1) keeps the density as is.
        """
        low, high = timestep_range
        normal = torch.randn(batch, generator=generator)  # (B,)
        t = self.shifted(torch.sigmoid(self.logit_mean + self.logit_std * normal))  # (B,) in (0, 1)
        return low + (high - low) * t

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        t = timesteps.to(latents.dtype).view(-1, *([1] * (latents.dim() - 1)))  # (B, 1, 1, 1)
        return (1 - t) * latents + t * noise  # (B, C, h, w)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return noise - latents  # (B, C, h, w) the velocity
