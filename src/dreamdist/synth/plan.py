"""The job: which class comes from which run, and which image index has which seed.

Images are numbered class-major: item ``k`` is image ``i = k % N`` of class ``c = k // N``. Work
is cut into *blocks* of ``batch_size`` consecutive items (one pipeline call each); block ``j``
belongs to process ``j % world_size``. Blocks, and so the batches the pipeline sees, are the
same whatever the process count or the engine, which is what makes their images bit-identical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dreamdist.artifact import Artifact, load_artifact
from dreamdist.synth.config import MAX_PER_CLASS, SynthConfig


@dataclass(frozen=True)
class ClassSource:
    """One class of the dataset: its folder (ImageFolder label), its name in words (the artifact's class
    name, or the folder with '_' read as spaces), the artifact that holds it, and its row there."""

    folder: str
    name: str
    artifact: str
    row: int
    multiclass: bool
    sha256: str
    model_id: str


@dataclass(frozen=True)
class Plan:
    """Classes in dataset order, images per class, block size and base seed."""

    classes: tuple[ClassSource, ...]
    per_class: int
    batch_size: int
    seed: int

    @property
    def total(self) -> int:
        return len(self.classes) * self.per_class

    def item(self, k: int) -> tuple[int, int]:
        """Item ``k`` -> (class position, image index within the class)."""
        return divmod(k, self.per_class)

    def seed_of(self, position: int) -> int:
        """Seed of image 0 of the class at ``position``; image i uses this + i."""
        return self.seed + position * MAX_PER_CLASS

    def blocks(self, rank: int = 0, world_size: int = 1) -> list[list[int]]:
        """The blocks of items of process ``rank`` (all blocks when ``world_size`` is 1)."""
        starts = range(0, self.total, self.batch_size)
        return [
            list(range(start, min(start + self.batch_size, self.total)))
            for j, start in enumerate(starts)
            if j % world_size == rank
        ]


def check_folder_name(name: str, where: str) -> None:
    """Class names become folder names: refuse what cannot be one."""
    if not name.strip() or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
        raise ValueError(f"class name {name!r} ({where}) cannot be a folder name; rename the class")


def _source(artifact: Artifact, folder: str | None = None, row: int = 0) -> ClassSource:
    """Class ``row`` of a multi-class artifact, or (``folder`` given, from --run) the class named by
    ``folder``: its row in a multi-class artifact, the only class of a single-class one."""
    if artifact.method != "dreamdistribution":
        raise ValueError(f"{artifact.path} is a {artifact.method} run; synth samples DreamDistribution runs")
    names = artifact.meta["class_names"]
    multiclass = bool(artifact.meta.get("multiclass"))
    if folder is None:
        name, folder = names[row], names[row].replace(" ", "_")  # training read '_' in folder names as spaces
    elif multiclass:
        matches = [i for i, n in enumerate(names) if n in (folder, folder.replace("_", " "))]
        if not matches:
            raise ValueError(f"class {folder!r} is not in {artifact.path}; its classes: {names}")
        row, name = matches[0], names[matches[0]]
    else:
        name = folder.replace("_", " ")
    model_id = artifact.meta["backbone"]["model_id"]
    return ClassSource(folder, name, str(artifact.path), row, multiclass, artifact.sha256(), model_id)


def parse_runs(items: list[str]) -> dict[str, str]:
    """``["dog=runs/dog", "cat=runs/cat"]`` -> {class: run} (the first '=' splits)."""
    runs = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--run takes CLASS=RUN items, e.g. --run goldfish=runs/goldfish; got {item!r}")
        if name in runs:
            raise ValueError(f"class {name!r} is given twice in --run")
        runs[name] = path
    return runs


def build_plan(config: SynthConfig) -> Plan:
    """Resolve the classes (a multi-class artifact, or --run CLASS=RUN items sorted by class name)."""
    if config.artifact is not None:
        artifact = load_artifact(config.artifact, config.allow_pickle)
        names = artifact.meta.get("class_names", [])
        if not artifact.meta.get("multiclass"):
            name = names[0].replace(" ", "_") if names else "CLASS"
            raise ValueError(
                f"{config.artifact} is a single-class run; synth needs a multi-class run (train --multiclass on a "
                f"folder of class sub-folders) or one run per class: --run {name}={config.artifact} --run OTHER=RUN ..."
            )
        classes = [_source(artifact, row=row) for row in range(len(names))]
    else:
        runs = sorted(parse_runs(config.run).items())
        classes = [_source(load_artifact(path, config.allow_pickle), name) for name, path in runs]
    for source in classes:
        check_folder_name(source.folder, source.artifact)
    models = {c.model_id for c in classes}
    if len(models) > 1 and config.model is None:
        raise ValueError(f"the runs were trained on different backbones {sorted(models)}; synth needs one")
    return Plan(tuple(classes), config.per_class, config.batch_size, config.seed)


def process_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun / accelerate launch (RANK, WORLD_SIZE), else (0, 1)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world


def file_of(source: ClassSource, index: int) -> str:
    """The image's path inside the dataset folder."""
    return str(Path(source.folder) / f"{index:06d}.png")
