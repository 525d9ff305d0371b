"""LARS (You et al. 2017) as in the Barlow Twins recipe.

Hand-written because torch ships no LARS. Per parameter p with gradient g:
    d = g + wd * p                          (no weight decay for 1-D parameters: biases, norms)
    d = d * eta * ||p|| / ||d||             (trust ratio; 1 when either norm is 0; not for 1-D parameters)
    mu = momentum * mu + d ;  p = p - lr * mu
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    def __init__(self, params: Iterable, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 eta: float = 0.001, exclude_1d: bool = True):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, exclude_1d=exclude_1d)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401 - torch.optim.Optimizer API
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                adapt = not (group["exclude_1d"] and p.ndim == 1)
                if adapt:
                    d = d.add(p, alpha=group["weight_decay"])
                    param_norm = torch.linalg.vector_norm(p)
                    update_norm = torch.linalg.vector_norm(d)
                    one = torch.ones_like(param_norm)
                    ratio = group["eta"] * param_norm / update_norm
                    q = torch.where(param_norm > 0.0, torch.where(update_norm > 0.0, ratio, one), one)
                    d = d.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(d)
                p.add_(mu, alpha=-group["lr"])
        return loss


def lars_param_groups(model: nn.Module) -> list[dict]:
    """Two groups as in the recipe: weights (ndim > 1) and biases/norm parameters (ndim == 1), whose
    learning rates follow their own schedules (0.2 and 0.0048 x batch/256 at the peak)."""
    weights = [p for p in model.parameters() if p.requires_grad and p.ndim != 1]
    biases = [p for p in model.parameters() if p.requires_grad and p.ndim == 1]
    return [{"params": weights, "name": "weights"}, {"params": biases, "name": "biases"}]
