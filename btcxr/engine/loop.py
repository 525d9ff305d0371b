"""The pieces of a training step every loop shares (DINO / torchvision references style: plain functions).

A loop reads top to bottom and calls these:

    fwd = wrap_ddp(model, env, compile=cfg.compile)        # DDP under torchrun, the model itself otherwise
    for batch in loader:
        set_learning_rates(optimizer, (lr_w[step], lr_b[step]))   # one value per param group
        with autocast(env.device, cfg.amp):
            loss = criterion(fwd(x), y)
        run.check_finite(loss, step, epoch)
        backward_step(loss, optimizer, scaler, clip=cfg.optim.clip_grad)

`backward_step` is the one backward of the package: every stage goes through a GradScaler
(`btcxr.engine.runtime.grad_scaler`), which is active only for fp16 on CUDA and otherwise passes the loss
and the step through unchanged, so fp32, bf16 and the CPU take exactly the plain backward and step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from btcxr.engine.distributed import DistEnv


def set_learning_rates(optimizer: torch.optim.Optimizer, lrs: Sequence[float]) -> None:
    """The learning rate of every param group for this step, in the order of `optimizer.param_groups`."""
    groups = optimizer.param_groups
    if len(lrs) != len(groups):
        raise ValueError(f"{len(lrs)} learning rate(s) for {len(groups)} param group(s)")
    for group, lr in zip(groups, lrs):
        group["lr"] = float(lr)


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                  clip: float | None = None) -> None:
    """Gradients of `loss` and one optimizer step: zero_grad, (scaled) backward, optional clipping of the
    gradient norm over the optimizer's parameters (unscaled first), step and scaler update. A scaler that
    found inf/NaN gradients (fp16) skips the step and lowers its scale."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip:
        scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        nn.utils.clip_grad_norm_(params, clip)
    scaler.step(optimizer)
    scaler.update()


def wrap_ddp(model: nn.Module, env: DistEnv, compile: bool = False) -> nn.Module:
    """What the loop calls forward on: DistributedDataParallel under torchrun (this rank's GPU, or the CPU
    with gloo), the model itself in one process; `compile`: through torch.compile. Checkpoints, optimizers
    and backbone writers keep using `model`."""
    fwd = model
    if env.distributed:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        fwd = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return torch.compile(fwd) if compile else fwd
