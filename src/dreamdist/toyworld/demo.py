"""The offline demo: learn a prompt distribution from toy references and score it with the oracle.

    dreamdist demo --out out/demo [--quick]      (or python -m dreamdist.toyworld.demo ...)

Steps: render a reference set of a concept that no short caption names; train DreamDistribution
(its defaults) on the built-in toy model; generate at gamma 0, 1 and 2 with the default sampler
(the same seeds, so each column shows the same images moved by the diversity knob) and, for
contrast, with the paper's Gaussian sampler; run the oracle report (fidelity, coverage, novelty,
attribute entropy and distributions) on each set; print the diversity knob's table and one verdict
line; save ``report.json`` and ``demo.png`` (references | samples per setting, then the attribute
histograms of references vs samples). ``dreamdist demo --help`` gives its measured time
(``dreamdist.timings``); ``quick=True`` is a reduced run for CI.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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

GAMMAS = (0.0, 1.0, 2.0)  # with the default sampler: the learned prompts, the default, the most diverse
PAPER = "paper gaussian"  # the paper's sampler at gamma 1, for contrast
MAIN = "gamma 1"  # the set the verdict is about: the default sampler at its default gamma


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
            f"{name}\nfid {rep.fidelity:.2f}  cov {rep.coverage:.2f}  TV {rep.attribute_tv_mean:.2f}\n"
            f"novelty {rep.novelty:.2f}  entropy {rep.attribute_entropy_mean:.2f} / {rep.entropy['joint']:.2f} bits",
            fontsize=8,
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


def knob_table(samples: dict[str, list], reports: dict[str, ConceptReport]) -> list[dict]:
    """The diversity knob: per gamma of the default sampler, fidelity beside the diversity measures.

    ``change``: mean absolute difference (grey levels, 0-255) from the gamma 0 image of the same seed;
    ``vendi``: the Vendi score (q = 1) on the toy oracle's features, the set's effective number of
    distinct images.
    """
    from dreamdist.evaluation.metrics import vendi_score
    from dreamdist.evaluation.toy_oracle import ToyOracleFeatures

    features = ToyOracleFeatures("toy-oracle", device="cpu")
    base = [np.asarray(image.convert("RGB"), dtype=np.int16) for image in samples["gamma 0"]]
    rows = []
    for gamma in GAMMAS:
        name = f"gamma {gamma:g}"
        rep, images = reports[name], samples[name]
        change = np.mean(
            [np.abs(np.asarray(i.convert("RGB"), dtype=np.int16) - b).mean() for i, b in zip(images, base)]
        )
        rows.append({
            "gamma": gamma, "fidelity": rep.fidelity, "coverage": rep.coverage, "novelty": rep.novelty,
            "entropy": rep.attribute_entropy_mean, "joint_entropy": rep.entropy["joint"], "change": float(change),
            "vendi": vendi_score(features(images)),
        })  # fmt: skip
    return rows


def format_knob(rows: list[dict], reference_entropy: tuple[float, float]) -> str:
    """``knob_table`` as printed lines."""
    lines = [
        "  diversity knob (default sampler, same seeds): gamma | fidelity | coverage | novelty | attribute entropy"
        " (bits, mean / joint) | Vendi | change from gamma 0 (grey levels)",
        *(
            f"    {r['gamma']:g} | {r['fidelity']:.2f} | {r['coverage']:.2f} | {r['novelty']:.2f} | "
            f"{r['entropy']:.2f} / {r['joint_entropy']:.2f} | {r['vendi']:.2f} | {r['change']:.1f}"
            for r in rows
        ),
        f"    (references: entropy {reference_entropy[0]:.2f} / {reference_entropy[1]:.2f} bits)",
    ]
    return "\n".join(lines)


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
        {"concept", "reports": {setting: report dict}, "knob": ``knob_table`` rows, "verdict", "figure",
        "run_dir", "seconds"}.
    """
    from dreamdist.backbones import Backbone

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
    knob = knob_table(samples, reports)
    print(format_knob(knob, (reports[MAIN].reference_entropy_mean, reports[MAIN].reference_entropy["joint"])))
    line = verdict(reports[MAIN])
    if quick:  # a few training steps cannot learn a concept; say so beside the verdict
        line += " [--quick: a smoke run, too short to learn the concept; the full demo's verdict is the one to read]"
    print(line, flush=True)
    figure = out / "demo.png"
    save_figure(refs, samples, reports, triples, figure)
    result = {
        "concept": concept,
        "reports": {name: r.to_dict() for name, r in reports.items()},
        "knob": knob,
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
