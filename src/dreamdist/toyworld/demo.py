"""The offline demo: learn a prompt distribution from toy references and score it with the oracle.

    dreamdist demo --out out/demo [--quick]      (or python -m dreamdist.toyworld.demo ...)

Steps: render a reference set of a concept that no short caption names; train DreamDistribution
(its defaults) on the built-in toy model; generate at several gamma with the default sampler and,
for contrast, with the paper's Gaussian sampler; run the oracle report (fidelity, coverage,
novelty, attribute distributions) on each set; print one verdict line; save ``report.json`` and
``demo.png`` (references | samples per setting, then the attribute histograms of references vs
samples). About 3 minutes on 2 CPU cores; ``quick=True`` is a reduced run for CI.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dreamdist.atomic import atomic_write_json
from dreamdist.outputs import DEMO, check_output, remove_owned
from dreamdist.toyworld.attributes import ATTRIBUTES
from dreamdist.toyworld.concepts import ReferenceSet, get_concept, render_concept
from dreamdist.toyworld.oracle import load_oracle
from dreamdist.toyworld.report import (
    COVERAGE_BAR,
    FIDELITY_BAR,
    TV_BAR,
    ConceptReport,
    concept_report,
    histogram,
    predict_attributes,
)
from dreamdist.toyworld.sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS

GAMMAS = (0.0, 0.5, 1.0)  # with the default sampler
PAPER = "paper gaussian"  # the paper's sampler at gamma 1, for contrast
MAIN = "gamma 0.5"  # the set the verdict is about: the default sampler at gamma 0.5


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
    num_references=12, train_steps=300, learning_rate=1e-3, num_prompts=32, num_images=32, inference_steps=DEFAULT_STEPS
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
    method = DreamDistributionConfig(num_prompts=settings.num_prompts)
    return Path(train(config, method))


def _generate(run_dir: Path, out: Path, gamma: float, settings: DemoSettings, seed: int, backbone, **sampler):
    """Images sampled from the learned distribution at one gamma (list of PIL images)."""
    from dreamdist.api import GenerateConfig, generate

    config = GenerateConfig(
        artifacts=[str(run_dir)],
        out=str(out),
        num_images=settings.num_images,
        gamma=gamma,
        **sampler,
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


def save_figure(
    refs: ReferenceSet, samples: dict[str, list], reports: dict[str, ConceptReport], triples: dict, path: Path
) -> None:
    """Top: references | samples per setting. Bottom: per attribute, references vs samples histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 + len(samples)
    fig = plt.figure(figsize=(2.9 * panels, 6.4))
    grid = fig.add_gridspec(2, panels * 3, height_ratios=[1.15, 1])
    top = [fig.add_subplot(grid[0, 3 * i : 3 * i + 3]) for i in range(panels)]
    top[0].imshow(_tile([Image.open(p) for p in refs.paths], columns=4))
    top[0].set_title(f"references ({refs.concept.name})", fontsize=9)
    for ax, (name, images) in zip(top[1:], samples.items()):
        ax.imshow(_tile(images[:36], columns=6))
        rep = reports[name]
        ax.set_title(
            f"{name}\nfid {rep.fidelity:.2f}  cov {rep.coverage:.2f}  TV {rep.attribute_tv_mean:.2f}", fontsize=8
        )
    for ax in top:
        ax.axis("off")
    shown = {"references": refs.combos.tolist(), **{k: triples[k] for k in (MAIN, PAPER) if k in triples}}
    width = panels * 3 // len(ATTRIBUTES)
    for i, (attribute, values) in enumerate(ATTRIBUTES.items()):
        ax = fig.add_subplot(grid[1, i * width : (i + 1) * width])
        bar = 0.8 / len(shown)
        for j, (name, rows) in enumerate(shown.items()):
            shares = histogram(rows, i)
            heights = [shares.get(v, 0.0) for v in range(len(values))]
            ax.bar([x + j * bar for x in range(len(values))], heights, bar, label=name)
        ax.set_xticks([x + bar * (len(shown) - 1) / 2 for x in range(len(values))], values, fontsize=7, rotation=30)
        ax.set_title(f"{attribute}: share of images", fontsize=9)
        ax.set_ylim(0, 1)
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict(report: ConceptReport) -> str:
    """One line: are the samples faithful (fidelity), diverse (coverage) and distributed like the references?"""
    faithful, diverse = report.faithful(), report.diverse()
    word = {(True, True): "FAITHFUL AND DIVERSE", (True, False): "faithful, NOT diverse enough",
            (False, True): "diverse, NOT faithful enough", (False, False): "neither faithful nor diverse"}  # fmt: skip
    return (
        f"verdict: {word[faithful, diverse]} (fidelity {report.fidelity:.2f} >= {FIDELITY_BAR:.2f}?, coverage "
        f"{report.coverage:.2f} >= {COVERAGE_BAR:.2f}?, attribute TV {report.attribute_tv_mean:.2f} <= {TV_BAR:.2f}?)"
    )


