"""LARS against an update written out by hand, and the learning-rate schedule of the recipe."""

from __future__ import annotations

import math

import pytest
import torch

from btcxr.pretrain.common import lr_schedules
from btcxr.pretrain.config import PretrainConfig
from btcxr.pretrain.lars import LARS, lars_param_groups


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def test_lars_matches_a_hand_written_update():
    lr, wd, mom, eta = 0.5, 0.1, 0.9, 0.001
    w = torch.nn.Parameter(torch.tensor([[3.0, -4.0]]))  # 2-D: decay and trust ratio
    b = torch.nn.Parameter(torch.tensor([1.0, 2.0]))  # 1-D: plain momentum SGD
    opt = LARS([{"params": [w]}, {"params": [b]}], lr=lr, weight_decay=wd, momentum=mom, eta=eta)
    grads = [([0.3, 0.4], [0.5, -1.0]), ([-0.6, 0.8], [0.25, 0.25])]

    pw, pb = [3.0, -4.0], [1.0, 2.0]
    mw, mb = [0.0, 0.0], [0.0, 0.0]
    for gw, gb in grads:
        w.grad = torch.tensor([gw])
        b.grad = torch.tensor(gb)
        opt.step()
        # by hand: weight -> d = g + wd p; d *= eta |p| / |d|; m = mom m + d; p -= lr m
        d = [g + wd * p for g, p in zip(gw, pw)]
        q = eta * _norm(pw) / _norm(d)
        mw = [mom * m + q * x for m, x in zip(mw, d)]
        pw = [p - lr * m for p, m in zip(pw, mw)]
        # bias -> no decay, no trust ratio
        mb = [mom * m + g for m, g in zip(mb, gb)]
        pb = [p - lr * m for p, m in zip(pb, mb)]
        assert w.detach().flatten().tolist() == pytest.approx(pw, rel=1e-6)
        assert b.detach().tolist() == pytest.approx(pb, rel=1e-6)
    # the first weight step has the size eta * |p| * lr (the trust ratio normalises the update)
    assert pw != [3.0, -4.0]


def test_trust_ratio_is_one_for_a_zero_weight():
    w = torch.nn.Parameter(torch.zeros(2, 2))
    w.grad = torch.ones(2, 2)
    LARS([w], lr=0.1, weight_decay=0.0, momentum=0.0).step()
    assert torch.allclose(w.detach(), torch.full((2, 2), -0.1))


def test_param_groups_split_weights_from_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2, bias=False))
    weights, biases = lars_param_groups(model)
    assert [tuple(p.shape) for p in weights["params"]] == [(4, 3), (2, 4)]
    assert [tuple(p.shape) for p in biases["params"]] == [(4,), (4,), (4,)]


def test_lr_schedule_scales_with_batch_warms_up_and_decays_to_a_thousandth():
    cfg = PretrainConfig()
    cfg.optim.epochs, cfg.optim.batch_size = 20, 512
    cfg.optim.warmup_epochs = 10
    lr_w, lr_b = lr_schedules(cfg, steps_per_epoch=5)
    assert len(lr_w) == 100
    peak_w, peak_b = 0.2 * 512 / 256, 0.0048 * 512 / 256
    assert lr_w[0] == 0.0 and lr_w[25] == pytest.approx(peak_w * 25 / 50)  # linear warm-up over 50 steps
    assert lr_w[50] == pytest.approx(peak_w) and lr_b[50] == pytest.approx(peak_b)
    # Barlow Twins' cosine reaches 0.001 x peak one step after the last: cos(pi * 49 / 50) at step 99.
    last = 0.001 + 0.999 * (1 + math.cos(math.pi * 49 / 50)) / 2
    assert lr_w[-1] == pytest.approx(last * peak_w) and lr_b[-1] == pytest.approx(last * peak_b)
    assert all(a >= b for a, b in zip(lr_w[50:], lr_w[51:]))  # cosine: never rises after the peak
