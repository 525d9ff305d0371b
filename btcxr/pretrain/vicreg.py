"""VICReg (Bardes, Ponce and LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022) through lightly: its projector (Linear-BN-ReLU blocks, then a Linear;
8192-8192-8192 for ResNet-50) and its loss

    sim_coeff * mean ||z1 - z2||^2 / D  +  std_coeff * (hinge(z1) + hinge(z2)) / 2  +  cov_coeff * (C(z1) + C(z2))

with hinge(z) = mean_d relu(1 - sqrt(var_d(z) + 1e-4)) and C(z) = sum of the squared off-diagonal
covariances / D. Under torchrun the variance and covariance terms are taken over the global batch
(lightly's `gather_distributed`: an all_gather whose backward sums the gradients over the ranks); the
invariance term is a per-rank mean, which DDP's gradient average makes the global mean.
"""

from __future__ import annotations

import torch
from lightly.loss import VICRegLoss
from lightly.models.modules.heads import VICRegProjectionHead
from torch import nn

from btcxr.pretrain.config import PretrainConfig
from btcxr.pretrain.two_view import Projected, TwoViews


def build(cfg: PretrainConfig, backbone: nn.Module, feature_dim: int) -> Projected:
    widths = cfg.model.projector
    head = VICRegProjectionHead(feature_dim, int(widths[0]), int(widths[-1]), num_layers=len(widths))
    return Projected(backbone, head)


def loss(out: TwoViews, cfg: PretrainConfig, distributed: bool = False) -> torch.Tensor:
    c = cfg.vicreg
    fn = VICRegLoss(lambda_param=c.sim_coeff, mu_param=c.std_coeff, nu_param=c.cov_coeff,
                    gather_distributed=distributed)
    return fn(out.z1, out.z2)
