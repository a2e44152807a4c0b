"""The two samplers and two objectives of DreamDistribution (METHODS.md §8)."""

from __future__ import annotations

import pytest
import torch

from dreamdist.artifact import load_artifact
from dreamdist.config import GenerateConfig, TrainConfig
from dreamdist.methods.dreamdistribution import (
    DreamDistributionConfig,
    artifact_features,
    mixture_scale,
    prompt_sampler,
)
from dreamdist.prompt_distribution import gaussian_stats, mixture_draw, spread, spread_basis, winner_take_all
from dreamdist.testing import write_images
from dreamdist.training.loop import train

MIXTURE = DreamDistributionConfig(num_prompts=4, num_tokens=2, num_samples=2, objective="mixture")


def test_weighted_stats_reduce_to_the_paper_and_ignore_zero_weights():
    hidden = torch.randn(6, 5, 3)  # (K, L, d)
    mean, std = gaussian_stats(hidden, torch.ones(6))
    assert torch.allclose(mean, hidden.mean(0), atol=1e-6) and torch.allclose(std, hidden.std(0), atol=1e-6)
    weights = torch.tensor([1.0, 1.0, 2.0, 0.0, 0.0, 0.0])
    mean, std = gaussian_stats(hidden, weights)
    repeated = torch.stack([hidden[0], hidden[1], hidden[2], hidden[2]])  # frequency weights, as samples
    assert torch.allclose(mean, repeated.mean(0), atol=1e-6)
    # reliability weights: sum w (c - mu)^2 / (1 - sum w^2), w = (1/4, 1/4, 1/2)
    w = torch.tensor([0.25, 0.25, 0.5])[:, None, None]
    expected = ((w * (hidden[:3] - mean) ** 2).sum(0) / (1 - (w**2).sum())).sqrt()
    assert torch.allclose(std, expected, atol=1e-6)


def test_mixture_draw_at_gamma_zero_is_exactly_a_prompt():
    hidden = torch.randn(4, 5, 3)  # (K, L, d)
    basis = spread_basis(hidden)
    for u, k in ((0.0, 0), (0.3, 1), (0.6, 2), (0.99, 3)):
        features, chosen = mixture_draw(hidden, basis, torch.ones(4), u, torch.Generator().manual_seed(0), scale=0.0)
        assert chosen == k and torch.equal(features, hidden[k])
    z = torch.randn(4, generator=torch.Generator().manual_seed(7))
    features, k = mixture_draw(hidden, basis, torch.ones(4), 0.6, torch.Generator().manual_seed(7), scale=0.5)
    assert torch.allclose(features, hidden[2] + 0.5 * (z[:, None, None] * basis).sum(0), atol=1e-6)
    groups = torch.tensor([0, 0, 1, 1])  # two mixed distributions: component 3 spreads along rows 2 and 3 only
    features, k = mixture_draw(hidden, basis, torch.ones(4), 0.9, torch.Generator().manual_seed(7), 1.0, groups)
    assert k == 3 and torch.allclose(features, hidden[3] + (z[2:, None, None] * basis[2:]).sum(0), atol=1e-6)
    _, k = mixture_draw(hidden, basis, torch.tensor([0.0, 0.0, 1.0, 0.0]), 0.0, torch.Generator(), scale=0.0)
    assert k == 2  # zero-weight components are never drawn


def test_spread_basis_is_the_prompts_covariance():
    hidden = torch.randn(5, 3, 2, generator=torch.Generator().manual_seed(0))  # (K, L, d)
    weights = torch.tensor([1.0, 2.0, 1.0, 0.0, 4.0])
    basis = spread_basis(hidden, weights)  # (K, L, d)
    _, std = gaussian_stats(hidden, weights)
    assert torch.allclose(basis.pow(2).sum(0), std.pow(2), atol=1e-6)  # per channel: the paper's sigma^2
    assert torch.equal(basis[3], torch.zeros(3, 2))  # a weight-0 prompt adds no direction
    flat = basis.flatten(1)  # (K, L*d)
    w = weights / weights.sum()
    centred = (hidden - (w[:, None, None] * hidden).sum(0)).flatten(1)  # (K, L*d)
    covariance = (w[:, None] * centred).T @ centred / (1 - w.pow(2).sum())  # (L*d, L*d), weighted, unbiased
    assert torch.allclose(flat.T @ flat, covariance, atol=1e-5)  # channels move together as the prompts do
    assert torch.allclose(spread_basis(hidden), (hidden - hidden.mean(0)) / 2, atol=1e-6)  # equal weights: / sqrt(K-1)


