"""Supervised pre-training: the same backbone trained *with* the NIH labels of the cache (BCE over 15 labels).

The benchmark's positive control: an init that must help detection if the benchmark can see transfer at
all. It is `btcxr pretrain` with `method: supervised`: the same config, run directory, data order, views
(the first of the pair), LARS and schedules, resume check, checkpoint and backbone.pth as Barlow Twins
(pretrain/common.py); only the head (the probe's ProbeModel: one linear layer over the labels) and the loss
differ. The loop reads top to bottom.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from btcxr.backbones import FEATURE_DIM, build_resnet
from btcxr.classify.model import ProbeModel
from btcxr.data.datasets import LabelledImages
from btcxr.engine.distributed import DistEnv
from btcxr.engine.loop import backward_step, set_learning_rates, wrap_ddp
from btcxr.engine.progress import Progress
from btcxr.engine.run import RunDir
from btcxr.engine.runtime import autocast, seed_everything
from btcxr.engine.syncbn import convert_sync_batchnorm
from btcxr.pretrain.common import (
    checkpoint_when_due,
    lr_schedules,
    monitor_when_due,
    open_monitor,
    optimizer_and_scaler,
    restore,
    save_backbone,
)
from btcxr.pretrain.config import PretrainConfig, check_world
from btcxr.pretrain.data import build_loader
from btcxr.pretrain.views import LabelledView

log = logging.getLogger(__name__)
KIND = "btcxr-pretrain-supervised"


def train(cfg: PretrainConfig, out: Path, resume: bool, env: DistEnv) -> Path:
    """Supervised pre-training into the run folder `out`; returns the path of backbone.pth."""
    per_rank = check_world(cfg, env.world_size)
    run = RunDir(out, cfg, env, kind=KIND, resume=resume)
    splits = tuple(cfg.data.splits) if cfg.data.splits is not None else None
    images = LabelledImages(cfg.data.cache, splits=splits)
    loader = build_loader(cfg, env, LabelledView(cfg.views, cfg.model.size), per_rank, images=images)
    seed_everything(cfg.seed)  # the same initial weights on every rank
    m = cfg.model
    init = m.init if not run.resumed else "random"  # a checkpoint overwrites the weights anyway
    backbone = build_resnet(m.arch, init=init, weights_file=m.weights_file, imagenet_weights=m.imagenet_weights)
    model = ProbeModel(backbone, FEATURE_DIM[m.arch], frozen=False).to(env.device)
    if env.distributed:
        model = convert_sync_batchnorm(model, env.device)  # batch statistics over the global batch
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scaler = optimizer_and_scaler(cfg, model, env)
    steps_per_epoch = len(loader)
    lr_w, lr_b = lr_schedules(cfg, steps_per_epoch)
    step = restore(run, steps_per_epoch, model=model, optimizer=optimizer, scaler=scaler)
    fwd = wrap_ddp(model, env, compile=cfg.compile)
    criterion = nn.BCEWithLogitsLoss()
    total = cfg.optim.epochs * steps_per_epoch
    progress = Progress(env, run.open_metrics(), log_every=cfg.log_every, last=total, start=step,
                        desc=f"pretrain {cfg.name} (supervised)")
    log.info("supervised pre-training %s: %d steps of %d labelled images (%d an epoch), from step %d", cfg.name,
             total, cfg.optim.batch_size, steps_per_epoch, step)
    monitor = open_monitor(cfg, env)
    if step == 0:
        monitor_when_due(monitor, progress.metrics, cfg, 0, total, model.backbone)
        if 0 in cfg.backbone_steps:
            save_backbone(run, model.backbone, "backbone_step0.pth")  # the curve's first point: the init
    model.train()
    try:
        for epoch in range(step // steps_per_epoch, cfg.optim.epochs):
            loader.sampler.set_epoch(epoch, skip=(step - epoch * steps_per_epoch) * per_rank)
            for x, y in loader:
                x = x.to(env.device, non_blocking=True)  # gray in [0, 1]: ProbeModel normalises it
                y = y.to(env.device, non_blocking=True)
                set_learning_rates(optimizer, (lr_w[step], lr_b[step]))
                with autocast(env.device, cfg.amp):
                    logits = fwd(x)
                loss = criterion(logits.float(), y)
                run.check_finite(loss, step, epoch, "Lower optim.lr_weights or check the labels.")
                backward_step(loss, optimizer, scaler)
                step += 1
                if progress.update(step):  # the loss of this rank's share, averaged over the ranks
                    progress.row(step, epoch=epoch + 1, loss=loss, lr_weights=lr_w[step - 1],
                                 lr_biases=lr_b[step - 1], mean=("loss",))
                monitor_when_due(monitor, progress.metrics, cfg, step, total, model.backbone)
                checkpoint_when_due(run, cfg, step, steps_per_epoch, model, optimizer, scaler)
    finally:
        progress.close()
        run.close()
    return save_backbone(run, model.backbone)
