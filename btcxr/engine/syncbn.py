"""Batch norm with statistics over all ranks: torch's SyncBatchNorm on GPUs, a small equivalent on CPUs.

Hand-written because torch.nn.SyncBatchNorm refuses CPU tensors (its kernels are GPU-only), and the
multi-process CPU path (gloo) is how the distributed maths is tested and how CPU clusters run. The CPU
version sums the statistics with the autograd-aware all_reduce, so its backward is exact too.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from btcxr.engine.distributed import all_reduce_sum


class CpuSyncBatchNorm(_BatchNorm):
    """Drop-in for BatchNorm1d/2d whose training statistics (mean, biased variance) span all ranks."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        synced = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and synced):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        total = all_reduce_sum(torch.cat([x.sum(dims), count]))
        n = total[-1].detach()
        mean = total[:-1] / n
        centred = x - mean.view(shape)
        var = all_reduce_sum(centred.pow(2).sum(dims)) / n  # two passes: steadier than E[x^2] - E[x]^2
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1), momentum)  # unbiased, as nn.BatchNorm
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm (`_BatchNorm`) of `module` -> a synchronised one for `device`: what each stage's model
    goes through under DDP. Frozen norms (torchvision's FrozenBatchNorm2d, the detector's
    FrozenStatsBatchNorm2d) are no `_BatchNorm` and stay as they are."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, CpuSyncBatchNorm):
        out = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:  # the same tensors (dtype and device kept), as torch's converter does
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, device))
    return out
