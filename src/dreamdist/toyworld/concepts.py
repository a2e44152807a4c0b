"""Built-in concepts: named sets of attribute combinations, rendered as reference-image folders.

A concept's *support* is the set of ``(colour, shape, background)`` triples that belong to it.
Some concepts are a product of attribute subsets that a short caption names ("a red shape");
others are arbitrary mixes that no short caption names. Every concept has a long caption that
lists its support, for the caption baselines. ``render_concept`` writes 5-20 PNGs that play the
role of the paper's reference images.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dreamdist.atomic import atomic_write_json
from dreamdist.toyworld.attributes import BACKGROUNDS, COLOURS, SHAPES, Combo, combo_index, combo_names
from dreamdist.toyworld.captions import make_caption
from dreamdist.toyworld.render import render_images

MANIFEST = ".toyworld.json"  # hidden, so reference loaders skip it


@dataclass(frozen=True)
class Concept:
    """A named set of attribute triples, with captions for the caption baselines."""

    name: str
    description: str
    support: frozenset[Combo]  # (colour, shape, background) index triples
    short_caption: str | None  # None: no short caption names this concept
    long_caption: str

    def contains(self, combo: Combo) -> bool:
        """Whether an index triple belongs to the concept."""
        return tuple(combo) in self.support

    def support_names(self) -> list[tuple[str, str, str]]:
        """The support as sorted name triples."""
        return [combo_names(c) for c in sorted(self.support)]


def _either(words: tuple[str, ...] | list[str]) -> str:
    """("red", "blue", "green") -> "red or blue or green"."""
    return " or ".join(words)


def product_concept(
    name: str,
    description: str,
    colours: tuple[str, ...] = COLOURS,
    shapes: tuple[str, ...] = SHAPES,
    backgrounds: tuple[str, ...] = BACKGROUNDS,
    short_caption: str | None = None,
) -> Concept:
    """A concept whose support is ``colours x shapes x backgrounds``; the long caption lists each."""
    support = frozenset(combo_index(c) for c in itertools.product(colours, shapes, backgrounds))
    long_caption = make_caption(_either(colours), _either(shapes), _either(backgrounds))
    return Concept(name, description, support, short_caption, long_caption)


def mix_concept(name: str, description: str, combos: list[tuple[str, str, str]]) -> Concept:
    """An arbitrary set of triples (no short caption); the long caption joins one caption each."""
    support = frozenset(combo_index(c) for c in combos)
    long_caption = " or ".join(make_caption(*c) for c in combos)
    return Concept(name, description, support, None, long_caption)


CONCEPTS: dict[str, Concept] = {
    c.name: c
    for c in (
        product_concept("red-things", "red shapes of any kind on any background", colours=("red",),
                        short_caption="a red shape"),
        product_concept("circles", "circles of any colour on any background", shapes=("circle",),
                        short_caption="a circle"),
        product_concept("striped", "any shape of any colour on a striped background", backgrounds=("striped",),
                        short_caption="a shape on a striped background"),
        product_concept("blue-stars", "blue stars on any background", colours=("blue",), shapes=("star",),
                        short_caption="a blue star"),
        product_concept("warm-pointy", "red, orange or yellow triangles or stars, any background",
                        colours=("red", "orange", "yellow"), shapes=("triangle", "star")),
        product_concept("cool-patterned", "green, blue or purple shapes of any kind on stripes or dots",
                        colours=("green", "blue", "purple"), backgrounds=("striped", "dotted")),
        product_concept("cool-blocky-patterned", "green, blue or purple squares or crosses on a pattern",
                        colours=("green", "blue", "purple"), shapes=("square", "cross"),
                        backgrounds=("striped", "checkered", "dotted")),
        mix_concept("mix-four", "four unrelated combinations", [
            ("red", "circle", "dotted"), ("green", "triangle", "plain"),
            ("blue", "cross", "striped"), ("yellow", "star", "checkered"),
        ]),
        mix_concept("mix-held-out", "a mix that includes combinations the base model never saw", [
            ("red", "circle", "plain"), ("orange", "square", "striped"),
            ("purple", "star", "dotted"), ("green", "circle", "checkered"),
        ]),
    )
}  # fmt: skip


def get_concept(name: str) -> Concept:
    """Look up a built-in concept by name; the error lists the names there are."""
    if name not in CONCEPTS:
        raise KeyError(f"unknown toy concept {name!r}; built-in concepts: {', '.join(CONCEPTS)}")
    return CONCEPTS[name]


def reference_combos(concept: Concept, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` triples from the support: a random order of the support, repeated as needed.

    Returns long (n, 3). With fewer images than combos, a seeded random subset is covered.
    """
    generator = torch.Generator().manual_seed(seed)
    support = torch.tensor(sorted(concept.support), dtype=torch.long)  # (S, 3)
    rounds = -(-n // len(support))
    order = torch.cat([torch.randperm(len(support), generator=generator) for _ in range(rounds)])
    return support[order[:n]]


@dataclass
class ReferenceSet:
    """The files written by ``render_concept`` and their ground-truth triples."""

    concept: Concept
    folder: Path
    paths: list[Path]
    combos: torch.Tensor  # long (n, 3)


def render_concept(
    name: str | Concept, folder: str | Path, n: int = 12, seed: int = 0, size: int = 64, render_size: int = 32
) -> ReferenceSet:
    """Render ``n`` reference PNGs of a concept into ``folder`` (created), plus a hidden manifest.

    Args:
        name: a built-in concept name or a ``Concept``.
        folder: output folder.
        n: number of images (the paper uses 5-20).
        seed: seeds the choice of triples and every nuisance draw.
        size: saved side in pixels; renders are upsampled with nearest neighbour, because reference
            loaders refuse images smaller than 64 px (the training pipeline resizes them back).
        render_size: side the images are rendered at (the toy model's 32).
    """
    concept = get_concept(name) if isinstance(name, str) else name
    if n < 1:
        raise ValueError(f"n must be >= 1 reference image; got {n}")
    if size < render_size:
        raise ValueError(f"size ({size}) must be >= render_size ({render_size}); images are only upsampled")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    combos = reference_combos(concept, n, seed)  # (n, 3)
    images = render_images(combos, size=render_size, seed=seed)  # (n, 3, r, r)
    pixels = (images.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)  # (n, r, r, 3)
    paths = []
    for i, array in enumerate(pixels):
        path = folder / f"{concept.name}_{i:03d}.png"
        Image.fromarray(array).resize((size, size), Image.NEAREST).save(path)
        paths.append(path)
    manifest = {
        "concept": concept.name,
        "seed": seed,
        "files": [p.name for p in paths],
        "combos": [list(combo_names(tuple(c))) for c in combos.tolist()],
    }
    atomic_write_json(folder / MANIFEST, manifest)
    return ReferenceSet(concept, folder, paths, combos)


def load_reference_manifest(folder: str | Path) -> tuple[Concept, torch.Tensor]:
    """The concept and triples (long (n, 3)) of a folder written by ``render_concept``."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; render the folder with dreamdist.toyworld.concepts.render_concept")
    manifest = json.loads(path.read_text())
    combos = torch.tensor([combo_index(tuple(c)) for c in manifest["combos"]], dtype=torch.long)
    return get_concept(manifest["concept"]), combos
