"""The training loop: one denoising loss, one optimizer step, for every method.

Read top to bottom: load -> cache latents -> set up the method -> (resume) -> steps -> artifact.
All randomness of a run comes from one CPU ``torch.Generator`` whose state is checkpointed, so a
resumed run continues bit-for-bit where the interrupted one stopped.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
from collections.abc import Callable
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
from dreamdist.atomic import atomic_write_json
from dreamdist.backbones import Backbone, family_of_model
from dreamdist.config import TrainConfig
from dreamdist.data import ReferenceSet
from dreamdist.methods import Method, get_method
from dreamdist.training.checkpoint import TrainingState, checkpoint_meta, list_checkpoints, save_checkpoint
from dreamdist.training.ranks import Ranks
from dreamdist.training.resume import check_settings, find_checkpoint, restore

log = logging.getLogger("dreamdist")


class TrainingAborted(RuntimeError):
    """Training stopped on repeated non-finite losses (a checkpoint was saved first)."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived; a checkpoint was saved and ``--resume`` continues the run."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class LatentCache:
    """VAE posteriors of every reference image, encoded once per augmentation variant.

    On a family that buckets (``Backbone.bucket_step``, e.g. SDXL), references of several shapes
    are bucketed by aspect ratio (``ReferenceSet.buckets``): each image is encoded at its bucket's
    size, and a batch is drawn from one bucket. Square sets (and every set of a family that does not
    bucket, e.g. SD 1.x/2.x) keep the one square size and the draws of a single bucket.
    """

    def __init__(self, backbone: Backbone, data: ReferenceSet, flip: bool):
        self.labels = data.labels  # (N,)
        step = backbone.bucket_step(data.size)
        buckets = data.buckets(step) if step is not None else None
        if buckets is None or set(buckets) == {(data.size, data.size)}:
            self.mean, self.std = self._encode(backbone, ((None, p) for p in data.iter_pixels()), flip)
            self.groups = None
            return
        # per bucket: its reference indices (n_b,) and posteriors (V, n_b, C, h_b, w_b)
        chunks: dict[tuple[int, int], list] = {}
        for indices, pixels in data.iter_bucket_pixels(buckets):
            chunks.setdefault(tuple(pixels.shape[-2:]), []).append((indices, pixels))
        self.groups = []
        for parts in chunks.values():
            mean, std = self._encode(backbone, parts, flip)
            self.groups.append((torch.tensor([i for indices, _ in parts for i in indices]), mean, std))
        self.bucket_of = torch.empty(len(data), dtype=torch.long)  # (N,) group of each reference
        for g, (indices, _, _) in enumerate(self.groups):
            self.bucket_of[indices] = g

    @staticmethod
    def _encode(backbone: Backbone, parts, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, (n, 3, H, W) pixels) chunks -> posterior mean and std (V, N, C, h, w)."""
        means, stds = [[] for _ in range(1 + flip)], [[] for _ in range(1 + flip)]
        for _, pixels in parts:  # a chunk at a time, never the whole set
            for v, variant in enumerate([pixels, pixels.flip(-1)][: 1 + flip]):
                mean, std = backbone.encode_images(variant)
                means[v].append(mean)
                stds[v].append(std)
        return torch.stack([torch.cat(m) for m in means]), torch.stack([torch.cat(s) for s in stds])

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw B images (uniformly, a flip variant each) -> unscaled latents (B, C, h, w), labels (B,)
        and the images' indices in the reference set (B,). Bucketed: a uniformly drawn reference picks
        the bucket (buckets by their image count), then all B images come from it."""
        if self.groups is None:
            index = torch.randint(0, self.mean.shape[1], (batch,), generator=generator)
            variant = torch.randint(0, self.mean.shape[0], (batch,), generator=generator)
            noise = torch.randn((batch, *self.mean.shape[2:]), generator=generator)
            return self.mean[variant, index] + self.std[variant, index] * noise, self.labels[index], index
        first = torch.randint(0, len(self.bucket_of), (1,), generator=generator)
        members, mean, std = self.groups[int(self.bucket_of[first])]
        row = torch.randint(0, len(members), (batch,), generator=generator)  # rows within the bucket
        variant = torch.randint(0, mean.shape[0], (batch,), generator=generator)
        noise = torch.randn((batch, *mean.shape[2:]), generator=generator)
        index = members[row]
        return mean[variant, row] + std[variant, row] * noise, self.labels[index], index


