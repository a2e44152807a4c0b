"""The training loop: one denoising loss, one optimizer step, for every method.

Read top to bottom: load -> cache latents -> set up the method -> (resume) -> steps -> artifact.
All randomness of a run comes from one CPU ``torch.Generator`` whose state is checkpointed, so a
resumed run continues bit-for-bit where the interrupted one stopped.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration
from tqdm.auto import tqdm

from dreamdist.artifact import save_artifact
from dreamdist.backbone import Backbone
from dreamdist.config import TrainConfig
from dreamdist.data import ReferenceSet
from dreamdist.methods import Method, get_method
from dreamdist.training.checkpoint import TrainingState, list_checkpoints, load_checkpoint, save_checkpoint

log = logging.getLogger("dreamdist")


class TrainingAborted(RuntimeError):
    """Training stopped on repeated non-finite losses (a checkpoint was saved first)."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived; a checkpoint was saved and ``--resume`` continues the run."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class LatentCache:
    """VAE posteriors of every reference image, encoded once per augmentation variant."""

    def __init__(self, backbone: Backbone, data: ReferenceSet, flip: bool):
        variants = [data.pixels] + ([data.pixels.flip(-1)] if flip else [])
        encoded = [backbone.encode_images(pixels) for pixels in variants]
        self.mean = torch.stack([m for m, _ in encoded])  # (V, N, C, h, w)
        self.std = torch.stack([s for _, s in encoded])  # (V, N, C, h, w)
        self.labels = data.labels  # (N,)

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw B images (uniformly, a flip variant each) -> unscaled latents (B, C, h, w), labels (B,)
        and the images' indices in the reference set (B,)."""
        index = torch.randint(0, self.mean.shape[1], (batch,), generator=generator)
        variant = torch.randint(0, self.mean.shape[0], (batch,), generator=generator)
        noise = torch.randn((batch, *self.mean.shape[2:]), generator=generator)
        return self.mean[variant, index] + self.std[variant, index] * noise, self.labels[index], index


@contextmanager
def stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps (main thread only)."""
    flag = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, _frame):
        flag["signal"] = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def diffusion_loss(
    backbone: Backbone, latents: torch.Tensor, hidden: torch.Tensor, repeats: int, generator: torch.Generator
) -> torch.Tensor:
    """The denoising loss, once for all methods.

    Args:
        latents: (B, C, h, w) scaled clean latents.
        hidden: (R*B, L, d) text features, repeat-major; the same noise and timestep serve all R.
    Returns:
        (R, B): per repeat and image, the mean over elements of ``|| target - unet(x_t, t, c) ||^2``.
    """
    batch = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    steps = backbone.scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (batch,), generator=generator).to(latents.device)
    noisy = backbone.scheduler.add_noise(latents, noise, timesteps)  # (B, C, h, w)
    target = backbone.training_target(latents, noise, timesteps)
    unet_dtype = backbone.unet.dtype
    pred = backbone.unet(
        noisy.repeat(repeats, 1, 1, 1).to(unet_dtype),  # (R*B, C, h, w)
        timesteps.repeat(repeats),
        encoder_hidden_states=hidden.to(unet_dtype),
    ).sample
    errors = F.mse_loss(pred.float(), target.repeat(repeats, 1, 1, 1).float(), reduction="none")  # (R*B, C, h, w)
    return errors.mean(dim=(1, 2, 3)).view(repeats, batch)


def method_loss(
    backbone: Backbone,
    method: Method,
    latents: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The objective of one micro-batch: the denoising loss, the method's auxiliary term, and its
    weighted prior batch (e.g. prior preservation: the same loss on class images).

    Args:
        latents: (B, C, h, w) scaled clean latents; labels: (B,) their concepts.
        indices: (B,) their rows in the reference set (None: not references).
    Returns:
        (total loss, the denoising loss alone, extra scalars to log).
    """
    cond = method.condition(backbone, labels, generator, indices)
    losses = diffusion_loss(backbone, latents, cond.hidden, cond.repeats, generator)  # (R, B)
    loss = cond.combine(losses) if cond.combine is not None else losses.mean()
    total = loss + (cond.aux_loss if cond.aux_loss is not None else 0.0)
    logs = dict(cond.logs)
    if cond.prior is not None:
        prior_loss = diffusion_loss(backbone, cond.prior.latents, cond.prior.hidden, 1, generator).mean()
        total = total + cond.prior.weight * prior_loss
        logs["prior_loss"] = float(prior_loss.detach())
    return total, loss, logs


