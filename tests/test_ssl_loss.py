"""The Barlow Twins loss against the formula written out with plain Python loops."""

from __future__ import annotations

import math

import pytest
import torch

from btcxr.pretrain.barlow_twins.loss import barlow_twins_loss, off_diagonal
from btcxr.pretrain.barlow_twins.model import BarlowTwins, embedding_spread


def _batch_norm_loops(z: list[list[float]], eps: float = 1e-5) -> list[list[float]]:
    """(z - mean) / sqrt(biased var + eps) per column, as BatchNorm1d(affine=False) in training mode."""
    n, d = len(z), len(z[0])
    out = [[0.0] * d for _ in range(n)]
    for j in range(d):
        mean = sum(z[b][j] for b in range(n)) / n
        var = sum((z[b][j] - mean) ** 2 for b in range(n)) / n
        for b in range(n):
            out[b][j] = (z[b][j] - mean) / math.sqrt(var + eps)
    return out


def _loss_loops(z1: list[list[float]], z2: list[list[float]], lambd: float) -> tuple[float, float, float]:
    n1, n2 = _batch_norm_loops(z1), _batch_norm_loops(z2)
    n, d = len(z1), len(z1[0])
    on = off = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(n1[b][i] * n2[b][j] for b in range(n)) / n
            if i == j:
                on += (c_ij - 1) ** 2
            else:
                off += c_ij ** 2
    return on + lambd * off, on, off


def test_loss_matches_the_formula_written_with_loops():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 4, generator=g, dtype=torch.float64)
    z2 = 0.5 * z1 + torch.randn(6, 4, generator=g, dtype=torch.float64)
    bn = torch.nn.BatchNorm1d(4, affine=False).double()
    terms = barlow_twins_loss(bn(z1), bn(z2), lambd=0.0051)
    loss, on, off = _loss_loops(z1.tolist(), z2.tolist(), 0.0051)
    assert terms.loss.item() == pytest.approx(loss, rel=1e-9)
    assert terms.on_diag.item() == pytest.approx(on, rel=1e-9)
    assert terms.off_diag.item() == pytest.approx(off, rel=1e-9)
    # lambda weighs the off-diagonal part only
    other = barlow_twins_loss(bn(z1), bn(z2), lambd=0.5)
    assert other.loss.item() == pytest.approx(on + 0.5 * off, rel=1e-9)


def test_perfectly_decorrelated_identical_views_give_zero_loss():
    # columns of n orthogonal with squared norm N: c = n^T n / N = identity
    q, _ = torch.linalg.qr(torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    n = q * math.sqrt(8)
    terms = barlow_twins_loss(n, n)
    assert terms.loss.item() == pytest.approx(0.0, abs=1e-20)
    assert torch.allclose(terms.c, torch.eye(3, dtype=torch.float64))
    # a fully correlated pair of dimensions costs 2 * lambda (both off-diagonal entries equal 1)
    dup = torch.cat([n[:, :1], n[:, :1]], 1)
    assert barlow_twins_loss(dup, dup, lambd=0.25).loss.item() == pytest.approx(0.5)


def test_global_batch_divides_the_correlation():
    n1 = torch.randn(5, 3, dtype=torch.float64)
    n2 = torch.randn(5, 3, dtype=torch.float64)
    local = barlow_twins_loss(n1, n2).c
    assert torch.allclose(barlow_twins_loss(n1, n2, global_batch=20).c, local * 5 / 20)


def test_off_diagonal_takes_exactly_the_off_diagonal_entries():
    x = torch.arange(16.0).view(4, 4)
    expected = [x[i, j].item() for i in range(4) for j in range(4) if i != j]
    assert off_diagonal(x).tolist() == expected


def test_loss_runs_in_fp32_under_autocast():
    n1 = torch.randn(16, 8).bfloat16()
    n2 = torch.randn(16, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = barlow_twins_loss(n1, n2)
    assert terms.c.dtype == torch.float32 and terms.loss.dtype == torch.float32
    ref = barlow_twins_loss(n1.float(), n2.float())
    assert terms.loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)


def test_model_projector_layout_and_final_affine_free_norm():
    model = BarlowTwins(torch.nn.Identity(), 5, [7, 7, 3])
    kinds = [type(m).__name__ for m in model.projector]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert [m.bias for m in model.projector if isinstance(m, torch.nn.Linear)] == [None, None, None]
    assert [m.out_features for m in model.projector if isinstance(m, torch.nn.Linear)] == [7, 7, 3]
    assert model.bn.affine is False
    emb = model(torch.randn(10, 5), torch.randn(10, 5))
    # the loss's inputs are standardised per dimension
    assert torch.allclose(emb.n1.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(emb.n1.var(0, unbiased=False), torch.ones(3), atol=1e-3)


def test_embedding_spread_flags_a_collapse():
    healthy = torch.randn(256, 64, generator=torch.Generator().manual_seed(0))
    collapsed = torch.ones(256, 64) + 1e-4 * healthy
    assert embedding_spread(healthy).item() == pytest.approx(1.0, abs=0.1)
    assert embedding_spread(collapsed).item() < 1e-3