@pytest.fixture(scope="module")
def toy_words():
    """The shipped toy model and an in-memory artifact whose K = 4 prompts are real words: 'a {colour} {shape}
    on a dotted background' with (red circle, blue star, green square, yellow cross) as the learned tokens."""
    from pathlib import Path

    from dreamdist.artifact import Artifact
    from dreamdist.backbones import Backbone

    backbone = Backbone.from_pretrained("toy", "cpu", "fp32")
    ids = backbone.tokenize(["red circle", "blue star", "green square", "yellow cross"])[:, 1:3]  # (K, M=2)
    with torch.no_grad():
        vectors = backbone.token_embedding(ids)[None].float()  # (C=1, K, M, d_tok)
    trained = {"prefix": "a", "suffix": "on a dotted background", "objective": "mixture", "train_gamma": 0.5}
    meta = {"method": "dreamdistribution", "class_names": ["toy"], "multiclass": False, "method_config": trained}
    return backbone, Artifact({"vectors": vectors}, meta, Path("in-memory"))


def _mixture_samples(backbone, artifact, gamma: float, seeds: range) -> list[tuple[torch.Tensor, int]]:
    """(features (L, d), component) of the mixture sampler for each seed, each from its own generator."""
    sample = prompt_sampler(backbone, [artifact], GenerateConfig(out="x", artifacts=["a"], gamma=gamma, seed=0))
    drawn = [sample(seed, torch.Generator().manual_seed(seed)) for seed in seeds]
    return [(features, info["component"]) for features, info in drawn]


def test_gamma_spreads_mixture_samples_monotonically_along_the_prompts_differences(toy_words):
    backbone, artifact = toy_words
    hidden = artifact_features(backbone, artifact, "a", "on a dotted background", 0)  # (K, L, d)
    span = torch.linalg.qr((hidden - hidden.mean(0)).flatten(1).T).Q  # (L*d, K) orthonormal
    between = float(torch.pdist(hidden.flatten(1)).mean())  # mean distance of two prompts
    distances, inside = [], []
    for gamma in (0.0, 0.5, 1.0, 1.5, 2.0):
        moved = torch.stack(
            [(f - hidden[k]).flatten() for f, k in _mixture_samples(backbone, artifact, gamma, range(24))]
        )
        distances.append(float(moved.norm(dim=1).mean()))
        inside.append(float(((span.T @ moved.T).norm(dim=0) / moved.norm(dim=1).clamp_min(1e-12)).min()))
    assert distances[0] == 0.0 and all(a < b for a, b in zip(distances, distances[1:]))
    assert distances[-1] == pytest.approx(16 * distances[1], rel=1e-4)  # (gamma / 2)^2 times the same draws
    assert distances[-1] > 0.3 * between  # gamma 2 goes a good part of the way to another prompt
    # ... along the prompts' differences: independent per-channel noise (the previous sampler) lies almost
    # wholly outside that (K-1)-dimensional span of the L*d channels, and barely changed the images
    assert min(inside[1:]) > 0.999
    again = _mixture_samples(backbone, artifact, 2.0, range(20, 24))  # the same seeds drawn alone: the same prompts
    assert all(
        torch.equal(f, g) for (f, _), (g, _) in zip(again, _mixture_samples(backbone, artifact, 2.0, range(24))[20:])
    )


