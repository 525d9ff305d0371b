"""`finetune`: Faster R-CNN + FPN fine-tuning on a VinDr cache, best epoch by validation AP50.

The loop reads top to bottom: data, model, optimizer and per-iteration schedule, resume, then for each
epoch one training pass, validation AP50 (COCO AP at IoU 0.5 in original pixels, btcxr.detect.metrics),
`best.pt` when it improves and `last.pt` always. One code path for one CPU, one GPU or torchrun DDP.
After the last epoch the main rank scores `best.pt` once on the test part.

Run directory: config.yaml (resolved), metrics.jsonl + tb/ (loss components, lr, images/s, val AP50),
last.pt, best.pt, test_predictions.csv, test_metrics.json, test/ (per-class table, PR curves).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from btcxr.config import config_to_dict, save_config
from btcxr.data.cache_format import read_settings
from btcxr.data.datasets import VindrDetection
from btcxr.detect.config import FinetuneConfig
from btcxr.detect.engine import (
    collate,
    evaluate_checkpoint,
    ground_truth,
    lr_for_steps,
    predict_loader,
    train_one_epoch,
)
from btcxr.detect.metrics import evaluate_detections
from btcxr.detect.model import CHECKPOINT_KIND, build_detector, detector_checkpoint, resolve_model_config
from btcxr.detect.sampler import GroupedBatchSampler, aspect_ratio_groups
from btcxr.detect.transforms import eval_transform, train_transform
from btcxr.engine.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from btcxr.engine.distributed import DistEnv, barrier, cleanup, init_distributed
from btcxr.engine.runlog import MetricsLog
from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"
# Settings that may change between a run and its resumption without changing what it computes.
RESUMABLE_CHANGES = {"data.cache", "data.workers", "train.device", "train.log_every", "train.tensorboard"}


def finetune(cfg: FinetuneConfig, out_dir: str | Path, resume: bool = False) -> Path:
    """Fine-tune a detector as `cfg` says into `out_dir` and return the path of `best.pt`.

    A run directory that already holds `last.pt` is resumed (`resume=True` insists that it does).
    Under torchrun every rank calls this; only the main rank writes files.
    """
    env = init_distributed(cfg.train.device)
    try:
        return _finetune(cfg, Path(out_dir), resume, env)
    finally:
        cleanup(env)


def _finetune(cfg: FinetuneConfig, out: Path, resume: bool, env: DistEnv) -> Path:
    if not cfg.data.cache:
        raise BtcxrError("data.cache is not set: pass data.cache=PATH (a cache from `btcxr prepare vindr`)")
    cfg = dataclasses.replace(cfg, model=resolve_model_config(cfg.model))
    last_path, best_path = out / LAST, out / BEST
    ckpt = _resume_state(cfg, last_path, resume)
    _seed_everything(cfg.train.seed + env.rank)

    # --- data
    cache = Path(cfg.data.cache)
    cache_size = read_settings(cache).get("size")
    if cache_size and int(cache_size) < cfg.model.size and env.is_main:
        log.warning("cache %s holds %d px images, upscaled to model.size %d: prepare a cache at %d px instead",
                    cache, cache_size, cfg.model.size, cfg.model.size)
    train_set = VindrDetection(cache, cfg.data.train_split, fraction=cfg.data.fraction, seed=cfg.data.fraction_seed,
                               include_negatives=cfg.data.include_negatives,
                               transform=train_transform(cfg.model.size, cfg.train.hflip))
    val_set = VindrDetection(cache, cfg.data.val_split, include_negatives=cfg.data.eval_negatives,
                             transform=eval_transform(cfg.model.size))
    if cfg.optim.batch_size % env.world_size:
        raise BtcxrError(f"optim.batch_size {cfg.optim.batch_size} is not divisible by the {env.world_size} ranks")
    per_rank = cfg.optim.batch_size // env.world_size
    sampler = DistributedSampler(train_set, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                 seed=cfg.train.seed)
    groups = aspect_ratio_groups(train_set.aspect_ratios(), cfg.data.aspect_groups)
    batches = GroupedBatchSampler(sampler, groups, per_rank)
    if len(batches) == 0:
        raise BtcxrError(f"the {cfg.data.train_split} part holds {len(train_set)} training images "
                         f"({len(sampler)} on this rank), fewer than one batch of {per_rank}: "
                         "lower optim.batch_size or raise data.fraction")
    pin = env.device.type == "cuda"
    # Workers are started afresh every epoch: their seeds then come from the main RNG state, which a resumed
    # run restores, so the flips after a resume are those of an uninterrupted run.
    train_loader = DataLoader(train_set, batch_sampler=batches, num_workers=cfg.data.workers, collate_fn=collate,
                              pin_memory=pin, persistent_workers=False)
    val_sampler = (DistributedSampler(val_set, num_replicas=env.world_size, rank=env.rank, shuffle=False)
                   if env.distributed else None)
    val_loader = DataLoader(val_set, batch_size=per_rank, sampler=val_sampler, shuffle=False,
                            num_workers=cfg.data.workers, collate_fn=collate, pin_memory=pin)
    val_gt = ground_truth(val_set)
    if env.is_main:
        log.info("train: %d images (%s, fraction %g%s), val: %d images; %d iterations of %d an epoch",
                 len(train_set), cfg.data.train_split, cfg.data.fraction,
                 ", with negatives" if cfg.data.include_negatives else "", len(val_set), len(batches),
                 cfg.optim.batch_size)

    # --- model, optimizer, schedule
    model = build_detector(cfg.model).to(env.device)
    if env.distributed and cfg.model.norm == "bn" and env.device.type == "cuda":
        # Batch statistics over the global batch (SyncBatchNorm needs CUDA; CPU DDP keeps per-rank BN).
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    core = model
    if env.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    params = [p for p in core.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                weight_decay=cfg.optim.weight_decay)
    total_steps = cfg.optim.epochs * len(batches)
    lr_values = lr_for_steps(cfg.optim.lr, total_steps, cfg.optim.warmup_iters, cfg.optim.warmup_factor,
                             cfg.optim.final_lr)
    scaler = torch.amp.GradScaler("cuda", enabled=env.device.type == "cuda" and cfg.train.amp == "fp16")
    amp = cfg.train.amp if env.device.type == "cuda" else "none"

    start_epoch, step, best_ap50, best_epoch = 0, 0, -1.0, 0
    if ckpt is not None:
        core.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        best_ap50, best_epoch = float(ckpt["best_ap50"]), int(ckpt["best_epoch"])
        set_rng_state(ckpt["rng"])
        if env.is_main:
            log.info("resuming %s after epoch %d (step %d, best val AP50 %.4f at epoch %d)", last_path,
                     start_epoch, step, best_ap50, best_epoch)

    metrics = None
    if env.is_main:
        save_config(cfg, out / "config.yaml")
        metrics = MetricsLog(out, tensorboard=cfg.train.tensorboard)
    try:
        for epoch in range(start_epoch, cfg.optim.epochs):
            batches.set_epoch(epoch)
            step, means = train_one_epoch(model, optimizer, train_loader, lr_values, step, env=env, amp=amp,
                                          scaler=scaler, clip_grad=cfg.optim.clip_grad, metrics=metrics,
                                          log_every=cfg.train.log_every, epoch=epoch)
            record: dict[str, Any] = {"epoch": epoch + 1, **means}
            ap50 = None
            if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.optim.epochs:
                pred, _ = predict_loader(core, val_loader, env, amp, desc="val")
                if env.is_main:
                    val = evaluate_detections(val_gt, pred, bootstrap=0).metrics
                    ap50 = val["map50"] or 0.0
                    record |= {"val_ap50": ap50, "val_map": val["map"] or 0.0, "val_map75": val["map75"] or 0.0,
                               "val_predictions": len(pred)}
            if env.is_main:
                assert metrics is not None
                metrics.log(step, "epoch", **record)
                log.info("epoch %d/%d: loss %.4f, %.1f images/s%s", epoch + 1, cfg.optim.epochs, means["loss"],
                         means["images_per_s"], f", val AP50 {ap50:.4f}" if ap50 is not None else "")
                state = _checkpoint(cfg, core, epoch + 1, step, record)
                if ap50 is not None and ap50 > best_ap50:
                    best_ap50, best_epoch = ap50, epoch + 1
                    save_checkpoint(best_path, state | {"best_ap50": best_ap50, "best_epoch": best_epoch})
                    log.info("new best val AP50 %.4f: wrote %s", ap50, best_path)
                save_checkpoint(last_path, state | {
                    "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                    "best_ap50": best_ap50, "best_epoch": best_epoch})
            barrier(env)
    finally:
        if metrics is not None:
            metrics.close()

    if env.is_main and cfg.data.test_split and not (out / "test_metrics.json").exists():
        test_model_on_split(best_path, cfg, out)
    return best_path


def test_model_on_split(best_path: Path, cfg: FinetuneConfig, out: Path) -> dict:
    """Score the best checkpoint once on the test part: test_predictions.csv and test_metrics.json (plus
    the per-class table and PR curves in test/)."""
    metrics = evaluate_checkpoint(best_path, cfg.data.cache, cfg.data.test_split, out / "test",
                                  device=cfg.train.device, batch_size=max(1, cfg.optim.batch_size // 4),
                                  workers=cfg.data.workers, include_negatives=cfg.data.eval_negatives,
                                  seed=cfg.train.seed, predictions_path=out / "test_predictions.csv")
    tmp = out / ".test_metrics.json.tmp"
    tmp.write_text(json.dumps(json.loads((out / "test" / "metrics.json").read_text()), indent=2) + "\n")
    tmp.replace(out / "test_metrics.json")
    log.info("test %s: mAP50 %.4f (best epoch of %s)", cfg.data.test_split, metrics["map50"] or 0.0, best_path)
    return metrics


def _checkpoint(cfg: FinetuneConfig, model: torch.nn.Module, epoch: int, step: int, record: dict) -> dict:
    return detector_checkpoint(model, cfg.model, config=config_to_dict(cfg), epoch=epoch, step=step,
                               metrics={k: float(v) for k, v in record.items()})


def _resume_state(cfg: FinetuneConfig, last_path: Path, resume: bool) -> dict | None:
    if not last_path.exists():
        if resume:
            raise BtcxrError(f"--resume: {last_path} does not exist (nothing to resume in {last_path.parent})")
        return None
    ckpt = load_checkpoint(last_path)
    if ckpt.get("kind") != CHECKPOINT_KIND or "optimizer" not in ckpt:
        raise BtcxrError(f"{last_path} is not a fine-tuning checkpoint; use another --out folder")
    changed = sorted(_changed_keys(ckpt["config"], config_to_dict(cfg)) - RESUMABLE_CHANGES)
    if changed:
        raise BtcxrError(f"{last_path.parent} holds a run with other settings ({', '.join(changed)}): resume it "
                         "with the same config, or use another --out folder")
    if not resume:
        log.info("%s exists: resuming that run", last_path)
    return ckpt


def _changed_keys(old: dict, new: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key in set(old) | set(new):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys |= _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.add(f"{prefix}{key}")
    return keys


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
