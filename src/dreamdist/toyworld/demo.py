"""The offline demo: learn a prompt distribution from toy references and score it with the oracle.

    dreamdist demo --out out/demo [--quick]      (or python -m dreamdist.toyworld.demo ...)

Steps: render a reference set of a concept that no short caption names; train DreamDistribution
on the built-in toy model; generate at gamma = 0, 1, 2; run the oracle report (fidelity,
coverage, novelty) on each set; save ``report.json`` and ``demo.png`` (references | samples |
bar chart). About 2.5 minutes on 2 CPU cores; ``quick=True`` is a reduced run for CI.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dreamdist.toyworld.concepts import ReferenceSet, get_concept, render_concept
from dreamdist.toyworld.oracle import load_oracle
from dreamdist.toyworld.report import ConceptReport, concept_report
from dreamdist.toyworld.sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS

GAMMAS = (0.0, 1.0, 2.0)


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run."""

    num_references: int
    train_steps: int
    learning_rate: float
    num_prompts: int
    num_images: int  # per gamma
    inference_steps: int


FULL = DemoSettings(
    num_references=12, train_steps=300, learning_rate=1e-3, num_prompts=32, num_images=48, inference_steps=DEFAULT_STEPS
)
QUICK = DemoSettings(
    num_references=6, train_steps=8, learning_rate=1e-3, num_prompts=4, num_images=4, inference_steps=4
)


def _train(refs: ReferenceSet, run_dir: Path, settings: DemoSettings, seed: int) -> Path:
    """DreamDistribution on the toy model (the core trainer, not a copy of it)."""
    from dreamdist.api import TrainConfig, train
    from dreamdist.methods.dreamdistribution import DreamDistributionConfig

    shutil.rmtree(run_dir, ignore_errors=True)  # the demo owns its run folder
    config = TrainConfig(
        images=str(refs.folder),
        model="toy",
        out=str(run_dir),
        steps=settings.train_steps,
        learning_rate=settings.learning_rate,
        resolution=32,
        seed=seed,
        checkpoint_every=0,
    )
    method = DreamDistributionConfig(num_prompts=settings.num_prompts, num_tokens=4)
    return Path(train(config, method))


def _generate(run_dir: Path, out: Path, gamma: float, settings: DemoSettings, seed: int, backbone):
    """Images sampled from the learned distribution at one gamma (list of PIL images)."""
    from dreamdist.api import GenerateConfig, generate

    config = GenerateConfig(
        artifacts=[str(run_dir)],
        out=str(out),
        num_images=settings.num_images,
        gamma=gamma,
        seed=seed,
        guidance_scale=DEFAULT_GUIDANCE,
        num_inference_steps=settings.inference_steps,
        batch_size=min(16, settings.num_images),
    )
    return generate(config, backbone=backbone).images


def _tile(images: list[Image.Image], columns: int, side: int = 32) -> Image.Image:
    """Images -> one grid image of ``side``-pixel tiles with a 1-pixel white gap."""
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * (side + 1) - 1, rows * (side + 1) - 1), "white")
    for i, image in enumerate(images):
        tile = image.convert("RGB").resize((side, side), Image.NEAREST)
        grid.paste(tile, ((i % columns) * (side + 1), (i // columns) * (side + 1)))
    return grid


def save_figure(refs: ReferenceSet, samples: dict[float, list], reports: dict[float, ConceptReport], path: Path):
    """references | samples per gamma | bar chart of fidelity, coverage and novelty per gamma."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 + len(samples)
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.6))
    axes[0].imshow(_tile([Image.open(p) for p in refs.paths], columns=4))
    axes[0].set_title(f"references ({refs.concept.name})", fontsize=9)
    for ax, (gamma, images) in zip(axes[1:], samples.items()):
        ax.imshow(_tile(images[:36], columns=6))
        ax.set_title(f"samples, gamma = {gamma:g}", fontsize=9)
    for ax in axes[:-1]:
        ax.axis("off")
    metrics = ("fidelity", "coverage", "novelty")
    width = 0.8 / len(reports)
    for j, (gamma, rep) in enumerate(reports.items()):
        values = [getattr(rep, m) for m in metrics]
        axes[-1].bar([i + j * width for i in range(len(metrics))], values, width, label=f"gamma {gamma:g}")
    axes[-1].set_xticks([i + width * (len(reports) - 1) / 2 for i in range(len(metrics))], metrics)
    axes[-1].set(ylim=(0, 1.05), title="oracle report")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(out_dir: str | Path, quick: bool = False, concept: str = "cool-patterned", seed: int = 0) -> dict:
    """Run the whole demo into ``out_dir``; returns the report per gamma plus paths and timings.

    Args:
        out_dir: folder for references/, run/, samples_gamma*/, report.json and demo.png.
        quick: reduced sizes (a few training steps and images) for CI smoke tests.
        concept: a built-in concept name (see ``dreamdist.toyworld.concepts.CONCEPTS``).
        seed: seeds references, training and sampling.

    Returns:
        {"concept", "reports": {gamma: report dict}, "figure", "run_dir", "seconds"}.
    """
    from dreamdist.backbone import Backbone

    settings = QUICK if quick else FULL
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    print(f"[1/4] rendering {settings.num_references} references of '{concept}'", flush=True)
    refs = render_concept(get_concept(concept), out / "references", n=settings.num_references, seed=seed)
    print(f"[2/4] training DreamDistribution ({settings.train_steps} steps)", flush=True)
    run_dir = _train(refs, out / "run", settings, seed)
    print(f"[3/4] generating {settings.num_images} images at gamma {', '.join(f'{g:g}' for g in GAMMAS)}", flush=True)
    backbone = Backbone.from_pretrained("toy", "cpu", "fp32")
    oracle = load_oracle()
    samples, reports = {}, {}
    for gamma in GAMMAS:
        samples[gamma] = _generate(run_dir, out / f"samples_gamma{gamma:g}", gamma, settings, seed, backbone)
        reports[gamma] = concept_report(refs.concept, samples[gamma], refs.combos, oracle)
    print("[4/4] oracle report", flush=True)
    for gamma, rep in reports.items():
        print(f"  gamma {gamma:g}: {rep.summary()}", flush=True)
    figure = out / "demo.png"
    save_figure(refs, samples, reports, figure)
    result = {
        "concept": concept,
        "reports": {f"{g:g}": r.to_dict() for g, r in reports.items()},
        "figure": str(figure),
        "run_dir": str(run_dir),
        "seconds": round(time.time() - start, 1),
    }
    (out / "report.json").write_text(json.dumps(result, indent=1))
    print(f"saved {figure} and {out / 'report.json'} ({result['seconds']:.0f} s)", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m dreamdist.toyworld.demo [--out OUT] [--quick] [--concept NAME] [--seed N]``."""
    from dreamdist.toyworld.cli import add_demo_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demo_arguments(parser)
    args = parser.parse_args(argv)
    run_demo(args.out, quick=args.quick, concept=args.concept, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
