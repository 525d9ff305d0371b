"""RankMe and the online k-NN probe of pre-training (btcxr.pretrain.monitor) against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from btcxr.pretrain.monitor import RANKME_EPS, knn_mean_auroc, knn_scores, rankme


def _with_singular_values(values: list[float], n: int = 64, seed: int = 0) -> torch.Tensor:
    """An (n, len(values)) matrix U diag(values) V^T with random orthonormal U and V."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, len(values), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ v.T


def test_rankme_is_the_entropy_of_the_normalised_singular_values():
    values = [4.0, 2.0, 1.0, 1.0]
    p = np.array(values) / sum(values) + RANKME_EPS
    assert rankme(_with_singular_values(values)) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-10)
    # not the eigenvalues (the squares): those give a lower rank for the same matrix
    q = np.square(values) / np.square(values).sum()
    assert rankme(_with_singular_values(values)) > math.exp(-(q * np.log(q)).sum()) + 0.1


def test_rankme_is_one_for_a_collapsed_set_and_the_dimension_for_an_isotropic_one():
    collapsed = torch.ones(100, 32) * torch.randn(1, 32)
    assert rankme(collapsed) == pytest.approx(1.0, abs=1e-4)
    assert rankme(_with_singular_values([3.0] * 16, n=200)) == pytest.approx(16.0, rel=1e-5)
    assert rankme(torch.zeros(10, 8)) == pytest.approx(1.0, abs=1e-4)  # no spread at all: not a NaN


def test_knn_scores_are_the_temperature_weighted_votes_of_the_nearest_neighbours():
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    labels = torch.tensor([[1, 0], [1, 1], [0, 1]])
    query = torch.tensor([[1.0, 0.1]])
    sims = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    top = sims[0].topk(2)
    w = (top.values / 0.5).exp()
    expected = (w[:, None] * labels[top.indices].double()).sum(0) / w.sum()
    assert torch.allclose(knn_scores(bank, labels, query, k=2, temperature=0.5)[0], expected.double())


def test_knn_auroc_is_one_on_separable_features_and_a_half_on_noise():
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(400, 3, generator=g) < 0.4).long()
    separable = labels.double() * 3 + 0.1 * torch.randn(400, 3, generator=g, dtype=torch.float64)
    separable = torch.cat([separable, torch.ones(400, 1, dtype=torch.float64)], dim=1)
    assert knn_mean_auroc(separable[:300], labels[:300], separable[300:], labels[300:]) > 0.99
    noise = torch.randn(400, 16, generator=g)
    assert abs(knn_mean_auroc(noise[:300], labels[:300], noise[300:], labels[300:]) - 0.5) < 0.1
    assert math.isnan(knn_mean_auroc(noise[:300], labels[:300], noise[300:], torch.zeros(100, 3)))
    noise[0, 0] = float("inf")  # a diverged model's features: reported as NaN, no exception
    assert math.isnan(knn_mean_auroc(noise[:300], labels[:300], noise[300:], labels[300:]))
    assert math.isnan(rankme(noise))
