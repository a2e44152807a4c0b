"""Base-model quality: generate captioned combos with a pipeline and score them with the oracle."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from dreamdist.toyworld.attributes import ATTRIBUTES, combo_names, sample_combos, split_combos
from dreamdist.toyworld.captions import make_caption
from dreamdist.toyworld.oracle import Oracle
from dreamdist.toyworld.sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS


def sampler_defaults(pipe) -> dict:
    """The model's pipeline arguments: its folder's ``dreamdist.json`` (the toy UNet model's when absent)."""
    folder = Path(getattr(pipe, "name_or_path", "") or "")
    path = folder / "dreamdist.json"
    if str(folder) and path.is_file():
        return json.loads(path.read_text())
    return {"num_inference_steps": DEFAULT_STEPS, "guidance_scale": DEFAULT_GUIDANCE}


@torch.no_grad()
def generate_for_combos(
    pipe: StableDiffusionPipeline,
    combos: torch.Tensor,
    seed: int = 0,
    batch_size: int = 50,
    every_template: bool = True,
    **sampler,
) -> torch.Tensor:
    """One image per combo, captioned with its three attributes.

    Image ``i`` uses caption template ``i`` (cycling through every template with a background,
    ``captions.TEMPLATES_WITH_BACKGROUND``), or template 0 ("a <colour> <shape> on a <background>
    background") for all with ``every_template=False``.

    Args:
        pipe: a toy-world pipeline (``toy``: ``StableDiffusionPipeline``; ``toy-flow``: ``FluxPipeline``).
        combos: long (N, 3) attribute indices.
        seed: the generator seed (batch ``i`` uses ``seed + i``).
        batch_size: images per pipeline call.
        **sampler: pipeline arguments over the model's own defaults (``sampler_defaults``).

    Returns:
        Float (N, 3, H, W) in [0, 1].
    """
    prompts = [
        make_caption(*combo_names(tuple(c)), template=i if every_template else 0) for i, c in enumerate(combos.tolist())
    ]
    device = pipe.device
    sampler = {**sampler_defaults(pipe), **sampler}
    out = []
    for i in range(0, len(prompts), batch_size):
        generator = torch.Generator(device).manual_seed(seed + i)
        result = pipe(
            prompts[i : i + batch_size],
            generator=generator,
            **sampler,
            output_type="pt",
        )
        out.append(result.images.float().cpu())
    return torch.cat(out)


def oracle_accuracy(
    pipe: StableDiffusionPipeline,
    oracle: Oracle,
    split: str = "seen",
    n: int = 200,
    seed: int = 0,
    **sampler,
) -> dict[str, float]:
    """Share of generated images whose predicted attribute matches the prompt, per attribute.

    Args:
        pipe: the pipeline to test.
        oracle: the attribute classifier.
        split: combos to prompt, drawn uniformly: "seen", "held_out" or "all".
        n: number of images.
        seed: seeds the combos and the sampler.
        **sampler: forwarded to ``generate_for_combos`` (num_inference_steps, guidance_scale, ...).

    Returns:
        {"colour": acc, "shape": acc, "background": acc, "all": share with all three right}.
    """
    combos = sample_combos(n, split_combos(split), torch.Generator().manual_seed(seed))  # (n, 3)
    images = generate_for_combos(pipe, combos, seed=seed, **sampler)
    hits = oracle.predict(images) == combos  # (n, 3) bool
    scores = {name: float(hits[:, i].float().mean()) for i, name in enumerate(ATTRIBUTES)}
    scores["all"] = float(hits.all(1).float().mean())
    return scores


def main(argv: list[str] | None = None) -> None:
    """``python -m dreamdist.toyworld.quality [FOLDER] --n 200``: oracle accuracy per split, as JSON."""
    import argparse

    from dreamdist.toyworld.oracle import load_oracle
    from dreamdist.toyworld.sampling import load_pipeline

    parser = argparse.ArgumentParser(description="Oracle accuracy of a toy pipeline on seen and held-out combos.")
    parser.add_argument("folder", nargs="?", default=None, help="pipeline folder (default: the shipped model)")
    parser.add_argument("--n", type=int, default=200, help="images per split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    parser.add_argument("--splits", nargs="+", default=["seen", "held_out"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe, oracle = load_pipeline(args.folder), load_oracle()
    sampler = sampler_defaults(pipe)
    if args.steps is not None:
        sampler["num_inference_steps"] = args.steps
    if args.guidance is not None:  # true CFG on a flow model, classic CFG on the UNet one
        sampler["true_cfg_scale" if "true_cfg_scale" in sampler else "guidance_scale"] = args.guidance
    for split in args.splits:
        scores = oracle_accuracy(pipe, oracle, split=split, n=args.n, seed=args.seed, **sampler)
        print(json.dumps({"split": split, "n": args.n, **sampler, **{k: round(v, 4) for k, v in scores.items()}}))


if __name__ == "__main__":
    main()
