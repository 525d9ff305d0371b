"""Barlow Twins: a ResNet backbone, a projector MLP and an affine-free batch norm over the embeddings."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class Embeddings(NamedTuple):
    z1: torch.Tensor  # projector outputs (pre-BN) of view 1, (B, D)
    z2: torch.Tensor
    n1: torch.Tensor  # the same after BatchNorm1d(affine=False): what the loss correlates
    n2: torch.Tensor


def projector(in_dim: int, widths: list[int] | tuple[int, ...]) -> nn.Sequential:
    """Linear(no bias)-BN-ReLU blocks, then a last Linear(no bias): 2048-8192-8192-8192 in the paper."""
    sizes = [in_dim, *[int(w) for w in widths]]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
    return nn.Sequential(*layers)


class BarlowTwins(nn.Module):
    """Embeds two views with a shared backbone and projector. The loss lives in `btcxr.pretrain.barlow_twins.loss` so that it
    runs in fp32 outside autocast and outside DDP."""

    def __init__(self, backbone: nn.Module, feature_dim: int, widths: list[int] | tuple[int, ...]):
        super().__init__()
        self.backbone = backbone
        self.projector = projector(feature_dim, widths)
        self.bn = nn.BatchNorm1d(int(widths[-1]), affine=False)

    def forward(self, y1: torch.Tensor, y2: torch.Tensor) -> Embeddings:
        # Two backbone passes, as in the reference: batch-norm statistics stay per view.
        z1 = self.projector(self.backbone(y1))
        z2 = self.projector(self.backbone(y2))
        return Embeddings(z1, z2, self.bn(z1), self.bn(z2))


def embedding_spread(z: torch.Tensor) -> torch.Tensor:
    """Collapse alarm: per-dimension std of the L2-normalised (pre-BN) embeddings, averaged, times sqrt(D).

    About 1 when the embeddings spread over all dimensions, 0 when they collapse to a point (the affine-free
    BN after the projector would hide a collapse from the loss's own numbers)."""
    z = nn.functional.normalize(z.detach().float(), dim=1)
    return z.std(dim=0).mean() * z.shape[1] ** 0.5
