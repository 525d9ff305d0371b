"""The Barlow Twins loop: one process per device under torchrun (or one plain process), read top to bottom.

Run directory: config.yaml, metrics.jsonl, tb/, corr_<step>.png, last.pt (every epoch and every
`checkpoint_every_steps`), backbone.pth (torchvision ResNet keys without fc, refreshed every epoch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from btcxr.backbones import FEATURE_DIM, build_resnet
from btcxr.engine.distributed import DistEnv
from btcxr.engine.loop import backward_step, set_learning_rates, wrap_ddp
from btcxr.engine.progress import Progress
from btcxr.engine.run import RunDir
from btcxr.engine.runtime import autocast, seed_everything
from btcxr.engine.syncbn import convert_sync_batchnorm
from btcxr.pretrain.barlow_twins.heatmap import save_corr_heatmap
from btcxr.pretrain.barlow_twins.loss import LossTerms, barlow_twins_loss
from btcxr.pretrain.barlow_twins.model import BarlowTwins, Embeddings, embedding_spread
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
KIND = "btcxr-pretrain"
NON_FINITE_HINT = "Lower optim.lr_weights, use amp=bf16 rather than fp16, or check the images."


def train(cfg: PretrainConfig, out: Path, resume: bool, env: DistEnv) -> Path:
    """Barlow Twins into the run folder `out`; returns the path of backbone.pth."""
    per_rank = check_world(cfg, env.world_size)
    run = RunDir(out, cfg, env, kind=KIND, resume=resume)
    loader = build_loader(cfg, env, loader_transform(cfg.views, cfg.model.size), per_rank)  # data problems surface first
    seed_everything(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg, fresh=not run.resumed).to(env.device)
    if env.distributed:
        model = convert_sync_batchnorm(model, env.device)  # backbone, projector and final BN
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
    log.info("pre-training %s: %d steps of %d images (%d an epoch) on %d rank(s), from step %d", cfg.name,
             total, cfg.optim.batch_size, steps_per_epoch, env.world_size, step)
    progress = Progress(env, run.open_metrics(), log_every=cfg.log_every, last=total, start=step,
                        desc=f"pretrain {cfg.name}", rate="pairs_per_s")
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
                emb, terms = train_step(fwd, optimizer, scaler, y1, y2, (lr_w[step], lr_b[step]), cfg, env, check)
                step += 1
                if progress.update(step, items=cfg.optim.batch_size):
                    _log_row(progress, step, epoch, emb, terms, optimizer, cfg, env)
                heatmap = step == total or (cfg.corr_every_steps and step % cfg.corr_every_steps == 0)
                if env.is_main and heatmap:
                    save_corr_heatmap(terms.c, run.path / f"corr_{step}.png", step)
                monitor_when_due(monitor, progress.metrics, cfg, step, total, model.backbone, model.projector)
                checkpoint_when_due(run, cfg, step, steps_per_epoch, model, optimizer, scaler)
    finally:
        progress.close()
        run.close()
    return save_backbone(run, model.backbone)


def train_step(fwd: nn.Module, optimizer: LARS, scaler: torch.amp.GradScaler, y1: torch.Tensor,
               y2: torch.Tensor, lrs: tuple[float, float], cfg: PretrainConfig, env: DistEnv,
               check: Callable[[torch.Tensor], None] | None = None) -> tuple[Embeddings, LossTerms]:
    """One optimizer step of the loop: the two groups' learning rates (weights, biases), both views embedded
    (under autocast), the loss over the global batch (c summed over the ranks), `check(loss)` (the loop
    stops there on a non-finite loss), backward and the LARS step."""
    set_learning_rates(optimizer, lrs)
    with autocast(env.device, cfg.amp):
        emb = fwd(y1, y2)
    terms = barlow_twins_loss(emb.n1, emb.n2, cfg.lambd, cfg.optim.batch_size, reduce=env.distributed)
    if check is not None:
        check(terms.loss)
    backward_step(terms.loss, optimizer, scaler)
    return emb, terms


def _log_row(progress: Progress, step: int, epoch: int, emb: Embeddings, terms: LossTerms, optimizer: LARS,
             cfg: PretrainConfig, env: DistEnv) -> None:
    """The metrics row of `step` (every rank): the loss terms (of the global batch already), the learning
    rates, the embedding spread averaged over the ranks, and the collapse alarm."""
    lr_w, lr_b = (g["lr"] for g in optimizer.param_groups)
    memory = {"max_mem_gb": torch.cuda.max_memory_allocated() / 2**30} if env.device.type == "cuda" else {}
    row = progress.row(step, epoch=epoch + 1, loss=terms.loss, on_diag=terms.on_diag, off_diag=terms.off_diag,
                       lr_weights=lr_w, lr_biases=lr_b, embed_std=float(embedding_spread(emb.z1)),
                       mean=("embed_std",), **memory)
    if row["embed_std"] < cfg.collapse_std_threshold:
        log.warning("step %d: embedding spread %.4f < %.4f: the representations may be collapsing",
                    step, row["embed_std"], cfg.collapse_std_threshold)


def build_model(cfg: PretrainConfig, fresh: bool = True) -> BarlowTwins:
    """Backbone from `model.init` (random when a checkpoint will overwrite it anyway) plus projector."""
    m = cfg.model
    init = m.init if fresh else "random"
    backbone = build_resnet(m.arch, init=init, weights_file=m.weights_file,
                            imagenet_weights=m.imagenet_weights)
    return BarlowTwins(backbone, FEATURE_DIM[m.arch], m.projector)
