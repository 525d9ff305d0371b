"""VICReg, SimCLR and BYOL through lightly: each loss against its formula written out here, BYOL's target
network and momentum schedule, the missing-extra message, the configs, and a short run of each through
`btcxr pretrain` that writes a torchvision backbone."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from test_pretrain import TINY, make_unlabeled_cache, tiny

from btcxr.backbones import build_resnet
from btcxr.cli import main
from btcxr.config import load_config
from btcxr.config_files import resolve_config
from btcxr.engine.checkpoint import load_checkpoint
from btcxr.engine.distributed import DistEnv
from btcxr.engine.runlog import read_metrics
from btcxr.errors import BtcxrError
from btcxr.pretrain import byol, simclr, two_view, vicreg
from btcxr.pretrain.common import optimizer_and_scaler
from btcxr.pretrain.config import LIGHTLY_METHODS, PretrainConfig
from btcxr.pretrain.two_view import TwoViews

SMALL = {"vicreg": ["model.projector=[32,32,16]"], "simclr": ["model.projector=[32,16]"],
         "byol": ["model.projector=[32,16]", "byol.predictor_hidden=24"]}


def _cfg(method: str, *overrides: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, [f"method={method}", *SMALL[method], *overrides])


def _embeddings(n: int = 6, d: int = 5, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(4)]


# ------------------------------------------------------------------------------------ losses vs formulas
def test_vicreg_loss_is_the_papers_formula():
    z1, z2, _, _ = (z.numpy() for z in _embeddings())
    n, d = z1.shape

    def std_hinge(z):  # mean over dimensions of max(0, 1 - sqrt(Var(z_j) + eps)), unbiased variance
        return np.mean([max(0.0, 1 - math.sqrt(z[:, j].var(ddof=1) + 1e-4)) for j in range(d)])

    def cov_term(z):  # sum of the squared off-diagonal entries of the covariance matrix, over d
        zc = z - z.mean(axis=0)
        cov = sum(np.outer(zc[i], zc[i]) for i in range(n)) / (n - 1)
        return sum(cov[a, b] ** 2 for a in range(d) for b in range(d) if a != b) / d

    invariance = sum(((z1[i] - z2[i]) ** 2).sum() for i in range(n)) / (n * d)
    expected = 25 * invariance + 25 * (std_hinge(z1) + std_hinge(z2)) / 2 + 1 * (cov_term(z1) + cov_term(z2))
    got = vicreg.loss(TwoViews(*map(torch.from_numpy, (z1, z2))), _cfg("vicreg"))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # the coefficients are the config's
    other = vicreg.loss(TwoViews(*map(torch.from_numpy, (z1, z2))),
                        _cfg("vicreg", "vicreg.sim_coeff=1", "vicreg.std_coeff=0", "vicreg.cov_coeff=0"))
    assert other.item() == pytest.approx(invariance, rel=1e-12)


def test_simclr_loss_is_nt_xent_over_the_2n_views():
    z1, z2, _, _ = (z.numpy() for z in _embeddings(n=4, d=3))
    t = 0.1
    views = np.concatenate([z1, z2])
    views = views / np.linalg.norm(views, axis=1, keepdims=True)
    n2 = len(views)
    terms = []
    for i in range(n2):
        positive = (i + n2 // 2) % n2  # the other view of the same image
        sims = {k: float(views[i] @ views[k]) / t for k in range(n2) if k != i}
        terms.append(-(sims[positive] - math.log(sum(math.exp(s) for s in sims.values()))))
    got = simclr.loss(TwoViews(torch.from_numpy(z1), torch.from_numpy(z2)), _cfg("simclr", f"simclr.temperature={t}"))
    assert got.item() == pytest.approx(np.mean(terms), rel=1e-12)


def test_byol_loss_is_the_symmetrised_normalised_mse():
    z1, z2, _, _ = _embeddings()
    p1, p2, t1, t2 = (z.numpy() for z in _embeddings(seed=1))

    def mse_of_unit_vectors(p, t):  # || p/|p| - t/|t| ||^2, averaged over the batch (= 2 - 2 cos)
        return np.mean([((p[i] / np.linalg.norm(p[i]) - t[i] / np.linalg.norm(t[i])) ** 2).sum() for i in range(len(p))])

    expected = mse_of_unit_vectors(p1, t2) + mse_of_unit_vectors(p2, t1)
    out = TwoViews(z1, z2, *map(torch.from_numpy, (p1, p2, t1, t2)))
    assert byol.loss(out, _cfg("byol")).item() == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------------------------ BYOL
def _byol_model(cfg: PretrainConfig) -> byol.BYOL:
    torch.manual_seed(0)
    return byol.build(cfg, build_resnet("resnet18", init="random"), 512)


def test_byol_target_starts_as_the_online_network_and_receives_no_gradient():
    cfg = _cfg("byol")
    model = _byol_model(cfg)
    online = {**model.backbone.state_dict(), **model.projector.state_dict()}
    target = {**model.target_backbone.state_dict(), **model.target_projector.state_dict()}
    assert all(torch.equal(online[k], target[k]) for k in online)
    out = model(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))
    byol.loss(out, cfg).backward()
    targets = [*model.target_backbone.parameters(), *model.target_projector.parameters()]
    assert targets and all(p.grad is None and not p.requires_grad for p in targets)
    assert all(p.grad is not None for p in [*model.backbone.parameters(), *model.predictor.parameters()])
    # the optimizer never sees the target (LARS groups hold only parameters that learn)
    optimizer, _ = optimizer_and_scaler(cfg, model, DistEnv())
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not held & {id(p) for p in targets}


def test_byol_momentum_follows_the_cosine_schedule_and_moves_the_target():
    cfg = _cfg("byol", "byol.momentum_base=0.99")
    total = 11
    taus = [byol.momentum(k, total, cfg) for k in range(total)]
    # BYOL: tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2, from tau_base at the first step to 1 at the last
    expected = [1 - (1 - 0.99) * (math.cos(math.pi * k / (total - 1)) + 1) / 2 for k in range(total)]
    assert taus == pytest.approx(expected, abs=1e-15)
    assert taus[0] == pytest.approx(0.99) and taus[-1] == 1.0

    model = _byol_model(cfg)
    with torch.no_grad():
        for p in [*model.backbone.parameters(), *model.projector.parameters()]:
            p.add_(torch.randn_like(p))  # the online network after some steps
    before = [p.clone() for p in model.target_backbone.parameters()]
    online = list(model.backbone.parameters())
    row = byol.after_step(model, 3, total, cfg)
    assert row == {"momentum": taus[3]}
    for old, new, o in zip(before, model.target_backbone.parameters(), online):
        torch.testing.assert_close(new, taus[3] * old + (1 - taus[3]) * o, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------- config and extra
@pytest.mark.parametrize("name", [f"{m}{suffix}" for m in LIGHTLY_METHODS for suffix in ("", "_demo")])
def test_each_method_has_a_packaged_config_and_a_demo_variant(name):
    cfg = load_config(PretrainConfig, resolve_config(name, "pretrain"))
    method = name.removesuffix("_demo")
    assert cfg.method == method
    if name == method:  # the paper-size recipe: ResNet-50 from ImageNet on the paper's data, its own heads
        assert cfg.model.arch == "resnet50" and cfg.model.init == "imagenet" and cfg.model.size == 224
        assert cfg.model.projector == {"vicreg": [8192, 8192, 8192], "simclr": [2048, 128],
                                       "byol": [4096, 256]}[method]
        assert cfg.optim.lr_weights == cfg.optim.lr_biases == {"vicreg": 0.2, "simclr": 0.3, "byol": 0.2}[method]
    else:
        assert cfg.model.arch == "resnet18" and cfg.model.init == "random"


@pytest.mark.parametrize(("overrides", "message"), [
    (["method=byol", "model.projector=[32,16,8]"], "method=byol needs model.projector = \\[hidden, output\\]"),
    (["method=vicreg", "model.projector=[32,16,8]"], "one hidden width"),
    (["method=simclr", "model.projector=[16]"], "at least two widths"),
    (["method=simclr", "model.projector=[16,8]", "simclr.temperature=0"], "temperature must be positive"),
    (["method=dino"], "method must be one of"),
])
def test_a_head_lightly_cannot_build_is_refused_when_the_config_is_read(overrides, message):
    with pytest.raises(BtcxrError, match=message):
        load_config(PretrainConfig, None, overrides)


def test_without_lightly_the_error_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lightly", None)  # import lightly now raises ImportError
    with pytest.raises(BtcxrError, match=r"method=byol needs lightly: pip install 'btcxr\[methods\]'"):
        two_view.method_module("byol")
    cache = make_unlabeled_cache(tmp_path / "cache", n=12, size=32)
    args = ["pretrain", "--config", "byol_demo", f"data.cache={cache}", *TINY, "--out", str(tmp_path / "run")]
    assert main(args) == 2
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- the loop
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_unlabeled_cache(tmp_path_factory.mktemp("cache"), n=40, size=32)


@pytest.mark.parametrize("method", LIGHTLY_METHODS)
def test_btcxr_pretrain_runs_each_method_and_writes_a_torchvision_backbone(method, cache, tmp_path):
    out = tmp_path / "run"
    args = ["pretrain", "--config", f"{method}_demo", f"data.cache={cache}", *TINY, *SMALL[method],
            "optim.epochs=2", "optim.batch_size=8", "--out", str(out)]
    assert main(args) == 0
    rows = read_metrics(out, "train")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 7, 8]  # 35 train images // 8 = 4 steps an epoch
    assert all(math.isfinite(r["loss"]) and r["embed_std"] > 0 for r in rows)
    assert ("momentum" in rows[0]) == (method == "byol")
    if method == "byol":
        assert rows[-1]["momentum"] == 1.0 and rows[0]["momentum"] == pytest.approx(0.996)
    weights = load_checkpoint(out / "backbone.pth")
    resnet = build_resnet("resnet18", init="random")
    resnet.load_state_dict(weights, strict=False)
    assert set(weights) == set(resnet.state_dict()) - {"fc.weight", "fc.bias"}
    state = load_checkpoint(out / "last.pt")["model"]
    online = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    assert all(torch.equal(weights[k], online[k]) for k in weights)  # backbone.pth is the online backbone
    assert any(k.startswith("target_backbone.") for k in state) == (method == "byol")


def test_a_resumed_method_run_refuses_another_method(cache, tmp_path):
    cfg = tiny(cache, "method=simclr", *SMALL["simclr"], "optim.epochs=1", "optim.batch_size=8")
    from btcxr.pretrain.run import pretrain

    pretrain(cfg, tmp_path / "run")
    other = tiny(cache, "method=vicreg", *SMALL["vicreg"], "optim.epochs=1", "optim.batch_size=8")
    with pytest.raises(BtcxrError, match="not a btcxr-pretrain-vicreg checkpoint .it holds btcxr-pretrain-simclr"):
        pretrain(other, tmp_path / "run", resume=True)
