"""The pre-training loop: one process per device under torchrun (or one plain process), read top to bottom.

Run directory: config.yaml, metrics.jsonl, tb/, corr_<step>.png, last.pt (every epoch and every
`checkpoint_every_steps`), backbone.pth (torchvision ResNet keys without fc, refreshed every epoch).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from btcxr.backbones import FEATURE_DIM, backbone_state_dict, build_resnet
from btcxr.config import config_to_dict, save_config
from btcxr.engine.checkpoint import (
    library_versions,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from btcxr.engine.distributed import DistEnv, barrier, cleanup, init_distributed, mean_over_ranks
from btcxr.engine.runlog import MetricsLog, read_metrics
from btcxr.engine.schedule import warmup_cosine
from btcxr.errors import BtcxrError
from btcxr.logs import progress_disabled
from btcxr.ssl.batched_views import BatchedViews
from btcxr.ssl.config import RESUME_FREE_KEYS, PretrainConfig, check_world
from btcxr.ssl.data import build_loader
from btcxr.ssl.heatmap import save_corr_heatmap
from btcxr.ssl.lars import LARS, lars_param_groups
from btcxr.ssl.loss import barlow_twins_loss
from btcxr.ssl.model import BarlowTwins, embedding_spread
from btcxr.ssl.syncbn import convert_sync_batchnorm
from btcxr.ssl.views import loader_transform, model_input

log = logging.getLogger(__name__)
CHECKPOINT, BACKBONE = "last.pt", "backbone.pth"


def pretrain(cfg: PretrainConfig, out_dir: str | Path, resume: bool = False) -> Path:
    """Pre-train a backbone with Barlow Twins into `out_dir`; returns the path of backbone.pth.

    A run directory that already holds last.pt with the same config is resumed (`resume=True` demands it);
    one with another config is refused. Under torchrun every rank calls this with the same arguments."""
    owns_group = not (dist.is_available() and dist.is_initialized())
    env = init_distributed(cfg.device)
    try:
        return _pretrain(cfg, Path(out_dir), resume, env)
    finally:
        if owns_group:
            cleanup(env)


def _pretrain(cfg: PretrainConfig, run_dir: Path, resume: bool, env: DistEnv) -> Path:
    per_rank = check_world(cfg, env.world_size)
    ckpt = _checkpoint_to_resume(cfg, run_dir, resume)
    loader = build_loader(cfg, env, loader_transform(cfg.views), per_rank)  # data problems surface first
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, fresh=ckpt is None).to(env.device)
    if env.distributed:
        model = convert_sync_batchnorm(model, env.device)  # backbone, projector and final BN
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    o = cfg.optim
    optimizer = LARS(lars_param_groups(model), weight_decay=o.weight_decay, momentum=o.momentum, eta=o.eta)
    use_amp = env.device.type == "cuda" and cfg.amp != "none"
    amp_dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(env.device.type, enabled=use_amp and cfg.amp == "fp16")
    steps_per_epoch = len(loader)
    total = cfg.epochs * steps_per_epoch
    lr_w, lr_b = lr_schedules(cfg, steps_per_epoch)
    step = _restore(ckpt, model, optimizer, scaler, steps_per_epoch, run_dir) if ckpt is not None else 0
    fwd: nn.Module = nn.parallel.DistributedDataParallel(model) if env.distributed else model
    fwd = torch.compile(fwd) if cfg.compile else fwd
    batched = BatchedViews(cfg.views) if cfg.views.on_gpu else None
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    log.info("pre-training %s: %d steps of %d images (%d an epoch) on %d rank(s), from step %d", cfg.name,
             total, cfg.batch_size, steps_per_epoch, env.world_size, step)
    monitor = _Monitor(cfg, env, run_dir, step, total)
    saved_step = step
    model.train()
    try:
        for epoch in range(step // steps_per_epoch, cfg.epochs):
            loader.sampler.set_epoch(epoch, skip=(step - epoch * steps_per_epoch) * per_rank)
            for batch in loader:
                y1, y2 = _device_views(batch, batched, cfg, env, step)
                for group, lr in zip(optimizer.param_groups, (lr_w[step], lr_b[step])):
                    group["lr"] = float(lr)
                with torch.autocast(env.device.type, dtype=amp_dtype, enabled=use_amp):
                    emb = fwd(y1, y2)
                terms = barlow_twins_loss(emb.n1, emb.n2, cfg.lambd, cfg.batch_size, reduce=env.distributed)
                loss = terms.loss.item()  # the global loss, identical on every rank
                if not math.isfinite(loss):
                    raise BtcxrError(
                        f"non-finite loss ({loss}) at step {step + 1} (epoch {epoch + 1}): pre-training "
                        f"stopped; {run_dir / CHECKPOINT} keeps the last good state (step {saved_step}). "
                        "Lower optim.lr_weights, use amp=bf16 rather than fp16, or check the images.")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms.loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                monitor.after_step(step, epoch, emb, terms, loss, optimizer)
                end_of_epoch = step % steps_per_epoch == 0
                if end_of_epoch or (cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0):
                    if env.is_main:
                        _save(run_dir, model, optimizer, scaler, cfg, step, steps_per_epoch, end_of_epoch)
                    saved_step = step
    finally:
        monitor.close()
    if env.is_main:
        save_checkpoint(run_dir / BACKBONE, backbone_state_dict(model.backbone))
    barrier(env)
    return run_dir / BACKBONE


class _Monitor:
    """What a run shows: progress bar, metrics log and TensorBoard (main rank), heatmaps, collapse alarm."""

    def __init__(self, cfg: PretrainConfig, env: DistEnv, run_dir: Path, step: int, total: int):
        from tqdm import tqdm

        self.cfg, self.env, self.run_dir, self.total = cfg, env, run_dir, total
        self.metrics = _open_metrics(cfg, run_dir, step) if env.is_main else None
        self.bar = tqdm(total=total, initial=step, unit="step", desc=f"pretrain {cfg.name}",
                        disable=progress_disabled() or not env.is_main)
        self.t0, self.pairs = time.perf_counter(), 0

    def after_step(self, step: int, epoch: int, emb: Any, terms: Any, loss: float, optimizer: LARS) -> None:
        cfg = self.cfg
        self.pairs += cfg.batch_size
        self.bar.update()
        if step % cfg.log_every_steps == 0 or step == self.total:
            spread = mean_over_ranks(float(embedding_spread(emb.z1)), self.env)
            rate = self.pairs / (time.perf_counter() - self.t0)
            self.t0, self.pairs = time.perf_counter(), 0
            if spread < cfg.collapse_std_threshold:
                log.warning("step %d: embedding spread %.4f < %.4f: the representations may be collapsing",
                            step, spread, cfg.collapse_std_threshold)
            self.bar.set_postfix(loss=f"{loss:.1f}", pairs_s=f"{rate:.0f}")
            if self.metrics is not None:
                extra = ({"max_mem_gb": torch.cuda.max_memory_allocated() / 2**30}
                         if self.env.device.type == "cuda" else {})
                lr_w, lr_b = (g["lr"] for g in optimizer.param_groups)
                self.metrics.log(step, "train", epoch=epoch + 1, loss=loss, on_diag=terms.on_diag.item(),
                                 off_diag=terms.off_diag.item(), lr_weights=lr_w, lr_biases=lr_b,
                                 pairs_per_s=rate, embed_std=spread, **extra)
        heatmap = step == self.total or (cfg.corr_every_steps and step % cfg.corr_every_steps == 0)
        if self.env.is_main and heatmap:
            save_corr_heatmap(terms.c, self.run_dir / f"corr_{step}.png", step)

    def close(self) -> None:
        self.bar.close()
        if self.metrics is not None:
            self.metrics.close()


def build_model(cfg: PretrainConfig, fresh: bool = True) -> BarlowTwins:
    """Backbone from `model.init` (random when a checkpoint will overwrite it anyway) plus projector."""
    m = cfg.model
    init = m.init if fresh else "random"
    backbone = build_resnet(m.arch, init=init, weights_file=m.weights_file,
                            imagenet_weights=m.imagenet_weights)
    return BarlowTwins(backbone, FEATURE_DIM[m.arch], m.projector)


def lr_schedules(cfg: PretrainConfig, steps_per_epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-step learning rates of the weight and bias groups: peak = lr x batch/256, linear warm-up, cosine
    to final_lr_ratio x peak."""
    o, total = cfg.optim, cfg.epochs * steps_per_epoch
    warmup = round(o.warmup_epochs * steps_per_epoch)
    scale = cfg.batch_size / 256
    w, b = (warmup_cosine(lr * scale, total, warmup, o.final_lr_ratio * lr * scale)
            for lr in (o.lr_weights, o.lr_biases))
    return w, b


