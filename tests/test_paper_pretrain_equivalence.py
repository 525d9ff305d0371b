"""Pre-training under `--config pretrain/paper` takes the same steps as the authors' script.

The reference below is written from the semantics of the authors' `barlowtwins/main.py`
(haooyuee/BarlowTwins-CXR, the Barlow Twins recipe) and imports nothing from btcxr:
- model: backbone (fc = identity), projector Linear(no bias)-BatchNorm1d-ReLU blocks then a last
  Linear(no bias), BatchNorm1d(affine=False) over each view's embeddings, two backbone passes (statistics
  per view);
- loss: c = bn(z1)^T bn(z2) / global batch, sum_i (c_ii - 1)^2 + 0.0051 * sum_{i!=j} c_ij^2, unscaled;
- LARS: two groups split by ndim (>1: weights, 1: biases and norm parameters) in parameter order; for a
  weight d = g + 1e-6 p, then d *= 0.001 |p| / |d| (1 when a norm is 0); a 1-D parameter neither; then
  mu = 0.9 mu + d (mu starts at 0) and p -= lr mu;
- learning rate at step s (counted from 0 over the whole run, set before the step): peak batch/256;
  s < 10 epochs: peak * s / warmup_steps; then q = (1 + cos(pi (s - warmup) / (total - warmup))) / 2 and
  peak * q + 0.001 peak (1 - q); times 0.2 for the weights, 0.0048 for the biases.

Our side runs the functions the training loop calls (`build_model`, `optimizer_and_scaler`,
`lr_schedules`, `train_step`, `convert_sync_batchnorm`, DDP) on the packaged paper config, shrunk only in
width and batch (resnet18, projector 32-32-16, 8 images of 32 px), in float64, on fixed views.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torchvision
from fixtures_dist import free_port, join_gloo
from torch import nn

from btcxr.config import load_config
from btcxr.config_files import CONFIG_DIR
from btcxr.engine.distributed import DistEnv
from btcxr.engine.syncbn import convert_sync_batchnorm
from btcxr.pretrain.barlow_twins.loop import build_model, train_step
from btcxr.pretrain.common import lr_schedules, optimizer_and_scaler
from btcxr.pretrain.config import PretrainConfig, check_world

PAPER = CONFIG_DIR / "pretrain" / "paper.yaml"
BATCH, SIZE = 8, 32  # global batch; image side
EPOCHS, STEPS_PER_EPOCH = 14, 1  # 10 warm-up steps (10 epochs), then 4 cosine steps
# Two warm-up steps, the peak, and the cosine down to the run's last step; both sides start these steps
# with the same weights and an empty momentum buffer.
STEPS = range(8, 14)
TOL = dict(rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ the reference (authors' semantics)

AUTHORS = dict(lr_weights=0.2, lr_biases=0.0048, weight_decay=1e-6, momentum=0.9, eta=0.001, lambd=0.0051,
               warmup_epochs=10, final_ratio=0.001)


def ref_lr(step: int, batch: int, epochs: int, steps_per_epoch: int) -> tuple[float, float]:
    """(weights, biases) learning rate of step `step`, as the authors' adjust_learning_rate sets it."""
    total, warmup = epochs * steps_per_epoch, AUTHORS["warmup_epochs"] * steps_per_epoch
    peak = batch / 256
    if step < warmup:
        lr = peak * step / warmup
    else:
        q = 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        lr = peak * q + AUTHORS["final_ratio"] * peak * (1 - q)
    return lr * AUTHORS["lr_weights"], lr * AUTHORS["lr_biases"]


class RefBarlowTwins(nn.Module):
    """Module names as in the authors' model (backbone, projector, bn), so that one state dict fits both."""

    def __init__(self, widths: list[int]):
        super().__init__()
        self.backbone = torchvision.models.resnet18(weights=None)
        self.backbone.fc = nn.Identity()
        sizes = [512, *widths]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=False))
            if i < len(sizes) - 2:
                layers += [nn.BatchNorm1d(sizes[i + 1]), nn.ReLU()]
        self.projector = nn.Sequential(*layers)
        self.bn = nn.BatchNorm1d(sizes[-1], affine=False)

    def loss(self, y1: torch.Tensor, y2: torch.Tensor, global_batch: int) -> torch.Tensor:
        z1 = self.projector(self.backbone(y1))
        z2 = self.projector(self.backbone(y2))
        c = self.bn(z1).T @ self.bn(z2) / global_batch
        eye = torch.eye(c.shape[0], dtype=torch.bool)
        return ((c[eye] - 1) ** 2).sum() + AUTHORS["lambd"] * (c[~eye] ** 2).sum()


