"""Prompt-distribution maths: templates, statistics, orthogonality, mixing, interpretation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from dreamdist.prompt_distribution import (
    PromptDistribution,
    PromptTemplate,
    encode_prompts,
    gaussian_stats,
    mix_stats,
    nearest_tokens,
    orthogonality_loss,
    reparameterize,
)


def test_template_with_real_word_embeddings_equals_plain_prompt(backbone):
    """PREFIX V SUFFIX with V = the real rows of 'photo of' must equal encoding the text."""
    template = PromptTemplate.build(backbone, num_tokens=2, prefix="a", suffix="cathedral at night")
    ids = backbone.tokenize(["a photo of cathedral at night"])[0]
    vectors = backbone.token_embedding(ids[2:4])[None]  # (1, M=2, d_tok): 'photo', 'of'
    hidden, pooled = encode_prompts(backbone, vectors, template)
    ref = backbone.text_encoder(ids[None])
    assert torch.equal(hidden, ref.last_hidden_state) and torch.equal(pooled, ref.pooler_output)


def test_template_too_long_is_refused(backbone):
    with pytest.raises(ValueError, match="prompt too long"):
        PromptTemplate.build(backbone, num_tokens=8, prefix=" ".join(["photo"] * 70))


def test_orthogonality_loss_matches_definitions():
    torch.manual_seed(0)
    pooled = torch.randn(6, 16)
    cos = [[F.cosine_similarity(a, b, dim=0).item() for b in pooled] for a in pooled]
    k = 6
    paper = sum(abs(cos[i][j]) for i, j in itertools.combinations(range(k), 2)) / (k * (k - 1))
    public = sum(cos[i][j] ** 2 for i in range(k) for j in range(k) if i != j) / (k * (k - 1))
    assert orthogonality_loss(pooled, "abs").item() == pytest.approx(paper, rel=1e-5)
    assert orthogonality_loss(pooled, "squared").item() == pytest.approx(public, rel=1e-5)
    basis = torch.eye(4)
    assert orthogonality_loss(basis).item() == 0.0
    with pytest.raises(ValueError):
        orthogonality_loss(pooled, "cubed")


def test_stats_and_reparameterization():
    hidden = torch.randn(8, 5, 3)  # (K, L, d)
    mean, std = gaussian_stats(hidden)
    assert torch.allclose(mean, hidden.mean(0)) and torch.allclose(std, hidden.std(0))
    omega = torch.randn(5, 3)
    assert torch.equal(reparameterize(mean, std, omega, gamma=0.0), mean)
    assert torch.allclose(reparameterize(mean, std, omega, gamma=2.0) - mean, 2 * omega * std)


def test_mixing_rules_and_weight_validation():
    m1, s1, m2, s2 = torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2, 3), 2 * torch.ones(2, 3)
    mean, std = mix_stats([(m1, s1), (m2, s2)], [0.3, 0.7])
    assert torch.allclose(mean, 0.7 * torch.ones(2, 3))
    assert torch.allclose(std, torch.full((2, 3), math.sqrt(0.3) + 2 * math.sqrt(0.7)))
    _, std_pub = mix_stats([(m1, s1), (m2, s2)], [0.3, 0.7], rule="public-code")
    assert torch.allclose(std_pub, torch.full((2, 3), math.sqrt(0.3**2 + 1.4**2)))
    mix_stats([(m1, s1)] * 3, [0.1, 0.2, 0.7])  # 0.1 + 0.2 + 0.7 != 1.0 in floats; tolerated
    with pytest.raises(ValueError, match="sum to 1"):
        mix_stats([(m1, s1), (m2, s2)], [0.5, 0.4])
    with pytest.raises(ValueError, match="one weight per"):
        mix_stats([(m1, s1)], [0.5, 0.5])


def test_fit_and_nearest_tokens(backbone):
    d = backbone.token_embedding.weight.shape[1]
    dist = PromptDistribution(2, 4, 2, d, generator=torch.Generator().manual_seed(0))
    template = PromptTemplate.build(backbone, 2)
    mean, std = dist.fit(backbone, [template, template])
    assert mean.shape == std.shape == (2, 77, backbone.text_encoder.config.hidden_size)
    assert (std[:, 1:3] > 0).all()  # learned slots vary over the K prompts
    ids = backbone.tokenize(["cathedral night"])[0, 1:3]
    with torch.no_grad():
        dist.vectors[0] = backbone.token_embedding(ids)[None].expand(4, -1, -1)
    words = nearest_tokens(backbone, dist.vectors[0], top_k=1)
    assert [w[0][0] for w in words] == ["cathedral", "night"]
    with pytest.raises(ValueError):
        PromptDistribution(1, 1, 2, d)