@contextmanager
def stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps (main thread only).

    A second signal while the first is being honoured ends the process at once (KeyboardInterrupt).
    """
    flag = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, _frame):
        if flag["signal"] is not None:
            raise TrainingInterrupted(f"stopped at once by a second signal {signum}", signum)
        flag["signal"] = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def diffusion_loss(
    backbone: Backbone,
    latents: torch.Tensor,
    hidden: torch.Tensor,
    repeats: int,
    generator: torch.Generator,
    timestep_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """The denoising loss, once for all methods and families.

    The family owns the noise process (timestep density, noisy input, target) and the denoiser
    call; this function only draws the noise and compares.

    Args:
        latents: (B, C, h, w) scaled clean latents.
        hidden: (R*B, L, d) prompt features, repeat-major; the same noise and timestep serve all R.
        timestep_range: (low, high) fractions of the schedule the timesteps are drawn from
            (DDPM: uniformly from ``[low * T, high * T)``, T the schedule's length).
    Returns:
        (R, B): per repeat and image, the mean over elements of ``|| target - denoise(x_t, t, c) ||^2``.
    """
    batch = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    timesteps = backbone.sample_timesteps(batch, timestep_range, generator).to(latents.device)  # (B,)
    noisy = backbone.noisy_latents(latents, noise, timesteps)  # (B, C, h, w)
    target = backbone.training_target(latents, noise, timesteps)  # (B, C, h, w)
    pred = backbone.denoise(
        noisy.repeat(repeats, 1, 1, 1).to(backbone.dtype),  # (R*B, C, h, w)
        timesteps.repeat(repeats),
        hidden,  # prompt features (SDXL: with the pooled row, see backbones.sdxl)
    )
    errors = F.mse_loss(pred.float(), target.repeat(repeats, 1, 1, 1).float(), reduction="none")  # (R*B, C, h, w)
    return errors.mean(dim=(1, 2, 3)).view(repeats, batch)


def method_loss(
    backbone: Backbone,
    method: Method,
    latents: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    indices: torch.Tensor | None = None,
    timestep_range: tuple[float, float] = (0.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The objective of one micro-batch: the denoising loss, the method's auxiliary term, and its
    weighted prior batch (e.g. prior preservation: the same loss on class images).

    Args:
        latents: (B, C, h, w) scaled clean latents; labels: (B,) their concepts.
        indices: (B,) their rows in the reference set (None: not references).
        timestep_range: the noise levels trained, fractions of the schedule (``diffusion_loss``).
    Returns:
        (total loss, the denoising loss alone, extra scalars to log).
    """
    cond = method.condition(backbone, labels, generator, indices)
    losses = diffusion_loss(backbone, latents, cond.hidden, cond.repeats, generator, timestep_range)  # (R, B)
    loss = cond.combine(losses) if cond.combine is not None else losses.mean()
    total = loss + (cond.aux_loss if cond.aux_loss is not None else 0.0)
    logs = dict(cond.logs)
    if cond.prior is not None:
        prior = cond.prior
        prior_loss = diffusion_loss(backbone, prior.latents, prior.hidden, 1, generator, timestep_range).mean()
        total = total + prior.weight * prior_loss
        logs["prior_loss"] = float(prior_loss.detach())
    return total, loss, logs


def resolve_timesteps(config: TrainConfig, method: Method) -> tuple[float, float]:
    """The trained noise levels: --min-timestep / --max-timestep, else the method's defaults."""
    low, high = method.default_timesteps
    low = low if config.min_timestep is None else config.min_timestep
    high = high if config.max_timestep is None else config.max_timestep
    if not low < high:
        raise ValueError(
            f"the trained timesteps [{low}, {high}) are empty: --min-timestep must be below --max-timestep"
        )
    return low, high


def train(config: TrainConfig, method_config=None, on_step: Callable[[int, int, dict], None] | None = None) -> Path:
    """Train ``config.method`` on ``config.images``; return the run folder holding the artifact.

    ``on_step(step, total_steps, logs)`` is called on the main process after every optimizer step
    (``logs``: the loss, the method's extra scalars and the learning rate), e.g. for live plots.

    Raises ``TrainingInterrupted`` after saving a checkpoint when SIGINT/SIGTERM arrives, and
    ``TrainingAborted`` after ``max_nonfinite`` consecutive non-finite losses.

    With ``config.resume``, every field of ``config`` and ``method_config`` counts as given and is
    compared with the checkpoint's record before anything loads (``dreamdist.training.resume.POLICY``):
    a change to what the run learns is refused, naming each field; a changed learning rate, schedule,
    clipping, step count or operational setting is warned about and applies from the resumed step.
    ``method_config=None`` takes the recorded method settings; ``resume.recorded_configs(out)``
    rebuilds both configs from the record, to change only some fields (``dataclasses.replace``).
    """
    config_cls, method_cls, *_ = get_method(config.method)
    out = Path(config.out)
    if not config.resume and list_checkpoints(out):
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    resume_path = find_checkpoint(out, config.resume_from) if config.resume else None
    recorded = checkpoint_meta(resume_path) if resume_path is not None else None
    if config.resume and resume_path is None:
        log.warning("--resume: no checkpoint in %s; starting from step 0", out)
    if method_config is None:  # the run's recorded settings when resuming one of this method, else the defaults
        same = recorded is not None and get_method(recorded["method"]).config is config_cls
        method_config = config_cls(**recorded["method_config"]) if same else config_cls()
    method: Method = method_cls(method_config)
    timestep_range = resolve_timesteps(config, method)  # an empty range fails before anything loads
    family_of_model(config.model).check_method(method.name)  # so does a method the model's family lacks
    resumes = []  # the run's resumes and what each changed, recorded with its settings
    if recorded is not None:  # refused changes fail here, before the backbone and images load
        changes = check_settings(recorded, config, method_config, method, str(resume_path))
        changed = {c.name: [c.recorded, c.new] for c in changes}
        resumes = [*recorded.get("resumes", []), {"step": recorded["step"], "changed": changed}]
    accelerator = _accelerator(config, out)
    ranks = Ranks(accelerator)
    # frozen weights: as asked, else the autocast dtype (fp32 without mixed precision)
    dtype = config.dtype or {"fp16": "fp16", "bf16": "bf16"}.get(accelerator.mixed_precision, "fp32")
    backbone = Backbone.from_pretrained(config.model, accelerator.device, dtype, config.allow_pickle)
    resolution = config.resolution or backbone.sample_size
    data = ReferenceSet.from_folder(config.images, resolution, config.multiclass)
    references = _report_references(data, accelerator.is_main_process)
    # every rank sets the method up from the same seed (identical initial trainables), then draws
    # its own batches: rank 0 continues the stream, the others re-seed
    generator = torch.Generator().manual_seed(config.seed)
    # the frozen backbone's identity, before a method adds tokens or adapters to it
    identity, probe = backbone.identity(), backbone.probe_rows()
    method.setup(backbone, data, generator, run_dir=out)
    if accelerator.process_index > 0:
        generator.manual_seed(config.seed + accelerator.process_index)
    if config.gradient_checkpointing:
        backbone.denoiser.enable_gradient_checkpointing()
        for encoder in backbone.text_encoders:  # SDXL: both encoders
            encoder.gradient_checkpointing_enable()
            encoder.train()  # transformers only checkpoints in train mode (CLIP has no dropout)
    learning_rate = config.learning_rate or method.default_learning_rate
    groups = method.param_groups(learning_rate) or _default_groups(method)
    params = [p for group in groups for p in group["params"]]
    if not params:
        raise ValueError(f"{method.name} has no trainable parameters after setup; check its options")
    ranks.broadcast(params)  # belt and braces: rank 0's initial values everywhere
    optimizer = accelerator.prepare(torch.optim.AdamW(groups, lr=learning_rate, weight_decay=0.0))
    peak_rates = [group["lr"] for group in optimizer.param_groups]
    cache = LatentCache(backbone, data, config.flip)
    total_steps = config.steps or method.default_steps
    batch_size = config.batch_size or method.default_batch_size
    run_meta = {
        "method": method.name,
        "train_config": asdict(config),
        "method_config": asdict(method_config),
        "images_fingerprint": data.fingerprint,
        "class_names": data.class_names,
        "references": references,
        "resumes": resumes,
    }

    step, streak = 0, 0
    if resume_path is not None:
        step = restore(resume_path, method, optimizer, accelerator, generator, config.seed, data.fingerprint)
    schedule = _lr_schedule(config, total_steps)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "train_config.json", run_meta, default=str)
        atomic_write_json(out / "references.json", references)
    if config.tensorboard:
        accelerator.init_trackers("dreamdist")

    def checkpoint() -> Path | None:
        generators = ranks.gather_states(generator.get_state())  # a collective: every rank calls it
        if not accelerator.is_main_process:
            return None
        meta = {**run_meta, "stage": method.stage, "world_size": accelerator.num_processes}
        method_state = method.state_tensors()
        method_state.update({f"rng.rank{r}": g for r, g in enumerate(generators) if r > 0})
        scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
        state = TrainingState(step, method_state, optimizer.state_dict(), generator.get_state(), meta, scaler)
        return save_checkpoint(out, state, config.keep_checkpoints)

    extra_checkpoints = set(method.checkpoint_steps)
    bar = tqdm(total=total_steps, initial=step, disable=not (config.progress and accelerator.is_main_process))
    with stop_on_signals() as stop:
        while step < total_steps:
            method.begin_step(step, total_steps)
            for group, peak in zip(optimizer.param_groups, peak_rates):  # this run's rates, also after a resume
                group["lr"] = peak * schedule(step)
            optimizer.zero_grad(set_to_none=True)
            finite, logs = True, {}
            for _ in range(config.gradient_accumulation):
                latents, labels, indices = cache.sample(batch_size, generator)
                latents = (latents.to(accelerator.device) - backbone.latent_shift) * backbone.latent_scale
                with accelerator.autocast():
                    total, loss, extra = method_loss(
                        backbone, method, latents, labels, generator, indices, timestep_range
                    )
                # every micro-batch runs on every rank (methods may hold collectives inside the loss)
                finite = finite and bool(torch.isfinite(total))
                if finite:
                    accelerator.backward(total / config.gradient_accumulation)
                    logs = {"loss": float(loss.detach()), **extra}
            # ranks skip together, or one would wait forever in the next collective
            if ranks.any(not finite):
                streak += 1
                log.warning("non-finite loss at step %d (%d in a row); step skipped", step + 1, streak)
                if streak >= config.max_nonfinite:
                    path = checkpoint()
                    raise TrainingAborted(
                        f"{streak} non-finite losses in a row at step {step + 1}; checkpoint saved to {path}. "
                        "Lower --learning-rate, use --mixed-precision no or bf16, or check the images."
                    )
            else:
                streak = 0
                ranks.average_gradients(params)
                if config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                method.after_step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.4f}")
                logs["lr"] = optimizer.param_groups[0]["lr"]
                if config.tensorboard:
                    accelerator.log(logs, step=step)
                if on_step is not None and accelerator.is_main_process:
                    on_step(step, total_steps, logs)
                periodic = config.checkpoint_every and step % config.checkpoint_every == 0
                if (periodic or step in extra_checkpoints) and step < total_steps:
                    checkpoint()
                if config.sample_every and step % config.sample_every == 0 and accelerator.is_main_process:
                    with accelerator.autocast():
                        _sample_grid(backbone, method, out / "samples" / f"step-{step:07d}.png", config)
            if ranks.any(stop["signal"] is not None):  # and stop together
                path = checkpoint()
                bar.close()
                signum = stop["signal"] or signal.SIGTERM  # another rank's signal
                raise TrainingInterrupted(
                    f"stopped by signal {signum} at step {step}; checkpoint saved to {path}. "
                    "Continue with the same command plus --resume.",
                    signum,
                )
    bar.close()
    checkpoint()
    if accelerator.is_main_process:
        tensors, meta = method.artifact(backbone)
        tensors["backbone.probe"] = probe
        meta.update(
            backbone=identity, train=run_meta["train_config"], step=step, references=references, resumes=resumes
        )
        meta["train"]["images_fingerprint"] = data.fingerprint
        meta.update(method.export(backbone, out))  # diffusers-format files beside the artifact
        save_artifact(out, method.name, tensors, meta)
    accelerator.end_training()
    return out


