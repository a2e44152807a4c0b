"""Training-step time and peak memory of every method, on the same components, seed and batch.

Each method runs in its own process (so peak RSS / peak CUDA memory is that method's alone):
build the components, set the method up, then time optimizer steps of the training loop's own
objective (``dreamdist.training.loop.method_loss``). The table gives the ratio of each method to
DreamDistribution (paper defaults K=32, M=4, S=4) measured in the same run.

    python bench/bench_methods.py [--scale tiny|small] [--steps 10] [--batch 4] [--threads 1]
    python bench/bench_methods.py --quick        # tiny, one step, one process: a smoke run
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from _common import SIZES, run_isolated, time_steps

# One row per method of the registry (dreamdist.testing.example_config with these options), plus the
# variants below; a newly registered method is benchmarked with its defaults.
OPTIONS = {
    # S = 4 rows per image at batch 4: the UNet work of a default step (16 images x S = 1)
    "dreamdistribution": {"num_samples": 4},
    "textual-inversion": {"init_word": "toy"},
    "dreambooth": {"class_noun": "dog", "prior_preservation": False},
    "custom-diffusion": {"class_noun": "dog", "init_word": "toy"},
}
STAGED = {"two-stage"}  # timed per stage (the two rows below), not as one row
# name -> (registry method, config kwargs, stage to time)
EXTRA = {
    "dreambooth+prior": ("dreambooth", {"class_noun": "dog", "class_images": 4}, None),
    "dreambooth+text": (
        "dreambooth",
        {"class_noun": "dog", "train_text_encoder": True, "prior_preservation": False},
        None,
    ),
    "dreambooth-lora": ("dreambooth", {"class_noun": "dog", "lora": True, "prior_preservation": False}, None),
    "two-stage/stage1": ("two-stage", {"class_noun": "dog", "init_word": "red", "stage1_steps": 1}, 1),
    "two-stage/stage2": ("two-stage", {"class_noun": "dog", "init_word": "red", "stage1_steps": 1}, 2),
}


def variants() -> dict[str, tuple[str, dict, int | None]]:
    """Every row of the table, the registry's methods first (dreamdistribution leads)."""
    from dreamdist.methods import method_names

    names = sorted(method_names(), key=lambda name: name != "dreamdistribution")
    rows = {name: (name, OPTIONS.get(name, {}), None) for name in names if name not in STAGED}
    return {**rows, **EXTRA}


def run_variant(name: str, scale: str, steps: int, batch: int, warmup: int = 2) -> dict:
    """Set one method up and time ``steps`` optimizer steps after ``warmup`` ones."""
    with tempfile.TemporaryDirectory() as tmp:  # the references are read from it while the steps run
        return _time_variant(name, scale, steps, batch, warmup, Path(tmp))


def _time_variant(name: str, scale: str, steps: int, batch: int, warmup: int, tmp: Path) -> dict:
    from dreamdist.backbones import Backbone
    from dreamdist.data import ReferenceSet
    from dreamdist.methods import get_method
    from dreamdist.testing import example_config, save_tiny_pipeline, write_images
    from dreamdist.training.loop import method_loss

    method_name, kwargs, stage = variants()[name]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = Backbone.from_pretrained(save_tiny_pipeline(tmp, **SIZES[scale]), device=device)
    data = ReferenceSet.from_folder(write_images(tmp / "refs", batch), backbone.sample_size)
    if "class_images" in kwargs:
        kwargs = {**kwargs, "class_inference_steps": 5}
    config = example_config(method_name, **kwargs)
    method = get_method(method_name).implementation(config)
    method.setup(backbone, data, torch.Generator().manual_seed(0), run_dir=tmp / "run")
    groups = method.param_groups(method.default_learning_rate)  # None: one group of the trainables
    if groups is None:
        groups = [{"params": [p for m in method.trainable_modules() for p in m.parameters() if p.requires_grad]}]
    optimizer = torch.optim.AdamW(groups, lr=method.default_learning_rate, weight_decay=0.0)
    mean, _ = backbone.encode_images(data.pixels)
    latents = (mean * backbone.latent_scale).to(backbone.device)  # (B, C, h, w)
    labels = torch.zeros(batch, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        if stage is not None:
            method.begin_step(0 if stage == 1 else method.config.stage1_steps, method.config.stage1_steps + 1)
        optimizer.zero_grad(set_to_none=True)
        total, _, _ = method_loss(backbone, method, latents, labels, generator, torch.arange(batch))
        total.backward()
        optimizer.step()
        method.after_step()

    step_s, peak = time_steps(step, steps, warmup)
    trained = sum(p.numel() for g in groups for p in g["params"] if p.grad is not None)  # got a gradient
    return {
        "variant": name,
        "step_s": step_s,
        "peak_mib": peak,
        "trained": trained,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SIZES), default="small", help="component size")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method (median reported)")
    parser.add_argument("--batch", type=int, default=4, help="images per step")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(variants()), help="run only these (dreamdistribution always)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny, 1 step, batch 2, 1 thread, all in this process (smoke run)"
    )
    parser.add_argument(
        "--json", help="also write the table here (docs/results schema ; scripts/bench_docs.py renders it)"
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:  # peak memory is then the process's, not each method's
        args.scale, args.steps, args.batch, args.threads = "tiny", 1, 2, args.threads or 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.scale, args.steps, args.batch)))
        return
    names = ["dreamdistribution"] + [
        n for n in variants() if n != "dreamdistribution" and (not args.only or n in args.only)
    ]
    results = {}
    for name in names:
        if args.quick:
            results[name] = run_variant(name, args.scale, args.steps, args.batch, warmup=0)
            continue
        cmd = ["--variant", name, "--scale", args.scale, "--steps", str(args.steps), "--batch", str(args.batch)]
        results[name] = run_isolated(__file__, cmd + (["--threads", str(args.threads)] if args.threads else []))
    ref = results["dreamdistribution"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = args.threads or torch.get_num_threads()
    print(f"training step per method, batch {args.batch}, {args.scale} components, {device}, {threads} thread(s)")
    print(f"{'method':20s}{'trained params':>16s}{'step (s)':>10s}{'x DD':>7s}{'peak (MiB)':>12s}{'x DD':>7s}")
    for name, r in results.items():
        print(
            f"{name:20s}{r['trained']:16,d}{r['step_s']:10.4f}{r['step_s'] / ref['step_s']:7.2f}"
            f"{r['peak_mib']:12.1f}{r['peak_mib'] / ref['peak_mib']:7.2f}"
        )
    if args.json:
        from _results import command_line, machine, write_table

        columns = [
            {"key": "method", "label": "method"},
            {"key": "trained", "label": "trained params", "format": "{:,}"},
        ]
        columns += [{"key": "step_s", "label": "step (s)", "format": "{:.3f}"}]
        columns += [{"key": "x_dd", "label": "x DreamDistribution", "format": "{:.2f}"}]
        columns += [{"key": "peak_mib", "label": "peak (MiB)", "format": "{:.0f}"}]
        keep = ("trained", "step_s", "peak_mib")
        rows = [
            {"cells": {"method": n, **{k: r[k] for k in keep}, "x_dd": r["step_s"] / ref["step_s"]}}
            for n, r in results.items()
        ]
        settings = {"scale": args.scale, "steps": args.steps, "batch": args.batch, "threads": threads, "device": device}
        caption = f"Per-method step time and peak memory: {args.scale} components, batch {args.batch}, {device}"
        command = command_line("bench/bench_methods.py", None)
        write_table(
            args.json, columns=columns, rows=rows, caption=caption, command=command, settings=settings | machine()
        )


if __name__ == "__main__":
    main()
