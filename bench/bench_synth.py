"""Synthetic-dataset throughput: ``dreamdist synth`` vs a plain diffusers loop at the same settings.

Both make the same number of images with the same pipeline, steps, size and batch, and write each
as a PNG; synth additionally draws one prompt per image from the learned distributions and writes
its crash-safe folder (tmp file + rename + fsync, a row per image). Each variant runs at two sizes
and the rate is taken from the difference, so loading the models (done once by both) cancels.
CLIP scoring is timed apart (``--filter clip`` minus ``--filter none``).

    python bench/bench_synth.py [--images 16] [--steps 10] [--batch 8]
    python bench/bench_synth.py --quick         # tiny components, 2/6 images, 2 steps, once: a smoke run
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch


def seconds(run, n: int) -> float:
    start = time.perf_counter()
    run(n)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def rates(runs: dict, n: int, repeats: int) -> dict[str, float]:
    """Images/s of each variant from the time difference between n and 3n images (fixed costs cancel);
    variants alternate within each repeat (so machine load hits them alike) and the median is kept."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(2 * n / (seconds(run, 3 * n) - seconds(run, n)))
    return {name: sorted(values)[len(values) // 2] for name, values in times.items()}


def main() -> None:
    from diffusers import StableDiffusionPipeline

    from dreamdist.backbones import pick_device
    from dreamdist.config import TrainConfig
    from dreamdist.evaluation.tiny import save_tiny_clip
    from dreamdist.methods.dreamdistribution import DreamDistributionConfig
    from dreamdist.synth import SynthConfig, synth
    from dreamdist.testing import save_tiny_pipeline, write_images
    from dreamdist.training.loop import train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="images of the short run (the long one makes 3x)")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps")
    parser.add_argument("--batch", type=int, default=8, help="images per pipeline call")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per variant (median)")
    parser.add_argument("--quick", action="store_true", help="tiny components, 2/6 images, 2 steps, 1 repeat, 1 thread")
    args = parser.parse_args()
    sizes = dict(hidden_size=256, text_layers=6, unet_channels=(32, 64))  # "small" components
    if args.quick:  # a smoke run: the rates are noise
        args.images, args.steps, args.batch, args.repeats, sizes = 2, 2, 2, 1, {}
        torch.set_num_threads(1)
    device = pick_device()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_tiny_pipeline(tmp, **sizes)
        clip = save_tiny_clip(tmp / "clip")
        for name in ("cat", "dog"):
            write_images(tmp / "refs" / name, 2)
        run = train(
            TrainConfig(
                images=str(tmp / "refs"),
                model=str(model),
                out=str(tmp / "run"),
                steps=1,
                multiclass=True,
                progress=False,
            ),
            DreamDistributionConfig(num_prompts=4),
        )

        def synth_run(n: int, filter_: str = "none") -> None:
            out = tmp / "synth"
            shutil.rmtree(out, ignore_errors=True)
            config = SynthConfig(
                out=str(out),
                artifact=str(run),
                per_class=n // 2,
                filter=filter_,
                clip_model=str(clip),
                batch_size=args.batch,
                num_inference_steps=args.steps,
                progress=False,
            )
            synth(config)

        def plain_run(n: int) -> None:
            out = tmp / "plain"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None).to(device)
            pipe.set_progress_bar_config(disable=True)
            with torch.no_grad():
                embeds = pipe.encode_prompt("a photo of a cat", device, 1, False)[0]  # (1, L, d)
            for start in range(0, n, args.batch):
                count = min(args.batch, n - start)
                generators = [torch.Generator().manual_seed(start + i) for i in range(count)]
                with torch.no_grad():
                    images = pipe(
                        prompt_embeds=embeds.expand(count, -1, -1),
                        negative_prompt=[""] * count,
                        generator=generators,
                        num_inference_steps=args.steps,
                    ).images
                for i, image in enumerate(images):
                    image.save(out / f"{start + i:06d}.png")

        plain_run(args.batch)  # warm-up (kernels, caches)
        synth_run(args.batch)
        runs = {"plain": plain_run, "synth": synth_run, "clip": lambda n: synth_run(n, "clip")}
        measured = rates(runs, args.images, args.repeats)
        plain, ours, scored = measured["plain"], measured["synth"], measured["clip"]
    clip_ms = 1000 * (1 / scored - 1 / ours)
    print(
        f"{args.images}/{3 * args.images} images, {args.steps} steps, batch {args.batch}, "
        f"{'tiny' if args.quick else 'small'} components, {device}, "
        f"median of {args.repeats}"
    )
    print(f"{'plain diffusers':22s}{plain:8.2f} img/s")
    print(f"{'dreamdist synth':22s}{ours:8.2f} img/s")
    print(f"synth / plain: {ours / plain:.3f}")
    cost = f"{clip_ms:.1f} ms per image" if clip_ms > 0 else "below the timing noise"
    print(f"CLIP scoring (tiny CLIP): {cost} ({scored:.2f} img/s with --filter clip)")


if __name__ == "__main__":
    main()
