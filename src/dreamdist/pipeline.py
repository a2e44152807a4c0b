"""Prompt embeddings -> images with the backbone family's diffusers pipeline: the low floor that
generation, the methods (class images, pipeline folders) and synthetic datasets share.

It imports nothing of ours above ``backbones``. The unit of work is a *block*: a list of image
indices rendered in one pipeline call. Image ``i`` owns a CPU generator seeded with ``seed(i)``:
it first draws the image's prompt features (when the sampler draws), then the pipeline draws the
image's initial latents from it, so an image does not depend on which block it lands in (up to
the last float bit of batched kernels; the same blocks give the same bits).

Besides text-to-image, the same prompt features drive the image-conditioned pipelines of the
backbone's family (``Backbone.pipelines``): img2img, inpainting and ControlNet where it has them.
``ImageInputs`` holds their images (already at the output size) and per-call arguments; every
image of a block gets its own copy of the init image, so each generator draws its own VAE sample.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import DiffusionPipeline
from PIL import Image, ImageOps

from dreamdist.backbones import Backbone, controlnet_family
from dreamdist.backbones.base import with_article
from dreamdist.config import PIPELINE_NAMES

log = logging.getLogger(__name__)

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "ddpm": "DDPMScheduler",
    "unipc": "UniPCMultistepScheduler",
}

DEFAULT_STRENGTH = {"img2img": 0.8, "inpaint": 1.0}  # diffusers' defaults (inpaint: the masked region from noise)

# (image index, the image's own CPU generator) -> (prompt features (L, d), manifest fields)
Sampler = Callable[[int, torch.Generator], tuple[torch.Tensor, dict]]


@dataclass(frozen=True)
class RenderSettings:
    """Resolved pipeline settings of one generation (no ``None`` left)."""

    guidance_scale: float
    num_inference_steps: int
    height: int
    width: int
    negative_prompt: str = ""

    @classmethod
    def resolve(
        cls,
        backbone: Backbone,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        height: int | None = None,
        width: int | None = None,
        negative_prompt: str = "",
    ) -> RenderSettings:
        """Fill unset values from the model's ``dreamdist.json`` defaults, then the family's guidance
        (``Backbone.default_guidance``; SD: 7.5), 50 steps and the native size."""
        defaults = backbone.generation_defaults
        return cls(
            guidance_scale=guidance_scale if guidance_scale is not None else backbone.default_guidance,
            num_inference_steps=num_inference_steps or defaults.get("num_inference_steps", 50),
            height=height or backbone.sample_size,
            width=width or backbone.sample_size,
            negative_prompt=negative_prompt,
        )

    def record(self, scheduler_name: str) -> dict:
        """The manifest fields of these settings."""
        return {
            "guidance_scale": self.guidance_scale,
            "num_inference_steps": self.num_inference_steps,
            "scheduler": scheduler_name,
            "negative_prompt": self.negative_prompt,
            "size": [self.width, self.height],
        }


def make_pipeline(
    backbone: Backbone, scheduler: str | None = None, kind: str = "text2img", controlnet=None
) -> DiffusionPipeline:
    """A pipeline over the backbone's modules with a fresh inference scheduler.

    The scheduler is always a new object built from the checkpoint's scheduler config (the
    pipeline constructor rewrites some scheduler config values; the training one stays intact).
    ``kind`` is one of ``PIPELINE_NAMES`` that the family has (``Backbone.pipelines``); ``controlnet``
    (a ``ControlNetModel``, see ``load_controlnet``) is required by, and only taken by, ``controlnet``.
    """
    config = dict(backbone.scheduler_config)
    if scheduler is None:
        class_name = config.get("_class_name", "DDIMScheduler")
    elif scheduler in SCHEDULERS:
        class_name = SCHEDULERS[scheduler]
    else:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if kind not in PIPELINE_NAMES:
        raise ValueError(f"unknown pipeline {kind!r}; choose one of {', '.join(PIPELINE_NAMES)}")
    backbone.check_pipeline(kind)
    if (kind == "controlnet") != (controlnet is not None):
        raise ValueError("a ControlNet model goes with --pipeline controlnet, and that pipeline needs one")
    scheduler_cls = getattr(diffusers, class_name, diffusers.DDIMScheduler)
    return backbone.assemble_pipeline(kind, scheduler_cls.from_config(config), controlnet)


def plain_prompt_sampler(backbone: Backbone, prompt: str) -> Sampler:
    """Caption baselines: the same encoded prompt for every image."""
    with torch.no_grad():
        hidden = backbone.encode_text([prompt])[0]  # (L, d)
    return lambda index, generator: (hidden, {"prompt": prompt})


def render_block(
    pipe: DiffusionPipeline,
    backbone: Backbone,
    sampler: Sampler,
    indices: list[int],
    seeds: list[int],
    settings: RenderSettings,
    inputs: ImageInputs | None = None,
) -> tuple[list[Image.Image], list[dict]]:
    """One pipeline call: image ``indices[j]`` drawn from a generator seeded ``seeds[j]``.

    ``inputs``: the init image / mask / control image of an image-conditioned ``pipe`` (None: text2img).
    Returns the images and each image's sampler fields (prompt, class, component, ...).
    """
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    drawn = [sampler(i, g) for i, g in zip(indices, generators)]
    features = torch.stack([hidden for hidden, _ in drawn]).to(backbone.device, backbone.dtype)  # (b, L, d)
    with torch.no_grad():
        prompts = backbone.pipeline_call_kwargs(features, settings.negative_prompt, settings.guidance_scale)
        out = pipe(
            **prompts,  # the family's prompt embeddings, negatives and guidance arguments
            generator=generators,
            num_inference_steps=settings.num_inference_steps,
            **(inputs or ImageInputs()).call_kwargs(len(indices), settings),
            output_type="pil",
        )
    return out.images, [info for _, info in drawn]


def blocks(indices: Iterable[int], batch_size: int) -> Iterator[list[int]]:
    """Consecutive runs of ``batch_size`` indices (the last may be shorter)."""
    block: list[int] = []
    for index in indices:
        block.append(index)
        if len(block) == batch_size:
            yield block
            block = []
    if block:
        yield block


def render_images(
    backbone: Backbone,
    sampler: Sampler,
    indices: Iterable[int],
    seed: int,
    settings: RenderSettings,
    batch_size: int = 4,
    scheduler: str | None = None,
) -> Iterator[tuple[int, Image.Image, dict]]:
    """Stream ``(index, image, sampler fields)`` for ``indices``; image ``i`` uses seed ``seed + i``.

    Nothing is kept after an image is yielded: memory is flat in the number of images.
    """
    pipe = make_pipeline(backbone, scheduler)
    for block in blocks(indices, batch_size):
        images, infos = render_block(pipe, backbone, sampler, block, [seed + i for i in block], settings)
        yield from zip(block, images, infos)


def make_grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    """Tile images (all the size of the first) into a near-square grid."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for i, image in enumerate(images):
        grid.paste(image.resize((width, height)), ((i % columns) * width, (i // columns) * height))
    return grid


# ---------------------------------------------------------------- image-conditioned pipelines
@dataclass(frozen=True)
class ImageInputs:
    """What img2img / inpaint / ControlNet take besides prompt features (text2img: nothing).

    ``init_image`` (img2img, inpaint), ``mask`` (inpaint: white = redraw, black = keep) and
    ``control_image`` (controlnet) are PIL images; ``resized`` brings them to the output size.
    """

    kind: str = "text2img"
    init_image: Image.Image | None = None
    mask: Image.Image | None = None
    control_image: Image.Image | None = None
    strength: float = 1.0
    controlnet_scale: float = 1.0

    @property
    def source(self) -> Image.Image | None:
        """The image whose size the output takes by default (init image, else control image)."""
        return self.init_image if self.init_image is not None else self.control_image

    def output_size(self, height: int | None, width: int | None) -> tuple[int | None, int | None]:
        """Unset sides from the source image, rounded down to multiples of 8 (as the pipelines need)."""
        if self.source is None:
            return height, width
        source_width, source_height = self.source.size
        return height or max(8, source_height // 8 * 8), width or max(8, source_width // 8 * 8)

    def resized(self, height: int, width: int) -> ImageInputs:
        """The images at ``width`` x ``height`` (the mask with nearest-neighbour, so it stays binary)."""

        def fit(image, resample):
            return None if image is None or image.size == (width, height) else image.resize((width, height), resample)

        changes = {
            "init_image": fit(self.init_image, Image.Resampling.BICUBIC),
            "mask": fit(self.mask, Image.Resampling.NEAREST),
            "control_image": fit(self.control_image, Image.Resampling.BICUBIC),
        }
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def call_kwargs(self, batch: int, settings: RenderSettings) -> dict:
        """Pipeline call arguments for ``batch`` images (one copy of each image per image of the block)."""
        size = {"height": settings.height, "width": settings.width}
        if self.kind == "text2img":
            return size
        if self.kind == "img2img":  # the size is the init image's (resized to the output size)
            return {"image": [self.init_image] * batch, "strength": self.strength}
        if self.kind == "inpaint":
            images = {"image": [self.init_image] * batch, "mask_image": [self.mask] * batch}
            return {**size, **images, "strength": self.strength}
        return {**size, "image": [self.control_image] * batch, "controlnet_conditioning_scale": self.controlnet_scale}

    def record(self) -> dict:
        """Manifest fields (none for text2img, so its manifests stay as they were)."""
        if self.kind == "text2img":
            return {}
        if self.kind == "controlnet":
            return {"pipeline": self.kind, "controlnet_scale": self.controlnet_scale}
        return {"pipeline": self.kind, "strength": self.strength}


def read_image(path: str | Path, flag: str, mode: str = "RGB") -> Image.Image:
    """An image file as a PIL image in ``mode``; missing or undecodable files raise one clear line."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    try:
        with Image.open(file) as image:
            return (ImageOps.exif_transpose(image) or image).convert(mode)  # camera orientation applied
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{flag} {path} is not an image PIL can decode ({reason}); pass a PNG, JPEG or WebP") from None


def load_image_inputs(
    kind: str,
    init_image: str | None = None,
    mask: str | None = None,
    control_image: str | None = None,
    strength: float | None = None,
    controlnet_scale: float | None = None,
) -> ImageInputs:
    """Read the files a pipeline kind needs (the mask is resized to the init image when they differ)."""
    if kind not in PIPELINE_NAMES:
        raise ValueError(f"unknown pipeline {kind!r}; choose one of {', '.join(PIPELINE_NAMES)}")
    init = read_image(init_image, "--init-image") if kind in ("img2img", "inpaint") else None
    mask_image = read_image(mask, "--mask", mode="L") if kind == "inpaint" else None
    if mask_image is not None and mask_image.size != init.size:
        log.info("--mask is %dx%d, --init-image %dx%d: the mask is resized", *mask_image.size, *init.size)
        mask_image = mask_image.resize(init.size, Image.Resampling.NEAREST)
    control = read_image(control_image, "--control-image") if kind == "controlnet" else None
    return ImageInputs(
        kind=kind,
        init_image=init,
        mask=mask_image,
        control_image=control,
        strength=strength if strength is not None else DEFAULT_STRENGTH.get(kind, 1.0),
        controlnet_scale=controlnet_scale if controlnet_scale is not None else 1.0,
    )


def controlnet_config(path: str) -> dict:
    """The ``config.json`` of a ControlNet folder (or cached hub id), checked to be a ``ControlNetModel``."""
    from diffusers import ControlNetModel

    try:
        config = dict(ControlNetModel.load_config(path))
    except (OSError, ValueError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise OSError(
            f"--controlnet {path}: no ControlNet there ({reason}); pass a diffusers ControlNetModel folder "
            "(config.json + diffusion_pytorch_model.safetensors) or a hub id that is cached locally"
        ) from None
    kind = config.get("_class_name")
    if kind != "ControlNetModel":
        raise ValueError(f"--controlnet {path} holds a {kind or 'model without _class_name'}, not a ControlNetModel")
    return config


def load_controlnet(path: str, backbone: Backbone, allow_pickle: bool = False):
    """A diffusers ``ControlNetModel`` for ``backbone`` (its device and dtype), or one clear error line.

    The ControlNet must be of the backbone's family (``Backbone.recognises_controlnet``; SDXL
    ControlNets take ``text_time`` added conditioning) and base (its cross-attention width is the
    denoiser's: 768 SD 1.x, 1024 SD 2.x).
    """
    from diffusers import ControlNetModel

    backbone.check_pipeline("controlnet")
    config = controlnet_config(path)
    family = controlnet_family(config)
    if family.name != backbone.family:
        raise ValueError(
            f"--controlnet {path} is {with_article(family.display_name)} ControlNet, but {backbone.model_id!r} is "
            f"{with_article(backbone.display_name)} backbone; use a ControlNet trained for {backbone.display_name}"
        )
    theirs, ours = config.get("cross_attention_dim"), backbone.denoiser.config.cross_attention_dim
    if json.dumps(theirs) != json.dumps(ours):
        raise ValueError(
            f"--controlnet {path} was trained for a base with cross_attention_dim={theirs}, but the UNet of "
            f"{backbone.model_id!r} has {ours} (SD 1.x: 768, SD 2.x: 1024); use a ControlNet of the same base"
        )
    channels = config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)  # diffusers' default
    if 2 ** (len(channels) - 1) != backbone.vae_scale_factor:
        raise ValueError(
            f"--controlnet {path} downsamples its control image {2 ** (len(channels) - 1)}x, but the latents of "
            f"{backbone.model_id!r} are {backbone.vae_scale_factor}x smaller than the image; use a ControlNet of that base"
        )
    safe = {} if allow_pickle else {"use_safetensors": True}
    try:
        controlnet = ControlNetModel.from_pretrained(path, torch_dtype=backbone.dtype, **safe)
    except (OSError, ValueError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        hint = " Pass --allow-pickle for .bin weights." if "safetensors" in reason.lower() else ""
        raise OSError(f"could not load the ControlNet {path}: {reason}.{hint}") from None
    return controlnet.to(backbone.device).eval()