def _accelerator(config: TrainConfig, out: Path) -> Accelerator:
    """The run's Accelerator: precision as asked, else as ``accelerate config`` / ``launch`` set it."""
    # a second train() in one process may ask for another precision: drop the previous run's
    # accelerator settings (the distributed PartialState, if any, is kept)
    AcceleratorState._reset_state()
    # accelerate treats torchrun's processes as data-parallel ranks on CPU only when told cpu=True
    has_accelerator = torch.cuda.is_available() or torch.backends.mps.is_available()
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        cpu=config.device == "cpu" or (config.device is None and not has_accelerator),
        log_with="tensorboard" if config.tensorboard else None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    if config.device not in (None, "cpu") and accelerator.device.type != torch.device(config.device).type:
        raise ValueError(
            f"--device {config.device} is not available here (found {accelerator.device.type}); "
            "drop --device to use the best available one"
        )
    return accelerator


def _report_references(data: ReferenceSet, show: bool) -> dict:
    """Say which reference files were skipped and why (printed, and recorded in the run folder)."""
    report = data.report
    if show and report.skipped:
        print(f"dreamdist: {report.summary()}", file=sys.stderr)
    return {
        "kept": [p.name for p in report.kept],
        "skipped": [{"file": str(p), "reason": why} for p, why in report.skipped],
    }


