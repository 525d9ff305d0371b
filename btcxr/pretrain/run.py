"""`btcxr pretrain`: one entry for every pre-training method, dispatched on `method`.

Adding a method is a module with a `train(cfg, out, resume, env) -> Path` loop (see barlow_twins/loop.py
and supervised.py, which share pretrain/common.py) and one line in METHODS.
"""

from __future__ import annotations

from pathlib import Path

from btcxr.engine.distributed import distributed_session
from btcxr.pretrain import supervised
from btcxr.pretrain.barlow_twins import loop as barlow_twins
from btcxr.pretrain.config import PretrainConfig

METHODS = {"barlow_twins": barlow_twins.train, "supervised": supervised.train}


def pretrain(cfg: PretrainConfig, out_dir: str | Path, resume: bool = False) -> Path:
    """Pre-train a backbone into `out_dir`; returns the path of backbone.pth.

    A run directory that already holds last.pt with the same config is resumed (`resume=True` demands it);
    one with another config is refused. Under torchrun every rank calls this with the same arguments."""
    with distributed_session(cfg.device) as env:
        return METHODS[cfg.method](cfg, Path(out_dir), resume, env)
