"""The paper's Table 2, offline: do synthetic images teach a classifier that works on real ones?

In the toy world, a few real renders per class -> one synthetic training set per arm -> a small CNN
trained ONLY on that set -> top-1 on fresh real renders of each class. Arms:

- ``dd-mixture`` / ``dd-gaussian``: a multi-class DreamDistribution run, sampled with each sampler
  by ``dreamdist synth`` (N generated, the first K kept: the toy world has no CLIP to filter with);
- ``names``: the class name as the prompt (the paper's "class names" baseline);
- ``ti``: one Textual Inversion run per class, prompt ``{}``;
- ``refs``: the real references themselves (what the synthetic sets were learned from);
- ``real``: a large real set (the upper bound).

The classes are distributions over (colour, shape, background) with disjoint supports, named with
words the toy model never saw in a caption (as fine-grained ImageNet names are words Stable
Diffusion draws poorly), so a class name alone does not say what a class looks like.

    python bench/toy_synthetic.py                 # 3 seeds (~1 h on 2 CPU cores)
    python bench/toy_synthetic.py --quick         # 1 seed, short training, small sets: a smoke run

Everything is cached under --out (a rerun skips finished steps); writes ``table.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

CLASSES = {  # folder name -> (colours, shapes, backgrounds); supports are pairwise disjoint
    "warm_pointy": (("red", "orange", "yellow"), ("triangle", "star"), ("plain", "striped", "checkered", "dotted")),
    "warm_round": (("red", "orange", "yellow"), ("circle", "square"), ("plain", "dotted")),
    "cool_blocky": (("green", "blue", "purple"), ("square", "cross"), ("striped", "checkered", "dotted")),
    "cool_round": (("green", "blue", "purple"), ("circle", "triangle"), ("plain", "checkered")),
}
ARMS = ["dd-mixture", "dd-gaussian", "names", "ti", "refs", "real"]
LABELS = {
    "dd-mixture": "DreamDistribution (mixture sampler)",
    "dd-gaussian": "DreamDistribution (paper's Gaussian sampler)",
    "names": "class-name prompts",
    "ti": "Textual Inversion per class",
    "refs": "the real references only",
    "real": "large real set (upper bound)",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (renders, training, sampling)")
    parser.add_argument("--references", type=int, default=12, help="real reference images per class")
    parser.add_argument("--per-class", type=int, default=120, help="N: synthetic images generated per class")
    parser.add_argument("--keep", type=int, default=100, help="K: synthetic images kept per class")
    parser.add_argument("--test", type=int, default=100, help="fresh real test renders per class")
    parser.add_argument("--large", type=int, default=300, help="real images per class of the upper bound")
    parser.add_argument("--steps", type=int, default=300, help="training steps (DreamDistribution, TI)")
    parser.add_argument("--epochs", type=int, default=30, help="classifier epochs (batch 32)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of: {', '.join(ARMS)}")
    parser.add_argument("--quick", action="store_true", help="1 seed, 60 steps, 24 kept per class, 5 epochs")
    parser.add_argument("--out", default="bench-out/toy_synthetic", help="working folder (cache) and results")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", help="also write the table here, as docs/results JSON (scripts/bench_docs.py)")
    args = parser.parse_args(argv)
    if args.quick:  # smaller defaults; flags given on the command line still win
        parser.set_defaults(seeds="0", steps=60, per_class=24, keep=24, test=30, large=60, epochs=5)
        args = parser.parse_args(argv)
    return args


def concept(name: str):
    from dreamdist.toyworld.concepts import product_concept

    colours, shapes, backgrounds = CLASSES[name]
    return product_concept(name, f"{name}: {colours} x {shapes} x {backgrounds}", colours, shapes, backgrounds)


def render_folders(root: Path, n: int, seed: int) -> Path:
    """``root/<class>/`` with ``n`` real renders of each class."""
    from dreamdist.toyworld.concepts import render_concept

    for c, name in enumerate(CLASSES):
        if not (root / name).is_dir() or len(list((root / name).glob("*.png"))) < n:
            render_concept(concept(name), root / name, n=n, seed=seed * 1000 + c)
    return root


def link_images(paths: list[Path], folder: Path) -> None:
    """Make ``folder`` hold exactly these images (hard links; the grid and manifest stay behind)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        target = folder / path.name
        if not target.exists():
            os.link(path, target)


def train_dd(refs: Path, out: Path, args, seed: int) -> Path:
    from dreamdist.api import TrainConfig, train

    if (out / "dreamdist.safetensors").is_file():
        return out
    config = TrainConfig(images=str(refs), out=str(out), model="toy", steps=args.steps, multiclass=True, seed=seed,
                         progress=False, checkpoint_every=0, resume=(out / "checkpoints").is_dir())  # fmt: skip
    return train(config)


def arm_dd(sampler: str, run: Path, work: Path, args, seed: int) -> Path:
    from dreamdist.synth import synth
    from dreamdist.synth.config import SynthConfig

    out = work / f"dd-{sampler}"
    synth(SynthConfig(out=str(out), artifact=str(run), per_class=args.per_class, keep=args.keep, filter="none",
                      sampler=sampler, seed=seed, progress=False))  # fmt: skip
    return out


def arm_names(backbone, work: Path, args, seed: int) -> Path:
    from dreamdist.api import GenerateConfig, generate

    out = work / "names"
    for c, name in enumerate(CLASSES):
        staging = work / "staging" / "names" / name
        config = GenerateConfig(out=str(staging), prompt=name.replace("_", " "), model="toy", num_images=args.keep,
                                seed=seed * 1_000_000 + c * 10_000, progress=False)  # fmt: skip
        link_images(generate(config, backbone=backbone).paths, out / name)
    return out


