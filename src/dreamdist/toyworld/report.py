"""Oracle report: how well a set of generated images matches a concept and its references.

Pure functions over predicted attribute triples (long (N, 3) tensors or lists of triples):

- fidelity: share of generated images whose triple lies in the concept's support;
- coverage: share of the reference set's distinct triples that appear among the generated;
- novelty: share of generated images whose triple is in the support but in no reference;
- support coverage: share of the whole support that appears among the generated;
- total variation: ``1/2 sum_v |p_gen(v) - p_ref(v)|`` between the generated and reference
  distributions of each attribute and of the joint triple (0 = same distribution, 1 = disjoint);
- attribute coverage: per attribute, share of the references' distinct values that appear;
- attribute entropy: Shannon entropy (bits) of each attribute's distribution and of the joint
  triple among the generated images: how spread out they are, whatever the references (0 = every
  image shows the same value; log2 6 = 2.58 bits for six colours in equal shares).

``concept_report`` runs the oracle on images (PIL or a tensor) and computes all of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from PIL import Image

from dreamdist.toyworld.attributes import ATTRIBUTES, Combo, combo_names
from dreamdist.toyworld.concepts import Concept
from dreamdist.toyworld.oracle import Oracle, images_to_tensor, load_oracle

Triples = torch.Tensor | Iterable[Iterable[int]]
# the "faithful and diverse" verdict: fidelity >= 0.8, coverage >= 0.8, attribute TV <= 0.2
FIDELITY_BAR, COVERAGE_BAR, TV_BAR = 0.8, 0.8, 0.2


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


def histogram(triples: Triples, attribute: int | None = None) -> dict:
    """Empirical distribution (value -> share) of one attribute (0, 1, 2) or of whole triples (None)."""
    rows = as_combos(triples)
    keys = [row if attribute is None else row[attribute] for row in rows]
    counts: dict = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return {key: count / len(keys) for key, count in counts.items()}


def total_variation(generated: Triples, references: Triples, attribute: int | None = None) -> float:
    """Total-variation distance between generated and reference distributions, in [0, 1].

    Args:
        attribute: 0 colour, 1 shape, 2 background, or None for the joint (colour, shape, background).
    Returns:
        ``1/2 sum_v |p_gen(v) - p_ref(v)|``; 1.0 when either set is empty.
    """
    if not as_combos(generated) or not as_combos(references):
        return 1.0
    gen, ref = histogram(generated, attribute), histogram(references, attribute)
    return 0.5 * sum(abs(gen.get(v, 0.0) - ref.get(v, 0.0)) for v in set(gen) | set(ref))


def attribute_tv(generated: Triples, references: Triples) -> dict[str, float]:
    """Total variation per attribute and of the joint triple ("joint")."""
    out = {name: total_variation(generated, references, i) for i, name in enumerate(ATTRIBUTES)}
    out["joint"] = total_variation(generated, references, None)
    return out


def attribute_coverage(generated: Triples, references: Triples) -> dict[str, float]:
    """Per attribute: share of the references' distinct values that appear among the generated."""
    gen, ref = as_combos(generated), as_combos(references)
    out = {}
    for i, name in enumerate(ATTRIBUTES):
        wanted = {r[i] for r in ref}
        out[name] = len(wanted & {g[i] for g in gen}) / len(wanted) if wanted else 0.0
    return out


def entropy(triples: Triples, attribute: int | None = None) -> float:
    """Shannon entropy in bits of one attribute (0, 1, 2) or of whole triples (None); 0 for no images."""
    shares = histogram(triples, attribute).values()
    return -sum(p * math.log2(p) for p in shares) + 0.0  # + 0.0: no "-0.0"


def attribute_entropy(triples: Triples) -> dict[str, float]:
    """Entropy (bits) per attribute and of the joint triple ("joint")."""
    out = {name: entropy(triples, i) for i, name in enumerate(ATTRIBUTES)}
    out["joint"] = entropy(triples, None)
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
    tv: dict[str, float]  # total variation per attribute and "joint"
    attribute_coverage: dict[str, float]
    entropy: dict[str, float] = field(default_factory=dict)  # bits, per attribute and "joint", generated
    reference_entropy: dict[str, float] = field(default_factory=dict)  # the same for the references

    @property
    def attribute_tv_mean(self) -> float:
        """Mean total variation over the three attributes (the issue's "attribute TV")."""
        return sum(self.tv[name] for name in ATTRIBUTES) / len(ATTRIBUTES)

    @property
    def attribute_entropy_mean(self) -> float:
        """Mean entropy (bits) over the three attributes of the generated images: their diversity."""
        return sum(self.entropy.get(name, 0.0) for name in ATTRIBUTES) / len(ATTRIBUTES)

    @property
    def reference_entropy_mean(self) -> float:
        """The same mean for the references, for comparison."""
        return sum(self.reference_entropy.get(name, 0.0) for name in ATTRIBUTES) / len(ATTRIBUTES)

    def faithful(self, fidelity: float = FIDELITY_BAR) -> bool:
        """Whether enough images lie inside the concept."""
        return self.fidelity >= fidelity

    def diverse(self, coverage: float = COVERAGE_BAR, tv: float = TV_BAR) -> bool:
        """Whether the references' combinations appear (coverage) in about their shares (attribute TV)."""
        return self.coverage >= coverage and self.attribute_tv_mean <= tv

    def faithful_and_diverse(self) -> bool:
        """Both, at the bars ``FIDELITY_BAR``, ``COVERAGE_BAR`` and ``TV_BAR``."""
        return self.faithful() and self.diverse()

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready)."""
        return asdict(self)

    def summary(self) -> str:
        """One readable line."""
        attrs = ", ".join(f"{k} {v:.0%}" for k, v in self.attribute_fidelity.items())
        return (
            f"{self.concept}: fidelity {self.fidelity:.0%} ({attrs}), coverage {self.coverage:.0%}, "
            f"novelty {self.novelty:.0%} ({self.num_novel_combos} new combos), "
            f"support covered {self.support_coverage:.0%}, attribute TV {self.attribute_tv_mean:.2f} "
            f"(colour {self.tv['colour']:.2f}, joint {self.tv['joint']:.2f}), attribute entropy "
            f"{self.attribute_entropy_mean:.2f} bits (references {self.reference_entropy_mean:.2f}), "
            f"n={self.num_images}"
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
        tv=attribute_tv(gen, references),
        attribute_coverage=attribute_coverage(gen, references),
        entropy=attribute_entropy(gen),
        reference_entropy=attribute_entropy(references),
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