def _device_views(batch: Any, batched: BatchedViews | None, cfg: PretrainConfig, env: DistEnv,
                  step: int) -> tuple[torch.Tensor, torch.Tensor]:
    if batched is None:
        v1, v2 = (b.to(env.device, non_blocking=True) for b in batch)
    else:  # augment on the device; the draw is a pure function of (seed, rank, step), as the loader's
        gen = torch.Generator(device=env.device)
        gen.manual_seed(int(np.random.SeedSequence([cfg.seed, 1, env.rank, step]).generate_state(1)[0]))
        v1, v2 = batched(batch.to(env.device, non_blocking=True), gen)
    return model_input(v1, cfg.channels_last), model_input(v2, cfg.channels_last)


def _save(run_dir: Path, model: BarlowTwins, optimizer: LARS, scaler: torch.amp.GradScaler,
          cfg: PretrainConfig, step: int, steps_per_epoch: int, backbone: bool) -> None:
    save_checkpoint(run_dir / CHECKPOINT, {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
        "epoch": step // steps_per_epoch, "step": step, "steps_per_epoch": steps_per_epoch,
        "rng": rng_state(), "config": config_to_dict(cfg), "versions": library_versions(),
    })
    if backbone:
        save_checkpoint(run_dir / BACKBONE, backbone_state_dict(model.backbone))


