"""Resuming a run: which settings it may change, which it keeps, and the restore of a checkpoint.

``POLICY`` is the one table: every field of ``TrainConfig`` and of each method's config is

- ``CHANGE``: may differ on resume; one warning per field, the new value applies from the resumed step;
- ``REFUSE``: changes what the run learns; a different value is refused, naming the field, both values
  and the way out (resume with the recorded value, or start a new run with another ``--out``);
- ``INVOCATION``: describes this command, not the run (where it writes, what it resumes, this
  terminal or machine, a per-command consent); never compared and never taken from the record.

On the command line, a flag not given on ``--resume`` takes the run's recorded value (``inherit``),
so only flags given explicitly count as changes. The Python API (``loop.train``) takes every field
of the configs it is handed as given; ``recorded_configs`` rebuilds a run's configs from its record.
A field missing from the table is refused until classified, and a test walks every config so that
none is forgotten.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from dreamdist.training.checkpoint import STATE_FILE, checkpoint_meta, list_checkpoints, load_checkpoint

log = logging.getLogger("dreamdist")

CHANGE, REFUSE, INVOCATION = "change", "refuse", "invocation"

# section (config class name) -> field -> (policy, why); the why is shown when a change is refused
POLICY: dict[str, dict[str, tuple[str, str]]] = {
    "TrainConfig": {
        # what is learned: refused
        "model": (REFUSE, "the frozen backbone the trainables are fitted to"),
        "method": (REFUSE, "what is trained"),
        "min_timestep": (REFUSE, "the noise levels trained are part of the objective"),
        "max_timestep": (REFUSE, "the noise levels trained are part of the objective"),
        "batch_size": (REFUSE, "images per step: the objective's batch and every later random draw"),
        "gradient_accumulation": (REFUSE, "micro-batches per step: the effective batch"),
        "resolution": (REFUSE, "the size the images are encoded and trained at"),
        "flip": (REFUSE, "the augmentation: which image variants the steps draw"),
        "multiclass": (REFUSE, "how the folder maps to concepts and their prompts"),
        "seed": (REFUSE, "the run's random stream: the recorded seed would no longer describe the run"),
        # the optimisation plan: changeable, applied from the resumed step (README promise)
        "steps": (CHANGE, "the run's length; never below the steps already done"),
        "learning_rate": (CHANGE, "the peak rate; the loop sets every group's rate each step"),
        "lr_scheduler": (CHANGE, "the schedule is a function of the step, re-evaluated from the resumed one"),
        "lr_warmup_steps": (CHANGE, "part of the schedule"),
        "max_grad_norm": (CHANGE, "clipping, applied step by step"),
        # where the images are: the path may move; the files are compared by content (images fingerprint)
        "images": (CHANGE, "the folder's path; its files are checked by fingerprint and a change is refused"),
        # how a step is computed, not what it optimises (a run moved to another machine may need another)
        "mixed_precision": (CHANGE, "autocast precision: numerics of the step, not the objective"),
        "dtype": (CHANGE, "dtype of the frozen weights: numerics, not the objective"),
        "gradient_checkpointing": (CHANGE, "trades memory for compute; the same maths"),
        # operational: what is written or logged along the way
        "checkpoint_every": (CHANGE, "when checkpoints are written"),
        "keep_checkpoints": (CHANGE, "how many checkpoints are kept"),
        "sample_every": (CHANGE, "validation grids only"),
        "validation_prompt": (CHANGE, "validation grids only"),
        "tensorboard": (CHANGE, "logging only"),
        "max_nonfinite": (CHANGE, "the fault policy, not the objective"),
        # this command, not the run
        "out": (INVOCATION, "where this command writes; --resume-from may continue a run into a new folder"),
        "resume": (INVOCATION, "asks this command to continue the run"),
        "resume_from": (INVOCATION, "which checkpoint this command continues from"),
        "device": (INVOCATION, "the machine this command runs on (default: the best available one)"),
        "allow_pickle": (INVOCATION, "a consent to load pickle files, given per command, never read from a file"),
        "progress": (INVOCATION, "this terminal's progress bar"),
    },
    "DreamDistributionConfig": {
        "num_prompts": (REFUSE, "K: the shape of the learned prompts"),
        "num_tokens": (REFUSE, "M: the shape of the learned prompts"),
        "num_samples": (REFUSE, "S: the objective's samples per image"),
        "ortho_weight": (REFUSE, "a term of the objective"),
        "ortho_kind": (REFUSE, "a term of the objective"),
        "prefix": (REFUSE, "the prompt the learned tokens are trained in"),
        "suffix": (REFUSE, "the prompt the learned tokens are trained in"),
        "init_std": (REFUSE, "the initialisation the run started from"),
        "objective": (REFUSE, "the objective itself"),
        "train_gamma": (REFUSE, "the noise around each candidate prompt: part of the objective"),
        "own_lr_scale": (CHANGE, "a learning rate (a multiple of --learning-rate), set every step"),
        "assign_margin": (REFUSE, "how images are assigned to prompts: part of the objective"),
        "assign_smoothing": (REFUSE, "how images are assigned to prompts: part of the objective"),
        "prompt_space": (REFUSE, "where the prompts live (encoder input or output): what is learned and its shape"),
    },
    "TextualInversionConfig": {
        "init_word": (REFUSE, "the initialisation the run started from"),
        "token": (REFUSE, "the learned token's name in prompts and artifact"),
        "num_vectors": (REFUSE, "the shape of the learned embedding"),
        "template": (REFUSE, "the prompts the token is trained in"),
    },
    "DreamBoothConfig": {
        "class_noun": (REFUSE, "the training prompt"),
        "token": (REFUSE, "the training prompt"),
        "instance_prompt": (REFUSE, "the training prompt"),
        "train_text_encoder": (REFUSE, "what trains"),
        "prior_preservation": (REFUSE, "a term of the objective"),
        "class_images": (REFUSE, "the prior term's images"),
        "prior_weight": (REFUSE, "a term of the objective"),
        "class_prompt": (REFUSE, "the prior term's images"),
        "class_seed": (REFUSE, "the prior term's images"),
        "class_inference_steps": (REFUSE, "the prior term's images"),
        "lora": (REFUSE, "what trains"),
        "rank": (REFUSE, "the shape of what trains"),
        "lora_alpha": (REFUSE, "the adapters' scale"),
        "export": (CHANGE, "an extra file format written at the end; nothing learned depends on it"),
    },
    "CustomDiffusionConfig": {
        "class_noun": (REFUSE, "the training prompt"),
        "modifier_token": (REFUSE, "the training prompt"),
        "init_word": (REFUSE, "the initialisation the run started from"),
        "instance_prompt": (REFUSE, "the training prompt"),
        "prior_preservation": (REFUSE, "a term of the objective"),
        "class_images": (REFUSE, "the prior term's images"),
        "prior_weight": (REFUSE, "a term of the objective"),
        "class_prompt": (REFUSE, "the prior term's images"),
        "class_seed": (REFUSE, "the prior term's images"),
        "class_inference_steps": (REFUSE, "the prior term's images"),
    },
    "TwoStageConfig": {
        "class_noun": (REFUSE, "the training prompt"),
        "init_word": (REFUSE, "the initialisation the run started from"),
        "token": (REFUSE, "the training prompt"),
        "instance_prompt": (REFUSE, "the training prompt"),
        "stage1_steps": (REFUSE, "where stage 1 ends and stage 2 begins"),
        "stage1_learning_rate": (CHANGE, "stage 1's learning rate, set every step"),
    },
}

UNCLASSIFIED = (REFUSE, "not yet classified in dreamdist.training.resume.POLICY")


def policy(section: str, name: str) -> tuple[str, str]:
    """(policy, why) of field ``name`` of the config class named ``section``; unknown fields are refused."""
    return POLICY.get(section, {}).get(name, UNCLASSIFIED)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _canonical(name: str, value: Any) -> Any:
    """Spellings that mean the same value (method names: 'textual_inversion' = 'textual-inversion')."""
    if name == "method" and isinstance(value, str):
        return value.lower().replace("_", "").replace("-", "")
    return value


@dataclass(frozen=True)
class Change:
    """One setting that differs from the run's record."""

    section: str  # config class name
    name: str  # field name
    recorded: Any
    new: Any
    policy: str
    why: str
    default: Any = None  # what None stands for (the method's default), for the message

    def show(self, value: Any) -> str:
        """A value as the messages print it (None: with the default it stands for)."""
        if value is None and self.default is not None:
            return f"None (the method's default, {self.default!r})"
        return repr(value)

    def describe(self) -> str:
        return f"{_flag(self.name)}: recorded {self.show(self.recorded)}, now {self.show(self.new)} ({self.why})"


