"""The toy world's attributes: colours, shapes, background textures, and held-out combinations.

An image is one coloured shape on a textured grey background, so its content is exactly one
``(colour, shape, background)`` triple of indices into the tuples below. Everything else
(size, position, rotation, colour jitter, texture phase, noise) is continuous nuisance.
"""

from __future__ import annotations

import torch

COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")
BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "checkered", "dotted")
ATTRIBUTES: dict[str, tuple[str, ...]] = {"colour": COLOURS, "shape": SHAPES, "background": BACKGROUNDS}

# Base RGB of each colour in [0, 1]; the renderer jitters around it.
COLOUR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.10),
    "orange": (1.00, 0.52, 0.05),
    "yellow": (0.95, 0.90, 0.10),
    "green": (0.10, 0.68, 0.18),
    "blue": (0.12, 0.28, 0.92),
    "purple": (0.58, 0.16, 0.78),
}

# Combinations the base model never sees in training, to test compositional generalisation.
# Twelve triples (10 % of the 120); every colour-shape, colour-background and shape-background
# pair inside them still occurs in training through other triples.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("red", "circle", "plain"),
    ("orange", "square", "striped"),
    ("yellow", "triangle", "checkered"),
    ("green", "cross", "dotted"),
    ("blue", "star", "plain"),
    ("purple", "circle", "striped"),
    ("red", "square", "checkered"),
    ("orange", "triangle", "dotted"),
    ("yellow", "cross", "plain"),
    ("green", "star", "striped"),
    ("blue", "circle", "checkered"),
    ("purple", "square", "dotted"),
)

Combo = tuple[int, int, int]


def combo_index(combo: tuple[str, str, str]) -> Combo:
    """Names -> indices, e.g. ``("red", "circle", "plain") -> (0, 0, 0)``; raises on unknown names."""
    colour, shape, background = combo
    for name, table in zip((colour, shape, background), (COLOURS, SHAPES, BACKGROUNDS)):
        if name not in table:
            raise ValueError(f"unknown attribute value {name!r}; choose one of {', '.join(table)}")
    return COLOURS.index(colour), SHAPES.index(shape), BACKGROUNDS.index(background)


def combo_names(combo: Combo) -> tuple[str, str, str]:
    """Indices -> names, the inverse of ``combo_index``."""
    return COLOURS[combo[0]], SHAPES[combo[1]], BACKGROUNDS[combo[2]]


def all_combos() -> list[Combo]:
    """Every ``(colour, shape, background)`` index triple, in lexicographic order (120 of them)."""
    return [(c, s, b) for c in range(len(COLOURS)) for s in range(len(SHAPES)) for b in range(len(BACKGROUNDS))]


def held_out_combos() -> list[Combo]:
    """Index triples of ``HELD_OUT``."""
    return [combo_index(combo) for combo in HELD_OUT]


def seen_combos() -> list[Combo]:
    """Index triples the base model trains on (all minus ``HELD_OUT``)."""
    held = set(held_out_combos())
    return [combo for combo in all_combos() if combo not in held]


def split_combos(split: str) -> list[Combo]:
    """The combos of a split: ``"seen"`` (base-model training), ``"held_out"`` or ``"all"``."""
    if split == "seen":
        return seen_combos()
    if split == "held_out":
        return held_out_combos()
    if split == "all":
        return all_combos()
    raise ValueError(f"unknown split {split!r}; use 'seen', 'held_out' or 'all'")


def sample_combos(n: int, combos: list[Combo], generator: torch.Generator) -> torch.Tensor:
    """Draw ``n`` combos uniformly (with replacement) from ``combos``.

    Args:
        n: how many.
        combos: the allowed index triples.
        generator: torch RNG, for determinism.

    Returns:
        Long tensor (n, 3): columns colour, shape, background.
    """
    if not combos:
        raise ValueError("no combos to sample from; pass a non-empty list of (colour, shape, background)")
    table = torch.tensor(combos, dtype=torch.long)  # (C, 3)
    pick = torch.randint(len(combos), (n,), generator=generator)  # (n,)
    return table[pick]  # (n, 3)
