"""A block renderer: loads the backbone, one prompt sampler per class and the CLIP scorer ONCE,
then turns blocks of item numbers into (manifest row, PNG bytes). The local engine calls it in
its own process; the Ray engine runs one per actor."""

from __future__ import annotations

import torch
from PIL import Image

from dreamdist.artifact import load_artifact
from dreamdist.backbones import Backbone, pick_device
from dreamdist.generation import png_bytes
from dreamdist.methods import sampler_for
from dreamdist.pipeline import RenderSettings, make_pipeline, render_block
from dreamdist.synth.config import SynthConfig
from dreamdist.synth.plan import Plan, file_of


class ClipScorer:
    """CLIP cosine between each image's embedding and the text embedding of its class prompt."""

    def __init__(self, model_id: str, texts: list[str], device: str | None = None):
        from dreamdist.evaluation.features import CLIPFeatures

        self.clip = CLIPFeatures(model_id, device=pick_device(device))
        text = self.clip.encode_text(texts)  # (C, p)
        self.text = text / text.norm(dim=-1, keepdim=True)

    def __call__(self, images: list[Image.Image], classes: list[int]) -> list[float]:
        """(n images, their class positions) -> n cosines in [-1, 1]."""
        embeds = self.clip(images)  # (n, p)
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        return [float(s) for s in (embeds * self.text[torch.tensor(classes)]).sum(dim=-1)]


class BlockRenderer:
    """Everything one worker needs, loaded once (see the module docstring)."""

    def __init__(self, config: SynthConfig, plan: Plan):
        self.plan = plan
        artifacts = {c.artifact: load_artifact(c.artifact, config.allow_pickle) for c in plan.classes}
        model = config.model or plan.classes[0].model_id
        self.backbone = Backbone.from_pretrained(model, config.device, config.dtype, config.allow_pickle)
        for artifact in artifacts.values():
            meta = artifact.meta["backbone"]
            self.backbone.check_compatible(meta, artifact.tensors.get("backbone.probe"), str(artifact.path))
        self.samplers = []
        for position, source in enumerate(plan.classes):
            class_name = source.name if source.multiclass else None
            sub = config.generate_config(source.artifact, plan.seed_of(position), class_name)
            self.samplers.append(sampler_for(self.backbone, [artifacts[source.artifact]], sub))
        self.pipe = make_pipeline(self.backbone, config.scheduler)
        self.settings = RenderSettings.resolve(
            self.backbone,
            config.guidance_scale,
            config.num_inference_steps,
            config.height,
            config.width,
            config.negative_prompt,
        )
        self.scorer = None
        if config.filter == "clip":
            texts = [config.clip_prompt.format(c.name) for c in plan.classes]
            self.scorer = ClipScorer(config.clip_model, texts, config.device)

    def _sample(self, k: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        position, index = self.plan.item(k)
        return self.samplers[position](index, generator)

    def render(self, block: list[int]) -> list[tuple[dict, bytes]]:
        """Items ``block`` -> one (row, PNG) per item; rows carry class, index, seed, score, file, prompt."""
        items = [self.plan.item(k) for k in block]
        seeds = [self.plan.seed_of(position) + index for position, index in items]
        images, infos = render_block(self.pipe, self.backbone, self._sample, block, seeds, self.settings)
        scores = self.scorer(images, [p for p, _ in items]) if self.scorer else [None] * len(block)
        out = []
        for (position, index), seed, score, image, info in zip(items, seeds, scores, images, infos):
            source = self.plan.classes[position]
            row = {"class": source.folder, "index": index, "seed": seed, "score": score, "file": file_of(source, index)}
            row.update({key: info[key] for key in ("prompt", "component") if key in info})
            out.append((row, png_bytes(image)))
        return out