def train(config: TrainConfig, method_config=None) -> Path:
    """Train ``config.method`` on ``config.images``; return the run folder holding the artifact.

    Raises ``TrainingInterrupted`` after saving a checkpoint when SIGINT/SIGTERM arrives, and
    ``TrainingAborted`` after ``max_nonfinite`` consecutive non-finite losses.
    """
    config_cls, method_cls, *_ = get_method(config.method)
    method_config = method_config if method_config is not None else config_cls()
    method: Method = method_cls(method_config)
    out = Path(config.out)
    if not config.resume and list_checkpoints(out):
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    # a second train() in one process may ask for another precision: drop the previous run's
    # accelerator settings (the distributed PartialState, if any, is kept)
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with="tensorboard" if config.tensorboard else None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    # frozen weights: as asked, else the autocast dtype (fp32 without mixed precision)
    dtype = config.dtype or {"fp16": "fp16", "bf16": "bf16"}.get(config.mixed_precision, "fp32")
    backbone = Backbone.from_pretrained(config.model, accelerator.device, dtype, config.allow_pickle)
    resolution = config.resolution or backbone.sample_size
    data = ReferenceSet.from_folder(config.images, resolution, config.multiclass)
    log.info(data.report.summary())
    generator = torch.Generator().manual_seed(config.seed + accelerator.process_index)
    # the frozen backbone's identity, before a method adds tokens or adapters to it
    identity, probe = backbone.identity(), backbone.probe_rows()
    method.setup(backbone, data, generator, run_dir=out)
    if config.gradient_checkpointing:
        backbone.unet.enable_gradient_checkpointing()
        backbone.text_encoder.gradient_checkpointing_enable()
        backbone.text_encoder.train()  # transformers only checkpoints in train mode (CLIP has no dropout)
    learning_rate = config.learning_rate or method.default_learning_rate
    groups = _param_groups(method, learning_rate)
    params = [p for group in groups for p in group["params"]]
    optimizer = accelerator.prepare(torch.optim.AdamW(groups, lr=learning_rate, weight_decay=0.0))
    cache = LatentCache(backbone, data, config.flip)
    total_steps = config.steps or method.default_steps
    run_meta = {
        "method": method.name,
        "train_config": asdict(config),
        "method_config": asdict(method_config),
        "images_fingerprint": data.fingerprint,
        "class_names": data.class_names,
    }

    step, streak = 0, 0
    if config.resume:
        step = _resume(out, method, optimizer, generator, run_meta)
        if accelerator.process_index > 0:  # checkpoints hold rank 0's stream; other ranks draw their own
            generator.manual_seed(config.seed + accelerator.process_index + 1_000_003 * step)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(run_meta, indent=2, default=str) + "\n")
    if config.tensorboard:
        accelerator.init_trackers("dreamdist")

    def checkpoint() -> Path | None:
        if not accelerator.is_main_process:
            return None
        meta = {**run_meta, "stage": getattr(method, "stage", None)}
        state = TrainingState(step, method.state_tensors(), optimizer.state_dict(), generator.get_state(), meta)
        return save_checkpoint(out, state, config.keep_checkpoints)

    begin_step = getattr(method, "begin_step", None)
    extra_checkpoints = set(getattr(method, "checkpoint_steps", ()))

    bar = tqdm(total=total_steps, initial=step, disable=not (config.progress and accelerator.is_main_process))
    with stop_on_signals() as stop:
        while step < total_steps:
            if begin_step is not None:
                begin_step(step, total_steps)
            optimizer.zero_grad(set_to_none=True)
            finite, logs = True, {}
            for _ in range(config.gradient_accumulation):
                latents, labels, indices = cache.sample(config.batch_size, generator)
                latents = (latents.to(accelerator.device) - backbone.latent_shift) * backbone.latent_scale
                with accelerator.autocast():
                    total, loss, extra = method_loss(backbone, method, latents, labels, generator, indices)
                if not torch.isfinite(total):
                    finite = False
                    break
                accelerator.backward(total / config.gradient_accumulation)
                logs = {"loss": float(loss.detach()), **extra}
            if not finite:
                streak += 1
                log.warning("non-finite loss at step %d (%d in a row); step skipped", step + 1, streak)
                if streak >= config.max_nonfinite:
                    path = checkpoint()
                    raise TrainingAborted(
                        f"{streak} non-finite losses in a row at step {step + 1}; checkpoint saved to {path}. "
                        "Lower --learning-rate, use --mixed-precision no or bf16, or check the images."
                    )
                continue
            streak = 0
            if accelerator.num_processes > 1:  # explicit all-reduce: no DDP wrapper around methods
                for p in params:
                    if p.grad is not None:
                        p.grad = accelerator.reduce(p.grad, reduction="mean")
            optimizer.step()
            method.after_step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            if config.tensorboard:
                accelerator.log(logs, step=step)
            periodic = config.checkpoint_every and step % config.checkpoint_every == 0
            if (periodic or step in extra_checkpoints) and step < total_steps:
                checkpoint()
            if config.sample_every and step % config.sample_every == 0 and accelerator.is_main_process:
                _sample_grid(backbone, method, out / "samples" / f"step-{step:07d}.png", config.seed)
            if stop["signal"] is not None:
                path = checkpoint()
                bar.close()
                raise TrainingInterrupted(
                    f"stopped by signal {stop['signal']} at step {step}; checkpoint saved to {path}. "
                    "Continue with the same command plus --resume.",
                    stop["signal"],
                )
    bar.close()
    checkpoint()
    if accelerator.is_main_process:
        tensors, meta = method.artifact(backbone)
        tensors["backbone.probe"] = probe
        meta.update(backbone=identity, train=run_meta["train_config"], step=step)
        meta["train"]["images_fingerprint"] = data.fingerprint
        if hasattr(method, "export"):  # diffusers-format files beside the artifact
            meta.update(method.export(backbone, out))
        save_artifact(out, method.name, tensors, meta)
    accelerator.end_training()
    return out


