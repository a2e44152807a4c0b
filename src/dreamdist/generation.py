"""Generation: artifacts (or a plain prompt) -> images, streamed to disk with a manifest.

Every image ``i`` owns a CPU generator seeded with ``seed + i`` (``dreamdist.pipeline``): it first
draws the image's prompt sample (when the method samples prompts), then the pipeline draws its
initial latents from it. So image ``i`` is the same whatever the batch size, the batch it lands in,
or the device (up to the last float bit of batched kernels).

``generate`` writes each PNG (tmp file + rename) and then its manifest row as soon as the image is
made, holds no image after that, and a rerun of the same command skips the images already written.
A folder holding another request's images (other settings, or more images than asked) is refused
unless ``overwrite`` (``--overwrite``) is given, which removes what the earlier generate wrote
(``dreamdist.outputs``: one policy for every command).

``--pipeline img2img | inpaint | controlnet`` hands the same prompt features to the family's
image-conditioned diffusers pipeline (``Backbone.pipelines``); its input files are read
(and checked) before the model is loaded, and their contents are part of the request.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from dreamdist.artifact import Artifact, load_artifact
from dreamdist.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from dreamdist.backbones import Backbone
from dreamdist.config import GenerateConfig
from dreamdist.methods import PromptSampler, get_method, prepare_backbone, sampler_for
from dreamdist.outputs import GENERATE, check_output, read_record
from dreamdist.pipeline import (
    SCHEDULERS,
    ImageInputs,
    RenderSettings,
    blocks,
    controlnet_config,
    load_controlnet,
    load_image_inputs,
    make_grid,
    make_pipeline,
    plain_prompt_sampler,
    render_block,
)
from dreamdist.prompts import prompt_set

__all__ = [
    "SCHEDULERS",
    "GenerationResult",
    "generate",
    "generate_images",
    "image_inputs",
    "make_grid",
    "make_pipeline",
    "stream_images",
]

MANIFEST = "manifest.jsonl"
REQUEST = "request.json"
GRID_IMAGES = 64  # grid.png shows the first images only: memory stays flat in --num-images


@dataclass
class GenerationResult:
    """The image files in order, the manifest and the grid; ``images`` opens the files when asked."""

    paths: list[Path] = field(default_factory=list)
    manifest: Path | None = None
    grid: Path | None = None
    reused: int = 0  # images an earlier run of the same request had written

    @property
    def images(self) -> list[Image.Image]:
        """The images, read from disk (hold them only for small runs)."""
        out = []
        for path in self.paths:
            with Image.open(path) as image:
                out.append(image.convert("RGB"))
        return out


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


def _settings(backbone: Backbone, config: GenerateConfig, inputs: ImageInputs) -> RenderSettings:
    """Render settings; image pipelines take the size of their init / control image unless told."""
    height, width = inputs.output_size(config.height, config.width)
    settings = RenderSettings.resolve(
        backbone, config.guidance_scale, config.num_inference_steps, height, width, config.negative_prompt
    )
    if inputs.kind in ("img2img", "inpaint") and int(settings.num_inference_steps * inputs.strength) < 1:
        raise ValueError(
            f"--strength {inputs.strength} of {settings.num_inference_steps} steps denoises no step; "
            "raise --strength or --num-inference-steps"
        )
    return settings


def image_inputs(config: GenerateConfig) -> ImageInputs:
    """The init image / mask / control image of ``config.pipeline`` (nothing for text2img), read and checked."""
    return load_image_inputs(
        config.pipeline, config.init_image, config.mask, config.control_image, config.strength, config.controlnet_scale
    )


def _input_files(config: GenerateConfig) -> dict[str, str]:
    """sha256 of each input image file: a changed file at the same path is a new request."""
    names = ("init_image", "mask", "control_image")
    return {n: hashlib.sha256(Path(getattr(config, n)).read_bytes()).hexdigest() for n in names if getattr(config, n)}


def stream_images(
    backbone: Backbone,
    artifacts: list[Artifact],
    config: GenerateConfig,
    prepared: bool = False,
    done: set[int] | frozenset[int] = frozenset(),
    inputs: ImageInputs | None = None,
) -> Iterator[tuple[Image.Image, dict]]:
    """Yield ``(image, manifest record)`` in index order, one pipeline call per ``batch_size`` block.

    Args:
        artifacts: loaded artifacts (none: plain ``config.prompt``).
        prepared: the backbone already holds the artifacts' weights (sample grids during training);
            otherwise the method's ``prepare`` loads them into ``backbone`` first (in place).
        done: indices not to yield. Blocks stay aligned to multiples of ``batch_size``: a block
            with a missing image is rendered whole, so a resumed run computes the same bits.
        inputs: the images of ``config.pipeline`` when already read (default: read them here).
    With ``config.prompt_set``, image ``i`` is image ``i % num_images`` of prompt ``i // num_images``.
    """
    if artifacts and not prepared:
        prepare_backbone(backbone, artifacts)
    inputs = image_inputs(config) if inputs is None else inputs
    settings = _settings(backbone, config, inputs)
    inputs = inputs.resized(settings.height, settings.width)
    controlnet = load_controlnet(config.controlnet, backbone, config.allow_pickle) if config.controlnet else None
    jobs = _jobs(backbone, artifacts, config)
    total = config.num_images * len(jobs)
    pipe = make_pipeline(backbone, config.scheduler, config.pipeline, controlnet)
    fields = {**settings.record(type(pipe.scheduler).__name__), **inputs.record()}

    def sampler(index, generator):
        return jobs[index // config.num_images][0](index, generator)

    bar = tqdm(total=total, initial=len(done), disable=not config.progress, desc="generating", unit="img")
    for block in blocks(range(total), config.batch_size):
        if all(i in done for i in block):
            continue
        seeds = [config.seed + i for i in block]
        images, infos = render_block(pipe, backbone, sampler, block, seeds, settings, inputs)
        for i, image, info in zip(block, images, infos):
            if i in done:
                continue
            record = {"index": i, "seed": config.seed + i, **fields, **jobs[i // config.num_images][1], **info}
            yield image, record
            bar.update(1)
    bar.close()


def generate_images(
    backbone: Backbone, artifacts: list[Artifact], config: GenerateConfig, prepared: bool = False
) -> tuple[list[Image.Image], list[dict]]:
    """All images and records in memory (small jobs such as sample grids); see ``stream_images``."""
    images, records = [], []
    for image, record in stream_images(backbone, artifacts, config, prepared):
        images.append(image)
        records.append(record)
    return images, records


def _private_backbone(backbone: Backbone, artifacts: list[Artifact]) -> Backbone:
    """A copy of the caller's backbone when the artifacts' method loads weights or tokens into it."""
    if artifacts and any(get_method(a.method).prepare is not None for a in artifacts):
        return copy.deepcopy(backbone)
    return backbone


def _request(config: GenerateConfig, backbone: Backbone | None, artifacts: list[Artifact]) -> dict:
    """What decides the images: same request -> same files (batch size and image count aside).

    ``backbone=None``: the part known before the model loads (no model, device, dtype).
    """
    options = dataclasses.asdict(config)
    for key in ("out", "artifacts", "num_images", "batch_size", "progress", "allow_pickle"):
        options.pop(key)
    request = {}
    if backbone is not None:
        request.update(model=backbone.model_id, device=str(backbone.device), dtype=str(backbone.dtype))
    request.update(artifacts=[a.sha256() for a in artifacts], options=options)
    files = _input_files(config)
    if files:  # text2img requests stay as they were
        request["input_files"] = files
    return request


def _differences(previous: dict, request: dict) -> list[str]:
    """What differs between an earlier request and (the keys of) this one, as flags where they are flags."""
    before = previous.get("options", {})
    changed = [f"--{k.replace('_', '-')}" for k, v in request.get("options", {}).items() if before.get(k) != v]
    return changed + [k for k in request if k != "options" and previous.get(k) != request[k]]


def claim_output(out: Path, request: dict, num_images: int, overwrite: bool) -> str:
    """The output policy (``dreamdist.outputs``) for this request: resume the same request's images,
    refuse another's (unless ``overwrite``, which removes them). A partial request (``_request``
    without backbone) compares only its keys, so a refusal comes before the model loads."""
    previous = read_record(out / REQUEST)
    reason, resumable = "", False
    if previous is not None:
        changed = _differences(previous.get("request", {}), request)
        resumable = not changed and previous.get("num_images", 0) <= num_images
        if changed:
            reason = "made with other settings: " + ", ".join(changed)
        elif not resumable:
            reason = (
                f"an earlier request for {previous.get('num_images')} images; --num-images {num_images} asks for fewer"
            )
    return check_output(out, GENERATE, overwrite, resumable, reason=reason)


def png_bytes(image: Image.Image) -> bytes:
    """The PNG encoding of an image (deterministic: same pixels, same bytes)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def read_rows(path: Path) -> list[dict]:
    """The complete JSON lines of a manifest (a torn last line, from a killed write, is ignored)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().split("\n")[:-1]:  # the text after the last newline is incomplete
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def write_rows(path: Path, rows: list[dict]) -> None:
    """Replace a manifest with ``rows`` atomically."""
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def _resume(out: Path, request: dict, num_images: int) -> dict[int, dict]:
    """Rows of images already written for this request (file present). Anything else here is a
    leftover without images (``claim_output`` refused or removed another request's images): cleared."""
    manifest = out / MANIFEST
    previous = read_record(out / REQUEST)
    rows = read_rows(manifest)
    if not previous or previous.get("request") != request or previous.get("num_images", 0) > num_images:
        for row in rows:  # only what an earlier generate wrote here (named in its manifest)
            (out / row["file"]).unlink(missing_ok=True)
        (out / "grid.png").unlink(missing_ok=True)
        manifest.unlink(missing_ok=True)
        return {}
    done = {row["index"]: row for row in rows if (out / row["file"]).is_file()}
    write_rows(manifest, [done[i] for i in sorted(done)])  # drop torn or orphaned rows before appending
    return done


def generate(config: GenerateConfig, backbone: Backbone | None = None, overwrite: bool = False) -> GenerationResult:
    """Load artifacts and backbone; stream PNGs and ``manifest.jsonl`` rows; then write ``grid.png``.

    A ``backbone`` passed in is never changed: methods that load weights or tokens get a copy.
    ``overwrite``: replace another request's images in ``config.out`` (otherwise refused).
    """
    artifacts = [load_artifact(path, config.allow_pickle) for path in config.artifacts]
    inputs = image_inputs(config)  # bad image files fail before the model loads
    if config.controlnet:
        controlnet_config(config.controlnet)  # so does a folder that holds no ControlNet
    out = Path(config.out)
    claim_output(out, _request(config, None, artifacts), config.num_images, overwrite)  # so does a taken --out
    if backbone is None:
        model = config.model or (artifacts[0].meta["backbone"]["model_id"] if artifacts else None)
        if model is None:
            raise ValueError("--model is required when generating from a plain --prompt")
        backbone = Backbone.from_pretrained(model, config.device, config.dtype, config.allow_pickle)
    else:
        backbone = _private_backbone(backbone, artifacts)
    for artifact in artifacts:
        backbone.check_compatible(artifact.meta["backbone"], artifact.tensors.get("backbone.probe"), str(artifact.path))
    request = _request(config, backbone, artifacts)
    claim_output(out, request, config.num_images, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    done = _resume(out, request, config.num_images)
    reused = len(done)
    atomic_write_json(out / REQUEST, {"request": request, "num_images": config.num_images})
    sources = [{"path": str(a.path), "sha256": a.sha256()} for a in artifacts]
    method = artifacts[0].method if artifacts else "caption"
    extra = {"model": backbone.model_id, "artifacts": sources}
    if config.weights is not None:
        extra["weights"] = list(config.weights)
    manifest = out / MANIFEST
    with open(manifest, "a") as handle:
        for image, record in stream_images(backbone, artifacts, config, done=set(done), inputs=inputs):
            path = out / f"{record['index']:05d}.png"
            atomic_write_bytes(path, png_bytes(image))
            row = {"file": path.name, "method": method, **record, **extra}
            handle.write(json.dumps(row) + "\n")
            handle.flush()  # the row is on disk as soon as its image is
            done[record["index"]] = row
    rows = [done[i] for i in sorted(done)]
    write_rows(manifest, rows)  # index order, whatever order a resumed run wrote them in
    paths = [out / row["file"] for row in rows]
    grid = out / "grid.png"
    make_grid(GenerationResult(paths[:GRID_IMAGES]).images).save(grid)
    return GenerationResult(paths, manifest, grid, reused)
