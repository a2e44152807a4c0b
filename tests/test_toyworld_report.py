"""Toy world: oracle-report maths on hand-built attribute lists."""

from __future__ import annotations

import pytest
import torch

from dreamdist.toyworld.concepts import mix_concept
from dreamdist.toyworld.report import (
    as_combos,
    attribute_coverage,
    attribute_fidelity,
    attribute_tv,
    coverage,
    fidelity,
    novel_combos,
    novelty,
    report_from_triples,
    support_coverage,
    total_variation,
)

SUPPORT = {(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0)}
REFS = [(0, 0, 0), (0, 1, 0), (0, 0, 0)]
GEN = [(0, 0, 0), (1, 1, 0), (1, 1, 0), (2, 2, 2)]  # in, new, new, outside


def test_fidelity_coverage_novelty_by_hand():
    assert fidelity(GEN, SUPPORT) == 0.75
    assert coverage(GEN, REFS) == 0.5  # (0,0,0) of {(0,0,0), (0,1,0)}
    assert novelty(GEN, REFS, SUPPORT) == 0.5  # two images of (1,1,0)
    assert novel_combos(GEN, REFS, SUPPORT) == [(1, 1, 0)]
    assert support_coverage(GEN, SUPPORT) == 0.5
    assert attribute_fidelity(GEN, SUPPORT) == {"colour": 0.75, "shape": 0.75, "background": 0.75}


def test_edge_cases():
    assert fidelity([], SUPPORT) == 0.0 and novelty([], REFS, SUPPORT) == 0.0
    assert coverage(GEN, []) == 0.0
    assert fidelity(REFS, SUPPORT) == 1.0 and coverage(REFS, REFS) == 1.0 and novelty(REFS, REFS, SUPPORT) == 0.0
    tensor = torch.tensor(GEN)
    assert fidelity(tensor, SUPPORT) == fidelity(GEN, SUPPORT)
    with pytest.raises(ValueError, match="3 entries"):
        as_combos([(0, 1)])


def test_report_from_triples():
    concept = mix_concept("hand", "by hand", [("red", "circle", "plain"), ("orange", "square", "plain")])
    # red=0 orange=1, circle=0 square=1, plain=0
    report = report_from_triples(concept, [(0, 0, 0), (1, 1, 0), (5, 4, 3)], [(0, 0, 0)])
    assert report.num_images == 3
    assert report.fidelity == pytest.approx(2 / 3) and report.coverage == 1.0
    assert report.novelty == pytest.approx(1 / 3) and report.num_novel_combos == 1
    assert report.support_coverage == 1.0
    assert "fidelity 67%" in report.summary()
    assert report.to_dict()["attribute_fidelity"]["colour"] == pytest.approx(2 / 3)


def test_total_variation_of_known_distributions():
    # colours: references half red (0) / half orange (1); generated all red -> TV 1/2
    refs = [(0, 0, 0), (1, 0, 0)]
    assert total_variation([(0, 0, 0)] * 4, refs, attribute=0) == pytest.approx(0.5)
    # identical distributions (different sizes, same shares) -> 0
    assert total_variation(refs * 3, refs, attribute=0) == pytest.approx(0.0)
    assert total_variation(refs * 3, refs) == pytest.approx(0.0)
    # disjoint supports -> 1
    assert total_variation([(2, 0, 0)], refs, attribute=0) == pytest.approx(1.0)
    # generated 3/4 red, 1/4 green vs refs 1/2 red, 1/2 orange: 1/2 (|.75-.5| + |0-.5| + |.25-0|) = 0.5
    gen = [(0, 0, 0)] * 3 + [(3, 0, 0)]
    assert total_variation(gen, refs, attribute=0) == pytest.approx(0.5)
    # joint vs marginals: same colours and shapes, recombined -> marginal TV 0, joint TV 1
    refs2 = [(0, 0, 0), (1, 1, 0)]
    gen2 = [(0, 1, 0), (1, 0, 0)]
    tv = attribute_tv(gen2, refs2)
    assert tv["colour"] == 0.0 and tv["shape"] == 0.0 and tv["background"] == 0.0
    assert tv["joint"] == pytest.approx(1.0)
    assert total_variation([], refs) == 1.0


def test_total_variation_matches_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    gen = torch.randint(0, 6, (200, 3), generator=generator)
    refs = torch.randint(0, 3, (50, 3), generator=generator)
    p = torch.bincount(gen[:, 0], minlength=6).float() / 200
    q = torch.bincount(refs[:, 0], minlength=6).float() / 50
    assert total_variation(gen, refs, attribute=0) == pytest.approx(0.5 * float((p - q).abs().sum()), abs=1e-6)


def test_attribute_coverage_and_report_fields():
    refs = [(0, 0, 0), (1, 1, 1), (2, 2, 2)]
    gen = [(0, 2, 1), (0, 2, 1)]
    assert attribute_coverage(gen, refs) == {"colour": pytest.approx(1 / 3), "shape": pytest.approx(1 / 3),
                                             "background": pytest.approx(1 / 3)}  # fmt: skip
    concept = mix_concept("hand", "by hand", [("red", "circle", "plain"), ("orange", "square", "striped")])
    report = report_from_triples(concept, [(0, 0, 0), (0, 0, 0)], [(0, 0, 0), (1, 1, 1)])
    assert report.tv["colour"] == pytest.approx(0.5) and report.tv["joint"] == pytest.approx(0.5)
    assert report.attribute_tv_mean == pytest.approx(0.5)
    assert report.attribute_coverage["colour"] == pytest.approx(0.5)
    assert not report.faithful_and_diverse()  # one of two modes: faithful, not diverse
    full = report_from_triples(concept, [(0, 0, 0), (1, 1, 1)], [(0, 0, 0), (1, 1, 1)])
    assert full.faithful_and_diverse() and full.attribute_tv_mean == 0.0
    assert "attribute TV 0.50" in report.summary()
