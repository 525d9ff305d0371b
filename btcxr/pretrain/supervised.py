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
from tqdm import tqdm

from btcxr.backbones import FEATURE_DIM, build_resnet
from btcxr.classify.model import ProbeModel
from btcxr.data.datasets import LabelledImages
from btcxr.engine.distributed import DistEnv, mean_over_ranks
from btcxr.engine.run import RunDir
from btcxr.engine.runtime import autocast, seed_everything
from btcxr.engine.syncbn import convert_sync_batchnorm
from btcxr.logs import progress_disabled
from btcxr.pretrain.common import (
    checkpoint_when_due,
    lr_schedules,
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
    loader = build_loader(cfg, env, LabelledView(cfg.views), per_rank, images=images)
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
    fwd: nn.Module = nn.parallel.DistributedDataParallel(model) if env.distributed else model
    fwd = torch.compile(fwd) if cfg.compile else fwd
    criterion = nn.BCEWithLogitsLoss()
    metrics = run.open_metrics()
    total = cfg.epochs * steps_per_epoch
    log.info("supervised pre-training %s: %d steps of %d labelled images (%d an epoch), from step %d", cfg.name,
             total, cfg.batch_size, steps_per_epoch, step)
    bar = tqdm(total=total, initial=step, unit="step", desc=f"pretrain {cfg.name} (supervised)",
               disable=progress_disabled() or not env.is_main)
    if step == 0 and 0 in cfg.backbone_steps:
        save_backbone(run, model.backbone, "backbone_step0.pth")  # the curve's first point: the init
    model.train()
    try:
        for epoch in range(step // steps_per_epoch, cfg.epochs):
            loader.sampler.set_epoch(epoch, skip=(step - epoch * steps_per_epoch) * per_rank)
            for x, y in loader:
                x = x.to(env.device, non_blocking=True)  # gray in [0, 1]: ProbeModel normalises it
                y = y.to(env.device, non_blocking=True)
                for group, lr in zip(optimizer.param_groups, (lr_w[step], lr_b[step])):
                    group["lr"] = float(lr)
                with autocast(env.device, cfg.amp):
                    logits = fwd(x)
                loss = criterion(logits.float(), y)
                run.check_finite(loss, step, epoch, "Lower optim.lr_weights or check the labels.")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                bar.update()
                if metrics is not None and (step % cfg.log_every == 0 or step == total):
                    metrics.log(step, "train", epoch=epoch + 1, loss=mean_over_ranks(loss.item(), env),
                                lr_weights=lr_w[step - 1], lr_biases=lr_b[step - 1])
                checkpoint_when_due(run, cfg, step, steps_per_epoch, model, optimizer, scaler)
    finally:
        bar.close()
        run.close()
    return save_backbone(run, model.backbone)
