"""Default sampler settings of the toy model, its sampling scheduler, and loading the shipped pipeline."""

from __future__ import annotations

from pathlib import Path

from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler, SchedulerMixin

DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 3.0
# written to <model>/dreamdist.json, where dreamdist's generation reads its defaults
GENERATION_DEFAULTS = {"guidance_scale": DEFAULT_GUIDANCE, "num_inference_steps": DEFAULT_STEPS}


def sampling_scheduler(training_scheduler: SchedulerMixin) -> DPMSolverMultistepScheduler:
    """The scheduler shipped with the model: DPM-Solver++ (2M) on the training noise schedule."""
    return DPMSolverMultistepScheduler.from_config(training_scheduler.config)


def load_pipeline(folder: str | Path | None = None, device: str = "cpu") -> DiffusionPipeline:
    """Load the shipped toy pipeline (or the one in ``folder``: its own pipeline class) with its progress bar off."""
    from dreamdist.toyworld import model_dir

    pipe = DiffusionPipeline.from_pretrained(str(folder or model_dir()))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
