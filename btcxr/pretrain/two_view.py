"""The loop of the two-view methods built on lightly (VICReg, SimCLR, BYOL): one process per device under
torchrun (or one plain process), read top to bottom. It is the Barlow Twins loop with the method's model
and loss in place of ours: the same data, views, LARS and schedules, resume check, checkpoints, monitors
and backbone.pth (pretrain/common.py).

A method is a module (vicreg.py, simclr.py, byol.py) with
    build(cfg, backbone, feature_dim) -> nn.Module   .backbone, .projector; forward(y1, y2) -> TwoViews
    loss(out: TwoViews, cfg, distributed) -> Tensor  fp32; over the global batch when `distributed`
and optionally
    after_step(model, step, total, cfg) -> dict      after each optimizer step (BYOL: the target's momentum
                                                     update); what it returns goes into the metrics row

Run directory: config.yaml, metrics.jsonl, tb/, last.pt, backbone.pth (the online backbone).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import torch
from torch import nn

from btcxr.backbones import FEATURE_DIM, build_resnet
from btcxr.engine.distributed import DistEnv
from btcxr.engine.loop import backward_step, set_learning_rates, wrap_ddp
from btcxr.engine.progress import Progress
from btcxr.engine.run import RunDir
from btcxr.engine.runtime import autocast, seed_everything
from btcxr.engine.syncbn import convert_sync_batchnorm
from btcxr.errors import BtcxrError
from btcxr.pretrain.barlow_twins.model import embedding_spread
from btcxr.pretrain.batched_views import BatchedViews
from btcxr.pretrain.common import (
    checkpoint_when_due,
    device_views,
    lr_schedules,
    monitor_when_due,
    open_monitor,
    optimizer_and_scaler,
    restore,
    save_backbone,
)
from btcxr.pretrain.config import PretrainConfig, check_world
from btcxr.pretrain.data import build_loader
from btcxr.pretrain.lars import LARS
from btcxr.pretrain.views import loader_transform

log = logging.getLogger(__name__)
NON_FINITE_HINT = "Lower optim.lr_weights, use amp=bf16 rather than fp16, or check the images."
LIGHTLY_RANGE = "lightly>=1.6,<2"  # the range pyproject's `methods` extra pins


class TwoViews(NamedTuple):
    """What a two-view model returns for the loss."""
    z1: torch.Tensor  # projector outputs of the two views (online network); the collapse alarm watches z1
    z2: torch.Tensor
    p1: torch.Tensor | None = None  # BYOL: the predictor's outputs
    p2: torch.Tensor | None = None
    t1: torch.Tensor | None = None  # BYOL: the target network's projections (no gradient)
    t2: torch.Tensor | None = None


class Projected(nn.Module):
    """A backbone and a projection head, each view through both: the model of VICReg and SimCLR."""

    def __init__(self, backbone: nn.Module, projector: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, y1: torch.Tensor, y2: torch.Tensor) -> TwoViews:
        return TwoViews(self.projector(self.backbone(y1)), self.projector(self.backbone(y2)))


def method_module(name: str) -> ModuleType:
    """The module of a lightly method, with a clear error when the optional extra is not installed."""
    try:
        import lightly  # noqa: F401
    except ImportError as exc:
        raise BtcxrError(f"method={name} needs lightly: pip install 'btcxr[methods]' (or '{LIGHTLY_RANGE}'); "
                         f"importing it failed: {exc}") from exc
    return importlib.import_module(f"btcxr.pretrain.{name}")


def train(cfg: PretrainConfig, out: Path, resume: bool, env: DistEnv) -> Path:
    """cfg.method (vicreg | simclr | byol) into the run folder `out`; returns the path of backbone.pth."""
    method = method_module(cfg.method)
    after_step = getattr(method, "after_step", lambda *args: {})
    per_rank = check_world(cfg, env.world_size)
    run = RunDir(out, cfg, env, kind=f"btcxr-pretrain-{cfg.method}", resume=resume)
    loader = build_loader(cfg, env, loader_transform(cfg.views, cfg.model.size), per_rank)  # data problems surface first
    seed_everything(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg, method, fresh=not run.resumed).to(env.device)
    if env.distributed:
        model = convert_sync_batchnorm(model, env.device)  # batch statistics over the global batch
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scaler = optimizer_and_scaler(cfg, model, env)
    steps_per_epoch = len(loader)
    total = cfg.optim.epochs * steps_per_epoch
    lr_w, lr_b = lr_schedules(cfg, steps_per_epoch)
    step = restore(run, steps_per_epoch, model=model, optimizer=optimizer, scaler=scaler)
    fwd = wrap_ddp(model, env, compile=cfg.compile)
    batched = BatchedViews(cfg.views, cfg.model.size) if cfg.views.on_gpu else None
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    log.info("pre-training %s (%s): %d steps of %d images (%d an epoch) on %d rank(s), from step %d", cfg.name,
             cfg.method, total, cfg.optim.batch_size, steps_per_epoch, env.world_size, step)
    progress = Progress(env, run.open_metrics(), log_every=cfg.log_every, last=total, start=step,
                        desc=f"pretrain {cfg.name} ({cfg.method})", rate="pairs_per_s")
    monitor = open_monitor(cfg, env)
    if step == 0:
        monitor_when_due(monitor, progress.metrics, cfg, 0, total, model.backbone, model.projector)
        if 0 in cfg.backbone_steps:
            save_backbone(run, model.backbone, "backbone_step0.pth")  # the curve's first point: the init
    model.train()
    try:
        for epoch in range(step // steps_per_epoch, cfg.optim.epochs):
            loader.sampler.set_epoch(epoch, skip=(step - epoch * steps_per_epoch) * per_rank)
            for batch in loader:
                y1, y2 = device_views(batch, batched, cfg, env, step)
                check = partial(run.check_finite, step=step, epoch=epoch, hint=NON_FINITE_HINT)
                out, loss = train_step(fwd, method, optimizer, scaler, y1, y2, (lr_w[step], lr_b[step]), cfg, env,
                                       check)
                extra = after_step(model, step, total, cfg)
                step += 1
                if progress.update(step, items=cfg.optim.batch_size):
                    _log_row(progress, step, epoch, out, loss, optimizer, extra, cfg)
                monitor_when_due(monitor, progress.metrics, cfg, step, total, model.backbone, model.projector)
                checkpoint_when_due(run, cfg, step, steps_per_epoch, model, optimizer, scaler)
    finally:
        progress.close()
        run.close()
    return save_backbone(run, model.backbone)


def train_step(fwd: nn.Module, method: ModuleType, optimizer: LARS, scaler: torch.amp.GradScaler, y1: torch.Tensor,
               y2: torch.Tensor, lrs: tuple[float, float], cfg: PretrainConfig, env: DistEnv,
               check: Callable[[torch.Tensor], None] | None = None) -> tuple[TwoViews, torch.Tensor]:
    """One optimizer step: the two groups' learning rates, both views through the model (under autocast),
    the method's loss in fp32 over the global batch, `check(loss)`, backward and the LARS step."""
    set_learning_rates(optimizer, lrs)
    with autocast(env.device, cfg.amp):
        out = fwd(y1, y2)
    with torch.autocast(device_type=y1.device.type, enabled=False):
        loss = method.loss(TwoViews(*(None if t is None else t.float() for t in out)), cfg, env.distributed)
    if check is not None:
        check(loss)
    backward_step(loss, optimizer, scaler)
    return out, loss


