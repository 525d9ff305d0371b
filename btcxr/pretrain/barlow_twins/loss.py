"""The Barlow Twins loss: push the cross-correlation of two views' embeddings towards the identity.

c = BN(z1)^T BN(z2) / N over the GLOBAL batch N; loss = sum_i (c_ii - 1)^2 + lambda * sum_{i!=j} c_ij^2.

Multi-GPU: each rank holds a slice of the batch, so c is the SUM of the per-rank products (each already
divided by the global N). The sum uses `torch.distributed.nn.functional.all_reduce`, whose backward
all-reduces the incoming gradients too. Every rank then holds the full global loss L and backpropagates
into its own slice the gradient of sum_over_ranks(L) = world_size * L; DDP averages the parameter
gradients over the ranks, which divides that factor out again: the update equals the single-process
one (tests/test_ssl_distributed.py checks it). The original script's plain all_reduce cut the graph, so
each rank only saw its own share and DDP's average left the gradients 1/world_size too small.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from btcxr.engine.distributed import all_reduce_sum


class LossTerms(NamedTuple):
    loss: torch.Tensor  # on_diag + lambd * off_diag
    on_diag: torch.Tensor  # sum_i (c_ii - 1)^2
    off_diag: torch.Tensor  # sum_{i!=j} c_ij^2 (not yet weighted by lambda)
    c: torch.Tensor  # the (D, D) cross-correlation matrix, detached


def off_diagonal(x: torch.Tensor) -> torch.Tensor:
    """The n*(n-1) off-diagonal entries of a square matrix, flattened (as in the Barlow Twins code)."""
    n, m = x.shape
    if n != m:
        raise ValueError(f"off_diagonal needs a square matrix, got {tuple(x.shape)}")
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def cross_correlation(n1: torch.Tensor, n2: torch.Tensor, global_batch: int,
                      reduce: bool = False) -> torch.Tensor:
    """c = n1^T n2 / global_batch for batch-normalised embeddings (B, D), summed over ranks when `reduce`."""
    dtype = torch.promote_types(n1.dtype, torch.float32)  # bf16/fp16 embeddings -> fp32; fp64 stays
    c = n1.to(dtype).T @ n2.to(dtype) / global_batch
    if reduce:
        c = all_reduce_sum(c)
    return c


def barlow_twins_loss(n1: torch.Tensor, n2: torch.Tensor, lambd: float = 0.0051,
                      global_batch: int | None = None, reduce: bool = False) -> LossTerms:
    """The loss from two batch-normalised embeddings of the same images, computed in fp32.

    `global_batch`: images over all ranks (default: this rank's batch); `reduce`: sum c over the ranks.
    """
    with torch.autocast(device_type=n1.device.type, enabled=False):
        c = cross_correlation(n1, n2, global_batch or n1.shape[0], reduce)
        on_diag = (torch.diagonal(c) - 1).pow(2).sum()
        off_diag = off_diagonal(c).pow(2).sum()
        return LossTerms(on_diag + lambd * off_diag, on_diag, off_diag, c.detach())