class RefLARS:
    """The authors' LARS update with both filters on, over their two groups (weights, then biases)."""

    def __init__(self, model: nn.Module):
        params = list(model.parameters())
        self.groups = [[p for p in params if p.ndim != 1], [p for p in params if p.ndim == 1]]
        self.mu: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, lrs: tuple[float, float]) -> None:
        for params, lr in zip(self.groups, lrs):
            for p in params:
                d = p.grad.clone()
                if p.ndim != 1:
                    d += AUTHORS["weight_decay"] * p
                    p_norm, d_norm = p.norm(), d.norm()
                    if p_norm > 0 and d_norm > 0:
                        d *= AUTHORS["eta"] * p_norm / d_norm
                mu = self.mu.setdefault(id(p), torch.zeros_like(p))
                mu *= AUTHORS["momentum"]
                mu += d
                p -= lr * mu


def ref_run(init: dict[str, torch.Tensor], views: dict[int, tuple[torch.Tensor, torch.Tensor]],
            widths: list[int]) -> tuple[list[float], dict[str, torch.Tensor]]:
    model = RefBarlowTwins(widths).double()
    model.load_state_dict(init)  # strict: the same modules and shapes as ours
    model.train()
    opt = RefLARS(model)
    losses = []
    for step in STEPS:
        model.zero_grad()
        loss = model.loss(*views[step], BATCH)
        loss.backward()
        opt.step(ref_lr(step, BATCH, EPOCHS, STEPS_PER_EPOCH))
        losses.append(loss.item())
    return losses, model.state_dict()


# ------------------------------------------------------------------ our code, as the loop calls it

def paper_cfg() -> PretrainConfig:
    """The packaged paper config, only narrower and smaller (the optimizer, rates and schedule untouched)."""
    return load_config(PretrainConfig, PAPER, [
        "model.arch=resnet18", "model.init=random", "model.projector=[32,32,16]", f"optim.batch_size={BATCH}",
        f"optim.epochs={EPOCHS}", f"model.size={SIZE}", "device=cpu"])


def fixed_views() -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return {s: (torch.randn(BATCH, 3, SIZE, SIZE, generator=g, dtype=torch.float64),
                torch.randn(BATCH, 3, SIZE, SIZE, generator=g, dtype=torch.float64)) for s in STEPS}


