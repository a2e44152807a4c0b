"""Typed configs for training and generation; the CLI builds its flags from these fields.

Each field's ``metadata["help"]`` is its documentation and the CLI help text. ``__post_init__``
rejects contradictory or impossible values with a message that names the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dreamdist.prompts import PROMPT_SETS

SAMPLERS = ("gaussian", "mixture")  # DreamDistribution samplers (docs/sampling.md)
PRECISIONS = ("no", "fp16", "bf16")
DTYPES = ("fp32", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "cosine", "linear")
SCHEDULER_NAMES = ("ddim", "dpm", "euler", "euler-a", "pndm", "ddpm", "unipc")  # generation.SCHEDULERS' keys
MIX_RULES = ("paper", "public-code")
PIPELINE_NAMES = ("text2img", "img2img", "inpaint", "controlnet")  # the keys of every family's Backbone.pipelines


def help_(text: str, **extra) -> dict:
    """Field metadata carrying help text (and optional CLI extras such as ``short``)."""
    return {"help": text, **extra}


@dataclass
class TrainConfig:
    """Everything the shared training loop needs; method hyperparameters live in the method's config."""

    images: str = field(metadata=help_("folder of reference images (multi-class: one sub-folder per class)"))
    out: str = field(metadata=help_("run folder to create (artifact, checkpoints, samples, logs)"))
    model: str = field(
        default="toy",
        metadata=help_(
            "diffusers checkpoint of a supported family (SD 1.x/2.x, SDXL, SD3.x, Flux.1, Z-Image): hub id, local folder, or 'toy' (built-in)"
        ),
    )
    method: str = field(default="dreamdistribution", metadata=help_("training method (see 'dreamdist methods')"))
    steps: int | None = field(
        default=None, metadata=help_("optimizer steps (default: the method's, 1500 for DreamDistribution)")
    )
    learning_rate: float | None = field(default=None, metadata=help_("peak learning rate (default: the method's)"))
    lr_scheduler: str = field(
        default="constant", metadata=help_("learning-rate schedule after warm-up", choices=LR_SCHEDULERS)
    )
    lr_warmup_steps: int = field(default=0, metadata=help_("linear warm-up steps from 0 to --learning-rate"))
    max_grad_norm: float | None = field(
        default=None, metadata=help_("clip the gradient norm of the trainables to this value (default: no clipping)")
    )
    min_timestep: float | None = field(
        default=None,
        metadata=help_(
            "train on timesteps from this fraction of the noise schedule up (default: the method's; 0, "
            "DreamDistribution's mixture objective 0.15)"
        ),
    )
    max_timestep: float | None = field(
        default=None,
        metadata=help_(
            "train on timesteps below this fraction of the noise schedule (default: the method's; 1, "
            "DreamDistribution's mixture objective 0.7: at the noisiest levels a prompt memorises its image's layout)"
        ),
    )
    batch_size: int | None = field(
        default=None, metadata=help_("images per step (default: the method's; 4, DreamDistribution's mixture 16)")
    )
    gradient_accumulation: int = field(default=1, metadata=help_("micro-batches accumulated per optimizer step"))
    resolution: int | None = field(default=None, metadata=help_("training image side in pixels (default: the model's)"))
    flip: bool = field(default=False, metadata=help_("random horizontal flips (both variants are cached)"))
    multiclass: bool = field(
        default=False, metadata=help_("one prompt set per sub-folder; prompts '[V] <class name>.'")
    )
    seed: int = field(default=0, metadata=help_("seed of every random draw of the run"))
    mixed_precision: str | None = field(
        default=None,
        metadata=help_(
            "autocast precision; trainables stay fp32, fp16 uses loss scaling "
            "(default: what 'accelerate config' / 'accelerate launch' set, else no)",
            choices=PRECISIONS,
        ),
    )
    dtype: str | None = field(
        default=None,
        metadata=help_("frozen weights dtype (default: the --mixed-precision dtype, else fp32)", choices=DTYPES),
    )
    device: str | None = field(
        default=None, metadata=help_("cpu, cuda or mps (default: the best available; 'cpu' forces the CPU)")
    )
    gradient_checkpointing: bool = field(
        default=False, metadata=help_("trade compute for memory in UNet and text encoder")
    )
    checkpoint_every: int = field(
        default=250, metadata=help_("save a resumable checkpoint every N steps (0: only at the end)")
    )
    keep_checkpoints: int = field(default=2, metadata=help_("how many recent checkpoints to keep"))
    sample_every: int = field(default=0, metadata=help_("save a sample grid to the run folder every N steps (0: off)"))
    tensorboard: bool = field(default=False, metadata=help_("log losses to <out>/logs for TensorBoard"))
    validation_prompt: str | None = field(
        default=None,
        metadata=help_("prompt of the --sample-every grids ({} = the learned concept; default: the method's own)"),
    )
    resume: bool = field(
        default=False,
        metadata=help_(
            "continue from the newest checkpoint in --out; flags not given keep the run's recorded values, and "
            "only the learning rate, schedule, clipping, steps and operational flags may change"
        ),
    )
    resume_from: str | None = field(
        default=None,
        metadata=help_("continue from 'latest' (the newest checkpoint in --out) or a checkpoint folder PATH"),
    )
    max_nonfinite: int = field(default=5, metadata=help_("abort after this many consecutive non-finite losses"))
    allow_pickle: bool = field(
        default=False, metadata=help_("allow pickle (.bin/.pt) weights, loaded with weights_only=True")
    )
    progress: bool = field(default=True, metadata=help_("show a progress bar"))

    def __post_init__(self) -> None:
        if (self.batch_size is not None and self.batch_size < 1) or self.gradient_accumulation < 1:
            raise ValueError("--batch-size and --gradient-accumulation must be >= 1")
        if self.steps is not None and self.steps < 1:
            raise ValueError("--steps must be >= 1")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise ValueError(
                f"--resolution must be a positive multiple of 8 pixels (the VAE works in 8-pixel cells); "
                f"got {self.resolution}"
            )
        if self.learning_rate is not None and not 0 < self.learning_rate < math.inf:
            raise ValueError(f"--learning-rate must be a number > 0; got {self.learning_rate}")
        if self.max_nonfinite < 1:
            raise ValueError(f"--max-nonfinite must be >= 1; got {self.max_nonfinite}")
        if self.mixed_precision is not None and self.mixed_precision not in PRECISIONS:
            raise ValueError(f"--mixed-precision must be no, fp16 or bf16; got {self.mixed_precision!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be fp32, fp16 or bf16; got {self.dtype!r}")
        if self.dtype == "fp16" and self.mixed_precision != "fp16":
            raise ValueError(
                "--dtype fp16 trains without loss scaling unless --mixed-precision fp16 is set too "
                "(fp16 gradients underflow); add --mixed-precision fp16, or use bf16"
            )
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"--lr-scheduler must be one of {', '.join(LR_SCHEDULERS)}; got {self.lr_scheduler!r}")
        if self.min_timestep is not None and not 0 <= self.min_timestep < 1:
            raise ValueError(f"--min-timestep is a fraction of the noise schedule in [0, 1); got {self.min_timestep}")
        if self.max_timestep is not None and not 0 < self.max_timestep <= 1:
            raise ValueError(f"--max-timestep is a fraction of the noise schedule in (0, 1]; got {self.max_timestep}")
        if self.lr_warmup_steps < 0:
            raise ValueError("--lr-warmup-steps must be >= 0")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"--max-grad-norm must be > 0; got {self.max_grad_norm}")
        if self.resume_from is not None:
            self.resume = True
        if self.keep_checkpoints < 1:
            raise ValueError("--keep-checkpoints must be >= 1 (the newest checkpoint is what --resume needs)")
        if self.checkpoint_every < 0 or self.sample_every < 0:
            raise ValueError("--checkpoint-every and --sample-every must be >= 0")


