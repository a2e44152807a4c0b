"""Natural-language captions for toy-world images, and the words the toy tokenizer knows."""

from __future__ import annotations

import random

import torch

from dreamdist.toyworld.attributes import BACKGROUNDS, COLOURS, SHAPES

# {obj} is "<colour> <shape>", "<shape>" or "<colour> shape"; {bg} is "<texture>".
TEMPLATES_WITH_BACKGROUND: tuple[str, ...] = (
    "a {obj} on a {bg} background",
    "a {obj} over a {bg} background",
    "a photo of a {obj} on a {bg} background",
    "an image of a {obj} on a {bg} background",
    "a picture of a {obj} in front of a {bg} background",
    "a {bg} background with a {obj}",
    "{obj} on {bg} background",
)
TEMPLATES_WITHOUT_BACKGROUND: tuple[str, ...] = (
    "a {obj}",
    "a photo of a {obj}",
    "an image of a {obj}",
)
EXTRA_WORDS: tuple[str, ...] = ("the", "and", "or", "with", "object", "style", "toy", "world")


def vocabulary() -> list[str]:
    """Every word a caption can contain, plus a few spare ones (for the tokenizer)."""
    words = set(COLOURS) | set(SHAPES) | set(BACKGROUNDS) | set(EXTRA_WORDS) | {"shape", "an"}
    for template in TEMPLATES_WITH_BACKGROUND + TEMPLATES_WITHOUT_BACKGROUND:
        words |= {w for w in template.replace(",", " ").split() if not w.startswith("{")}
    return sorted(words)


def fix_articles(text: str) -> str:
    """Use "an" before a vowel sound and "a" otherwise ("a orange" -> "an orange")."""
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i] in ("a", "an"):
            words[i] = "an" if words[i + 1][:1] in "aeiou" else "a"
    return " ".join(words)


def make_caption(colour: str | None, shape: str | None, background: str | None, template: int = 0) -> str:
    """One caption; ``None`` drops that attribute ("a red shape", "a circle on a ... background").

    Args:
        colour, shape, background: attribute names, or None to leave them unsaid.
        template: index into the templates that fit (taken modulo their count).
    """
    if colour is None and shape is None:
        obj = "shape"
    else:
        obj = " ".join(w for w in (colour, shape or "shape") if w)
    if background is None:
        pattern = TEMPLATES_WITHOUT_BACKGROUND[template % len(TEMPLATES_WITHOUT_BACKGROUND)]
        return fix_articles(pattern.format(obj=obj))
    pattern = TEMPLATES_WITH_BACKGROUND[template % len(TEMPLATES_WITH_BACKGROUND)]
    return fix_articles(pattern.format(obj=obj, bg=background))


def caption_batch(combos: torch.Tensor, seed: int = 0, dropout: float = 0.0) -> list[str]:
    """Captions for a batch of attribute triples, with random templates.

    Args:
        combos: long (N, 3): colour, shape, background indices.
        seed: seeds template choice and dropout.
        dropout: probability of leaving each attribute out of a caption, independently.

    Returns:
        N captions.
    """
    rng = random.Random(seed)
    out = []
    for colour, shape, background in combos.tolist():
        keep = [rng.random() >= dropout for _ in range(3)]
        out.append(
            make_caption(
                COLOURS[colour] if keep[0] else None,
                SHAPES[shape] if keep[1] else None,
                BACKGROUNDS[background] if keep[2] else None,
                template=rng.randrange(1 << 16),
            )
        )
    return out