def test_gamma_changes_the_mixture_samplers_images(toy_words):
    import numpy as np

    from dreamdist.pipeline import RenderSettings, render_images

    backbone, artifact = toy_words
    settings = RenderSettings.resolve(backbone, None, 10, None, None, "")
    images = {}
    for gamma in (0.0, 1.0, 2.0):
        sample = prompt_sampler(backbone, [artifact], GenerateConfig(out="x", artifacts=["a"], gamma=gamma))
        rows = render_images(backbone, sample, range(8), 0, settings, batch_size=8)
        images[gamma] = np.stack([np.asarray(image, dtype=np.int16) for _, image, _ in rows])  # (8, H, W, 3)
    change = {gamma: float(np.abs(images[gamma] - images[0.0]).mean()) for gamma in (1.0, 2.0)}
    # same seeds (same initial noise): the previous sampler moved these images by ~1.7 grey levels at gamma 2
    assert change[2.0] > 6 and change[1.0] < change[2.0]


def test_spread_images_are_the_same_whatever_the_batch_size(runs, tmp_path):
    import numpy as np

    from dreamdist.generation import generate

    def images(name: str, **kw) -> list:
        config = GenerateConfig(
            out=str(tmp_path / name), artifacts=[str(runs["mixture"])], gamma=2.0, num_inference_steps=2,
            progress=False, **kw,
        )  # fmt: skip
        return [np.asarray(image, dtype=np.int16) for image in generate(config).images]

    one, four = images("b1", num_images=4, batch_size=1), images("b4", num_images=4, batch_size=4)
    shifted = images("s", num_images=2, batch_size=2, seed=2)  # images 2 and 3 of the runs above
    for x, y in zip(one + one[2:], four + shifted):
        assert np.abs(x - y).max() <= 1  # batched kernels may differ in the last float bit


def test_consecutive_seeds_visit_components_in_proportion():
    hidden = torch.randn(5, 2, 2)
    basis = spread_basis(hidden)
    for start in (0, 17, 1000):
        picks = [
            mixture_draw(hidden, basis, torch.ones(5), spread(s), torch.Generator(), 0.0)[1]
            for s in range(start, start + 50)
        ]
        counts = torch.bincount(torch.tensor(picks), minlength=5)
        assert counts.min() >= 9 and counts.max() <= 11  # 10 each, up to the sequence's discrepancy
    weights = torch.tensor([3.0, 1.0])
    picks = [mixture_draw(hidden[:2], basis[:2], weights, spread(s), torch.Generator(), 0.0)[1] for s in range(40)]
    assert abs(picks.count(0) - 30) <= 1


def test_winner_take_all_weights_the_best_candidate():
    losses = torch.tensor([[1.0, 0.2], [0.5, 0.9], [2.0, 0.1]], requires_grad=True)  # (S=3, B=2)
    loss, winner = winner_take_all(losses, smoothing=0.3)
    assert winner.tolist() == [1, 2]
    loss.backward()
    expected = torch.tensor([[0.1, 0.1], [0.8, 0.1], [0.1, 0.8]]) / 2  # 0.3/3 each + 0.7 to the winner, mean over B
    assert torch.allclose(losses.grad, expected)
    hard, _ = winner_take_all(losses.detach(), smoothing=0.0)
    assert hard.item() == pytest.approx((0.5 + 0.1) / 2)


