"""VICReg, SimCLR and BYOL under torchrun: two CPU processes (gloo) with batch B each must compute what one
process computes with batch 2B, for every method: the same loss and the same gradients (float64, 1e-9),
and the same pre-training run end to end through `btcxr pretrain`.

This is the check that catches a gather whose backward does not sum the gradients over the ranks (the bug
class of lightly's BarlowTwinsLoss before mid-2026, whose plain all_reduce left the gradients 1/world_size
too small): the same harness, run with lightly's GatherLayer replaced by one that only passes back this
rank's own gradient, must find the gradients wrong for the methods that gather (VICReg, SimCLR)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fixtures_dist import free_port, join_gloo
from test_pretrain import make_unlabeled_cache, tiny
from test_ssl_methods import SMALL, _cfg

from btcxr.backbones import build_resnet
from btcxr.engine.checkpoint import load_checkpoint
from btcxr.engine.runlog import read_metrics
from btcxr.engine.syncbn import convert_sync_batchnorm
from btcxr.pretrain.config import LIGHTLY_METHODS
from btcxr.pretrain.run import pretrain
from btcxr.pretrain.two_view import TwoViews, method_module

pytestmark = pytest.mark.slow
B = 4  # images per rank
RUN = ["optim.epochs=1", "optim.batch_size=8", "checkpoint_every_steps=0"]


def _model(method: str) -> torch.nn.Module:
    """float64, so that the comparison is about the maths, not the order of float32 sums"""
    torch.manual_seed(0)
    return method_module(method).build(_cfg(method), build_resnet("resnet18", init="random"), 512).double()


def _views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2 * B, 3, 32, 32, generator=g, dtype=torch.float64),
            torch.randn(2 * B, 3, 32, 32, generator=g, dtype=torch.float64))


def _loss_and_grads(method: str, model: torch.nn.Module, fwd: torch.nn.Module, x1, x2, distributed: bool) -> dict:
    out = fwd(x1, x2)
    loss = method_module(method).loss(TwoViews(*out), _cfg(method), distributed)
    loss.backward()
    return {"loss": loss.detach(),
            "grads": {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.requires_grad}}


class OwnGradientOnly(torch.autograd.Function):
    """A gather whose backward hands each rank only its own gradient (no all_reduce): the bug class."""

    @staticmethod
    def forward(ctx, x):
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        return grads[dist.get_rank()]


def _worker(rank: int, world: int, port: int, out: str, cache: str) -> None:
    join_gloo(rank, world, port)
    try:
        import lightly.utils.dist as lightly_dist

        x1, x2 = _views()
        part = slice(rank * B, (rank + 1) * B)
        results = {}
        for method in LIGHTLY_METHODS:
            for gather in ("lightly", "own-gradient-only"):
                if gather != "lightly" and method == "byol":
                    continue  # BYOL gathers nothing
                model = convert_sync_batchnorm(_model(method), torch.device("cpu"))
                ddp = torch.nn.parallel.DistributedDataParallel(model)
                real = lightly_dist.GatherLayer
                if gather != "lightly":
                    lightly_dist.GatherLayer = OwnGradientOnly
                try:
                    got = _loss_and_grads(method, model, ddp, x1[part], x2[part], distributed=True)
                finally:
                    lightly_dist.GatherLayer = real
                # every rank's loss, so that the test can average them (the metrics row does the same)
                losses = [torch.zeros_like(got["loss"]) for _ in range(world)]
                dist.all_gather(losses, got["loss"])
                results[f"{method}/{gather}"] = {"losses": torch.stack(losses), "grads": got["grads"]}
        if rank == 0:
            torch.save(results, Path(out) / "dist.pt")
        for method in LIGHTLY_METHODS:
            pretrain(tiny(Path(cache), f"method={method}", *SMALL[method], *RUN), Path(out) / f"{method}2")
    finally:
        dist.destroy_process_group()


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    """relative error of the whole tensor"""
    return float((a - b).norm()) <= tol * float(b.norm()) + 1e-12


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    cache = make_unlabeled_cache(tmp / "cache", n=20, size=32)  # 17 train images: 2 steps of 8
    mp.spawn(_worker, args=(2, free_port(), str(tmp), str(cache)), nprocs=2, join=True)
    return tmp, cache, torch.load(tmp / "dist.pt", weights_only=True)


@pytest.mark.parametrize("method", LIGHTLY_METHODS)
def test_two_ranks_give_the_loss_and_gradients_of_one_process_with_the_double_batch(method, runs):
    _, _, results = runs
    model = _model(method)
    x1, x2 = _views()
    single = _loss_and_grads(method, model, model, x1, x2, distributed=False)

    got = results[f"{method}/lightly"]
    # the global batch's loss is the mean of the ranks' losses (each is a per-rank mean, or the global value)
    assert got["losses"].mean().item() == pytest.approx(single["loss"].item(), rel=1e-10)
    assert got["grads"].keys() == single["grads"].keys()
    for k, g in single["grads"].items():
        assert _close(got["grads"][k], g, 1e-9), k
    if method != "byol":
        # the bug class: a gather that does not sum the gradients over the ranks gives wrong gradients
        wrong = results[f"{method}/own-gradient-only"]["grads"]
        assert max(float((wrong[k] - g).norm() / g.norm().clamp_min(1e-30)) for k, g in single["grads"].items()) > 1e-3


@pytest.mark.parametrize("method", LIGHTLY_METHODS)
def test_the_whole_loop_on_two_ranks_equals_one_process(method, runs, tmp_path):
    tmp, cache, _ = runs
    pretrain(tiny(cache, f"method={method}", *SMALL[method], *RUN), tmp_path / "run1")
    one, two = read_metrics(tmp_path / "run1", "train"), read_metrics(tmp / f"{method}2", "train")
    assert [r["step"] for r in two] == [1, 2]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    w1 = load_checkpoint(tmp_path / "run1" / "last.pt")["model"]
    w2 = load_checkpoint(tmp / f"{method}2" / "last.pt")["model"]
    assert w1.keys() == w2.keys()
    for k in w1:
        if w1[k].is_floating_point():
            assert _close(w2[k], w1[k], 1e-4), k
