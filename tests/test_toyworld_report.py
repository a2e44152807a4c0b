"""Toy world: oracle-report maths on hand-built attribute lists."""

from __future__ import annotations

import pytest
import torch

from dreamdist.toyworld.concepts import mix_concept
from dreamdist.toyworld.report import (
    as_combos,
    attribute_fidelity,
    coverage,
    fidelity,
    novel_combos,
    novelty,
    report_from_triples,
    support_coverage,
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