def initial_state(cfg: PretrainConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(cfg.seed)
    return {k: v.clone() for k, v in build_model(cfg).double().state_dict().items()}


def our_run(cfg: PretrainConfig, init: dict[str, torch.Tensor], views: dict, env: DistEnv
            ) -> tuple[list[float], dict[str, torch.Tensor]]:
    """`_pretrain`'s set-up and steps on fixed views: this rank's slice of every global batch."""
    per_rank = check_world(cfg, env.world_size)
    part = slice(env.rank * per_rank, (env.rank + 1) * per_rank)
    model = build_model(cfg).double().to(env.device)
    model.load_state_dict(init)
    if env.distributed:
        model = convert_sync_batchnorm(model, env.device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    optimizer, scaler = optimizer_and_scaler(cfg, model, env)
    lr_w, lr_b = lr_schedules(cfg, STEPS_PER_EPOCH)
    fwd = nn.parallel.DistributedDataParallel(model) if env.distributed else model
    model.train()
    losses = []
    for step in STEPS:
        y1, y2 = (v[part].contiguous(memory_format=fmt) for v in views[step])
        _, terms = train_step(fwd, optimizer, scaler, y1, y2, (lr_w[step], lr_b[step]), cfg, env)
        losses.append(terms.loss.item())
    return losses, {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def assert_same_run(got: tuple[list[float], dict], want: tuple[list[float], dict], init: dict) -> None:
    """The same loss at every step; the same weights and buffers at the end (1e-10), and the same change
    of every tensor from `init` to 1e-9 of its size: LARS moves a weight by about lr * 0.001 * |w| a step,
    so a lost weight decay (1e-6) would hide under 1e-10 of the weights but not of their change."""
    np.testing.assert_allclose(got[0], want[0], rtol=1e-10, atol=0)
    assert got[1].keys() == want[1].keys()
    for k, v in want[1].items():
        torch.testing.assert_close(got[1][k], v, **TOL, msg=lambda m, k=k: f"{k}: {m}")
        if v.is_floating_point():
            step, want_step = got[1][k] - init[k], v - init[k]
            assert float((step - want_step).norm()) <= 1e-9 * float(want_step.norm()), k


@pytest.fixture(scope="module")
def single() -> dict:
    """Our single-process run and the reference's, from the same initial weights and views."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two ranks runs
    try:
        cfg, views = paper_cfg(), fixed_views()
        init = initial_state(cfg)
        ours = our_run(cfg, init, views, DistEnv())
        return dict(cfg=cfg, init=init, views=views, ours=ours, ref=ref_run(init, views, cfg.model.projector))
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------ the tests

def test_the_paper_config_shrunk_keeps_the_authors_recipe(single):
    cfg = single["cfg"]
    o = cfg.optim
    assert (o.lr_weights, o.lr_biases, o.weight_decay, o.momentum, o.eta, cfg.lambd) == tuple(
        AUTHORS[k] for k in ("lr_weights", "lr_biases", "weight_decay", "momentum", "eta", "lambd"))
    assert (o.warmup_epochs, o.final_lr_ratio) == (AUTHORS["warmup_epochs"], AUTHORS["final_ratio"])
    lr_w, _ = lr_schedules(cfg, STEPS_PER_EPOCH)
    warmup = AUTHORS["warmup_epochs"] * STEPS_PER_EPOCH
    assert STEPS[0] < warmup < STEPS[-1] == len(lr_w) - 1  # the steps cross into the cosine, to the last one


def test_steps_leave_the_losses_and_weights_of_the_authors_recipe(single):
    ours, ref = single["ours"], single["ref"]
    assert_same_run(ours, ref, single["init"])
    moved = [k for k, v in ours[1].items() if v.is_floating_point() and not torch.equal(v, single["init"][k])]
    assert any(k.startswith("backbone.layer4") for k in moved) and "projector.1.bias" in moved


@pytest.mark.parametrize("batch,steps_per_epoch", [(768, 145), (512, 217)])
def test_learning_rates_of_every_step_are_the_authors(batch, steps_per_epoch):
    """The paper's run (800 epochs of 145 steps at 768 images) and another batch, both groups, every step."""
    cfg = load_config(PretrainConfig, PAPER, [f"optim.batch_size={batch}"])
    lr_w, lr_b = lr_schedules(cfg, steps_per_epoch)
    total, warmup = cfg.optim.epochs * steps_per_epoch, 10 * steps_per_epoch
    assert len(lr_w) == len(lr_b) == total
    want = np.array([ref_lr(s, batch, cfg.optim.epochs, steps_per_epoch) for s in range(total)])
    np.testing.assert_allclose(lr_w, want[:, 0], rtol=1e-12, atol=0)
    np.testing.assert_allclose(lr_b, want[:, 1], rtol=1e-12, atol=0)
    peak_w = 0.2 * batch / 256
    mid = (warmup + total) // 2
    assert lr_w[0] == 0.0 and lr_b[0] == 0.0  # the first step leaves the weights alone (sets the momentum)
    assert lr_w[warmup // 2] == pytest.approx(peak_w * (warmup // 2) / warmup, rel=1e-12)
    assert lr_w[warmup - 1] == pytest.approx(peak_w * (warmup - 1) / warmup, rel=1e-12)
    assert lr_w[warmup] == pytest.approx(peak_w, rel=1e-12)
    assert lr_b[warmup] == pytest.approx(0.0048 * batch / 256, rel=1e-12)
    assert (total - warmup) % 2 == 0 and lr_w[mid] == pytest.approx(peak_w * (1 + 0.001) / 2, rel=1e-12)
    # the cosine would reach 0.001 of the peak one step after the last one (the authors' denominator)
    assert 0.001 * peak_w < lr_w[-1] < 0.001 * peak_w * 1.001


# (step, lr_weights, lr_biases) as the authors' run logged them: barlowtwins/LOG.TXT of haooyuee/BarlowTwins-CXR
# (batch 768, 800 epochs of 145 steps).
AUTHORS_LOG = [(0, 0.0, 0.0), (10, 0.004137931034482759, 9.93103448275862e-05),
               (1440, 0.5958620689655173, 0.014300689655172413), (1450, 0.6000000000000001, 0.0144),
               (58000, 0.3062586916432216, 0.007350208599437318),
               (115990, 0.0006000112711000128, 1.4400270506400304e-05)]


def test_learning_rates_are_those_the_authors_run_logged():
    lr_w, lr_b = lr_schedules(load_config(PretrainConfig, PAPER), steps_per_epoch=145)
    assert len(lr_w) == 800 * 145
    for step, w, b in AUTHORS_LOG:
        assert lr_w[step] == pytest.approx(w, rel=1e-12, abs=0) and lr_b[step] == pytest.approx(b, rel=1e-12, abs=0)


def _rank(rank: int, world: int, port: int, init: dict, views: dict, out: str) -> None:
    join_gloo(rank, world, port)
    try:
        result = our_run(paper_cfg(), init, views, DistEnv(rank=rank, world_size=world))
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_take_the_steps_of_one_process_with_the_double_batch(single, tmp_path):
    """Each rank holds 4 of the 8 images: SyncBatchNorm, c summed over the ranks and DDP's averaging give
    the single process's losses and weights after the LARS steps (the step-level extension of
    test_ssl_distributed.py, which compares one backward at 1e-9 and a float32 run at 1e-4)."""
    mp.spawn(_rank, args=(2, free_port(), single["init"], single["views"], str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert_same_run(got, single["ours"], single["init"])
        assert_same_run(got, single["ref"], single["init"])