def _lr_schedule(config: TrainConfig, total_steps: int):
    """step -> factor of the peak rate: linear warm-up, then constant, cosine or linear decay to 0."""
    warmup = config.lr_warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        if config.lr_scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if config.lr_scheduler == "linear":
            return 1.0 - progress
        return 1.0

    return factor


def _default_groups(method: Method) -> list[dict]:
    """One optimizer group of the method's trainable parameters."""
    return [{"params": [p for m in method.trainable_modules() for p in m.parameters() if p.requires_grad]}]


def _sample_grid(backbone: Backbone, method: Method, path: Path, config: TrainConfig) -> None:
    """Save a small grid from the current state (validation images during training)."""
    from dreamdist.artifact import Artifact
    from dreamdist.config import GenerateConfig
    from dreamdist.generation import generate_images, make_grid

    tensors, meta = method.artifact(backbone)
    artifact = Artifact(tensors, {"method": method.name, **meta, "backbone": backbone.identity()}, path)
    gen_config = GenerateConfig(
        out=str(path.parent),
        artifacts=[str(path)],
        num_images=4,
        seed=config.seed,
        prompt=config.validation_prompt,
        progress=False,
    )
    # the backbone already holds the method's live state: nothing to load into it
    images, _ = generate_images(backbone, [artifact], gen_config, prepared=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images).save(path)
