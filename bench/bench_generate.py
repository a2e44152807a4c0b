"""Generation overhead: ``dreamdist`` sampling vs a plain diffusers pipeline call.

Both produce the same number of images with the same pipeline, sampler, steps, size and batch;
dreamdist additionally refits the prompt distribution and draws one prompt per image. Prints
images/s of each and the overhead ratio.

    python bench/bench_generate.py [--images 16] [--steps 10] [--batch 4]
    python bench/bench_generate.py --quick      # tiny components, 2 images, 2 steps: a smoke run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    from dreamdist.artifact import load_artifact
    from dreamdist.backbones import Backbone
    from dreamdist.config import GenerateConfig, TrainConfig
    from dreamdist.generation import generate_images, make_pipeline
    from dreamdist.methods.dreamdistribution import DreamDistributionConfig
    from dreamdist.testing import save_tiny_pipeline, write_images
    from dreamdist.training.loop import train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="images per variant")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps")
    parser.add_argument("--batch", type=int, default=4, help="images per pipeline call")
    parser.add_argument("--quick", action="store_true", help="tiny components, 2 images, 2 steps, 1 thread (smoke run)")
    parser.add_argument("--json", help="also write the result into this docs/results table (scripts/bench_docs.py)")
    args = parser.parse_args()
    sizes = dict(hidden_size=256, text_layers=6, unet_channels=(32, 64))  # "small" components
    if args.quick:
        args.images, args.steps, args.batch, sizes = 2, 2, 2, {}
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_tiny_pipeline(tmp, **sizes)
        refs = write_images(tmp / "refs", 4)
        run = train(
            TrainConfig(images=str(refs), model=str(model), out=str(tmp / "run"), steps=1, progress=False),
            DreamDistributionConfig(),
        )
        backbone = Backbone.from_pretrained(model)
        artifact = load_artifact(run)
        config = GenerateConfig(
            out=str(tmp / "g"),
            artifacts=[str(run)],
            num_images=args.images,
            num_inference_steps=args.steps,
            batch_size=args.batch,
            progress=False,
        )
        pipe = make_pipeline(backbone)
        embeds = backbone.encode_text(["a photo of a cathedral"]).detach()

        def plain():
            for start in range(0, args.images, args.batch):
                n = min(args.batch, args.images - start)
                gens = [torch.Generator().manual_seed(start + i) for i in range(n)]
                with torch.no_grad():
                    pipe(
                        prompt_embeds=embeds.expand(n, -1, -1),
                        negative_prompt=[""] * n,
                        generator=gens,
                        num_inference_steps=args.steps,
                        guidance_scale=7.5,
                        output_type="pil",
                    )

        def ours():
            generate_images(backbone, [artifact], config)

        timings = {}
        for name, fn in (("plain diffusers", plain), ("dreamdist", ours)) * 2:  # second round is timed
            start = time.perf_counter()
            fn()
            timings[name] = time.perf_counter() - start
    device = backbone.device.type
    scale = "tiny" if args.quick else "small"
    print(f"{args.images} images, {args.steps} steps, batch {args.batch}, {scale} components, {device}")
    for name, seconds in timings.items():
        print(f"{name:16s}{args.images / seconds:8.2f} img/s")
    print(f"overhead ratio (dreamdist / plain) x{timings['dreamdist'] / timings['plain diffusers']:.3f}")
    if args.json:
        from _results import command_line, write_speed_row

        plain_s, ours_s = timings["plain diffusers"], timings["dreamdist"]
        values = {
            "ref_img_s": args.images / plain_s,
            "ours_img_s": args.images / ours_s,
            "time_ratio": ours_s / plain_s,
        }
        cells = {
            "benchmark": f"`bench/bench_generate.py` ({args.images} images, {args.steps} steps, batch {args.batch})",
            "reference": "plain `StableDiffusionPipeline` call: {ref_img_s:.2f} img/s",
            "dreamdist": "refit + per-image prompt sampling: {ours_img_s:.2f} img/s",
            "ratio": "{time_ratio:.2f}x time",
        }
        settings = {"images": args.images, "steps": args.steps, "batch": args.batch, "scale": scale, "device": device}
        write_speed_row(
            args.json, "bench_generate", command_line("bench/bench_generate.py", None), settings, values, cells
        )


if __name__ == "__main__":
    main()