def build_model(cfg: PretrainConfig, method: ModuleType, fresh: bool = True) -> nn.Module:
    """Backbone from `model.init` (random when a checkpoint will overwrite it anyway) plus the method's heads."""
    m = cfg.model
    backbone = build_resnet(m.arch, init=m.init if fresh else "random", weights_file=m.weights_file,
                            imagenet_weights=m.imagenet_weights)
    return method.build(cfg, backbone, FEATURE_DIM[m.arch])


def _log_row(progress: Progress, step: int, epoch: int, out: TwoViews, loss: torch.Tensor, optimizer: LARS,
             extra: dict, cfg: PretrainConfig) -> None:
    """The metrics row of `step`: the loss and the embedding spread averaged over the ranks (the mean of the
    ranks' losses is the global batch's loss for every method here), the learning rates, the method's
    extras, and the collapse alarm."""
    lr_w, lr_b = (g["lr"] for g in optimizer.param_groups)
    memory = {"max_mem_gb": torch.cuda.max_memory_allocated() / 2**30} if out.z1.is_cuda else {}
    row = progress.row(step, epoch=epoch + 1, loss=loss, lr_weights=lr_w, lr_biases=lr_b, **extra,
                       embed_std=float(embedding_spread(out.z1)), mean=("loss", "embed_std"), **memory)
    if row["embed_std"] < cfg.collapse_std_threshold:
        log.warning("step %d: embedding spread %.4f < %.4f: the representations may be collapsing",
                    step, row["embed_std"], cfg.collapse_std_threshold)