def test_a_candidate_takes_an_image_over_only_by_the_margin():
    losses = torch.tensor([[1.0, 0.2], [0.5, 0.185], [2.0, 0.19]])  # (S=3, B=2), row 0 = the current owners
    _, winner = winner_take_all(losses, smoothing=0.0, margin=0.1)
    assert winner.tolist() == [1, 0]  # 0.5 < 0.9 * 1.0 takes over; 0.185 is not < 0.9 * 0.2
    _, winner = winner_take_all(losses, smoothing=0.0, margin=0.0)
    assert winner.tolist() == [1, 1]
    loss, winner = winner_take_all(losses, smoothing=0.0, margin=0.6)
    assert winner.tolist() == [0, 0] and loss.item() == pytest.approx((1.0 + 0.2) / 2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("mixture")
    refs = write_images(root / "refs", 6, seed=3)
    common = dict(images=str(refs), model=str(tiny_model), progress=False, checkpoint_every=0)
    paper = train(
        TrainConfig(**common, out=str(root / "paper"), steps=2),
        DreamDistributionConfig(num_prompts=4, num_tokens=2, objective="gaussian"),
    )
    mixture = train(TrainConfig(**common, out=str(root / "mixture"), steps=3), MIXTURE)
    return {"paper": paper, "mixture": mixture, "refs": refs, "common": common, "root": root}


def sampler(backbone, run, **kw):
    config = GenerateConfig(out="x", artifacts=[str(run)], **kw)
    return prompt_sampler(backbone, [load_artifact(run)], config), config


def test_gaussian_sampler_follows_the_paper(runs, backbone):
    art = load_artifact(runs["paper"])
    hidden = artifact_features(backbone, art, "", "", 0)  # (K, L, d)
    mean, std = hidden.mean(0), hidden.std(0)
    sample, _ = sampler(backbone, runs["paper"], sampler="gaussian", gamma=1.5)
    for index in range(3):
        features, info = sample(index, torch.Generator().manual_seed(index))
        omega = torch.randn(mean.shape, generator=torch.Generator().manual_seed(index))
        assert torch.allclose(features, mean + 1.5 * omega * std, atol=1e-6)
        assert info["sampler"] == "gaussian"


def test_mixture_sampler_at_gamma_zero_reproduces_the_k_prompts(runs, backbone):
    art = load_artifact(runs["paper"])  # no weights saved: equal weights
    hidden = artifact_features(backbone, art, "", "", 0)  # (K, L, d)
    sample, _ = sampler(backbone, runs["paper"], sampler="mixture", gamma=0.0)
    seen = set()
    for index in range(8):
        features, info = sample(index, torch.Generator().manual_seed(index))
        k = info["component"]
        assert torch.equal(features, hidden[k])
        seen.add(k)
    assert seen == {0, 1, 2, 3}  # 8 consecutive seeds: each of the K = 4 prompts twice
    noisy, _ = sampler(backbone, runs["paper"], sampler="mixture", gamma=2.0)
    features, info = noisy(5, torch.Generator().manual_seed(5))
    z = torch.randn(len(hidden), generator=torch.Generator().manual_seed(5))
    # spread = (gamma / 2)^2 * sum_j z_j (c_j - mu) / sqrt(K - 1): at gamma 2 a whole draw of the prompts' covariance
    moved = (z[:, None, None] * (hidden - hidden.mean(0))).sum(0) / 3**0.5
    assert mixture_scale(2.0) == 1.0 and torch.allclose(features, hidden[info["component"]] + moved, atol=1e-5)


def test_mixture_objective_saves_owner_weights_and_resumes_exactly(runs, tiny_model):
    art = load_artifact(runs["mixture"])
    weights = art.tensors["weights"]  # (C=1, K=4)
    assert weights.shape == (1, 4) and weights.sum().item() == pytest.approx(1.0)
    assert (weights * 6).round().eq(weights * 6).all()  # shares of 6 reference images
    root, common = runs["root"], runs["common"]
    stopped = root / "stopped"
    train(TrainConfig(**{**common, "checkpoint_every": 1}, out=str(stopped), steps=2), MIXTURE)
    train(TrainConfig(**{**common, "checkpoint_every": 1}, out=str(stopped), steps=3, resume=True), MIXTURE)
    resumed = load_artifact(stopped)
    assert torch.equal(resumed.tensors["vectors"], art.tensors["vectors"])
    assert torch.equal(resumed.tensors["weights"], weights)


def test_samplers_differ_and_are_named_in_the_manifest(runs, tmp_path):
    import numpy as np

    from dreamdist.generation import generate

    rows, images = {}, {}
    for name in ("gaussian", "mixture"):
        config = GenerateConfig(
            out=str(tmp_path / name), artifacts=[str(runs["mixture"])], sampler=name, num_images=2,
            num_inference_steps=2, progress=False,
        )  # fmt: skip
        result = generate(config)
        rows[name] = (tmp_path / name / "manifest.jsonl").read_text()
        images[name] = [np.asarray(image, dtype=np.int16) for image in result.images]
    assert '"sampler": "mixture"' in rows["mixture"] and '"component"' in rows["mixture"]
    assert '"sampler": "gaussian"' in rows["gaussian"]
    for gaussian, mixture in zip(images["gaussian"], images["mixture"]):  # same seeds, other sampler
        assert np.abs(gaussian - mixture).max() > 10
    with pytest.raises(ValueError, match="sampler"):
        GenerateConfig(out="x", artifacts=["a"], sampler="uniform")
    with pytest.raises(ValueError, match="objective"):
        DreamDistributionConfig(objective="em")


def _gather_worker(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    from dreamdist.methods.dreamdistribution import all_ranks

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        queue.put((rank, all_ranks(torch.tensor([rank * 10, rank * 10 + 1])).tolist()))
    finally:
        dist.destroy_process_group()


def test_owner_updates_are_shared_by_every_process():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    procs = [context.Process(target=_gather_worker, args=(r, 2, port, queue)) for r in range(2)]
    for proc in procs:
        proc.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    assert results == {0: [0, 1, 10, 11], 1: [0, 1, 10, 11]}


def test_shared_part_and_learning_rates(backbone, tmp_path):
    from dreamdist.data import ReferenceSet
    from dreamdist.methods.dreamdistribution import DreamDistribution
    from dreamdist.prompt_distribution import PromptDistribution

    dist = PromptDistribution(2, 3, 2, 8, shared=True)
    with torch.no_grad():
        dist.shared.fill_(1.0)
    assert torch.equal(dist.prompts(), dist.vectors + 1.0)
    assert torch.equal(dist(torch.tensor([1])), dist.vectors[1:] + 1.0)
    assert PromptDistribution(1, 2, 2, 8).shared is None  # the paper's objective: no shared part
    method = DreamDistribution(DreamDistributionConfig(num_prompts=4, num_tokens=2, own_lr_scale=5.0))
    refs = write_images(tmp_path / "refs", 3, seed=1)
    method.setup(backbone, ReferenceSet.from_folder(refs, 32), torch.Generator().manual_seed(0))
    groups = method.param_groups(1e-3)
    assert groups[0]["params"][0] is method.prompts.shared and groups[0]["lr"] == 1e-3
    assert groups[1]["params"][0] is method.prompts.vectors and groups[1]["lr"] == pytest.approx(5e-3)
    paper = DreamDistribution(DreamDistributionConfig(num_prompts=4, num_tokens=2, objective="gaussian"))
    paper.setup(backbone, ReferenceSet.from_folder(refs, 32), torch.Generator().manual_seed(0))
    assert paper.prompts.shared is None and "lr" not in paper.param_groups(1e-3)[0]


def test_each_objective_has_its_own_defaults():
    from dreamdist.methods.dreamdistribution import DreamDistribution

    paper = DreamDistribution(DreamDistributionConfig(objective="gaussian"))
    mixture = DreamDistribution(DreamDistributionConfig())
    assert (paper.config.num_samples, paper.default_batch_size, paper.default_timesteps) == (4, 4, (0.0, 1.0))
    assert (mixture.config.num_samples, mixture.default_batch_size) == (1, 16)  # the same 16 UNet rows per step
    low, high = mixture.default_timesteps
    assert 0 < low < 0.5 < high < 1
    assert DreamDistributionConfig(num_samples=3).num_samples == 3
    with pytest.raises(ValueError, match="assign-margin"):
        DreamDistributionConfig(assign_margin=1.0)


def test_with_one_sample_each_image_trains_its_own_prompt(runs, monkeypatch):
    import dreamdist.methods.dreamdistribution as dd

    seen = []
    real = dd.winner_take_all
    monkeypatch.setattr(dd, "winner_take_all", lambda losses, *a: seen.append(losses.shape) or real(losses, *a))
    config = DreamDistributionConfig(num_prompts=8, num_tokens=2)  # S = 1: the 6 references own prompts 0..5
    out = runs["root"] / "own"
    train(TrainConfig(**runs["common"], out=str(out), steps=3, batch_size=4), config)
    assert seen == [(1, 4)] * 3  # one candidate (the owner) per image, 4 images per step
    assert load_artifact(out).tensors["weights"][0].tolist() == pytest.approx([1 / 6] * 6 + [0, 0])
