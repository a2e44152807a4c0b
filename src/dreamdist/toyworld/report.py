"""Oracle report: how well a set of generated images matches a concept and its references.

Pure functions over predicted attribute triples (long (N, 3) tensors or lists of triples):

- fidelity: share of generated images whose triple lies in the concept's support;
- coverage: share of the reference set's distinct triples that appear among the generated;
- novelty: share of generated images whose triple is in the support but in no reference;
- support coverage: share of the whole support that appears among the generated.

``concept_report`` runs the oracle on images (PIL or a tensor) and computes all of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from PIL import Image

from dreamdist.toyworld.attributes import ATTRIBUTES, Combo, combo_names
from dreamdist.toyworld.concepts import Concept
from dreamdist.toyworld.oracle import Oracle, images_to_tensor, load_oracle

Triples = torch.Tensor | Iterable[Iterable[int]]


def as_combos(triples: Triples) -> list[Combo]:
    """(N, 3) tensor or nested iterable of index triples -> list of tuples."""
    rows = triples.tolist() if isinstance(triples, torch.Tensor) else [list(t) for t in triples]
    for row in rows:
        if len(row) != 3:
            raise ValueError(f"attribute triples must have 3 entries (colour, shape, background); got {row}")
    return [tuple(int(v) for v in row) for row in rows]


def fidelity(generated: Triples, support: Iterable[Combo]) -> float:
    """Share of generated triples inside ``support`` (0 for no images)."""
    gen, inside = as_combos(generated), set(support)
    return sum(g in inside for g in gen) / len(gen) if gen else 0.0


def coverage(generated: Triples, references: Triples) -> float:
    """Share of the references' distinct triples that appear among the generated ones."""
    ref = set(as_combos(references))
    return len(ref & set(as_combos(generated))) / len(ref) if ref else 0.0


def novelty(generated: Triples, references: Triples, support: Iterable[Combo]) -> float:
    """Share of generated images whose triple is in ``support`` but in none of the references."""
    gen = as_combos(generated)
    new = set(support) - set(as_combos(references))
    return sum(g in new for g in gen) / len(gen) if gen else 0.0


def novel_combos(generated: Triples, references: Triples, support: Iterable[Combo]) -> list[Combo]:
    """Distinct in-support triples among the generated that no reference shows, sorted."""
    new = set(support) - set(as_combos(references))
    return sorted(new & set(as_combos(generated)))


def support_coverage(generated: Triples, support: Iterable[Combo]) -> float:
    """Share of the support's triples that appear among the generated ones."""
    inside = set(support)
    return len(inside & set(as_combos(generated))) / len(inside) if inside else 0.0


def attribute_fidelity(generated: Triples, support: Iterable[Combo]) -> dict[str, float]:
    """Per attribute: share of generated images whose value occurs in that attribute of the support."""
    gen, sup = as_combos(generated), list(support)
    out = {}
    for i, name in enumerate(ATTRIBUTES):
        allowed = {s[i] for s in sup}
        out[name] = sum(g[i] in allowed for g in gen) / len(gen) if gen else 0.0
    return out


@dataclass
class ConceptReport:
    """The report's numbers for one generated set."""

    concept: str
    num_images: int
    fidelity: float
    coverage: float
    novelty: float
    support_coverage: float
    num_novel_combos: int
    attribute_fidelity: dict[str, float]

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready)."""
        return asdict(self)

    def summary(self) -> str:
        """One readable line."""
        attrs = ", ".join(f"{k} {v:.0%}" for k, v in self.attribute_fidelity.items())
        return (
            f"{self.concept}: fidelity {self.fidelity:.0%} ({attrs}), coverage {self.coverage:.0%}, "
            f"novelty {self.novelty:.0%} ({self.num_novel_combos} new combos), "
            f"support covered {self.support_coverage:.0%}, n={self.num_images}"
        )


def report_from_triples(concept: Concept, generated: Triples, references: Triples) -> ConceptReport:
    """All numbers from predicted triples of the generated set and the reference triples."""
    gen = as_combos(generated)
    return ConceptReport(
        concept=concept.name,
        num_images=len(gen),
        fidelity=fidelity(gen, concept.support),
        coverage=coverage(gen, references),
        novelty=novelty(gen, references, concept.support),
        support_coverage=support_coverage(gen, concept.support),
        num_novel_combos=len(novel_combos(gen, references, concept.support)),
        attribute_fidelity=attribute_fidelity(gen, concept.support),
    )


def predict_attributes(images: list[Image.Image] | torch.Tensor, oracle: Oracle | None = None) -> torch.Tensor:
    """Oracle predictions, long (N, 3), for PIL images or a (N, 3, H, W) tensor in [0, 1]."""
    oracle = oracle or load_oracle()
    return oracle.predict(images_to_tensor(images))


def concept_report(
    concept: Concept,
    images: list[Image.Image] | torch.Tensor,
    references: Triples,
    oracle: Oracle | None = None,
) -> ConceptReport:
    """Run the oracle on generated ``images`` and report them against ``concept`` and ``references``."""
    return report_from_triples(concept, predict_attributes(images, oracle), references)


def describe(triples: Triples) -> list[str]:
    """Index triples -> "red star / dotted" strings, for printing."""
    return [" ".join(combo_names(c)[:2]) + " / " + combo_names(c)[2] for c in as_combos(triples)]