def setting_changes(section: str, recorded: dict, current: dict, defaults: dict | None = None) -> list[Change]:
    """The fields of ``current`` whose value differs from ``recorded`` (both ``asdict`` of a config).

    ``defaults``: what a None value stands for (e.g. ``batch_size`` -> the method's), so None and the
    default it resolves to are the same setting. INVOCATION fields, and fields an older record lacks,
    are not compared.
    """
    defaults = defaults or {}
    found = []
    for name, new in current.items():
        kind, why = policy(section, name)
        if kind == INVOCATION or name not in recorded:
            continue
        old, default = recorded[name], defaults.get(name)
        resolved_old = default if old is None else old
        resolved_new = default if new is None else new
        if _canonical(name, resolved_old) != _canonical(name, resolved_new):
            found.append(Change(section, name, old, new, kind, why, default))
    return found


def check_changes(changes: list[Change], where: str, step: int) -> None:
    """Raise one ValueError naming every refused change; warn once per changeable one."""
    refused = [c for c in changes if c.policy != CHANGE]
    if refused:
        lines = "\n".join(f"  {c.describe()}" for c in refused)
        raise ValueError(
            f"cannot resume {where}: these settings differ from the run's and change what it learns:\n{lines}\n"
            "Resume with the recorded values (on the command line: leave these flags out), "
            "or start a new run with another --out."
        )
    for c in changes:
        log.warning(
            "--resume: %s changed from %s to %s; the new value applies from step %d",
            _flag(c.name),
            c.show(c.recorded),
            c.show(c.new),
            step,
        )


