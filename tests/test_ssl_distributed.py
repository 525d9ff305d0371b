"""Two CPU processes (gloo) with batch B each must compute what one process computes with batch 2B: the same
loss, the same gradients (SyncBatchNorm + autograd all_reduce of c + DDP's averaging), and the same
pre-training run end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fixtures_dist import free_port, join_gloo
from test_pretrain import make_unlabeled_cache, tiny

from btcxr.backbones import build_resnet
from btcxr.engine.checkpoint import load_checkpoint
from btcxr.engine.runlog import read_metrics
from btcxr.engine.syncbn import convert_sync_batchnorm
from btcxr.pretrain.barlow_twins.loss import barlow_twins_loss, cross_correlation
from btcxr.pretrain.barlow_twins.model import BarlowTwins
from btcxr.pretrain.run import pretrain

B = 4  # images per rank
RUN = ["optim.epochs=1", "optim.batch_size=8", "model.projector=[32,16]", "checkpoint_every_steps=0"]


def _model() -> BarlowTwins:
    """float64, so that the comparison is about the maths, not the order of float32 sums"""
    torch.manual_seed(0)
    return BarlowTwins(build_resnet("resnet18", init="random"), 512, [32, 32, 16]).double()


def _views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2 * B, 3, 32, 32, generator=g, dtype=torch.float64),
            torch.randn(2 * B, 3, 32, 32, generator=g, dtype=torch.float64))


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    """relative error of the whole tensor"""
    return float((a - b).norm()) <= tol * float(b.norm()) + 1e-12


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def _worker(rank: int, world: int, port: int, out: str, cache: str) -> None:
    join_gloo(rank, world, port)
    try:
        x1, x2 = _views()
        part = slice(rank * B, (rank + 1) * B)
        results = {}
        for reduction in ("autograd", "plain"):
            model = convert_sync_batchnorm(_model(), torch.device("cpu"))
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            emb = ddp(x1[part], x2[part])
            if reduction == "autograd":
                terms = barlow_twins_loss(emb.n1, emb.n2, global_batch=2 * B, reduce=True)
                loss = terms.loss
            else:  # the original script: a plain all_reduce, the graph only sees this rank's share
                local = cross_correlation(emb.n1, emb.n2, 2 * B)
                total = local.detach().clone()
                dist.all_reduce(total)
                c = local + (total - local.detach())
                loss = (torch.diagonal(c) - 1).pow(2).sum() + 0.0051 * (c.pow(2).sum() - c.diagonal().pow(2).sum())
            loss.backward()
            results[reduction] = {"loss": loss.detach(), "grads": _grads(model),
                                  "running_var": model.backbone.bn1.running_var.clone()}
        if rank == 0:
            torch.save(results, Path(out) / "dist.pt")
        pretrain(tiny(Path(cache), *RUN), Path(out) / "run2")
    finally:
        dist.destroy_process_group()



def test_two_ranks_equal_one_process_with_the_double_batch(tmp_path):
    cache = make_unlabeled_cache(tmp_path / "cache", n=20, size=32)  # 17 train images: 2 steps of 8
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), str(cache)), nprocs=2, join=True)
    dist_results = torch.load(tmp_path / "dist.pt", weights_only=True)

    # one process, batch 2B, plain BatchNorm
    model = _model()
    x1, x2 = _views()
    emb = model(x1, x2)
    terms = barlow_twins_loss(emb.n1, emb.n2)
    terms.loss.backward()
    single = _grads(model)

    got = dist_results["autograd"]
    assert got["loss"].item() == pytest.approx(terms.loss.item(), rel=1e-10)
    assert got["grads"].keys() == single.keys()
    for k, g in single.items():
        assert _close(got["grads"][k], g, 1e-9), k
    assert _close(got["running_var"], model.backbone.bn1.running_var, 1e-10)  # global statistics
    # the original script's plain all_reduce: same loss, every gradient halved (1 / world_size)
    plain = dist_results["plain"]
    assert plain["loss"].item() == pytest.approx(terms.loss.item(), rel=1e-10)
    for k, g in single.items():
        assert _close(plain["grads"][k], g / 2, 1e-9), k

    # the whole pre-training loop: 2 ranks x 4 images == 1 process x 8 images
    pretrain(tiny(cache, *RUN), tmp_path / "run1")
    one, two = read_metrics(tmp_path / "run1", "train"), read_metrics(tmp_path / "run2", "train")
    assert [r["step"] for r in two] == [1, 2]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    w1 = load_checkpoint(tmp_path / "run1" / "last.pt")["model"]
    w2 = load_checkpoint(tmp_path / "run2" / "last.pt")["model"]
    assert w1.keys() == w2.keys()
    for k in w1:
        if w1[k].is_floating_point():
            assert _close(w2[k], w1[k], 1e-4), k