def _checkpoint_to_resume(cfg: PretrainConfig, run_dir: Path, resume: bool) -> dict | None:
    path = run_dir / CHECKPOINT
    if not path.exists():
        if resume:
            raise BtcxrError(f"--resume: {path} does not exist, there is nothing to resume; "
                             "drop --resume to start")
        return None
    ckpt = load_checkpoint(path)
    diff = config_differences(ckpt.get("config", {}), config_to_dict(cfg))
    if diff:
        shown = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, a, b in diff[:5])
        raise BtcxrError(f"{run_dir} holds a run with another config ({shown}). Use another --out, or delete "
                         f"{path} to start this run over.")
    log.info("resuming %s from step %d", path, ckpt["step"])
    return ckpt


def config_differences(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, current value) for every setting that changes what a run computes."""
    a, b = _flatten(saved), _flatten(current)
    keys = sorted((set(a) | set(b)) - set(RESUME_FREE_KEYS))
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def _restore(ckpt: dict, model: BarlowTwins, optimizer: LARS, scaler: torch.amp.GradScaler,
             steps_per_epoch: int, run_dir: Path) -> int:
    if ckpt["steps_per_epoch"] != steps_per_epoch:
        raise BtcxrError(f"{run_dir / CHECKPOINT}: the run had {ckpt['steps_per_epoch']} steps an epoch, the "
                         f"data now gives {steps_per_epoch}; the cache or the number of ranks changed")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["step"])


def _open_metrics(cfg: PretrainConfig, run_dir: Path, step: int) -> MetricsLog:
    """config.yaml and the metrics log; rows a killed run wrote after its last checkpoint are dropped."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    rows = read_metrics(run_dir)
    if rows and any(r.get("step", 0) > step for r in rows):
        tmp = run_dir / ".metrics.jsonl.tmp"
        kept = "".join(json.dumps(r) + "\n" for r in rows if r.get("step", 0) <= step)
        tmp.write_text(kept, encoding="utf-8")
        tmp.replace(run_dir / "metrics.jsonl")
    return MetricsLog(run_dir, tensorboard=cfg.tensorboard)
