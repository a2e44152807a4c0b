"""Generation: artifacts (or a plain prompt) -> images through the diffusers pipeline.

Every image ``i`` owns a CPU generator seeded with ``seed + i``: it first draws the image's prompt
sample (when the method samples prompts), then the pipeline draws its initial latents from it.
So image ``i`` is the same whatever the batch size, the batch it lands in, or the device.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm

from dreamdist.artifact import Artifact, load_artifact
from dreamdist.backbone import Backbone
from dreamdist.config import GenerateConfig
from dreamdist.methods import PromptSampler, prepare_backbone, sampler_for
from dreamdist.prompts import prompt_set

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "ddpm": "DDPMScheduler",
    "unipc": "UniPCMultistepScheduler",
}


@dataclass
class GenerationResult:
    """Images in order, their files, and the manifest path."""

    images: list[Image.Image]
    paths: list[Path] = field(default_factory=list)
    manifest: Path | None = None
    grid: Path | None = None


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


def plain_prompt_sampler(backbone: Backbone, prompt: str) -> PromptSampler:
    """Caption baselines: the same encoded prompt for every image."""
    with torch.no_grad():
        hidden = backbone.encode_text([prompt])[0]  # (L, d)
    return lambda index, generator: (hidden, {"prompt": prompt})


def _jobs(backbone: Backbone, artifacts: list[Artifact], config: GenerateConfig) -> list[tuple[PromptSampler, dict]]:
    """One (sampler, manifest fields) per prompt: the prompt set's prompts, or the single prompt."""
    if config.prompt_set is None:
        if artifacts:
            return [(sampler_for(backbone, artifacts, config), {})]
        return [(plain_prompt_sampler(backbone, config.prompt), {})]
    jobs = []
    for index, (category, template) in enumerate(prompt_set(config.prompt_set)):
        sub = dataclasses.replace(config, prompt=template, prompt_set=None)
        info = {"prompt_set": config.prompt_set, "prompt_index": index, "category": category, "template": template}
        jobs.append((sampler_for(backbone, artifacts, sub), info))
    return jobs


def generate_images(
    backbone: Backbone, artifacts: list[Artifact], config: GenerateConfig, prepared: bool = False
) -> tuple[list[Image.Image], list[dict]]:
    """Run the pipeline in batches; return images and one manifest record per image.

    Args:
        artifacts: loaded artifacts (none: plain ``config.prompt``).
        prepared: the backbone already holds the artifacts' weights (sample grids during training);
            otherwise the method's ``prepare`` loads them into ``backbone`` first (in place).
    With ``config.prompt_set``, image ``i`` is image ``i % num_images`` of prompt ``i // num_images``.
    """
    if artifacts and not prepared:
        prepare_backbone(backbone, artifacts)
    jobs = _jobs(backbone, artifacts, config)
    total = config.num_images * len(jobs)
    pipe = make_pipeline(backbone, config.scheduler)
    defaults = backbone.generation_defaults
    guidance = config.guidance_scale if config.guidance_scale is not None else defaults.get("guidance_scale", 7.5)
    steps = config.num_inference_steps or defaults.get("num_inference_steps", 50)
    height = config.height or backbone.sample_size
    width = config.width or backbone.sample_size
    images, records = [], []
    bar = tqdm(total=total, disable=not config.progress, desc="generating", unit="img")
    for start in range(0, total, config.batch_size):
        indices = range(start, min(start + config.batch_size, total))
        generators = [torch.Generator().manual_seed(config.seed + i) for i in indices]
        drawn = [jobs[i // config.num_images][0](i, g) for i, g in zip(indices, generators)]
        embeds = torch.stack([hidden for hidden, _ in drawn]).to(backbone.device, backbone.dtype)  # (b, L, d)
        with torch.no_grad():
            out = pipe(
                prompt_embeds=embeds,
                negative_prompt=[config.negative_prompt] * len(indices),
                generator=generators,
                guidance_scale=guidance,
                num_inference_steps=steps,
                height=height,
                width=width,
                output_type="pil",
            )
        images += out.images
        for i, (_, info) in zip(indices, drawn):
            records.append(
                {
                    "index": i,
                    "seed": config.seed + i,
                    "guidance_scale": guidance,
                    "num_inference_steps": steps,
                    "scheduler": type(pipe.scheduler).__name__,
                    "negative_prompt": config.negative_prompt,
                    "size": [width, height],
                    **jobs[i // config.num_images][1],
                    **info,
                }
            )
        bar.update(len(indices))
    bar.close()
    return images, records


def make_grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    """Tile images (all the size of the first) into a near-square grid."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for i, image in enumerate(images):
        grid.paste(image.resize((width, height)), ((i % columns) * width, (i // columns) * height))
    return grid


def generate(config: GenerateConfig, backbone: Backbone | None = None) -> GenerationResult:
    """Load artifacts and backbone, generate, and write PNGs, ``grid.png`` and ``manifest.jsonl``."""
    artifacts = [load_artifact(path, config.allow_pickle) for path in config.artifacts]
    if backbone is None:
        model = config.model or (artifacts[0].meta["backbone"]["model_id"] if artifacts else None)
        if model is None:
            raise ValueError("--model is required when generating from a plain --prompt")
        backbone = Backbone.from_pretrained(model, config.device, config.dtype, config.allow_pickle)
    for artifact in artifacts:
        backbone.check_compatible(artifact.meta["backbone"], artifact.tensors.get("backbone.probe"), str(artifact.path))
    images, records = generate_images(backbone, artifacts, config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = [{"path": str(a.path), "sha256": a.sha256()} for a in artifacts]
    paths = []
    with open(out / "manifest.jsonl", "w") as manifest:
        for image, record in zip(images, records):
            path = out / f"{record['index']:05d}.png"
            image.save(path)
            paths.append(path)
            method = artifacts[0].method if artifacts else "caption"
            record = {"file": path.name, "method": method, **record, "model": backbone.model_id, "artifacts": sources}
            if config.weights is not None:
                record["weights"] = list(config.weights)
            manifest.write(json.dumps(record) + "\n")
    grid = out / "grid.png"
    make_grid(images).save(grid)
    return GenerationResult(images, paths, out / "manifest.jsonl", grid)