def run_demo(
    out_dir: str | Path, quick: bool = False, concept: str = "cool-patterned", seed: int = 0, overwrite: bool = False
) -> dict:
    """Run the whole demo into ``out_dir``; returns the report per setting plus paths and timings.

    Args:
        out_dir: folder for references/, run/, samples_*/, report.json and demo.png.
        quick: reduced sizes (a few training steps and images) for CI smoke tests.
        concept: a built-in concept name (see ``dreamdist.toyworld.concepts.CONCEPTS``).
        seed: seeds references, training and sampling.
        overwrite: replace an earlier demo's output in ``out_dir`` (otherwise refused,
            ``dreamdist.outputs``); an unfinished one (no report yet) is replaced either way.

    Returns:
        {"concept", "reports": {setting: report dict}, "verdict", "figure", "run_dir", "seconds"}.
    """
    from dreamdist.backbone import Backbone

    settings = QUICK if quick else FULL
    out = Path(out_dir)
    check_output(out, DEMO, overwrite)
    remove_owned(out, DEMO)  # what an unfinished demo left (a finished one's is refused or already removed)
    atomic_write_json(out / ".demo.json", {"concept": concept, "seed": seed, "quick": quick})  # its record
    start = time.time()
    print(f"[1/4] rendering {settings.num_references} references of '{concept}'", flush=True)
    refs = render_concept(get_concept(concept), out / "references", n=settings.num_references, seed=seed)
    print(f"[2/4] training DreamDistribution ({settings.train_steps} steps)", flush=True)
    run_dir = _train(refs, out / "run", settings, seed)
    print(
        f"[3/4] generating {settings.num_images} images at gamma {', '.join(f'{g:g}' for g in GAMMAS)} "
        "and with the paper's Gaussian sampler",
        flush=True,
    )
    backbone = Backbone.from_pretrained("toy", "cpu", "fp32")
    oracle = load_oracle()
    plan = {f"gamma {g:g}": (g, {}) for g in GAMMAS} | {PAPER: (1.0, {"sampler": "gaussian"})}
    samples, reports, triples = {}, {}, {}
    for name, (gamma, sampler) in plan.items():
        folder = out / ("samples_" + name.replace(" ", "_"))
        samples[name] = _generate(run_dir, folder, gamma, settings, seed, backbone, **sampler)
        triples[name] = predict_attributes(samples[name], oracle).tolist()
        reports[name] = concept_report(refs.concept, samples[name], refs.combos, oracle)
    print("[4/4] oracle report", flush=True)
    for name, rep in reports.items():
        print(f"  {name}: {rep.summary()}", flush=True)
    line = verdict(reports[MAIN])
    print(line, flush=True)
    figure = out / "demo.png"
    save_figure(refs, samples, reports, triples, figure)
    result = {
        "concept": concept,
        "reports": {name: r.to_dict() for name, r in reports.items()},
        "verdict": line,
        "figure": str(figure),
        "run_dir": str(run_dir),
        "seconds": round(time.time() - start, 1),
    }
    atomic_write_json(out / "report.json", result)
    print(f"saved {figure} and {out / 'report.json'} ({result['seconds']:.0f} s)", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m dreamdist.toyworld.demo [--out OUT] [--quick] [--concept NAME] [--seed N]``."""
    from dreamdist.toyworld.cli import add_demo_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demo_arguments(parser)
    args = parser.parse_args(argv)
    run_demo(args.out, quick=args.quick, concept=args.concept, seed=args.seed, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