@dataclass
class GenerateConfig:
    """Sampling from one artifact, a weighted mix of DreamDistribution artifacts, or a plain prompt."""

    out: str = field(
        metadata=help_(
            "output folder for PNGs, grid.png, manifest.jsonl and request.json (a rerun of the same request continues)"
        )
    )
    artifacts: list[str] = field(default_factory=list, metadata=help_("run folder(s) or artifact file(s)"))
    weights: list[float] | None = field(default=None, metadata=help_("mixing weights (sum to 1), one per artifact"))
    model: str | None = field(default=None, metadata=help_("backbone (default: the one recorded in the artifact)"))
    num_images: int = field(default=8, metadata=help_("images to generate (with --prompt-set: images per prompt)"))
    prefix: str | None = field(default=None, metadata=help_("text before the learned tokens (default: as trained)"))
    suffix: str | None = field(
        default=None, metadata=help_("text after the learned tokens, e.g. 'at night' (default: as trained)")
    )
    prompt: str | None = field(
        default=None,
        metadata=help_("plain prompt ({} stands for the learned concept where a method has one)"),
    )
    prompt_set: str | None = field(
        default=None,
        metadata=help_(
            "built-in prompt list: "
            + ", ".join(f"{name} ({len(p)} prompts)" for name, p in PROMPT_SETS.items())
            + "; --num-images images PER PROMPT, e.g. 32 prompts x --num-images 4 = 128 images ({} = the concept)"
        ),
    )
    class_name: str | None = field(
        default=None,
        metadata=help_("multi-class artifacts: which class to sample (default: all, round robin)"),
    )
    sampler: str = field(
        default="mixture",
        metadata=help_(
            "DreamDistribution sampler: 'gaussian' (paper: mu + gamma*omega*sigma) or 'mixture' (one of the K "
            "learned prompts by its weight, plus gamma times the noise it was trained with)",
            choices=SAMPLERS,
        ),
    )
    gamma: float = field(
        default=1.0,
        metadata=help_(
            "diversity: scale of the noise added to the learned prompts (DreamDistribution; at 0, --sampler gaussian "
            "gives the mean prompt for every image, --sampler mixture the K learned prompts themselves)"
        ),
    )
    mix_rule: str = field(
        default="paper",
        metadata=help_("std composition: 'paper' (sum sqrt(a) sigma) or 'public-code'", choices=MIX_RULES),
    )
    guidance_scale: float | None = field(
        default=None, metadata=help_("classifier-free guidance (default 7.5; the toy model's own default)")
    )
    num_inference_steps: int | None = field(default=None, metadata=help_("denoising steps (default 50; toy 25)"))
    scheduler: str | None = field(
        default=None,
        metadata=help_("denoising scheduler (default: the checkpoint's)", choices=SCHEDULER_NAMES),
    )
    negative_prompt: str = field(default="", metadata=help_("negative prompt for classifier-free guidance"))
    height: int | None = field(
        default=None, metadata=help_("image height (default: the model's; other pipelines: the input image's)")
    )
    width: int | None = field(
        default=None, metadata=help_("image width (default: the model's; other pipelines: the input image's)")
    )
    pipeline: str = field(
        default="text2img",
        metadata=help_(
            "diffusers pipeline the prompt embeddings drive: text2img, img2img (--init-image, --strength), "
            "inpaint (--init-image, --mask) or controlnet (--controlnet, --control-image); SD and SDXL alike",
            choices=PIPELINE_NAMES,
        ),
    )
    init_image: str | None = field(
        default=None,
        metadata=help_("img2img / inpaint: the starting image (the output takes its size unless --height/--width)"),
    )
    strength: float | None = field(
        default=None,
        metadata=help_("img2img / inpaint: how much of the init image is redrawn, in (0, 1] (default 0.8; inpaint 1)"),
    )
    mask: str | None = field(
        default=None,
        metadata=help_("inpaint: mask image, white = redraw, black = keep (resized to the init image if needed)"),
    )
    controlnet: str | None = field(
        default=None, metadata=help_("controlnet: a diffusers ControlNetModel folder or cached hub id")
    )
    control_image: str | None = field(
        default=None,
        metadata=help_("controlnet: the conditioning image (edges, depth, pose; the output takes its size)"),
    )
    controlnet_scale: float | None = field(
        default=None, metadata=help_("controlnet: weight of the ControlNet residuals (default 1.0)")
    )
    batch_size: int = field(default=4, metadata=help_("images per pipeline call (results do not depend on it)"))
    seed: int = field(default=0, metadata=help_("image i uses seed + i"))
    dtype: str | None = field(
        default=None, metadata=help_("weights dtype (default fp32 on CPU, fp16 on GPU)", choices=DTYPES)
    )
    device: str | None = field(default=None, metadata=help_("cuda, cpu, mps (default: best available)"))
    allow_pickle: bool = field(
        default=False, metadata=help_("allow pickle (.bin/.pt) files, loaded with weights_only=True")
    )
    progress: bool = field(default=True, metadata=help_("show a progress bar"))

    def __post_init__(self) -> None:
        if self.num_images < 1 or self.batch_size < 1:
            raise ValueError("--num-images and --batch-size must be >= 1")
        if not 0 <= self.gamma < math.inf:
            raise ValueError(
                f"--gamma must be a number >= 0; got {self.gamma}. It scales the noise added to the learned prompts: "
                "at 0 --sampler gaussian gives the mean prompt, --sampler mixture the K learned prompts themselves"
            )
        if self.guidance_scale is not None and not 0 <= self.guidance_scale < math.inf:
            raise ValueError(f"--guidance-scale must be a number >= 0 (1 = no guidance); got {self.guidance_scale}")
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise ValueError(f"--num-inference-steps must be >= 1; got {self.num_inference_steps}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value < 8 or value % 8):
                raise ValueError(
                    f"--{name} must be a positive multiple of 8 pixels (diffusers requires it); got {value}"
                )
        if self.controlnet_scale is not None and not 0 <= self.controlnet_scale < math.inf:
            raise ValueError(f"--controlnet-scale must be a number >= 0; got {self.controlnet_scale}")
        if self.weights is not None and len(self.weights) != len(self.artifacts):
            raise ValueError(f"{len(self.weights)} weights for {len(self.artifacts)} artifacts; give one per artifact")
        if self.weights is not None and (
            any(w < 0 for w in self.weights) or not math.isclose(sum(self.weights), 1.0, abs_tol=1e-3)
        ):
            raise ValueError(f"mixing weights must be >= 0 and sum to 1 (within 1e-3); got {self.weights}")
        if len(self.artifacts) > 1 and self.weights is None:
            raise ValueError("mixing several artifacts needs weights, e.g. --mix runs/a:0.3 runs/b:0.7")
        if not self.artifacts and not self.prompt:
            raise ValueError("nothing to generate from: give an artifact (run folder) or --prompt with --model")
        if self.prompt_set is not None:
            from dreamdist.prompts import prompt_set

            prompt_set(self.prompt_set)  # raises with the known names
            if self.prompt:
                raise ValueError("give --prompt or --prompt-set, not both")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"--sampler must be one of {', '.join(SAMPLERS)}; got {self.sampler!r}")
        if self.mix_rule not in MIX_RULES:
            raise ValueError(f"--mix-rule must be 'paper' or 'public-code'; got {self.mix_rule!r}")
        self._check_pipeline()

    def _check_pipeline(self) -> None:
        """Each --pipeline gets the inputs it needs and no input of another pipeline."""
        if self.pipeline not in PIPELINE_NAMES:
            raise ValueError(f"--pipeline must be one of {', '.join(PIPELINE_NAMES)}; got {self.pipeline!r}")
        needs = {
            "text2img": (),
            "img2img": ("init_image",),
            "inpaint": ("init_image", "mask"),
            "controlnet": ("controlnet", "control_image"),
        }
        takes = {
            "init_image": ("img2img", "inpaint"),
            "strength": ("img2img", "inpaint"),
            "mask": ("inpaint",),
            "controlnet": ("controlnet",),
            "control_image": ("controlnet",),
            "controlnet_scale": ("controlnet",),
        }
        for name in needs[self.pipeline]:
            if getattr(self, name) is None:
                raise ValueError(f"--pipeline {self.pipeline} needs --{name.replace('_', '-')}")
        for name, pipelines in takes.items():
            if getattr(self, name) is not None and self.pipeline not in pipelines:
                raise ValueError(
                    f"--{name.replace('_', '-')} is for --pipeline {' or '.join(pipelines)}, not {self.pipeline}"
                )
        if self.strength is not None and not 0 < self.strength <= 1:
            raise ValueError(f"--strength must be in (0, 1] (1 = redraw from noise); got {self.strength}")


def like_generate(name: str):
    """A dataclass field with the default and help of ``GenerateConfig``'s field ``name``, for commands
    that pass generation options through (synth, sample-prompts)."""
    from dataclasses import fields

    source = {f.name: f for f in fields(GenerateConfig)}[name]
    return field(default=source.default, metadata=dict(source.metadata))
