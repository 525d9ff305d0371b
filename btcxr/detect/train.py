"""`finetune`: Faster R-CNN + FPN fine-tuning on a VinDr cache, best epoch by validation AP50.

The loop reads top to bottom: data, model, optimizer and per-iteration schedule, resume, then for each
epoch one training pass, validation AP50 (COCO AP at IoU 0.5 in original pixels, btcxr.detect.metrics),
`best.pt` when it improves and `last.pt` always. One code path for one CPU, one GPU or torchrun DDP.
After the last epoch the main rank scores `best.pt` once on the test part.

Run directory: config.yaml (resolved), metrics.jsonl + tb/ (loss components, lr, images/s, val AP50),
last.pt, best.pt, test_predictions.csv, test_images.csv, test_metrics.json, test/ (per-class table, PR curves),
and the best epoch's val_predictions.csv with val_images.csv (the case browser's default score threshold is
chosen on them, never on test).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader, DistributedSampler

from btcxr.data.cache_format import read_settings
from btcxr.data.classes import VINDR_CLASSES
from btcxr.data.datasets import VindrDetection
from btcxr.detect.config import FinetuneConfig
from btcxr.detect.engine import collate, lr_for_steps, predict_loader, train_one_epoch
from btcxr.detect.evaluate_checkpoint import evaluate_checkpoint, ground_truth
from btcxr.detect.metrics import evaluate_detections
from btcxr.detect.model import (
    CHECKPOINT_KIND,
    build_detector,
    detector_checkpoint,
    detector_settings,
    resolve_model_config,
)
from btcxr.detect.predictions import write_predictions
from btcxr.detect.sampler import GroupedBatchSampler, aspect_ratio_groups
from btcxr.detect.transforms import eval_transform, train_transform
from btcxr.engine.checkpoint import save_checkpoint
from btcxr.engine.distributed import DistEnv, distributed_session
from btcxr.engine.io import write_csv, write_json
from btcxr.engine.loop import wrap_ddp
from btcxr.engine.run import BEST, TEST_METRICS, RunDir
from btcxr.engine.runtime import grad_scaler, seed_everything
from btcxr.engine.syncbn import convert_sync_batchnorm
from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)



def finetune(cfg: FinetuneConfig, out_dir: str | Path, resume: bool = False) -> Path:
    """Fine-tune a detector as `cfg` says into `out_dir` and return the path of `best.pt`.

    A run directory that already holds `last.pt` with the same config is resumed (`resume=True` insists
    that it does); one with another config is refused. Under torchrun every rank calls this; only the main
    rank writes files.
    """
    with distributed_session(cfg.device) as env:
        return _finetune(cfg, Path(out_dir), resume, env)


def _finetune(cfg: FinetuneConfig, out: Path, resume: bool, env: DistEnv) -> Path:
    if not cfg.data.cache:
        raise BtcxrError("data.cache is not set: pass data.cache=PATH (a cache from `btcxr prepare vindr`)")
    cfg = dataclasses.replace(cfg, model=resolve_model_config(cfg.model))
    run = RunDir(out, cfg, env, kind=CHECKPOINT_KIND, resume=resume)
    seed_everything(cfg.seed + env.rank)

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
                                 seed=cfg.seed)
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
        write_csv(out / "val_images.csv", pd.DataFrame({"image_id": list(val_set.image_ids)}))
        log.info("train: %d images (%s, fraction %g%s), val: %d images; %d iterations of %d an epoch",
                 len(train_set), cfg.data.train_split, cfg.data.fraction,
                 ", with negatives" if cfg.data.include_negatives else "", len(val_set), len(batches),
                 cfg.optim.batch_size)

    # --- model, optimizer, schedule
    core = build_detector(cfg.model).to(env.device)
    if env.distributed:
        # Batch statistics over the global batch (norm: bn), on GPUs and on CPUs (gloo) alike; the frozen
        # norms (FrozenBatchNorm2d, FrozenStatsBatchNorm2d) are no _BatchNorm and stay as they are.
        core = convert_sync_batchnorm(core, env.device)
    model = wrap_ddp(core, env)
    params = [p for p in core.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                weight_decay=cfg.optim.weight_decay)
    total_steps = cfg.optim.epochs * len(batches)
    lr_values = lr_for_steps(cfg.optim.lr, total_steps, cfg.optim.warmup_iters, cfg.optim.warmup_factor,
                             cfg.optim.final_lr, len(batches), cfg.optim.cosine_by)
    scaler = grad_scaler(env.device, cfg.amp)

    start_epoch, step, best_ap50, best_epoch = 0, 0, -1.0, 0
    if run.resumed:
        state = run.restore(model=core, optimizer=optimizer, scaler=scaler)
        start_epoch, step = int(state["epoch"]), int(state["step"])
        best_ap50, best_epoch = float(state["best_ap50"]), int(state["best_epoch"])
    metrics = run.open_metrics()
    try:
        for epoch in range(start_epoch, cfg.optim.epochs):
            batches.set_epoch(epoch)
            step, means = train_one_epoch(model, optimizer, train_loader, lr_values, step, run=run, amp=cfg.amp,
                                          scaler=scaler, clip_grad=cfg.optim.clip_grad, metrics=metrics,
                                          log_every=cfg.log_every, epoch=epoch)
            record: dict[str, Any] = {"epoch": epoch + 1, **means}
            ap50 = None
            if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.optim.epochs:
                pred, _ = predict_loader(core, val_loader, env, cfg.amp, desc="val")
                if env.is_main:
                    val = evaluate_detections(val_gt, pred, bootstrap=0).metrics
                    ap50 = val["map50"] or 0.0
                    record |= {"val_ap50": ap50, "val_map": val["map"] or 0.0, "val_map75": val["map75"] or 0.0,
                               "val_predictions": len(pred)}
            if metrics is not None:
                metrics.log(step, "epoch", **record)
                log.info("epoch %d/%d: loss %.4f, %.1f images/s%s", epoch + 1, cfg.optim.epochs, means["loss"],
                         means["images_per_s"], f", val AP50 {ap50:.4f}" if ap50 is not None else "")
            if env.is_main and ap50 is not None and ap50 > best_ap50:
                best_ap50, best_epoch = ap50, epoch + 1
                save_checkpoint(out / BEST, detector_checkpoint(
                    core, cfg.model, config=dataclasses.asdict(cfg), epoch=epoch + 1, step=step,
                    metrics=_floats(record), best_ap50=best_ap50, best_epoch=best_epoch))
                # the boxes this selection saw: `btcxr browse` chooses its default threshold on them
                write_predictions(pred, out / "val_predictions.csv")
                log.info("new best val AP50 %.4f: wrote %s", ap50, out / BEST)
            run.save(step=step, epoch=epoch + 1, model=core, optimizer=optimizer, scaler=scaler,
                     detector=detector_settings(cfg.model), classes=list(VINDR_CLASSES), metrics=_floats(record),
                     best_ap50=best_ap50, best_epoch=best_epoch)
    finally:
        run.close()

    if env.is_main and cfg.data.test_split and not (out / TEST_METRICS).exists():
        test_model_on_split(out / BEST, cfg, out)
    return out / BEST


def test_model_on_split(best_path: Path, cfg: FinetuneConfig, out: Path) -> dict:
    """Score the best checkpoint once on the test part: test_predictions.csv, test_images.csv (the images
    predicted) and test_metrics.json (plus the per-class table and PR curves in test/)."""
    metrics = evaluate_checkpoint(best_path, cfg.data.cache, cfg.data.test_split, out / "test",
                                  device=cfg.device, batch_size=max(1, cfg.optim.batch_size // 4),
                                  workers=cfg.data.workers, include_negatives=cfg.data.eval_negatives,
                                  seed=cfg.seed, predictions_path=out / "test_predictions.csv")
    write_image_list(out / "test_images.csv", cfg.data.cache, cfg.data.test_split, cfg.data.eval_negatives)
    write_json(out / TEST_METRICS, json.loads((out / "test" / "metrics.json").read_text(encoding="utf-8")))
    log.info("test %s: mAP50 %.4f (best epoch of %s)", cfg.data.test_split, metrics["map50"] or 0.0, best_path)
    return metrics


def write_image_list(path: Path, cache: str | Path, split: str, include_negatives: bool) -> None:
    """The ids of every image evaluate_checkpoint predicted on `split` (its VindrDetection: images without a
    finding box only with include_negatives), whether or not it found anything there: predictions.csv has
    rows for detections only, and `btcxr browse` must tell "nothing found" from "not predicted"."""
    ids = VindrDetection(cache, split, include_negatives=include_negatives).image_ids
    write_csv(path, pd.DataFrame({"image_id": list(ids)}))


def _floats(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()}
