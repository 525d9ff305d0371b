"""The run directory every training command shares: open or resume, refuse a changed config, checkpoint.

A loop does (DINO's `restart_from_checkpoint` in spirit, not a Trainer with hooks):

    run = RunDir(out, cfg, env, kind="pretrain", resume=args.resume)   # refuses a changed config
    if run.resumed:
        start = run.restore(model=model, optimizer=optimizer, scaler=scaler)["step"]
    metrics = run.open_metrics()              # rows a killed run wrote after its checkpoint are dropped
    ...
    run.check_finite(loss, step, epoch)       # a NaN stops the run, naming the last good checkpoint
    run.save(step=step, epoch=epoch, model=model, optimizer=optimizer, scaler=scaler, best=...)

The checkpoint (last.pt) is one dict: the state dict of every object given, plain values, step and epoch,
the resolved config, library versions, the RNG states of every rank and the number of metrics rows written
so far. Only the main rank writes files; `save` and `check_finite` are collective under torchrun.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from btcxr.config import config_to_dict, migrate_config_dict
from btcxr.engine.checkpoint import (
    library_versions,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from btcxr.engine.distributed import DistEnv, barrier
from btcxr.engine.fingerprint import environment_fingerprint
from btcxr.engine.io import remove_temp_files, write_json, write_yaml
from btcxr.engine.lock import hold
from btcxr.engine.paths import check_apart
from btcxr.engine.runlog import MetricsLog, truncate_metrics
from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)

# The names of a run folder's files, for every stage and for whoever reads run folders (experiment, report).
CHECKPOINT = "last.pt"  # resumable state
BEST = "best.pt"  # the selected epoch's weights (fine-tuning, probe)
CONFIG = "config.yaml"
PROBE_RESULTS = "results.json"  # the probe's scores
TEST_METRICS = "test_metrics.json"  # a detector's test scores
ENVIRONMENT = "environment.json"  # what the numbers depend on beyond the config (engine/fingerprint.py)

# Settings that may change between a run and its resume without changing what it computes: where the data
# lies and how it is loaded, logging, compilation, and where the ImageNet weights file sits. One list for
# every stage.
RESUME_FREE_KEYS = frozenset({
    "data.cache", "data.workers", "data.pin_memory", "data.persistent_workers",
    "data.prefetch_factor", "log_every", "tensorboard", "compile", "device", "model.weights_file",
})


def config_inputs(cfg: Any) -> list[tuple[str, str | None]]:
    """The files and folders a training config reads: its cache, an init file, ImageNet weights."""
    data, model = getattr(cfg, "data", None), getattr(cfg, "model", None)
    init = getattr(model, "init", None)
    return [("data.cache", getattr(data, "cache", None) or None),
            ("model.init", init if init and init not in ("imagenet", "random") else None),
            ("model.weights_file", getattr(model, "weights_file", None))]


class RunDir:
    """One training run's folder: config.yaml, metrics.jsonl, tb/, last.pt and what the stage adds."""

    def __init__(self, path: str | Path, cfg: Any, env: DistEnv, *, kind: str, resume: bool = False):
        self.path, self.cfg, self.env, self.kind = Path(path), cfg, env, kind
        self.checkpoint = self.path / CHECKPOINT
        if env.is_main:
            check_apart(self.path, config_inputs(cfg), "run directory")
            hold(self.path, "run directory")  # a second process on this folder is refused
            # A write killed part-way leaves only its temporary file (the rename never happened).
            removed = remove_temp_files(self.path)
            if removed:
                log.info("%s: removed %d temporary file(s) of an interrupted write", self.path, removed)
        barrier(env)
        self.state = self._checkpoint_to_resume(resume)
        self.saved_step = int(self.state["step"]) if self.state else 0
        self.metrics: MetricsLog | None = None

    @property
    def resumed(self) -> bool:
        return self.state is not None

    def _checkpoint_to_resume(self, resume: bool) -> dict[str, Any] | None:
        if not self.checkpoint.exists():
            if resume:
                raise BtcxrError(f"--resume: {self.checkpoint} does not exist, there is nothing to resume; "
                                 "drop --resume to start")
            return None
        state = load_checkpoint(self.checkpoint)
        if state.get("kind", self.kind) != self.kind or "step" not in state:
            raise BtcxrError(f"{self.checkpoint} is not a {self.kind} checkpoint (it holds "
                             f"{state.get('kind', 'something else')}); use another --out folder")
        saved = migrate_config_dict(type(self.cfg), state.get("config", {}))
        diff = config_differences(saved, config_to_dict(self.cfg))
        if diff:
            shown = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, a, b in diff[:8])
            raise BtcxrError(f"{self.path} holds a run with another config ({shown}). Rerun with the same "
                             f"settings to resume it, use another --out, or delete {self.checkpoint} to start "
                             "over.")
        if self.env.is_main:
            log.info("resuming %s from step %d", self.checkpoint, state["step"])
        return state

    def restore(self, **objects: Any) -> dict[str, Any]:
        """Load the state dict of each object (model=..., optimizer=...; None is skipped) and this rank's
        RNG states; returns the checkpoint dict for the stage's own values (step, epoch, best, ...)."""
        if self.state is None:
            raise RuntimeError("restore() without a checkpoint to resume")
        for name, obj in objects.items():
            if obj is None:
                continue
            if isinstance(obj, torch.amp.GradScaler) and not self.state.get(name):
                # none saved (a disabled scaler on the CPU or with bf16, or a probe run of before the probe had
                # one): an fp16 resume on a GPU starts at the default scale
                continue
            if name not in self.state:
                raise BtcxrError(f"{self.checkpoint} holds no {name} state")
            obj.load_state_dict(self.state[name])
        rngs = self.state["rng"]
        rngs = [rngs] if isinstance(rngs, dict) else rngs  # one dict: written by a single-process version
        if len(rngs) != self.env.world_size:
            raise BtcxrError(f"{self.checkpoint} was written by {len(rngs)} rank(s), this run has "
                             f"{self.env.world_size}: resume it with the same number of processes")
        set_rng_state(rngs[self.env.rank])
        return self.state

    def open_metrics(self) -> MetricsLog | None:
        """config.yaml and the metrics log (main rank); rows written after the resumed checkpoint are dropped,
        so a rerun writes each row once."""
        if not self.env.is_main:
            return None
        write_yaml(self.path / CONFIG, config_to_dict(self.cfg))
        self._record_environment()
        if self.state is None:
            truncate_metrics(self.path, 0)
        else:
            truncate_metrics(self.path, int(self.state.get("metrics_rows", -1)), step=self.saved_step)
        self.metrics = MetricsLog(self.path, tensorboard=getattr(self.cfg, "tensorboard", True))
        return self.metrics

    def _record_environment(self) -> None:
        """RUN/environment.json: the fingerprint of every environment the run trained in, each with the step
        it started from. A resume in the same environment adds nothing; one elsewhere (another machine, thread
        count, library or commit) adds an entry, so a result that differs can be traced to it."""
        path = self.path / ENVIRONMENT
        entries = []
        if self.state is not None and path.exists():
            try:
                entries = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                log.warning("%s: unreadable (%s); starting it again", path, exc)
            entries = entries if isinstance(entries, list) else []
        now = environment_fingerprint()
        if not entries or {k: v for k, v in entries[-1].items() if k != "from_step"} != now:
            entries.append({"from_step": self.saved_step, **now})
        write_json(path, entries)

    def save(self, *, step: int, epoch: int, **items: Any) -> None:
        """Checkpoint (collective under torchrun: every rank's RNG state is gathered). `items`: objects with a
        state_dict (model, optimizer, scheduler, scaler) and plain values, stored under their names."""
        rngs = [rng_state()]
        if self.env.distributed:
            rngs = [None] * self.env.world_size
            dist.all_gather_object(rngs, rng_state())
        if self.env.is_main:
            state = {k: (v.state_dict() if hasattr(v, "state_dict") else v) for k, v in items.items()}
            state |= {"kind": self.kind, "step": int(step), "epoch": int(epoch), "rng": rngs,
                      "config": config_to_dict(self.cfg), "versions": library_versions(),
                      "metrics_rows": self.metrics.rows if self.metrics is not None else 0}
            save_checkpoint(self.checkpoint, state)
        self.saved_step = int(step)
        barrier(self.env)

    def check_finite(self, loss: torch.Tensor | float, step: int, epoch: int, hint: str = "") -> None:
        """Stop on a NaN or infinite loss on any rank, naming the checkpoint that keeps the last good state."""
        value = torch.as_tensor(loss, dtype=torch.float64).detach().reshape(()).cpu()
        bad = torch.tensor([0.0 if torch.isfinite(value) else 1.0], device=self.env.device)
        if self.env.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # every rank stops together: no rank waits forever
        if bad.item() == 0:
            return
        kept = (f"{self.checkpoint} keeps the last good state (step {self.saved_step})"
                if self.checkpoint.exists() else "no checkpoint was written yet")
        raise BtcxrError(f"non-finite loss ({value.item()}) at step {step + 1} (epoch {epoch + 1}) in {self.path}: "
                         f"training stopped; {kept}. {hint}".rstrip())

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None


def config_differences(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, current value) for every setting that changes what a run computes."""
    a, b = flatten(saved), flatten(current)
    keys = sorted((set(a) | set(b)) - RESUME_FREE_KEYS)
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out
