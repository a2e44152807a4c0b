"""``dreamdist sample-prompts``: N sampled prompt embeddings of a run in one safetensors file.

For tools that share the backbone's text encoder but not dreamdist (another diffusers pipeline,
ComfyUI nodes, text-to-3D such as MVDream, which conditions on SD 2.1's encoder). Row ``i`` is
exactly what ``dreamdist generate`` hands its pipeline for image ``i`` with the same options: the
prompt is drawn from a CPU generator seeded ``seed + i``, and that generator's state after the
draw is stored too, so a plain diffusers call continues where ``dreamdist generate`` continues
and reproduces its image. docs/pipelines.md has the recipe.

File layout (tensors; metadata is text):
    prompt_embeds         (N, L, D) float32: the per-token features (SD: 77 x 768 / 1024; SDXL: 77 x 2048)
    pooled_prompt_embeds  (N, d_pool) float32, SDXL only (encoder 2's projected EOS feature)
    generator_states      (N, S) uint8: ``torch.Generator().set_state(...)`` for image i's latents
    seeds                 (N,) int64: seed + i
    backbone.probe        token-embedding rows of the backbone (dreamdist's compatibility check)
    metadata "dreamdist"  JSON: format, backbone identity (model id, family, fingerprint), method,
                          artifact path + sha256, sampler, gamma, seed, text edits, one record per row
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dreamdist.config import GenerateConfig, help_, like_generate

if TYPE_CHECKING:
    import torch

FORMAT = "dreamdist.prompt_embeds"
FORMAT_VERSION = 1


@dataclass
class SamplePromptsConfig:
    """What to sample and where to write it."""

    artifact: str = field(metadata=help_("run folder or artifact file"))
    out: str = field(metadata=help_("output .safetensors file"))
    n: int = field(default=16, metadata=help_("number of prompt samples (rows)"))
    sampler: str = like_generate("sampler")
    gamma: float = like_generate("gamma")
    seed: int = field(default=0, metadata=help_("row i is drawn with seed + i (as image i of 'dreamdist generate')"))
    class_name: str | None = like_generate("class_name")
    prompt: str | None = like_generate("prompt")
    prefix: str | None = like_generate("prefix")
    suffix: str | None = like_generate("suffix")
    model: str | None = like_generate("model")
    dtype: str | None = like_generate("dtype")
    device: str | None = like_generate("device")
    allow_pickle: bool = like_generate("allow_pickle")

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"--n must be >= 1; got {self.n}")
        if Path(self.out).suffix.lower() != ".safetensors":
            raise ValueError(f"--out must name a .safetensors file, e.g. prompts.safetensors; got {self.out!r}")
        if Path(self.out).is_dir():
            raise ValueError(f"--out {self.out} is a folder; name a file, e.g. {self.out}/prompts.safetensors")

    def generate_config(self) -> GenerateConfig:
        """The ``dreamdist generate`` options whose prompt draws these rows are."""
        return GenerateConfig(
            out=str(Path(self.out).parent),
            artifacts=[self.artifact],
            model=self.model,
            num_images=self.n,
            prompt=self.prompt,
            prefix=self.prefix,
            suffix=self.suffix,
            class_name=self.class_name,
            sampler=self.sampler,
            gamma=self.gamma,
            seed=self.seed,
            dtype=self.dtype,
            device=self.device,
            allow_pickle=self.allow_pickle,
            progress=False,
        )


def sample_prompts(config: SamplePromptsConfig, backbone=None) -> Path:
    """Draw ``config.n`` prompt samples and write them (atomically) to ``config.out``; returns the path.

    A ``backbone`` passed in is never changed (methods that load weights or tokens get a copy).
    """
    import torch
    from safetensors.torch import save

    from dreamdist.artifact import load_artifact
    from dreamdist.atomic import atomic_write_bytes
    from dreamdist.backbones import Backbone
    from dreamdist.methods import get_method, prepare_backbone, sampler_for

    artifact = load_artifact(config.artifact, config.allow_pickle)
    generate_config = config.generate_config()
    if backbone is None:
        model = config.model or artifact.meta["backbone"]["model_id"]
        backbone = Backbone.from_pretrained(model, config.device, config.dtype, config.allow_pickle)
    elif get_method(artifact.method).prepare is not None:  # the method loads weights or tokens into it
        backbone = copy.deepcopy(backbone)
    backbone.check_compatible(artifact.meta["backbone"], artifact.tensors.get("backbone.probe"), str(artifact.path))
    prepare_backbone(backbone, [artifact])
    sampler = sampler_for(backbone, [artifact], generate_config)
    rows, states, records = [], [], []
    for i in range(config.n):
        generator = torch.Generator().manual_seed(config.seed + i)  # image i's generator in dreamdist generate
        features, info = sampler(i, generator)  # (L, D); SDXL (L + 1, D)
        rows.append(features.detach().float().cpu())
        states.append(generator.get_state())
        records.append({"index": i, "seed": config.seed + i, **info})
    embeds, pooled = backbone.split_features(torch.stack(rows))  # (N, L, D) [, (N, d_pool)]
    tensors = {
        "prompt_embeds": embeds.contiguous(),
        "generator_states": torch.stack(states),  # (N, S) uint8
        "seeds": torch.tensor([r["seed"] for r in records], dtype=torch.int64),
        "backbone.probe": backbone.probe_rows().contiguous(),
    }
    if pooled is not None:
        tensors["pooled_prompt_embeds"] = pooled.contiguous()
    identity = backbone.identity()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": identity,
        "method": artifact.method,
        "artifact": {"path": str(artifact.path), "sha256": artifact.sha256()},
        "options": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("out", "allow_pickle")},
        "rows": records,
    }
    flat = {  # readable without parsing JSON (e.g. safetensors' metadata viewers)
        "family": identity["family"],
        "model_id": str(identity["model_id"]),
        "embedding_fingerprint": identity["embedding_fingerprint"],
        "sampler": config.sampler,
        "gamma": str(config.gamma),
        "seed": str(config.seed),
    }
    out = Path(config.out)
    atomic_write_bytes(out, save(tensors, metadata={"dreamdist": json.dumps(meta), **flat}))
    return out


def read_prompt_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and the ``dreamdist`` metadata of a ``sample-prompts`` file."""
    from dreamdist.artifact import read_safetensors

    tensors, raw = read_safetensors(path)
    meta = json.loads(raw) if raw else {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a 'dreamdist sample-prompts' file")
    return tensors, meta


# ---------------------------------------------------------------- command line
def register(subparsers) -> None:
    """Add ``sample-prompts`` to the main CLI's sub-parsers."""
    from dreamdist.cli import add_dataclass_args

    parser = subparsers.add_parser(
        "sample-prompts",
        help="export N sampled prompt embeddings of a run (safetensors) for other pipelines and tools",
        description="Draw N prompts from a run's learned distribution (or any method's prompt) and write "
        "prompt_embeds (N, L, D), on SDXL also pooled_prompt_embeds, with the backbone's fingerprint. Row i is "
        "what 'dreamdist generate' uses for image i with the same options. See docs/pipelines.md.",
    )
    parser.add_argument("artifact", help="run folder or artifact file")
    add_dataclass_args(parser, SamplePromptsConfig, skip=("artifact",))
    parser.set_defaults(func=cmd_sample_prompts)


def cmd_sample_prompts(args: argparse.Namespace) -> int:
    from dreamdist.cli import from_args

    config = from_args(SamplePromptsConfig, args)
    out = sample_prompts(config)
    print(f"wrote {config.n} prompt samples to {out}")
    return 0