def _param_groups(method: Method, learning_rate: float) -> list[dict]:
    """The method's optimizer groups, or one group of its trainable parameters."""
    if hasattr(method, "param_groups"):
        groups = method.param_groups(learning_rate)
    else:
        groups = [{"params": [p for m in method.trainable_modules() for p in m.parameters() if p.requires_grad]}]
    if not any(group["params"] for group in groups):
        raise ValueError(f"{method.name} has no trainable parameters after setup; check its options")
    return groups


def _resume(out: Path, method: Method, optimizer, generator: torch.Generator, run_meta: dict) -> int:
    """Load the newest checkpoint of ``out`` into the method, optimizer and generator; return its step."""
    checkpoints = list_checkpoints(out)
    if not checkpoints:
        log.warning("--resume: no checkpoint in %s; starting from step 0", out)
        return 0
    state = load_checkpoint(checkpoints[-1])
    for key in ("method", "images_fingerprint", "method_config"):
        if state.meta.get(key) != run_meta[key]:
            raise ValueError(
                f"cannot resume {out}: its {key.replace('_', ' ')} was {state.meta.get(key)!r}, now {run_meta[key]!r}. "
                "Resume with the original images and settings, or start a new --out."
            )
    method.load_state_tensors(state.method)
    optimizer.load_state_dict(state.optimizer)
    generator.set_state(state.generator)
    log.info("resumed %s at step %d", checkpoints[-1], state.step)
    return state.step


def _sample_grid(backbone: Backbone, method: Method, path: Path, seed: int) -> None:
    """Save a small grid from the current state (validation images during training)."""
    from dreamdist.artifact import Artifact
    from dreamdist.config import GenerateConfig
    from dreamdist.generation import generate_images, make_grid

    tensors, meta = method.artifact(backbone)
    artifact = Artifact(tensors, {"method": method.name, **meta, "backbone": backbone.identity()}, path)
    gen_config = GenerateConfig(out=str(path.parent), artifacts=[str(path)], num_images=4, seed=seed, progress=False)
    # the backbone already holds the method's live state: nothing to load into it
    images, _ = generate_images(backbone, [artifact], gen_config, prepared=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images).save(path)
