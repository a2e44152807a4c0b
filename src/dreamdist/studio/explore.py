"""Explore: images from one run or a weighted mix of runs, through ``dreamdist.generation.generate``.

Each request writes a folder ``RUNS/_explore/<id>/`` (PNGs, ``grid.png``, ``manifest.jsonl``, and
``request.json``: the page's settings), which the page shows and offers as one zip.
"""

from __future__ import annotations

import io
import secrets
import shutil
import threading
import time
import zipfile
from pathlib import Path

from dreamdist.artifact import load_artifact
from dreamdist.backbones import Backbone
from dreamdist.config import GenerateConfig
from dreamdist.generation import generate
from dreamdist.methods import get_method
from dreamdist.studio.runs import check_name, write_json

EXPLORE_DIR = "_explore"
MAX_IMAGES = 64


class Explorer:
    """Generates for the page; keeps one backbone per model for methods that leave it untouched."""

    def __init__(self, root: Path, model: str, device: str | None = None):
        self.root = root
        self.model = model
        self.device = device
        self.backbones: dict[str, Backbone] = {}
        self.lock = threading.Lock()  # one generation at a time: they share the backbone and the CPU

    def backbone_for(self, artifact_paths: list[Path]) -> Backbone | None:
        """A cached backbone when the method samples prompts only (DreamDistribution); None: let
        ``generate`` load a fresh one (methods that load weights into the backbone)."""
        artifact = load_artifact(artifact_paths[0])
        if get_method(artifact.method).prepare is not None:
            return None
        model = artifact.meta["backbone"]["model_id"]
        if model not in self.backbones:
            self.backbones[model] = Backbone.from_pretrained(model, self.device)
        return self.backbones[model]

    def generate(self, request: dict) -> dict:
        """Run one page request; returns the folder id, image files and manifest records.

        ``request``: ``{"runs": [names], "weights": [w] | None, "gamma", "sampler", "prefix", "suffix",
        "prompt", "seed", "num_images", "num_inference_steps", "guidance_scale", "scheduler"}``; empty
        text fields mean "as trained".
        """
        runs = [check_name(name) for name in request.get("runs") or []]
        if not runs:
            raise ValueError("pick at least one run to sample from")
        paths = [self.root / name for name in runs]
        for name, path in zip(runs, paths):
            if not (path / "dreamdist.safetensors").is_file():
                raise ValueError(f"run {name!r} has no artifact yet: let it finish (or stop and resume it) first")
        num_images = int(request.get("num_images") or 4)
        if not 1 <= num_images <= MAX_IMAGES:
            raise ValueError(f"number of images must be 1-{MAX_IMAGES}; got {num_images}")
        weights = request.get("weights")
        if len(runs) > 1 and weights is not None:
            total = sum(float(w) for w in weights)
            weights = [float(w) / total for w in weights] if total > 0 else weights  # sliders need not sum to 1
        folder_id, out = new_folder(self.root / EXPLORE_DIR)
        config = GenerateConfig(
            out=str(out),
            artifacts=[str(p) for p in paths],
            weights=[float(w) for w in weights] if len(runs) > 1 and weights is not None else None,
            num_images=num_images,
            prefix=_text(request.get("prefix")),
            suffix=_text(request.get("suffix")),
            prompt=_text(request.get("prompt")),
            sampler=request.get("sampler") or "mixture",
            gamma=float(request.get("gamma", 1.0)),
            guidance_scale=_number(request.get("guidance_scale"), float),
            num_inference_steps=_number(request.get("num_inference_steps"), int),
            scheduler=_text(request.get("scheduler")),
            seed=int(request.get("seed") or 0),
            progress=False,
        )
        try:
            with self.lock:
                result = generate(config, backbone=self.backbone_for(paths))
            write_json(out / "request.json", {**request, "runs": runs, "weights": config.weights})
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)  # a failed request leaves nothing behind
            raise
        records = [line for line in result.manifest.read_text().splitlines() if line.strip()]
        return {"id": folder_id, "files": [p.name for p in result.paths], "manifest": records}


def new_folder(parent: Path) -> tuple[str, Path]:
    """(id, path) of a new, empty folder under ``parent``: a timestamp plus random bits, created
    exclusively, so two servers (or threads) on one runs folder never share one."""
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        folder_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
        try:
            (parent / folder_id).mkdir()
        except FileExistsError:
            continue
        return folder_id, parent / folder_id


def _text(value) -> str | None:
    """Empty form fields mean "not given"."""
    return value if isinstance(value, str) and value.strip() else None


def _number(value, kind):
    return None if value in (None, "") else kind(value)


def zip_folder(folder: Path) -> bytes:
    """The PNGs, ``manifest.jsonl`` and ``request.json`` of an explore folder as one zip."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix in (".png", ".jsonl", ".json"):
                archive.write(path, path.name)
    return buffer.getvalue()


def explore_folder(root: Path, folder_id: str) -> Path:
    """``RUNS/_explore/<id>`` after checking the id is one folder name."""
    folder = root / EXPLORE_DIR / check_name(folder_id)
    if not folder.is_dir():
        raise FileNotFoundError(f"no generated set {folder_id!r}")
    return folder
