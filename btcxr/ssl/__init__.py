"""Barlow Twins self-supervised pre-training (the paper's Stage 1).

config.py          PretrainConfig: every knob, defaults = the paper's recipe
model.py           backbone + projector + affine-free BN           loss.py   cross-correlation loss
lars.py            LARS optimizer                                  syncbn.py  SyncBatchNorm for CPU ranks
views.py           the paper's and the radiograph view policies (loader side, torchvision v2)
batched_views.py   the same policies batched on the device (views.on_gpu)
data.py            seeded per-image views, per-epoch sharded sampler, DataLoader
train.py           pretrain(cfg, out_dir, resume=False) -> Path of backbone.pth
"""

from __future__ import annotations

from typing import Any

__all__ = ["PretrainConfig", "pretrain"]


def __getattr__(name: str) -> Any:  # lazy: `import btcxr.ssl` stays light
    if name == "pretrain":
        from btcxr.ssl.train import pretrain

        return pretrain
    if name == "PretrainConfig":
        from btcxr.ssl.config import PretrainConfig

        return PretrainConfig
    raise AttributeError(name)
