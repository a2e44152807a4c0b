"""Built-in evaluation prompt sets; ``{}`` stands for the learned concept.

``dreambooth``: the DreamBooth paper's evaluation prompts for objects (Ruiz et al., 2022, the
dataset's ``prompts_and_classes.txt``): recontextualization and property change, plus the paper's
art-rendition (style) prompts. ``dreambooth-live``: the same for live subjects (pets), whose
property prompts are the accessorization ones (outfits). Each prompt has a category, recorded in
generation manifests.
"""

from __future__ import annotations

RECONTEXTUALIZATION = [
    "a {} in the jungle",
    "a {} in the snow",
    "a {} on the beach",
    "a {} on a cobblestone street",
    "a {} on top of pink fabric",
    "a {} on top of a wooden floor",
    "a {} with a city in the background",
    "a {} with a mountain in the background",
    "a {} with a blue house in the background",
    "a {} on top of a purple rug in a forest",
]
RECONTEXTUALIZATION_OBJECT = [
    "a {} with a wheat field in the background",
    "a {} with a tree and autumn leaves in the background",
    "a {} with the Eiffel Tower in the background",
    "a {} floating on top of water",
    "a {} floating in an ocean of milk",
    "a {} on top of green grass with sunflowers around it",
    "a {} on top of a mirror",
    "a {} on top of the sidewalk in a crowded street",
    "a {} on top of a dirt road",
    "a {} on top of a white rug",
]
PROPERTY = [
    "a red {}",
    "a purple {}",
    "a shiny {}",
    "a wet {}",
    "a cube shaped {}",
]
ACCESSORIZATION = [
    "a {} wearing a red hat",
    "a {} wearing a santa hat",
    "a {} wearing a rainbow scarf",
    "a {} wearing a black top hat and a monocle",
    "a {} in a chef outfit",
    "a {} in a firefighter outfit",
    "a {} in a police outfit",
    "a {} wearing pink glasses",
    "a {} wearing a yellow shirt",
    "a {} in a purple wizard outfit",
]
STYLE = [
    "a painting of a {} in the style of Vincent van Gogh",
    "a painting of a {} in the style of Claude Monet",
    "a painting of a {} in the style of Johannes Vermeer",
    "a painting of a {} in the style of Rembrandt",
    "a watercolor painting of a {}",
    "a pencil sketch of a {}",
    "a Chinese ink painting of a {}",
]

PROMPT_SETS: dict[str, list[tuple[str, str]]] = {
    "dreambooth": [("recontextualization", p) for p in RECONTEXTUALIZATION + RECONTEXTUALIZATION_OBJECT]
    + [("property", p) for p in PROPERTY]
    + [("style", p) for p in STYLE],
    "dreambooth-live": [("recontextualization", p) for p in RECONTEXTUALIZATION]
    + [("accessorization", p) for p in ACCESSORIZATION]
    + [("property", p) for p in PROPERTY]
    + [("style", p) for p in STYLE],
}


def prompt_set(name: str) -> list[tuple[str, str]]:
    """(category, prompt with ``{}``) pairs of a built-in set."""
    if name not in PROMPT_SETS:
        raise ValueError(f"unknown --prompt-set {name!r}; choose one of {', '.join(PROMPT_SETS)}")
    return list(PROMPT_SETS[name])
