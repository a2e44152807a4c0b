"""Faithful AND diverse? The paper's Table 1 claim, checked offline in the toy world.

For every built-in toy concept: render references, then score each method's generated set with
the oracle: fidelity (share of images inside the concept's support) and coverage (share of the
references' attribute combinations that appear). Methods: DreamDistribution, Textual Inversion,
the short caption (where one names the concept) and the long caption (listing the support).

    python bench/toy_quality.py [--concepts a,b] [--steps 300] [--images 48] [--out bench_out/toy_quality]

Prints a Markdown table (and writes it with a JSON file into --out).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def run_concept(name: str, args, backbone, oracle, root: Path) -> dict[str, dict]:
    """Score every method on one concept; returns {method: report dict}."""
    from dreamdist.api import GenerateConfig, TrainConfig, generate, train
    from dreamdist.methods.dreamdistribution import DreamDistributionConfig
    from dreamdist.methods.textual_inversion import TextualInversionConfig
    from dreamdist.toyworld.concepts import get_concept, render_concept
    from dreamdist.toyworld.report import concept_report

    concept = get_concept(name)
    refs = render_concept(concept, root / name / "refs", n=args.references, seed=args.seed)
    common = dict(
        images=str(refs.folder), model="toy", resolution=32, seed=args.seed, checkpoint_every=0, progress=False
    )
    gen = dict(num_images=args.images, seed=args.seed, batch_size=16, progress=False)
    runs = {
        "dreamdistribution": train(
            TrainConfig(**common, out=str(root / name / "dd"), steps=args.steps), DreamDistributionConfig()
        ),
        "textual-inversion": train(
            TrainConfig(**common, out=str(root / name / "ti"), steps=args.steps, method="textual-inversion"),
            TextualInversionConfig(init_word="shape"),
        ),
    }
    sets = {
        "dreamdistribution": GenerateConfig(
            out=str(root / name / "g_dd"), artifacts=[str(runs["dreamdistribution"])], **gen
        ),
        "textual-inversion": GenerateConfig(
            out=str(root / name / "g_ti"), artifacts=[str(runs["textual-inversion"])], prompt="{}", **gen
        ),
        "long caption": GenerateConfig(out=str(root / name / "g_long"), prompt=concept.long_caption, **gen),
    }
    if concept.short_caption:
        sets["short caption"] = GenerateConfig(out=str(root / name / "g_short"), prompt=concept.short_caption, **gen)
    results = {}
    for method, config in sets.items():
        # textual inversion adds its token to the backbone it is given, so it gets its own
        images = generate(config, backbone=None if method == "textual-inversion" else backbone).images
        results[method] = concept_report(concept, images, refs.combos, oracle).to_dict()
    return results


def main() -> None:
    from dreamdist.backbone import Backbone
    from dreamdist.toyworld.concepts import CONCEPTS
    from dreamdist.toyworld.oracle import load_oracle

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", default=",".join(CONCEPTS), help="comma-separated concept names")
    parser.add_argument("--steps", type=int, default=300, help="training steps per learned method")
    parser.add_argument("--images", type=int, default=48, help="generated images per method and concept")
    parser.add_argument("--references", type=int, default=12, help="reference images per concept")
    parser.add_argument("--seed", type=int, default=0, help="seed of references, training and sampling")
    parser.add_argument("--out", default="bench_out/toy_quality", help="working folder and results")
    args = parser.parse_args()
    root = Path(args.out)
    backbone, oracle = Backbone.from_pretrained("toy"), load_oracle()
    table, start = {}, time.time()
    for name in args.concepts.split(","):
        table[name] = run_concept(name, args, backbone, oracle, root)
        print(f"{name}: done after {time.time() - start:.0f} s", flush=True)
    methods = ["dreamdistribution", "textual-inversion", "short caption", "long caption"]
    lines = [
        f"fidelity / coverage, {args.images} images per cell, {args.steps} training steps, oracle-scored",
        "",
        "| concept | " + " | ".join(methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    for name, results in table.items():
        cells = [
            f"{results[m]['fidelity']:.2f} / {results[m]['coverage']:.2f}" if m in results else "n/a" for m in methods
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    means = []
    for m in methods:
        rows = [r[m] for r in table.values() if m in r]
        fid, cov = (sum(r[k] for r in rows) / len(rows) for k in ("fidelity", "coverage")) if rows else (None, None)
        means.append(f"**{fid:.2f} / {cov:.2f}**" if rows else "n/a")
    lines.append("| **mean** | " + " | ".join(means) + " |")
    text = "\n".join(lines)
    print(text)
    root.mkdir(parents=True, exist_ok=True)
    (root / "table.md").write_text(text + "\n")
    (root / "results.json").write_text(json.dumps({"args": vars(args), "results": table}, indent=2))


if __name__ == "__main__":
    main()
