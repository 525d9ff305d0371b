"""SimCLR (Chen, Kornblith, Norouzi and Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020) through lightly: its projection head (Linear-BN-ReLU, then a Linear;
2048-2048-128 for ResNet-50) and the NT-Xent loss

    mean over the 2N embeddings i of  -log( exp(s(i, i+) / T) / sum_{k != i} exp(s(i, k) / T) )

with s the cosine similarity and the 2N - 2 other embeddings of the batch as negatives. Under torchrun the
negatives are the global batch's (lightly's `gather_distributed`: an all_gather whose backward sums the
gradients over the ranks), and each rank's mean over its own rows is averaged by DDP.
"""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules.heads import SimCLRProjectionHead
from torch import nn

from btcxr.pretrain.config import PretrainConfig
from btcxr.pretrain.two_view import Projected, TwoViews


def build(cfg: PretrainConfig, backbone: nn.Module, feature_dim: int) -> Projected:
    widths = cfg.model.projector
    head = SimCLRProjectionHead(feature_dim, int(widths[0]), int(widths[-1]), num_layers=len(widths))
    return Projected(backbone, head)


def loss(out: TwoViews, cfg: PretrainConfig, distributed: bool = False) -> torch.Tensor:
    return NTXentLoss(temperature=cfg.simclr.temperature, gather_distributed=distributed)(out.z1, out.z2)
