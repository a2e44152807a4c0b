"""``SynthConfig``: everything a synthetic-dataset job needs; the CLI builds its flags from the fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from dreamdist.config import SAMPLERS, GenerateConfig, help_, like_generate

FILTERS = ("clip", "none")
FORMATS = ("imagefolder", "webdataset")
ENGINES = ("local", "ray")
MAX_PER_CLASS = 1 << 20  # image i of class c has seed seed + c * MAX_PER_CLASS + i
DEFAULT_CLIP = "openai/clip-vit-large-patch14"  # as dreamdist.evaluation.defaults.DEFAULT_CLIP
# generation options passed through to each class's sampler and to the pipeline
PASS_THROUGH = (
    "sampler",
    "gamma",
    "mix_rule",
    "prefix",
    "suffix",
    "prompt",
    "guidance_scale",
    "num_inference_steps",
    "scheduler",
    "negative_prompt",
    "height",
    "width",
)


@dataclass
class SynthConfig:
    """A synthetic ImageFolder (or WebDataset) from DreamDistribution runs: N images per class, top K kept."""

    out: str = field(metadata=help_("output folder: <class>/<file>.png (or tar shards), manifest.jsonl, synth.json"))
    per_class: int = field(metadata=help_("N: images generated per class"))
    artifact: str | None = field(default=None, metadata=help_("multi-class run folder or artifact file"))
    run: list[str] | None = field(default=None, metadata=help_("CLASS=RUN items: one single-class run per class"))
    keep: int | None = field(default=None, metadata=help_("K: images kept per class (default: N)"))
    filter: str = field(
        default="clip",
        metadata=help_(
            "'clip': keep the K best by CLIP cosine(image, class name); 'none': keep the first K", choices=FILTERS
        ),
    )
    clip_model: str = field(default=DEFAULT_CLIP, metadata=help_("CLIP hub id or local folder (--filter clip)"))
    clip_prompt: str = field(default="{}", metadata=help_("text scored against each image; {} = the class name"))
    format: str = field(default="imagefolder", metadata=help_("ImageFolder or WebDataset tar shards", choices=FORMATS))
    shard_size: int = field(default=1000, metadata=help_("webdataset: images per tar shard"))
    engine: str = field(
        default="local",
        metadata=help_("local (this process; torchrun splits the work) or a Ray cluster", choices=ENGINES),
    )
    ray_address: str | None = field(default=None, metadata=help_("Ray cluster address (default: RAY_ADDRESS or local)"))
    ray_workers: int | None = field(
        default=None, metadata=help_("Ray actors (default: one per GPU of the cluster, else 1)")
    )
    batch_size: int = field(default=8, metadata=help_("images per pipeline call"))
    seed: int = field(default=0, metadata=help_("image i of the c-th class uses seed + c * 2**20 + i"))
    model: str | None = field(default=None, metadata=help_("backbone (default: the one recorded in the runs)"))
    sampler: str = like_generate("sampler")
    gamma: float = like_generate("gamma")
    mix_rule: str = like_generate("mix_rule")
    prefix: str | None = like_generate("prefix")
    suffix: str | None = like_generate("suffix")
    prompt: str | None = like_generate("prompt")
    guidance_scale: float | None = like_generate("guidance_scale")
    num_inference_steps: int | None = like_generate("num_inference_steps")
    scheduler: str | None = like_generate("scheduler")
    negative_prompt: str = like_generate("negative_prompt")
    height: int | None = like_generate("height")
    width: int | None = like_generate("width")
    dtype: str | None = like_generate("dtype")
    device: str | None = like_generate("device")
    allow_pickle: bool = like_generate("allow_pickle")
    progress: bool = like_generate("progress")

    def __post_init__(self) -> None:
        if self.keep is None:
            self.keep = self.per_class
        if not 1 <= self.per_class <= MAX_PER_CLASS:
            raise ValueError(f"--per-class must be between 1 and {MAX_PER_CLASS}; got {self.per_class}")
        if not 1 <= self.keep <= self.per_class:
            raise ValueError(
                f"--keep {self.keep} must be between 1 and --per-class {self.per_class}: "
                "K of the N generated images are kept"
            )
        if (self.artifact is None) == (not self.run):
            raise ValueError("give one multi-class RUN, or --run CLASS=RUN for each class (not both)")
        choices = {"filter": FILTERS, "format": FORMATS, "engine": ENGINES, "sampler": SAMPLERS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.batch_size < 1 or self.shard_size < 1:
            raise ValueError("--batch-size and --shard-size must be >= 1")
        if self.ray_workers is not None and self.ray_workers < 1:
            raise ValueError("--ray-workers must be >= 1")
        if "{}" not in self.clip_prompt:
            raise ValueError(f"--clip-prompt must contain {{}} where the class name goes; got {self.clip_prompt!r}")
        self.generate_config(".", 0)  # the generation options are checked where generate checks them

    def generate_config(self, artifact: str, seed: int, class_name: str | None = None) -> GenerateConfig:
        """The ``GenerateConfig`` of one class: ``dreamdist generate`` with it draws the same images."""
        options = {name: getattr(self, name) for name in PASS_THROUGH}
        return GenerateConfig(
            out=self.out, artifacts=[artifact], class_name=class_name, seed=seed, progress=False, **options
        )
