"""Resumable checkpoints: method state, optimizer state, step and RNG, all in safetensors.

A checkpoint is a folder ``checkpoints/step-000123/`` written under a temporary name, fsynced and
renamed into place when complete; older ones are pruned only after that rename. Re-saving a step
that exists moves the old folder aside first and deletes it last, and ``list_checkpoints`` falls
back to that moved-aside copy, so at no moment is there no complete checkpoint to resume from.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from dreamdist.artifact import atomic_save_safetensors
from dreamdist.atomic import fsync_dir, fsync_tree, remove_stale

STATE_FILE = "state.safetensors"


@dataclass
class TrainingState:
    """Everything that makes a resumed run continue exactly."""

    step: int
    method: dict[str, torch.Tensor]
    optimizer: dict
    generator: torch.Tensor  # uint8 state of the run's torch.Generator
    meta: dict
    scaler: dict | None = None  # fp16 GradScaler state (scale, growth tracker), None without one


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors and a JSON-able remainder."""
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in rest["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(folder: Path, state: TrainingState, keep: int) -> Path:
    """Write ``folder/checkpoints/step-N`` atomically, then prune to the newest ``keep``."""
    root = folder / "checkpoints"
    final = root / f"step-{state.step:07d}"
    remove_stale(root, ".tmp-step-*")  # leftovers of saves that a crash interrupted
    tmp = root / f".tmp-step-{state.step:07d}-{os.getpid()}"
    tmp.mkdir(parents=True)
    optim_tensors, optim_rest = _flatten_optimizer(state.optimizer)
    tensors = {f"method.{k}": v for k, v in state.method.items()}
    tensors.update(optim_tensors)
    tensors["rng.generator"] = state.generator
    meta = {"step": state.step, "optimizer": optim_rest, "scaler": state.scaler, **state.meta}
    atomic_save_safetensors(tensors, tmp / STATE_FILE, {"dreamdist_checkpoint": json.dumps(meta)})
    fsync_tree(tmp)
    aside = root / f".old-step-{state.step:07d}"
    if final.exists():  # a re-save of the same step (e.g. the end of a resumed run): keep the old until done
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(tmp, final)
    fsync_dir(root)
    shutil.rmtree(aside, ignore_errors=True)
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    root = folder / "checkpoints"
    if not root.is_dir():
        return []
    done = {int(p.name.split("-")[1]): p for p in root.glob("step-*") if (p / STATE_FILE).exists()}
    for aside in root.glob(".old-step-*"):  # a re-save interrupted between its two renames
        step = int(aside.name.rsplit("-", 1)[1])
        if step not in done and (aside / STATE_FILE).exists():
            done[step] = aside
    return [done[step] for step in sorted(done)]


def checkpoint_meta(path: Path) -> dict:
    """The metadata of a checkpoint folder (step, run settings, optimizer scalars), without its tensors."""
    from safetensors import safe_open

    with safe_open(str(path / STATE_FILE), framework="pt") as handle:
        return json.loads(handle.metadata()["dreamdist_checkpoint"])


def load_checkpoint(path: Path) -> TrainingState:
    """Read a checkpoint folder written by ``save_checkpoint`` (safetensors only, no pickle)."""
    meta = checkpoint_meta(path)
    tensors = load_file(str(path / STATE_FILE))
    method = {k[len("method.") :]: v for k, v in tensors.items() if k.startswith("method.")}
    optimizer = _unflatten_optimizer(tensors, meta.pop("optimizer"))
    scaler = meta.pop("scaler", None)
    return TrainingState(meta.pop("step"), method, optimizer, tensors["rng.generator"], meta, scaler)
