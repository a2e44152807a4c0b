"""What ``dreamdist classify --out DIR`` writes: ``classifier.safetensors``, ``report.json``, ``confusion.png``.

The model file carries its own description (architecture, classes, input size, normalisation) in
the safetensors metadata, so :func:`load_classifier` rebuilds it without any other file. Every
file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
from safetensors import safe_open

from dreamdist.artifact import atomic_save_safetensors
from dreamdist.atomic import atomic_path, atomic_write_text
from dreamdist.classify.augment import MEAN, STD
from dreamdist.classify.config import ClassifyConfig
from dreamdist.classify.models import build_model

MODEL_FILE = "classifier.safetensors"
REPORT_FILE = "report.json"
CONFUSION_FILE = "confusion.png"
META_KEY = "dreamdist_classifier"


def save_classifier(classifier, path: str | Path) -> Path:
    """Weights (BatchNorm statistics included) + description as metadata, written atomically."""
    path = Path(path)
    meta = {
        "format": 1,
        "arch": classifier.config.arch,
        "classes": classifier.classes,
        "image_size": classifier.image_size,
        "mean": MEAN,
        "std": STD,
        "config": dataclasses.asdict(classifier.config),
    }
    state = {k: v.detach().cpu() for k, v in classifier.model.state_dict().items()}
    atomic_save_safetensors(state, path, {META_KEY: json.dumps(meta)})
    return path


def load_classifier(path: str | Path, device: str | None = "cpu"):
    """A ``Classifier`` from a file written by :func:`save_classifier` (or the folder holding it)."""
    from dreamdist.classify.train import Classifier

    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a file or folder written by `dreamdist classify --out`")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(META_KEY)
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # safetensors raises its own error types for foreign or damaged files
        raise ValueError(f"{path} is not a readable safetensors file ({exc})") from None
    if raw is None:
        raise ValueError(f"{path} is not a dreamdist classifier (no '{META_KEY}' metadata)")
    meta = json.loads(raw)
    settings = {f.name: meta["config"][f.name] for f in dataclasses.fields(ClassifyConfig) if f.name in meta["config"]}
    config = ClassifyConfig(**{**settings, "device": device})
    model = build_model(meta["arch"], len(meta["classes"]))
    model.load_state_dict(state)
    model.to(device or "cpu").eval()
    return Classifier(model, list(meta["classes"]), config)


def json_safe(value):
    """NaN / inf -> None, recursively, so the JSON is standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(data: dict, path: Path) -> Path:
    """Pretty JSON, written to a temporary file and renamed over ``path``."""
    return atomic_write_text(path, json.dumps(json_safe(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def plot_confusion(confusion: list[list[int]], classes: list[str], title: str, path: Path) -> Path:
    """Row-normalised confusion matrix as a heat map (counts written in the cells up to 15 classes)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("the confusion-matrix plot needs matplotlib: pip install 'dreamdist[eval]'") from None
    counts = torch.tensor(confusion, dtype=torch.float64)  # (C, C)
    rates = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    n = len(classes)
    side = min(3 + 0.45 * n, 16)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
    if n <= 15:
        for t in range(n):
            for p in range(n):
                colour = "white" if rates[t, p] > 0.5 else "black"
                ax.text(p, t, str(int(counts[t, p])), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    return path
