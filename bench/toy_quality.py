"""Faithful AND diverse? The paper's Table 1 claim, checked offline in the toy world.

For every built-in toy concept and seed: render references, train every method of the registry
on them, generate, and score each generated set with the oracle: fidelity (share of images inside
the concept's support), coverage (share of the references' combinations that appear), novelty,
and the total-variation distance between the generated and reference distributions of each
attribute and of the joint triple. Cells are mean +- std over seeds of the mean over concepts.

    python bench/toy_quality.py                  # every method, 3 seeds, all concepts (~hours on 2 cores)
    python bench/toy_quality.py --quick          # 2 concepts, 1 seed, short training: a smoke run
    python bench/toy_quality.py --quick --concepts circles --steps 2 --images 2   # seconds: what the tests run
    python bench/toy_quality.py --ablation       # DreamDistribution objectives x samplers x knobs
    python bench/toy_quality.py --gamma-sweep --concepts cool-patterned,warm-pointy --seeds 0,1  # the diversity knob
    python bench/toy_quality.py --variants dd,dd-paper --concepts circles,mix-four --seeds 0,1,2
    python bench/toy_quality.py --product "rgp:red,green,purple:circle,cross:*" --variants dd,ti  # your own concept

Trained runs and generated sets are cached under --out (a rerun skips what exists), so an
interrupted benchmark continues. Writes ``table.md``, ``results.json`` and ``quality.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class Variant:
    """One row of the table: a method with its options (or a caption), and how it is sampled."""

    label: str
    method: str | None  # registry name; None = caption baseline
    options: dict = field(default_factory=dict)  # method config fields
    sampling: dict = field(default_factory=dict)  # GenerateConfig fields
    caption: str | None = None  # "short" or "long" for caption baselines
    train: dict = field(default_factory=dict)  # TrainConfig overrides (steps, learning_rate)

    def run_key(self) -> str:
        """Trained runs are shared by variants that differ only in sampling (options equal to the
        method's defaults are left out, so spelling a default out does not train again)."""
        options = dict(self.options)
        if self.method is not None:
            from dreamdist.methods import get_method

            config_cls = get_method(self.method).config
            defaults = {f.name: f.default for f in fields(config_cls)}
            options = {k: v for k, v in options.items() if defaults.get(k) != v}
        parts = [self.method or f"{self.caption}-caption"] + [
            f"{k}={v}" for k, v in sorted({**options, **self.train}.items())
        ]
        return "_".join(parts).replace("/", "-").replace(" ", "")


def non_default(config_cls: type, options: dict) -> dict:
    """The options whose values differ from the dataclass ``config_cls``'s defaults."""
    defaults = {f.name: f.default for f in fields(config_cls)}
    return {k: v for k, v in options.items() if defaults.get(k) != v}


def slug(key: str) -> str:
    """A cache key usable as a file name."""
    return key.replace("/", "-").replace(" ", "")


MIX = {"objective": "mixture"}
VARIANTS = {
    "dd": Variant("DreamDistribution (defaults)", "dreamdistribution"),
    "dd-paper": Variant(
        "DreamDistribution (paper: gaussian/gaussian)",
        "dreamdistribution",
        {"objective": "gaussian"},
        {"sampler": "gaussian", "gamma": 1.0},
    ),
    "ti": Variant("Textual Inversion", "textual-inversion", {"init_word": "shape"}, {"prompt": "{}"}),
    "dreambooth-lora": Variant(
        "DreamBooth-LoRA",
        "dreambooth",
        {"class_noun": "shape", "lora": True, "rank": 8, "prior_preservation": False},
        {"prompt": "{}"},
    ),
    "custom-diffusion": Variant(
        "Custom Diffusion", "custom-diffusion", {"class_noun": "shape", "init_word": "shape"}, {"prompt": "{}"}
    ),
    "two-stage": Variant(
        "Two-stage (TI + UNet)", "two-stage", {"class_noun": "shape", "stage1_steps": 150}, {"prompt": "{}"}
    ),
    "short": Variant("short caption", None, caption="short"),
    "long": Variant("long caption", None, caption="long"),
}
MAIN = ["dd", "dd-paper", "ti", "dreambooth-lora", "custom-diffusion", "two-stage", "short", "long"]


def ablation_variants() -> dict[str, Variant]:
    """DreamDistribution options of METHODS.md §8: objective x sampler x gamma, then the plain knobs."""
    dd = "dreamdistribution"
    out = {}
    for objective in ("gaussian", "mixture"):
        for sampler in ("gaussian", "mixture"):
            for gamma in (0.0, 1.0, 2.0):
                out[f"{objective}-obj/{sampler}/g{gamma}"] = Variant(
                    f"objective {objective}, sampler {sampler}, gamma {gamma}",
                    dd,
                    {"objective": objective},
                    {"sampler": sampler, "gamma": gamma},
                )
    knobs = {
        "S=4 candidates": {"num_samples": 4},
        "S=4+margin=0": {"num_samples": 4, "assign_margin": 0.0},
        "K=8": {"num_prompts": 8},
        "K=16": {"num_prompts": 16},
        "S=8": {"num_samples": 8},
        "M=8": {"num_tokens": 8},
        "lambda=0": {"ortho_weight": 0.0},
        "lambda=0.05": {"ortho_weight": 0.05},
        "train_gamma=0": {"train_gamma": 0.0},
        "train_gamma=1": {"train_gamma": 1.0},
        "smoothing=0": {"assign_smoothing": 0.0},
        "smoothing=0.3": {"assign_smoothing": 0.3},
        "M=8+smoothing=0": {"num_tokens": 8, "assign_smoothing": 0.0},
    }
    for name, options in knobs.items():
        out[f"mixture-obj/{name}"] = Variant(f"mixture objective, {name}", dd, {**MIX, **options})
    for name, options, train in (
        ("previous defaults (S=4, margin 0, batch 4, all timesteps)", {"num_samples": 4, "assign_margin": 0.0},
         {"batch_size": 4, "min_timestep": 0.0, "max_timestep": 1.0}),
        ("S=4 candidates, batch 4", {"num_samples": 4}, {"batch_size": 4}),
        ("S=2 candidates, batch 8", {"num_samples": 2}, {"batch_size": 8}),
        ("all timesteps", {}, {"min_timestep": 0.0, "max_timestep": 1.0}),
        ("noisiest timesteps too (max 1.0, the previous default)", {}, {"max_timestep": 1.0}),
        ("timesteps below 0.55", {}, {"max_timestep": 0.55}),
    ):  # fmt: skip
        out[f"mixture-obj/{name}"] = Variant(f"mixture objective, {name}", dd, {**MIX, **options}, train=train)
    for name, train in {
        "steps=150": {"steps": 150},
        "steps=600": {"steps": 600},
        "lr=3e-3": {"learning_rate": 3e-3},
    }.items():
        out[f"mixture-obj/{name}"] = Variant(f"mixture objective, {name}", dd, dict(MIX), train=train)
    return out


GAMMAS = (0.0, 0.5, 1.0, 1.5, 2.0)


def gamma_sweep_variants(gammas: tuple[float, ...] = GAMMAS) -> dict[str, Variant]:
    """The diversity knob (docs/sampling.md): gamma for each sampler, on two trained runs per concept.

    ``dd/<sampler>/g<gamma>``: the default (mixture-objective) run sampled with either sampler;
    ``dd-paper/gaussian/g<gamma>``: the paper's objective and sampler. Runs are trained once per
    concept and seed; only the sampling changes along a row group.
    """
    dd, out = "dreamdistribution", {}
    for key, options, sampler, label in (
        ("dd", {}, "mixture", "defaults, mixture sampler"),
        ("dd", {}, "gaussian", "defaults, gaussian sampler"),
        ("dd-paper", {"objective": "gaussian"}, "gaussian", "paper objective, gaussian sampler"),
    ):
        for gamma in gammas:
            out[f"{key}/{sampler}/g{gamma:g}"] = Variant(
                f"{label}, gamma {gamma:g}", dd, options, {"sampler": sampler, "gamma": gamma}
            )
    return out


def train_run(variant: Variant, refs, folder: Path, args) -> Path:
    """Train (or reuse) the run of a variant on one reference folder."""
    from dreamdist.api import TrainConfig, train
    from dreamdist.artifact import ARTIFACT_NAME
    from dreamdist.methods import get_method

    run = folder / variant.run_key()
    if (run / ARTIFACT_NAME).is_file():
        return run
    config_cls = get_method(variant.method).config
    settings = {"steps": args.steps, **variant.train}
    options = dict(variant.options)
    if "stage1_steps" in options:  # two-stage: stage 1 takes at most half of a short run (150 of 300 by default)
        options["stage1_steps"] = min(options["stage1_steps"], max(1, settings["steps"] // 2))
    config = TrainConfig(
        images=str(refs.folder), model="toy", resolution=32, seed=args.seed_now, checkpoint_every=0, progress=False,
        out=str(run), method=variant.method, resume=run.exists(), **settings,
    )  # fmt: skip
    return train(config, config_cls(**options))


@cache
def _oracle_features():
    from dreamdist.evaluation.toy_oracle import ToyOracleFeatures

    return ToyOracleFeatures("toy-oracle", device="cpu")


def oracle_vendi(images) -> float:
    """Vendi score (q = 1) of a set on the toy oracle's features: its effective number of distinct images."""
    from dreamdist.evaluation.metrics import vendi_score

    return vendi_score(_oracle_features()(images))


def score(variant: Variant, concept, refs, folder: Path, args, backbone, oracle) -> dict:
    """Generate one set for a variant and return its oracle report (cached as JSON).

    A cached report from before the Vendi score existed gets it from the set's images on disk.
    """
    from dreamdist.api import GenerateConfig, generate
    from dreamdist.toyworld.report import concept_report

    sampling = non_default(GenerateConfig, variant.sampling)  # defaults left out of the key
    key = slug(variant.run_key() + "__" + "_".join(f"{k}={v}" for k, v in sorted(sampling.items())))
    cached = folder / "reports" / f"{key}.json"
    out = folder / "generated" / key
    if cached.is_file():
        report = json.loads(cached.read_text())
        pngs = sorted(out.glob("*.png"))
        if report and "vendi" not in report and pngs:
            from PIL import Image

            report["vendi"] = oracle_vendi([Image.open(p).convert("RGB") for p in pngs])
            cached.write_text(json.dumps(report))
        return report
    gen = dict(num_images=args.images, seed=args.seed_now, batch_size=16, progress=False, **variant.sampling)
    if variant.method is None:
        text = concept.short_caption if variant.caption == "short" else concept.long_caption
        if text is None:
            return {}  # no short caption names this concept
        images = generate(GenerateConfig(out=str(out), prompt=text, **gen), backbone=backbone).images
    else:
        run = train_run(variant, refs, folder, args)
        # methods that load weights into the backbone get a fresh one; prompt-only methods share it
        shared = backbone if variant.method == "dreamdistribution" else None
        images = generate(GenerateConfig(out=str(out), artifacts=[str(run)], **gen), backbone=shared).images
    report = concept_report(concept, images, refs.combos, oracle).to_dict()
    report["vendi"] = oracle_vendi(images)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(report))
    return report


ATTRS = ("colour", "shape", "background")
FIELDS = {
    "fidelity": lambda r: r["fidelity"],
    "coverage": lambda r: r["coverage"],
    "attr TV": lambda r: sum(r["tv"][a] for a in ATTRS) / 3,
    "colour TV": lambda r: r["tv"]["colour"],
    "joint TV": lambda r: r["tv"]["joint"],
    "colour cov.": lambda r: r["attribute_coverage"]["colour"],
    "novelty": lambda r: r["novelty"],
    # diversity: mean entropy (bits) of the three attributes; None for reports cached before it existed
    "attr entropy": lambda r: sum(r["entropy"][a] for a in ATTRS) / 3 if r.get("entropy") else None,
    "joint entropy": lambda r: r["entropy"]["joint"] if r.get("entropy") else None,  # of the whole triple
    "Vendi": lambda r: r.get("vendi"),  # effective number of distinct images, on the toy oracle's features
}


def aggregate(results: dict, variants: list[str]) -> dict[str, dict[str, tuple[float, float]]]:
    """results[variant][seed][concept] -> per variant and field: (mean, std) over seeds of the concept mean."""
    table = {}
    for name in variants:
        per_seed = results.get(name, {})
        cells = {}
        for field_name, get in FIELDS.items():
            values = []
            for reports in per_seed.values():
                rows = [v for v in (get(r) for r in reports.values() if r) if v is not None]
                if rows:
                    values.append(sum(rows) / len(rows))
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                cells[field_name] = (statistics.fmean(values), std)
        table[name] = cells
    return table


def markdown(table: dict, labels: dict[str, str], title: str) -> str:
    """A Markdown table: one row per variant, ``mean +- std`` per field."""
    lines = [title, "", "| variant | " + " | ".join(FIELDS) + " |", "|---" * (len(FIELDS) + 1) + "|"]
    for name, cells in table.items():
        row = [f"{cells[f][0]:.2f} ± {cells[f][1]:.2f}" if f in cells else "n/a" for f in FIELDS]
        lines.append(f"| {labels[name]} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(table: dict, labels: dict[str, str], path: Path) -> None:
    """Fidelity vs coverage (error bars over seeds), one point per variant; colour = attribute TV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, cells in table.items():
        if "fidelity" not in cells:
            continue
        (fx, fs), (cx, cs), tv = cells["fidelity"], cells["coverage"], cells["attr TV"][0]
        ax.errorbar(cx, fx, xerr=cs, yerr=fs, fmt="o", color=plt.cm.viridis_r(min(tv / 0.6, 1.0)), capsize=3)
        ax.annotate(f"{labels[name]} (TV {tv:.2f})", (cx, fx), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("coverage of the references' combinations")
    ax.set_ylabel("fidelity (share inside the concept)")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, 1.05)
    ax.axhline(0.9, ls=":", c="grey")
    ax.axvline(0.9, ls=":", c="grey")
    ax.set_title("toy world: faithful (up) and diverse (right); mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gamma_curve(table: dict, labels: dict[str, str], path: Path) -> None:
    """The diversity knob: diversity (joint entropy, Vendi) and fidelity against gamma, one line per sampler.

    Variants are ``gamma_sweep_variants``' names, ``<run>/<sampler>/g<gamma>``; error bars: std over seeds.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[tuple[float, dict]]] = {}
    for name, cells in table.items():
        if "fidelity" in cells:
            group, gamma = name.rsplit("/g", 1)
            groups.setdefault(group, []).append((float(gamma), cells))
    panels = (("joint entropy", "joint attribute entropy (bits)"), ("Vendi", "Vendi score (oracle features)"),
              ("fidelity", "fidelity"))  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for group, points in groups.items():
        points.sort(key=lambda point: point[0])
        label = labels[f"{group}/g{points[0][0]:g}"].rsplit(", gamma", 1)[0]
        for ax, (field_name, _) in zip(axes, panels):
            rows = [(g, c[field_name]) for g, c in points if c.get(field_name) is not None]
            if rows:
                ax.errorbar([g for g, _ in rows], [m for _, (m, _) in rows], yerr=[sd for _, (_, sd) in rows],
                            marker="o", capsize=3, label=label)  # fmt: skip
    for ax, (_, title) in zip(axes, panels):
        ax.set_xlabel("gamma")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_product(spec: str):
    """ "NAME:COLOURS:SHAPES:BACKGROUNDS" (comma lists, * = every value) -> a product ``Concept``."""
    from dreamdist.toyworld.attributes import BACKGROUNDS, COLOURS, SHAPES
    from dreamdist.toyworld.concepts import product_concept

    parts = spec.split(":")
    if len(parts) != 4:
        raise ValueError(
            f"--product wants NAME:COLOURS:SHAPES:BACKGROUNDS, e.g. 'rgp:red,green:circle:*'; got {spec!r}"
        )
    name, *lists = parts
    values = [
        tuple(every) if text == "*" else tuple(text.split(","))
        for text, every in zip(lists, (COLOURS, SHAPES, BACKGROUNDS))
    ]
    return product_concept(name, f"custom product concept {spec}", *values)


def main(argv: list[str] | None = None) -> None:
    from dreamdist.backbones import Backbone
    from dreamdist.toyworld.concepts import CONCEPTS, get_concept, render_concept
    from dreamdist.toyworld.oracle import load_oracle

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", default=",".join(CONCEPTS), help="comma-separated concept names")
    parser.add_argument(
        "--product",
        action="append",
        default=[],
        help="a concept of your own, NAME:COLOURS:SHAPES:BACKGROUNDS (repeatable)",
    )
    parser.add_argument("--variants", default=",".join(MAIN), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--ablation", action="store_true", help="DreamDistribution ablation variants instead")
    parser.add_argument(
        "--gamma-sweep",
        action="store_true",
        help=f"gamma {', '.join(f'{g:g}' for g in GAMMAS)} for each sampler (the diversity knob) instead",
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (references, training, sampling)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per learned method")
    parser.add_argument("--images", type=int, default=32, help="generated images per set")
    parser.add_argument("--references", type=int, default=12, help="reference images per concept")
    parser.add_argument(
        "--quick", action="store_true", help="2 concepts, seed 0, 40 steps, 8 images unless given: a smoke run"
    )
    parser.add_argument("--out", default="bench_out/toy_quality", help="working folder (cache) and results")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", help="also write the table here, as docs/results JSON (scripts/bench_docs.py)")
    args = parser.parse_args(argv)
    if args.quick:  # smaller defaults; flags given on the command line still win
        parser.set_defaults(concepts="circles,mix-four", seeds="0", steps=40, images=8)
        args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    catalogue = ablation_variants() if args.ablation else gamma_sweep_variants() if args.gamma_sweep else VARIANTS
    swept = args.ablation or args.gamma_sweep
    names = list(catalogue) if swept and args.variants == ",".join(MAIN) else args.variants.split(",")
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(catalogue)}")
    root = Path(args.out)
    custom = {c.name: c for c in map(parse_product, args.product)}
    concept_names = list(custom) if custom and args.concepts == ",".join(CONCEPTS) else args.concepts.split(",")
    concept_names += [n for n in custom if n not in concept_names]
    backbone, oracle = Backbone.from_pretrained("toy"), load_oracle()
    results: dict = {}
    start = time.time()
    for seed in (int(s) for s in args.seeds.split(",")):
        args.seed_now = seed
        for concept_name in concept_names:
            concept = custom.get(concept_name) or get_concept(concept_name)
            folder = root / f"seed{seed}" / concept_name
            refs = render_concept(concept, folder / "refs", n=args.references, seed=seed)
            for name in names:
                report = score(catalogue[name], concept, refs, folder, args, backbone, oracle)
                results.setdefault(name, {}).setdefault(str(seed), {})[concept_name] = report
            print(f"seed {seed} {concept_name}: done after {time.time() - start:.0f} s", flush=True)
    labels = {name: catalogue[name].label for name in names}
    table = aggregate(results, names)
    title = (
        f"{len(concept_names)} concepts x seeds {args.seeds}; {args.references} references, "
        f"{args.steps} training steps, {args.images} images per set; mean ± std over seeds of the concept mean"
    )
    text = markdown(table, labels, title)
    print(text)
    root.mkdir(parents=True, exist_ok=True)
    suffix = "_ablation" if args.ablation else "_gamma" if args.gamma_sweep else ""
    (root / f"table{suffix}.md").write_text(text + "\n")
    (root / f"results{suffix}.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    plot(table, labels, root / f"quality{suffix}.png")
    if args.gamma_sweep:
        plot_gamma_curve(table, labels, root / "gamma_curve.png")
    if args.json:
        from _results import command_line, machine, write_mean_std_table

        settings = {k: v for k, v in vars(args).items() if k not in ("json", "out", "seed_now")} | machine()
        command = command_line("bench/toy_quality.py", argv)
        write_mean_std_table(args.json, table, labels, list(FIELDS), caption=title, command=command, settings=settings)
    print(f"wrote {root / f'table{suffix}.md'} and {root / f'quality{suffix}.png'} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
