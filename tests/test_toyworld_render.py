"""Toy world: renderer determinism, held-out combos, captions, tokenizer, reference sets."""

from __future__ import annotations

import itertools
import json

import torch
from PIL import Image

from dreamdist.data import load_image_folder
from dreamdist.toyworld.attributes import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT,
    SHAPES,
    all_combos,
    held_out_combos,
    seen_combos,
)
from dreamdist.toyworld.captions import caption_batch, fix_articles, make_caption, vocabulary
from dreamdist.toyworld.components import build_tokenizer
from dreamdist.toyworld.concepts import CONCEPTS, MANIFEST, load_reference_manifest, render_concept
from dreamdist.toyworld.render import render, render_images


def test_attribute_counts():
    assert len(COLOURS) >= 6 and len(SHAPES) >= 5 and len(BACKGROUNDS) >= 4
    assert len(all_combos()) == len(COLOURS) * len(SHAPES) * len(BACKGROUNDS)


def test_render_is_deterministic_and_seed_dependent():
    a, b, c = render(64, seed=3), render(64, seed=3), render(64, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.combos, b.combos) and a.captions == b.captions
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (64, 3, 32, 32) and a.images.dtype == torch.float32
    assert a.images.min() >= 0.0 and a.images.max() <= 1.0


def test_render_other_sizes_and_batches_are_consistent():
    combos = torch.tensor([[0, 0, 0], [5, 4, 3]])
    big = render_images(combos, size=64, seed=1)
    assert big.shape == (2, 3, 64, 64)
    # a batch is reproducible from its seed; its images share one random stream, so image 0 of a
    # batch of 4 is not image 0 of a batch of 1 (every published toy number is measured this way)
    many = torch.tensor([[0, 0, 0], [5, 4, 3], [2, 1, 1], [3, 3, 2]])
    batch = render_images(many, size=32, seed=1)
    assert torch.equal(batch, render_images(many, size=32, seed=1))
    single = render_images(many[:1], size=32, seed=1)
    assert single.shape == (1, 3, 32, 32)
    assert torch.equal(single, render_images(many[:1], size=32, seed=1))
    assert not torch.equal(batch, render_images(many, size=32, seed=2))  # the seed matters


def test_shape_pixels_carry_the_colour():
    combos = torch.tensor([[i, 0, 0] for i in range(len(COLOURS))])  # circles on plain grey
    images = render_images(combos, seed=0)
    centre = images[:, :, 14:18, 14:18].mean(dim=(2, 3))  # (6, 3) the circle covers the centre
    spread = centre.max(1).values - centre.min(1).values
    assert (spread > 0.4).all(), "shape pixels should be saturated colour, not grey"


def test_held_out_combos_are_excluded_and_compositional():
    held, seen = set(held_out_combos()), set(seen_combos())
    assert len(held) == len(HELD_OUT) == 12 and not held & seen and held | seen == set(all_combos())
    for c, s, b in held:  # every pair of a held-out triple still occurs in training
        assert any(x[:2] == (c, s) for x in seen)
        assert any((x[0], x[2]) == (c, b) for x in seen)
        assert any(x[1:] == (s, b) for x in seen)
    drawn = render(2000, seed=0, split="seen").combos.tolist()
    assert not held & {tuple(x) for x in drawn}
    assert {tuple(x) for x in render(200, seed=0, split="held_out").combos.tolist()} <= held


def test_captions_name_the_attributes():
    batch = render(50, seed=1)
    for (c, s, b), caption in zip(batch.combos.tolist(), batch.captions):
        assert COLOURS[c] in caption and SHAPES[s] in caption and BACKGROUNDS[b] in caption
    assert make_caption("red", "circle", "striped") == "a red circle on a striped background"
    assert make_caption("orange", None, None) == "an orange shape"
    assert fix_articles("a image of an red circle") == "an image of a red circle"
    dropped = caption_batch(torch.tensor([[0, 0, 0]] * 200), seed=0, dropout=0.5)
    assert any("red" not in text for text in dropped) and len(set(dropped)) > 10


def test_every_caption_word_is_one_token(tmp_path):
    tokenizer = build_tokenizer(tmp_path / "tok")
    words = vocabulary()
    for word in words:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        assert len(ids) == 1, word
    captions = render(100, seed=2, caption_dropout=0.3).captions
    assert all(set(c.split()) <= set(words) for c in captions)


def test_render_concept_writes_loadable_references(tmp_path):
    refs = render_concept("warm-pointy", tmp_path / "refs", n=12, seed=0)
    assert len(refs.paths) == 12 and all(p.is_file() for p in refs.paths)
    assert Image.open(refs.paths[0]).size == (64, 64)
    assert all(refs.concept.contains(tuple(c)) for c in refs.combos.tolist())
    assert len({tuple(c) for c in refs.combos.tolist()}) == 12  # 24-combo support: no repeats
    images, report = load_image_folder(tmp_path / "refs")  # the core loader accepts them
    assert len(images) == 12 and not report.skipped
    concept, combos = load_reference_manifest(tmp_path / "refs")
    assert concept.name == "warm-pointy" and torch.equal(combos, refs.combos)
    assert json.loads((tmp_path / "refs" / MANIFEST).read_text())["seed"] == 0
    again = render_concept("warm-pointy", tmp_path / "again", n=12, seed=0)
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(refs.paths, again.paths))


def test_concepts_have_captions_and_valid_support():
    assert any(c.short_caption for c in CONCEPTS.values())
    assert any(c.short_caption is None for c in CONCEPTS.values())
    every = set(itertools.product(range(len(COLOURS)), range(len(SHAPES)), range(len(BACKGROUNDS))))
    for concept in CONCEPTS.values():
        assert concept.support and concept.support <= every and concept.long_caption
        for colour, shape, background in concept.support_names():
            assert all(word in concept.long_caption for word in (colour, shape, background))
