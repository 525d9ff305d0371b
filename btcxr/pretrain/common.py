"""What every pre-training method shares around its loop: the optimizer and its two learning-rate
schedules, the resume check, the checkpoint cadence and the backbone writer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from btcxr.backbones import backbone_state_dict
from btcxr.engine.checkpoint import save_checkpoint
from btcxr.engine.distributed import DistEnv, barrier
from btcxr.engine.run import RunDir
from btcxr.engine.runlog import MetricsLog
from btcxr.engine.runtime import grad_scaler
from btcxr.engine.schedule import warmup_cosine
from btcxr.errors import BtcxrError
from btcxr.pretrain.batched_views import BatchedViews
from btcxr.pretrain.config import PretrainConfig
from btcxr.pretrain.lars import LARS, lars_param_groups
from btcxr.pretrain.monitor import MonitorSet
from btcxr.pretrain.views import model_input

BACKBONE = "backbone.pth"
log = logging.getLogger(__name__)


def optimizer_and_scaler(cfg: PretrainConfig, model: nn.Module, env: DistEnv) -> tuple[LARS, torch.amp.GradScaler]:
    """LARS over the weight and bias groups (their lr schedules come from `lr_schedules`), and the loss
    scaler fp16 needs."""
    o = cfg.optim
    optimizer = LARS(lars_param_groups(model), weight_decay=o.weight_decay, momentum=o.momentum, eta=o.eta)
    return optimizer, grad_scaler(env.device, cfg.amp)


def lr_schedules(cfg: PretrainConfig, steps_per_epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-step learning rates of the weight and bias groups: peak = lr x batch/256, linear warm-up from 0,
    cosine to final_lr_ratio x peak, reached one step after the last as in the Barlow Twins script."""
    o, total = cfg.optim, cfg.optim.epochs * steps_per_epoch
    warmup = round(o.warmup_epochs * steps_per_epoch)
    scale = cfg.optim.batch_size / 256
    w, b = (warmup_cosine(lr * scale, total, warmup, o.final_lr_ratio * lr * scale, final_after_last=True)
            for lr in (o.lr_weights, o.lr_biases))
    return w, b


def restore(run: RunDir, steps_per_epoch: int, **objects: nn.Module | torch.optim.Optimizer | torch.amp.GradScaler
            ) -> int:
    """The step to start from: 0 for a new run, else the checkpoint's, after loading `objects` from it. A
    resumed run whose data now gives another number of steps an epoch is refused (the cache or the number
    of ranks changed, so the remaining schedule and data order would not be the run's)."""
    if not run.resumed:
        return 0
    state = run.restore(**objects)
    if state["steps_per_epoch"] != steps_per_epoch:
        raise BtcxrError(f"{run.checkpoint}: the run had {state['steps_per_epoch']} steps an epoch, the "
                         f"data now gives {steps_per_epoch}; the cache or the number of ranks changed")
    return int(state["step"])


def checkpoint_when_due(run: RunDir, cfg: PretrainConfig, step: int, steps_per_epoch: int, model: nn.Module,
                        optimizer: LARS, scaler: torch.amp.GradScaler) -> None:
    """last.pt at the end of every epoch and every `checkpoint_every_steps`; backbone.pth every epoch;
    backbone_step<k>.pth at the `backbone_steps` (written before last.pt, so a resume never misses one).
    `model.backbone` is what backbone.pth holds."""
    if step in cfg.backbone_steps:
        save_backbone(run, model.backbone, f"backbone_step{step}.pth")
    end_of_epoch = step % steps_per_epoch == 0
    if end_of_epoch or (cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0):
        run.save(step=step, epoch=step // steps_per_epoch, model=model, optimizer=optimizer, scaler=scaler,
                 steps_per_epoch=steps_per_epoch)
        if end_of_epoch:
            save_backbone(run, model.backbone)


def save_backbone(run: RunDir, backbone: nn.Module, name: str = BACKBONE) -> Path:
    """RUN/backbone.pth (torchvision ResNet keys without fc), written by the main rank."""
    if run.env.is_main:
        save_checkpoint(run.path / name, backbone_state_dict(backbone))
    barrier(run.env)
    return run.path / name


def open_monitor(cfg: PretrainConfig, env: DistEnv) -> MonitorSet | None:
    """The monitor set of this run, on the main rank (the others measure nothing); None when off."""
    if not cfg.monitor_every or not env.is_main:
        return None
    return MonitorSet(cfg.data.cache, cfg.model.size, cfg.monitor_images, cfg.monitor_bank)


def monitor_when_due(monitor: MonitorSet | None, metrics: MetricsLog | None, cfg: PretrainConfig, step: int,
                     total: int, backbone: nn.Module, projector: nn.Module | None = None) -> None:
    """A "monitor" row at step 0 (the init), every monitor_every steps and at the last step. Called before
    the step's checkpoint, so a resumed run never writes a row twice or misses one."""
    if monitor is None or not (step % cfg.monitor_every == 0 or step == total):
        return
    row = monitor.measure(backbone, projector)
    if metrics is not None:
        metrics.log(step, "monitor", **row)
    log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in row.items()))


def device_views(batch: Any, batched: BatchedViews | None, cfg: PretrainConfig, env: DistEnv,
                 step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's two views on the device, as the model takes them: from the loader's pair, or made from
    the loader's uint8 images by the batched views (views.on_gpu)."""
    if batched is None:
        v1, v2 = (b.to(env.device, non_blocking=True) for b in batch)
    else:  # augment on the device; the draw is a pure function of (seed, rank, step), as the loader's
        gen = torch.Generator(device=env.device)
        gen.manual_seed(int(np.random.SeedSequence([cfg.seed, 1, env.rank, step]).generate_state(1)[0]))
        v1, v2 = batched(batch.to(env.device, non_blocking=True), gen)
    return model_input(v1, cfg.channels_last), model_input(v2, cfg.channels_last)
