"""Class-specific prior preservation (DreamBooth, METHODS.md §3; optional in Custom Diffusion).

The frozen model generates N images of the plain class prompt ("a dog") ONCE, before any weight
changes; they are cached with their seeds in ``<run>/class_images/`` and reused on reruns and
resumes. Each step draws a batch of them (VAE posterior samples, like the reference latents)
whose denoising loss the loop adds with weight lambda.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from dreamdist.atomic import atomic_write_json
from dreamdist.backbones import Backbone
from dreamdist.data import image_to_tensor, resize_center_crop

CLASS_DIR = "class_images"


@dataclass
class ClassPrior:
    """VAE posteriors of the class images and their prompt.

    ``mean``/``std``: (N, C, h, w) fp32 on CPU. ``ids``: (1, L) token ids of the class prompt.
    """

    mean: torch.Tensor
    std: torch.Tensor
    prompt: str
    ids: torch.Tensor

    def sample(self, backbone: Backbone, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Draw ``batch`` class images -> scaled latents (B, C, h, w) on the backbone's device."""
        index = torch.randint(0, self.mean.shape[0], (batch,), generator=generator)
        noise = torch.randn((batch, *self.mean.shape[1:]), generator=generator)
        latents = self.mean[index] + self.std[index] * noise  # (B, C, h, w)
        return (latents.to(backbone.device) - backbone.latent_shift) * backbone.latent_scale


def _request(backbone: Backbone, prompt: str, seed: int, size: int, steps: int | None) -> dict:
    return {"prompt": prompt, "seed": seed, "size": size, "num_inference_steps": steps, "model": backbone.model_id}


def class_images(
    backbone: Backbone, folder: Path | None, prompt: str, count: int, seed: int, size: int, steps: int | None
) -> list[Image.Image]:
    """``count`` images of ``prompt`` from the (still frozen) backbone; image i uses seed + i.

    With a ``folder``, images already generated there with the same prompt, seeds, size, steps
    and model are reused; otherwise they are generated and written (PNGs, ``manifest.jsonl``,
    and ``request.json`` last, so an interrupted write is regenerated).
    """
    from dreamdist.pipeline import RenderSettings, plain_prompt_sampler, render_images

    request = _request(backbone, prompt, seed, size, steps)
    if folder is not None and (folder / "request.json").is_file():
        cached = json.loads((folder / "request.json").read_text())
        files = [folder / f"{i:05d}.png" for i in range(count)]
        if cached["request"] == request and cached["count"] >= count and all(f.is_file() for f in files):
            return [Image.open(f).convert("RGB") for f in files]
    settings = RenderSettings.resolve(backbone, num_inference_steps=steps, height=size, width=size)
    fields = settings.record(backbone.scheduler_config.get("_class_name", "DDIMScheduler"))
    stream = render_images(backbone, plain_prompt_sampler(backbone, prompt), range(count), seed, settings)
    images, records = [], []
    for index, image, info in stream:
        images.append(image)
        records.append({"index": index, "seed": seed + index, **fields, **info})
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "request.json").unlink(missing_ok=True)
        with open(folder / "manifest.jsonl", "w") as manifest:
            for image, record in zip(images, records):
                image.save(folder / f"{record['index']:05d}.png")
                manifest.write(json.dumps({"file": f"{record['index']:05d}.png", **record}) + "\n")
        atomic_write_json(folder / "request.json", {"request": request, "count": count})
    return images


def build_prior(
    backbone: Backbone, run_dir: Path | None, prompt: str, count: int, seed: int, size: int, steps: int | None
) -> ClassPrior:
    """Generate (or reuse) the class images and encode them once with the VAE.

    Call it in ``setup`` BEFORE the method changes any weight: the prior is the frozen model's.
    """
    from accelerate import PartialState

    folder = Path(run_dir) / CLASS_DIR if run_dir is not None else None
    with PartialState().main_process_first():  # one process generates, the others then read the cache
        images = class_images(backbone, folder, prompt, count, seed, size, steps)
    pixels = torch.stack([image_to_tensor(resize_center_crop(im, size)) for im in images])  # (N, 3, s, s)
    mean, std = backbone.encode_images(pixels)
    return ClassPrior(mean, std, prompt, backbone.tokenize([prompt]))


def prior_from_config(backbone: Backbone, run_dir: Path | None, config, size: int) -> ClassPrior | None:
    """The class prior a method config asks for (``prior_preservation``, ``class_*`` fields), or None."""
    if not config.prior_preservation:
        return None
    prompt = config.class_prompt or f"a {config.class_noun}"
    return build_prior(
        backbone, run_dir, prompt, config.class_images, config.class_seed, size, config.class_inference_steps
    )
