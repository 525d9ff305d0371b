"""`btcxr pretrain`: one entry for every pre-training method, dispatched on `method`.

A method is a `train(cfg, out, resume, env) -> Path` loop (barlow_twins/loop.py, supervised.py and
two_view.py, which share pretrain/common.py). The lightly methods (vicreg.py, simclr.py, byol.py) are
modules of build, loss and after_step that two_view.py runs; adding one is a module and a name in
config.LIGHTLY_METHODS. lightly is imported only when such a method is chosen.
"""

from __future__ import annotations

from pathlib import Path

from btcxr.engine.distributed import distributed_session
from btcxr.pretrain import supervised, two_view
from btcxr.pretrain.barlow_twins import loop as barlow_twins
from btcxr.pretrain.config import LIGHTLY_METHODS, PretrainConfig

METHODS = {"barlow_twins": barlow_twins.train, "supervised": supervised.train,
           **dict.fromkeys(LIGHTLY_METHODS, two_view.train)}


def pretrain(cfg: PretrainConfig, out_dir: str | Path, resume: bool = False) -> Path:
    """Pre-train a backbone into `out_dir`; returns the path of backbone.pth.

    A run directory that already holds last.pt with the same config is resumed (`resume=True` demands it);
    one with another config is refused. Under torchrun every rank calls this with the same arguments."""
    with distributed_session(cfg.device) as env:
        return METHODS[cfg.method](cfg, Path(out_dir), resume, env)
