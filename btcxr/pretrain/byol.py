"""BYOL (Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020) through lightly: the online network
(backbone, projector 2048-4096-256, predictor 256-4096-256 for ResNet-50), the target network (a copy of
the online backbone and projector that receives no gradient), and the symmetric loss

    mean_i (2 - 2 cos(p1_i, t2_i)) + mean_i (2 - 2 cos(p2_i, t1_i))

(lightly's NegativeCosineSimilarity is -mean cos). After every optimizer step the target follows the online
network, target <- tau target + (1 - tau) online, with tau going from momentum_base to 1 on a cosine over the
run (lightly's cosine_schedule and update_momentum). The target lives in the model's state dict, so last.pt
restores it and a resumed run continues bit for bit. Every loss term is a per-rank batch mean: DDP's
gradient average makes it the global one (BYOL needs no gathering).
"""

from __future__ import annotations

import copy

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from btcxr.pretrain.config import PretrainConfig
from btcxr.pretrain.two_view import TwoViews


class BYOL(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, widths: list[int], predictor_hidden: int):
        super().__init__()
        hidden, dim = (int(w) for w in widths)
        self.backbone = backbone
        self.projector = BYOLProjectionHead(feature_dim, hidden, dim)
        self.predictor = BYOLPredictionHead(dim, predictor_hidden, dim)
        self.target_backbone = copy.deepcopy(backbone)
        self.target_projector = copy.deepcopy(self.projector)
        deactivate_requires_grad(self.target_backbone)
        deactivate_requires_grad(self.target_projector)

    def forward(self, y1: torch.Tensor, y2: torch.Tensor) -> TwoViews:
        z1, z2 = self.projector(self.backbone(y1)), self.projector(self.backbone(y2))
        with torch.no_grad():
            t1 = self.target_projector(self.target_backbone(y1))
            t2 = self.target_projector(self.target_backbone(y2))
        return TwoViews(z1, z2, self.predictor(z1), self.predictor(z2), t1, t2)


def build(cfg: PretrainConfig, backbone: nn.Module, feature_dim: int) -> BYOL:
    return BYOL(backbone, feature_dim, cfg.model.projector, cfg.byol.predictor_hidden)


def loss(out: TwoViews, cfg: PretrainConfig, distributed: bool = False) -> torch.Tensor:
    ncs = NegativeCosineSimilarity()
    return 4 + 2 * (ncs(out.p1, out.t2.detach()) + ncs(out.p2, out.t1.detach()))


def momentum(step: int, total: int, cfg: PretrainConfig) -> float:
    """tau after optimizer step `step` (0-based) of `total`: momentum_base at the first, 1 at the last."""
    return cosine_schedule(step, total, cfg.byol.momentum_base, 1.0)


@torch.no_grad()
def after_step(model: BYOL, step: int, total: int, cfg: PretrainConfig) -> dict:
    """The target's momentum update after optimizer step `step`; its tau goes into the metrics row."""
    tau = momentum(step, total, cfg)
    update_momentum(model.backbone, model.target_backbone, tau)
    update_momentum(model.projector, model.target_projector, tau)
    return {"momentum": tau}