def find_checkpoint(out: Path, resume_from: str | None) -> Path | None:
    """The checkpoint a resume continues from: ``resume_from`` PATH, else the newest in ``out`` (None: none yet)."""
    if resume_from not in (None, "latest"):
        path = Path(resume_from)
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"--resume-from {path}: not a checkpoint folder (no {STATE_FILE} inside)")
        return path
    checkpoints = list_checkpoints(Path(out))
    return checkpoints[-1] if checkpoints else None


def recorded_run(out: str | Path, resume_from: str | None = None) -> dict | None:
    """The record (checkpoint metadata: step, method, train_config, method_config) of the checkpoint a
    resume of ``out`` continues from; None when there is none yet."""
    path = find_checkpoint(Path(out), resume_from)
    return checkpoint_meta(path) if path is not None else None


def inherit(section: str, recorded: dict, values: dict, given: set[str]) -> dict:
    """``values`` of a config, where fields not ``given`` explicitly take their ``recorded`` value.

    INVOCATION fields keep this command's value, and fields an older record lacks keep theirs.
    """
    return {
        name: recorded[name]
        if name not in given and name in recorded and policy(section, name)[0] != INVOCATION
        else value
        for name, value in values.items()
    }


def recorded_configs(out: str | Path, resume_from: str | None = None):
    """(TrainConfig, method config) of the run a resume of ``out`` continues, as recorded in its checkpoint.

    For the Python API: ``dataclasses.replace(config, steps=3000)`` then ``train(config, method_config)``
    changes only what is replaced. Raises FileNotFoundError when there is no checkpoint to resume.
    """
    from dreamdist.config import TrainConfig
    from dreamdist.methods import get_method

    meta = recorded_run(out, resume_from)
    if meta is None:
        raise FileNotFoundError(f"no checkpoint in {out} to resume")
    # INVOCATION fields keep these (their defaults, and this call's out / resume_from); the rest is recorded
    this_call = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    this_call.update(images=None, out=str(out), resume=True, resume_from=resume_from)
    config = TrainConfig(**inherit("TrainConfig", meta["train_config"], this_call, set()))
    config_cls = get_method(config.method).config
    known = {f.name for f in dataclasses.fields(config_cls)}
    return config, config_cls(**{k: v for k, v in meta["method_config"].items() if k in known})


def check_settings(meta: dict, config, method_config, method, where: str) -> list[Change]:
    """Compare this run's settings with a checkpoint's record (``meta``) before anything loads.

    Refused changes raise (all of them in one message); changeable ones are warned about and returned.
    """
    step = meta["step"]
    defaults = {
        "steps": method.default_steps,
        "learning_rate": method.default_learning_rate,
        "batch_size": method.default_batch_size,
        "min_timestep": method.default_timesteps[0],
        "max_timestep": method.default_timesteps[1],
    }
    changes = setting_changes("TrainConfig", meta.get("train_config", {}), dataclasses.asdict(config), defaults)
    if meta.get("method") != method.name:  # another method: its settings are not comparable
        method_change = Change("TrainConfig", "method", meta.get("method"), method.name, REFUSE, "what is trained")
        changes = [c for c in changes if c.name != "method"] + [method_change]
    else:
        section = type(method_config).__name__
        changes += setting_changes(section, meta.get("method_config", {}), dataclasses.asdict(method_config))
    check_changes(changes, where, step)
    total_steps = config.steps or method.default_steps
    if step > total_steps:
        raise ValueError(
            f"cannot resume {where} (step {step}) with --steps {total_steps}: it has already trained further; "
            f"pass --steps >= {step}"
        )
    return changes


def restore(
    path: Path,
    method,
    optimizer,
    accelerator: Accelerator,
    generator: torch.Generator,
    seed: int,
    images_fingerprint: str,
) -> int:
    """Load checkpoint ``path`` into the method, optimizer, loss scaler and generators; return its step.

    The settings were compared before (``check_settings``); the images' content is compared here,
    once they are loaded.
    """
    state = load_checkpoint(path)
    if state.meta.get("images_fingerprint") != images_fingerprint:
        raise ValueError(
            f"cannot resume {path}: its images changed (images fingerprint was {state.meta.get('images_fingerprint')!r}, "
            f"now {images_fingerprint!r}). Resume with the original images, or start a new run with another --out."
        )
    rank_states = {k: state.method.pop(k) for k in [k for k in state.method if k.startswith("rng.rank")]}
    method.load_state_tensors(state.method)
    optimizer.load_state_dict(state.optimizer)
    if state.scaler and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state.scaler)
    rank = accelerator.process_index
    if rank == 0:
        generator.set_state(state.generator)
    elif f"rng.rank{rank}" in rank_states and state.meta.get("world_size") == accelerator.num_processes:
        generator.set_state(rank_states[f"rng.rank{rank}"])
    else:  # another process count than the checkpoint's: a fresh stream per rank and step
        generator.manual_seed(seed + rank + 1_000_003 * state.step)
    log.info("resumed %s at step %d", path, state.step)
    return state.step
