"""Synthetic datasets (METHODS.md §9): DreamDistribution runs -> N images per class -> the best K
by CLIP -> an ImageFolder or WebDataset shards, with a manifest row per generated image.

``synth(config)`` is what ``dreamdist synth`` calls. Layout of the job: ``plan`` (classes, seeds,
blocks), ``worker`` (blocks -> rows + PNGs), ``store`` (crash-safe folder, selection, shards),
``engines`` (local processes or Ray).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dreamdist.synth.config import SynthConfig

__all__ = ["SynthConfig", "SynthResult", "synth"]


@dataclass
class SynthResult:
    """What one process did: images it generated, and whether the dataset is complete."""

    out: Path
    generated: int
    complete: bool
    classes: list[str]
    kept_per_class: int
    manifest: Path | None = None


def synth(config: SynthConfig, overwrite: bool = False) -> SynthResult:
    """Generate (or continue) the dataset of ``config``; the last process to finish writes the dataset.

    ``overwrite``: replace a dataset of other settings in ``config.out`` (otherwise refused).
    """
    from dreamdist.synth.engines import run_local, run_ray
    from dreamdist.synth.plan import build_plan
    from dreamdist.synth.store import MANIFEST, SynthFolder

    plan = build_plan(config)
    folder = SynthFolder(config, plan, overwrite)
    classes = [c.folder for c in plan.classes]
    if folder.open():
        return SynthResult(folder.out, 0, True, classes, config.keep, folder.out / MANIFEST)
    engine = run_ray if config.engine == "ray" else run_local
    generated = engine(config, plan, folder)
    complete = folder.finalize()
    return SynthResult(
        folder.out, generated, complete, classes, config.keep, folder.out / MANIFEST if complete else None
    )
