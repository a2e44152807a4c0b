"""Training-step time and peak memory: dreamdist vs the public code's strategy.

The public DreamDistribution code re-encodes all K prompts once per image of the batch; dreamdist
encodes them once per concept per step and shares them. Both run here on the same components,
seed and batch; the script prints times, peak memory and the ratios.

    python bench/bench_train_step.py [--scale tiny|small] [--steps 10] [--batch 4]
    python bench/bench_train_step.py --quick     # tiny, one step, one process: a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from _common import SIZES, run_isolated, time_steps


def reference_condition(method, backbone, labels, generator):
    """The public code's strategy: encode the K prompts again for every image in the batch."""
    from dreamdist.methods import Conditioning
    from dreamdist.prompt_distribution import encode_prompts, gaussian_stats, orthogonality_loss

    cfg = method.config
    samples, ortho = [], 0.0
    for label in labels.tolist():
        hidden, pooled = encode_prompts(backbone, method.prompts.vectors[label], method.templates[label])
        mean, std = gaussian_stats(hidden)  # (L, d)
        omega = torch.randn((cfg.num_samples, *mean.shape), generator=generator).to(mean)
        samples.append(mean + omega * std)  # (S, L, d)
        ortho = ortho + orthogonality_loss(pooled, cfg.ortho_kind)
    hidden = torch.stack(samples, dim=1).flatten(0, 1)  # (S*B, L, d)
    return Conditioning(hidden, cfg.num_samples, cfg.ortho_weight * ortho / len(labels))


def build(scale: str, folder: str):
    from dreamdist.backbones import Backbone
    from dreamdist.testing import save_tiny_pipeline

    path = save_tiny_pipeline(folder, **SIZES[scale])
    return Backbone.from_pretrained(path, device="cuda" if torch.cuda.is_available() else "cpu")


def run_variant(variant: str, scale: str, steps: int, batch: int, warmup: int = 2) -> dict:
    """Time ``steps`` DreamDistribution steps (after ``warmup``) with one conditioning strategy; run
    one per process, so peak RSS is that variant's alone."""
    with tempfile.TemporaryDirectory() as tmp:  # the references are read from it while the steps run
        return _time_variant(variant, scale, steps, batch, warmup, Path(tmp))


def _time_variant(variant: str, scale: str, steps: int, batch: int, warmup: int, tmp: Path) -> dict:
    from dreamdist.data import ReferenceSet
    from dreamdist.methods.dreamdistribution import DreamDistribution, DreamDistributionConfig
    from dreamdist.testing import write_images
    from dreamdist.training.loop import diffusion_loss

    torch.manual_seed(0)
    backbone = build(scale, str(tmp))
    data = ReferenceSet.from_folder(write_images(tmp / "refs", batch), backbone.sample_size)
    # the paper's objective (what the public code implements): K=32, M=4, S=4
    method = DreamDistribution(DreamDistributionConfig(objective="gaussian"))
    method.setup(backbone, data, torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(method.prompts.parameters(), lr=1e-3, weight_decay=0.0)
    condition = method.condition if variant == "dreamdist" else lambda *a: reference_condition(method, *a)
    mean, _ = backbone.encode_images(data.pixels)
    latents = (mean * backbone.latent_scale).to(backbone.device)
    labels = torch.zeros(batch, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        optimizer.zero_grad()
        cond = condition(backbone, labels, generator)
        loss = diffusion_loss(backbone, latents, cond.hidden, cond.repeats, generator).mean() + cond.aux_loss
        loss.backward()
        optimizer.step()

    step_s, peak = time_steps(step, steps, warmup)
    return {"variant": variant, "step_s": step_s, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=["tiny", "small"], default="small", help="component size")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (median reported)")
    parser.add_argument("--batch", type=int, default=4, help="images per step")
    parser.add_argument(
        "--quick", action="store_true", help="tiny, 1 step, batch 2, 1 thread, both in this process (smoke run)"
    )
    parser.add_argument("--json", help="also write the result into this docs/results table (scripts/bench_docs.py)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:  # peak memory is then the process's, not each variant's
        args.scale, args.steps, args.batch = "tiny", 1, 2
        torch.set_num_threads(1)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.scale, args.steps, args.batch)))
        return
    results = {}
    for variant in ("dreamdist", "reference"):
        if args.quick:
            results[variant] = run_variant(variant, args.scale, args.steps, args.batch, warmup=0)
            continue
        cmd = ["--variant", variant, "--scale", args.scale, "--steps", str(args.steps), "--batch", str(args.batch)]
        results[variant] = run_isolated(__file__, cmd)
    ours, ref = results["dreamdist"], results["reference"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"DreamDistribution step, K=32 M=4 S=4, batch {args.batch}, {args.scale} components, {device}")
    print(f"{'':12s}{'step (s)':>10s}{'peak (MiB)':>12s}")
    for name, r in (("reference", ref), ("dreamdist", ours)):
        print(f"{name:12s}{r['step_s']:10.4f}{r['peak_mib']:12.1f}")
    print(
        f"speed-up x{ref['step_s'] / ours['step_s']:.2f}; peak-memory ratio (ours/ref) {ours['peak_mib'] / ref['peak_mib']:.2f}"
    )
    if args.json:
        from _results import command_line, write_speed_row

        values = {
            "ref_s": ref["step_s"],
            "ref_mib": ref["peak_mib"],
            "ours_s": ours["step_s"],
            "ours_mib": ours["peak_mib"],
        }
        values |= {"speedup": ref["step_s"] / ours["step_s"], "memory": ours["peak_mib"] / ref["peak_mib"]}
        cells = {
            "benchmark": f"`bench/bench_train_step.py` (K=32, M=4, S=4, batch {args.batch}, {args.scale!r} components)",
            "reference": "public-code strategy, K prompts re-encoded per image: {ref_s:.2f} s/step, {ref_mib:.0f} MiB peak",
            "dreamdist": "encoded once per concept per step: {ours_s:.2f} s/step, {ours_mib:.0f} MiB peak",
            "ratio": "**{speedup:.2f}x faster, {memory:.2f}x peak memory**",
        }
        settings = {"scale": args.scale, "steps": args.steps, "batch": args.batch, "device": device}
        write_speed_row(
            args.json, "bench_train_step", command_line("bench/bench_train_step.py", None), settings, values, cells
        )


if __name__ == "__main__":
    main()
