"""Aspect-ratio buckets for SDXL training: references of several shapes are encoded at their bucket's
size (not squashed or cropped square) and each batch comes from one bucket; square sets and SD 1.x/2.x
keep the single square size."""

from __future__ import annotations

import math

import pytest
import torch

from dreamdist.backbones import Backbone
from dreamdist.config import TrainConfig
from dreamdist.data import ReferenceSet, bucket_sizes, nearest_bucket
from dreamdist.methods.dreamdistribution import DreamDistributionConfig
from dreamdist.testing import save_tiny_sdxl_pipeline, write_images
from dreamdist.training.loop import LatentCache, train


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    model = save_tiny_sdxl_pipeline(tmp_path_factory.mktemp("buckets_xl"))
    return model, Backbone.from_pretrained(model, device="cpu")


@pytest.fixture
def mixed(tmp_path):
    """Two wide (128x72), one square and two tall (72x128) references."""
    folder = tmp_path / "refs"
    write_images(folder, 2, seed=1, size=(128, 72))
    for i, (seed, size) in enumerate([(2, (80, 80)), (3, (72, 128)), (4, (72, 128))]):
        write_images(tmp_path / f"part{i}", 1, seed=seed, size=size)
        (tmp_path / f"part{i}" / "img_00.png").rename(folder / f"other_{i}.png")
    return folder


def test_sdxl_buckets_keep_about_the_pixel_count_and_the_shape():
    sizes = bucket_sizes(1024, 64)
    assert (1024, 1024) in sizes and (1088, 960) in sizes and (960, 1088) in sizes
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 1024**2 and max(w / h, h / w) <= 2 for w, h in sizes)
    width, height = nearest_bucket(1920, 1080, sizes)  # a 16:9 photo
    assert abs(math.log(width / height) - math.log(16 / 9)) < 0.05 and width * height > 0.9 * 1024**2


def test_mixed_shapes_are_cached_per_bucket_and_batches_come_from_one(sdxl, mixed):
    _, backbone = sdxl
    data = ReferenceSet.from_folder(mixed, 32)
    cache = LatentCache(backbone, data, flip=True)
    assert cache.groups is not None and len(cache.groups) == 3
    shapes = {}
    for indices, mean, std in cache.groups:
        assert mean.shape[:2] == (2, len(indices)) and std.shape == mean.shape  # both flips of each image
        shapes[tuple(mean.shape[-2:])] = sorted(data.paths[i].name for i in indices)
    wide = next(shape for shape, names in shapes.items() if names == ["img_00.png", "img_01.png"])
    tall = next(shape for shape, names in shapes.items() if names == ["other_1.png", "other_2.png"])
    assert wide[1] > wide[0] and tall[0] > tall[1]  # (h, w) latents follow the images' shapes
    generator, seen = torch.Generator().manual_seed(0), set()
    for _ in range(20):
        latents, labels, indices = cache.sample(3, generator)
        names = {data.paths[int(i)].name for i in indices}
        assert names <= set(shapes[tuple(latents.shape[-2:])])  # one bucket per batch
        assert latents.shape[0] == 3 and labels.shape == (3,)
        seen.add(tuple(latents.shape[-2:]))
    assert len(seen) > 1


def test_square_sets_and_sd_keep_one_square_size(sdxl, mixed, tmp_path, tiny_model):
    _, backbone = sdxl
    square = LatentCache(backbone, ReferenceSet.from_folder(write_images(tmp_path / "sq", 3, size=(80, 80)), 32), False)
    assert square.groups is None and square.mean.shape[-2:] == (16, 16)
    sd = LatentCache(Backbone.from_pretrained(tiny_model, device="cpu"), ReferenceSet.from_folder(mixed, 32), False)
    assert sd.groups is None and sd.mean.shape[-2:] == (16, 16)  # SD 1.x/2.x: center crops, as before


def test_sdxl_trains_on_batches_of_several_bucket_shapes(sdxl, mixed, tmp_path, monkeypatch):
    model, _ = sdxl
    sizes = []
    original = Backbone.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        loaded = original(cls, *args, **kwargs)
        forward = loaded.denoise
        loaded.denoise = lambda noisy, t, features: sizes.append(tuple(noisy.shape[-2:])) or forward(noisy, t, features)
        return loaded

    monkeypatch.setattr(Backbone, "from_pretrained", classmethod(spy))
    config = TrainConfig(
        images=str(mixed),
        out=str(tmp_path / "run"),
        model=str(model),
        steps=4,
        batch_size=2,
        progress=False,
        checkpoint_every=0,
    )
    train(config, DreamDistributionConfig(num_prompts=2, num_tokens=1, num_samples=1))
    assert len(set(sizes)) > 1 and all(h % 2 == 0 and w % 2 == 0 for h, w in sizes)
