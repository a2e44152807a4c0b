"""Toy world: attribute entropy, the report's diversity measure (by hand)."""

from __future__ import annotations

import math

import pytest

from dreamdist.toyworld.concepts import mix_concept
from dreamdist.toyworld.report import attribute_entropy, entropy, report_from_triples


def test_entropy_of_known_distributions():
    assert entropy([(0, 0, 0)] * 4, 0) == 0.0  # one value: no spread
    assert entropy([(0, 0, 0), (1, 0, 0)], 0) == pytest.approx(1.0)  # two values in equal shares: 1 bit
    assert entropy([(v, 0, 0) for v in range(6)], 0) == pytest.approx(math.log2(6))
    skewed = [(0, 0, 0)] * 3 + [(1, 0, 0)]
    assert entropy(skewed, 0) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    assert entropy([], 0) == 0.0
    rows = [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0)]
    assert attribute_entropy(rows) == pytest.approx({"colour": 1.0, "shape": 1.0, "background": 0.0, "joint": 2.0})


def test_report_carries_generated_and_reference_entropy():
    concept = mix_concept("hand", "by hand", [("red", "circle", "plain"), ("orange", "square", "plain")])
    report = report_from_triples(concept, [(0, 0, 0), (1, 1, 0)], [(0, 0, 0)] * 3)
    assert report.entropy["joint"] == pytest.approx(1.0) and report.reference_entropy["joint"] == 0.0
    assert report.attribute_entropy_mean == pytest.approx(2 / 3) and report.reference_entropy_mean == 0.0
    assert "attribute entropy 0.67 bits (references 0.00)" in report.summary()
    assert report.to_dict()["entropy"]["colour"] == pytest.approx(1.0)
