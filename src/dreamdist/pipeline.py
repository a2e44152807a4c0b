"""Prompt embeddings -> images with a diffusers Stable Diffusion pipeline: the low floor that
generation, the methods (class images, pipeline folders) and synthetic datasets share.

It imports nothing of ours above ``backbone``. The unit of work is a *block*: a list of image
indices rendered in one pipeline call. Image ``i`` owns a CPU generator seeded with ``seed(i)``:
it first draws the image's prompt features (when the sampler draws), then the pipeline draws the
image's initial latents from it, so an image does not depend on which block it lands in (up to
the last float bit of batched kernels; the same blocks give the same bits).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import diffusers
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from dreamdist.backbone import Backbone

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "ddpm": "DDPMScheduler",
    "unipc": "UniPCMultistepScheduler",
}

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
        """Fill unset values from the model's ``dreamdist.json`` defaults, then SD's (7.5, 50, native size)."""
        defaults = backbone.generation_defaults
        return cls(
            guidance_scale=guidance_scale if guidance_scale is not None else defaults.get("guidance_scale", 7.5),
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


def make_pipeline(backbone: Backbone, scheduler: str | None = None) -> StableDiffusionPipeline:
    """A pipeline over the backbone's modules with a fresh inference scheduler.

    The scheduler is always a new object built from the checkpoint's scheduler config (the
    pipeline constructor rewrites some scheduler config values; the training one stays intact).
    """
    config = dict(backbone.scheduler_config)
    if scheduler is None:
        class_name = config.get("_class_name", "DDIMScheduler")
    elif scheduler in SCHEDULERS:
        class_name = SCHEDULERS[scheduler]
    else:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    scheduler_cls = getattr(diffusers, class_name, diffusers.DDIMScheduler)
    if backbone.family == "sdxl":
        from dreamdist.backbone_sdxl import assemble_sdxl_pipeline

        return assemble_sdxl_pipeline(backbone, scheduler_cls.from_config(config))
    return assemble_pipeline(
        backbone.vae, backbone.text_encoder, backbone.tokenizer, backbone.unet, scheduler_cls.from_config(config)
    )


def assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` over in-memory components, without safety checker or progress bar."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_prompt_sampler(backbone: Backbone, prompt: str) -> Sampler:
    """Caption baselines: the same encoded prompt for every image."""
    with torch.no_grad():
        hidden = backbone.encode_text([prompt])[0]  # (L, d)
    return lambda index, generator: (hidden, {"prompt": prompt})


def render_block(
    pipe: StableDiffusionPipeline,
    backbone: Backbone,
    sampler: Sampler,
    indices: list[int],
    seeds: list[int],
    settings: RenderSettings,
) -> tuple[list[Image.Image], list[dict]]:
    """One pipeline call: image ``indices[j]`` drawn from a generator seeded ``seeds[j]``.

    Returns the images and each image's sampler fields (prompt, class, component, ...).
    """
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    drawn = [sampler(i, g) for i, g in zip(indices, generators)]
    embeds = torch.stack([hidden for hidden, _ in drawn]).to(backbone.device, backbone.dtype)  # (b, L, d)
    embeds, pooled = backbone.split_features(embeds)  # SDXL: (b, L, D) and the pooled (b, d_pool)
    extra = {} if pooled is None else {"pooled_prompt_embeds": pooled}
    with torch.no_grad():
        out = pipe(
            prompt_embeds=embeds,
            **extra,
            negative_prompt=[settings.negative_prompt] * len(indices),
            generator=generators,
            guidance_scale=settings.guidance_scale,
            num_inference_steps=settings.num_inference_steps,
            height=settings.height,
            width=settings.width,
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