def arm_ti(refs: Path, work: Path, args, seed: int) -> Path:
    from dreamdist.api import GenerateConfig, TrainConfig, generate, train
    from dreamdist.methods.textual_inversion import TextualInversionConfig

    out = work / "ti"
    for c, name in enumerate(CLASSES):
        run = work / "runs" / f"ti-{name}"
        if not (run / "dreamdist.safetensors").is_file():
            train(TrainConfig(images=str(refs / name), out=str(run), model="toy", method="textual-inversion",
                              steps=args.steps, seed=seed, progress=False, checkpoint_every=0,
                              resume=(run / "checkpoints").is_dir()),
                  TextualInversionConfig(init_word="shape"))  # fmt: skip
        staging = work / "staging" / "ti" / name
        config = GenerateConfig(out=str(staging), artifacts=[str(run)], prompt="{}", num_images=args.keep,
                                seed=seed * 1_000_000 + c * 10_000, progress=False)  # fmt: skip
        link_images(generate(config).paths, out / name)
    return out


def classify_arm(train_dir: Path, test_dir: Path, args, seed: int) -> dict:
    from dreamdist.classify import classify
    from dreamdist.classify.config import ClassifyConfig

    config = ClassifyConfig(epochs=args.epochs, batch_size=32, seed=seed, threads=args.threads, progress=False)
    result = classify(train_dir, test_dir, config)
    return {"top1": result.evaluation.top1, "train_images": sum(1 for _ in train_dir.rglob("*.png"))}


def run_seed(seed: int, args, arms: list[str]) -> dict[str, dict]:
    """Every arm of one seed; cached per (seed, arm) in results-<seed>.json."""
    from dreamdist.backbones import Backbone

    work = Path(args.out) / f"seed{seed}"
    cache = work / "results.json"
    done = json.loads(cache.read_text()) if cache.is_file() else {}
    refs = render_folders(work / "refs", args.references, seed)
    test = render_folders(work / "test", args.test, 10_000 + seed)
    backbone = None
    for arm in arms:
        if arm in done:
            continue
        start = time.perf_counter()
        if arm.startswith("dd-"):
            data = arm_dd(arm.removeprefix("dd-"), train_dd(refs, work / "runs" / "dd", args, seed), work, args, seed)
        elif arm == "names":
            backbone = backbone or Backbone.from_pretrained("toy", device="cpu")
            data = arm_names(backbone, work, args, seed)
        elif arm == "ti":
            data = arm_ti(refs, work, args, seed)
        elif arm == "refs":
            data = refs
        else:
            data = render_folders(work / "real", args.large, 20_000 + seed)
        done[arm] = {**classify_arm(data, test, args, seed), "seconds": round(time.perf_counter() - start, 1)}
        cache.write_text(json.dumps(done, indent=1))
        print(f"seed {seed} {arm}: top-1 {done[arm]['top1']:.3f} ({done[arm]['seconds']} s)", flush=True)
    return done


def table(results: dict[int, dict], arms: list[str], args) -> str:
    lines = [
        f"Top-1 on {args.test} fresh real renders per class ({len(CLASSES)} classes, chance "
        f"{1 / len(CLASSES):.2f}); small CNN, {args.epochs} epochs; mean ± std over seeds "
        f"{', '.join(map(str, results))}; {args.references} references per class, {args.steps} training "
        f"steps, {args.per_class} generated -> {args.keep} kept per class.",
        "",
        "| training data | top-1 | images per class |",
        "|---|---|---|",
    ]
    for arm in arms:
        values = [results[s][arm]["top1"] for s in results if arm in results[s]]
        if not values:
            continue
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        count = next(results[s][arm]["train_images"] for s in results if arm in results[s]) // len(CLASSES)
        lines.append(f"| {LABELS[arm]} | {statistics.mean(values):.3f} ± {std:.3f} | {count} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; choose from {ARMS}")
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {seed: run_seed(seed, args, arms) for seed in seeds}
    out = Path(args.out)
    text = table(results, arms, args)
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(text)
    if args.json:
        write_json(args.json, results, arms, args, argv)


def write_json(path: str, results: dict[int, dict], arms: list[str], args, argv) -> None:
    """The table in docs/results' schema (``bench/_results.py``), for ``scripts/bench_docs.py``."""
    from _results import command_line, machine, write_table

    columns = [
        {"key": "training_data", "label": "training data (per class)"},
        {"key": "images", "label": "images per class"},
        {"key": "top_1", "label": "top-1 on real renders", "format": "{0:.3f} ± {1:.3f}"},
    ]
    rows = []
    for arm in arms:
        values = [results[s][arm]["top1"] for s in results if arm in results[s]]
        if not values:
            continue
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        count = next(results[s][arm]["train_images"] for s in results if arm in results[s]) // len(CLASSES)
        images = f"{count} kept of {args.per_class}" if arm.startswith("dd-") else str(count)
        rows.append(
            {"cells": {"training_data": LABELS[arm], "images": images, "top_1": [statistics.mean(values), std]}}
        )
    caption = table(results, arms, args).splitlines()[0]
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "out")} | machine()
    write_table(
        path,
        columns=columns,
        rows=rows,
        caption=caption,
        command=command_line("bench/toy_synthetic.py", argv),
        settings=settings,
    )


if __name__ == "__main__":
    main()
