"""The NIH classification evaluation of a backbone: linear probe or fine-tune, selected on val, tested once.

One loop for both modes. With a frozen backbone and `probe.cache_features`, the features of every split
are extracted once and the linear head trains on those tensors; otherwise each epoch runs images through
the model. After every epoch the val split is scored; the epoch with the best mean val AUROC is kept
(best.pt) and, once training ends, that model alone scores the test split. The official code picked the
best epoch on its test split; selecting on val keeps the test number an honest estimate
(`probe.select_on: test` reproduces the official choice, with a warning; docs/paper.md).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from btcxr.classify.config import OptimConfig, ProbeConfig
from btcxr.classify.data import nih_splits
from btcxr.classify.metrics import AurocReport, auroc_report
from btcxr.classify.model import ProbeModel, build_probe_model
from btcxr.classify.results import write_results
from btcxr.config import config_to_dict
from btcxr.data.classes import NIH_LABELS
from btcxr.engine.checkpoint import library_versions, load_checkpoint, save_checkpoint
from btcxr.engine.distributed import DistEnv
from btcxr.engine.loop import backward_step, set_learning_rates
from btcxr.engine.progress import Progress
from btcxr.engine.run import BEST, PROBE_RESULTS, RunDir
from btcxr.engine.runlog import MetricsLog
from btcxr.engine.runtime import autocast, grad_scaler, resolve_device, seed_everything
from btcxr.engine.schedule import warmup_cosine
from btcxr.errors import BtcxrError
from btcxr.logs import progress_disabled

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
KIND = "btcxr-probe"


def probe(cfg: ProbeConfig, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train and evaluate a classifier over the 15 NIH labels on top of the backbone `cfg.model.init`.

    model.init: "imagenet", "random" or a file (backbone.pth, a pre-training checkpoint, a torchvision
    state dict); model.weights_file: the ImageNet weights file for init=imagenet on offline machines.
    Writes config.yaml, metrics.jsonl, tb/, best.pt, last.pt, results.json and results.md into out_dir
    and returns the results dict (see results.json). A run directory holding last.pt with the same config
    is resumed (resume=True demands one); one with another config is refused.
    """
    m = cfg.model
    if m.weights_file is not None and m.init != "imagenet":
        raise BtcxrError(f"--init-weights {m.weights_file} only applies to --backbone imagenet "
                         f"(got --backbone {m.init})")
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise BtcxrError("the probe runs in one process; launch it without torchrun")
    env = DistEnv(device=resolve_device(cfg.device))
    device, frozen = env.device, cfg.probe.mode == "freeze"
    run = RunDir(out_dir, cfg, env, kind=KIND, resume=resume)
    use_features = frozen and cfg.probe.cache_features
    if use_features and cfg.augment.train:
        log.info("probe.cache_features: features are extracted once from the eval view; no training "
                 "augmentation (set probe.cache_features=false to augment)")
    on_test = cfg.probe.select_on == "test"
    if on_test:
        log.warning("probe.select_on=test: the epoch is picked on the test split, as the authors' evaluate.py "
                    "did; the test AUROC then took part in the choice and overstates the model")

    datasets = nih_splits(cfg.data, cfg.augment, cfg.model.size, train_augment=not use_features)
    n_images = {name: len(ds) for name, ds in datasets.items()}
    log.info("images: train %d (fraction %g), val %d, test %d", n_images["train"], cfg.data.fraction,
             n_images["val"], n_images["test"])
    seed_everything(cfg.seed)  # a random backbone and the head start from the run seed
    model = build_probe_model(m.arch, m.init, frozen=frozen, init_weights=m.weights_file,
                              imagenet_weights=m.imagenet_weights).to(device)
    source: dict[str, Any] = dict(datasets)
    if use_features:
        source = {name: extract_features(model, _loader(ds, cfg, device), device, cfg.amp, name)
                  for name, ds in datasets.items()}

    optimizer = _optimizer(model, cfg, frozen)
    scaler = grad_scaler(device, "none" if use_features else cfg.amp)  # the head on features trains in fp32
    steps_per_epoch = math.ceil(n_images["train"] / cfg.optim.batch_size)
    factor = lr_factors(cfg.optim, steps_per_epoch)
    state = {"epoch": 0, "best_epoch": 0, "best_val": -math.inf, "val_history": [], "test_history": []}
    if run.resumed:
        saved = run.restore(head=model.head, backbone=None if frozen else model.backbone, optimizer=optimizer,
                            scaler=scaler)
        state = {k: saved.get(k, state[k]) for k in state}
    metrics = run.open_metrics()
    criterion = nn.BCEWithLogitsLoss()
    started = time.time()
    try:
        for epoch in range(state["epoch"] + 1, cfg.optim.epochs + 1):
            epoch_seed = cfg.seed * 1000 + epoch
            seed_everything(epoch_seed)  # each epoch's shuffle and crops, the same after a resume
            batches = (_feature_batches(source["train"], cfg.optim.batch_size, epoch_seed, device)
                       if use_features else _image_batches(source["train"], cfg, device, True, epoch_seed))
            first = (epoch - 1) * steps_per_epoch
            loss = train_one_epoch(model, batches, optimizer, criterion, factor[first:first + steps_per_epoch],
                                   cfg.amp, head_only=use_features, desc=f"epoch {epoch}/{cfg.optim.epochs}",
                                   run=run, scaler=scaler, metrics=metrics, step=first, epoch=epoch,
                                   log_every=cfg.log_every, last=cfg.optim.epochs * steps_per_epoch)
            val = evaluate(model, source["val"], cfg, device, use_features, "val", quiet=epoch > 1)
            state["val_history"].append(float(val.mean))
            chosen = val
            if on_test:
                chosen = evaluate(model, source["test"], cfg, device, use_features, "test", quiet=epoch > 1)
                state["test_history"].append(float(chosen.mean))
            step = epoch * steps_per_epoch
            _log_auroc(metrics, step, "val", val, epoch=epoch, train_loss=loss)
            improved = not math.isnan(chosen.mean) and chosen.mean > state["best_val"]
            log.info("epoch %d: train loss %.4f, val mean AUROC %.4f%s%s", epoch, loss, val.mean,
                     f", test mean AUROC {chosen.mean:.4f}" if on_test else "", " (best so far)" if improved else "")
            if improved:
                state.update(best_epoch=epoch, best_val=float(chosen.mean))
                save_checkpoint(run.path / BEST, _model_state(model, frozen, epoch, cfg))
            state["epoch"] = epoch
            run.save(step=step, head=model.head, backbone=None if frozen else model.backbone,
                     optimizer=optimizer, scaler=scaler, **state)
        if state["best_epoch"] == 0:
            split = cfg.data.test_split if on_test else cfg.data.val_split
            raise BtcxrError(f"no epoch gave a defined mean {cfg.probe.select_on} AUROC (every label has a single "
                             f"class in the {split!r} split of {cfg.data.cache}): nothing to select")
        # The selected model (best on probe.select_on), read back from the file we keep, scores the test split.
        best = load_checkpoint(run.path / BEST, map_location=device)
        _load_model_state(model, best, frozen)
        val_best = evaluate(model, source["val"], cfg, device, use_features, "val", quiet=True)
        test = evaluate(model, source["test"], cfg, device, use_features, "test")
        _log_auroc(metrics, state["best_epoch"] * steps_per_epoch, "test", test, epoch=state["best_epoch"])
    finally:
        run.close()

    results = {
        "backbone": str(m.init),
        "init_weights": str(m.weights_file) if m.weights_file else None,
        "arch": m.arch,
        "mode": cfg.probe.mode,
        "fraction": cfg.data.fraction,
        "fraction_seed": cfg.data.fraction_seed,
        "seed": cfg.seed,
        "cache": str(cfg.data.cache),
        "input_size": cfg.model.size,
        "cached_features": use_features,
        "epochs": cfg.optim.epochs,
        "selected_epoch": state["best_epoch"],
        "selection": f"best mean AUROC on the {cfg.probe.select_on} split",
        "select_on": cfg.probe.select_on,
        "labels": list(NIH_LABELS),
        "n_images": n_images,
        "val": val_best.as_json(),
        "test": test.as_json(),
        "val_mean_auroc_per_epoch": [_nan_to_none(v) for v in state["val_history"]],
        **({"test_mean_auroc_per_epoch": [_nan_to_none(v) for v in state["test_history"]]} if on_test else {}),
        "train_seconds": round(time.time() - started, 1),
        "versions": library_versions(),
    }
    write_results(results, run.path)
    log.info("selected epoch %d: val mean AUROC %.4f, test mean AUROC %.4f -> %s", state["best_epoch"],
             val_best.mean, test.mean, run.path / PROBE_RESULTS)
    return results


def train_one_epoch(model: ProbeModel, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
                    optimizer: torch.optim.Optimizer, criterion: nn.Module, lr_factor: np.ndarray, amp: str,
                    head_only: bool, desc: str = "", *, run: RunDir | None = None,
                    scaler: torch.amp.GradScaler | None = None, metrics: MetricsLog | None = None, step: int = 0,
                    epoch: int = 1, log_every: int = 10, last: int | None = None) -> float:
    """One pass over `batches` (images, or features when head_only); returns the mean loss. `step`: the
    global step before this epoch (metrics rows every `log_every` steps and at the run's `last`); `scaler`:
    the run's loss scaler (none: a disabled one, a plain backward and step)."""
    model.train()
    env = run.env if run is not None else DistEnv()
    scaler = scaler if scaler is not None else grad_scaler(env.device, "none")
    base = [g["initial_lr"] for g in optimizer.param_groups]
    total, count = 0.0, 0
    with Progress(env, metrics, log_every=log_every, last=last, start=step, length=len(lr_factor), desc=desc,
                  leave=False) as progress:
        for i, (x, y) in enumerate(batches):
            factor = float(lr_factor[min(i, len(lr_factor) - 1)])
            set_learning_rates(optimizer, [peak * factor for peak in base])
            with autocast(x.device, "none" if head_only else amp):
                logits = model.head(x) if head_only else model(x)
            loss = criterion(logits.float(), y)
            if run is not None:
                run.check_finite(loss, step, epoch - 1, "Lower optim.lr_head / optim.lr_backbone.")
            backward_step(loss, optimizer, scaler)
            step += 1
            total += loss.item() * len(y)
            count += len(y)
            if progress.update(step):
                progress.row(step, epoch=epoch, loss=loss, lr_head=optimizer.param_groups[0]["lr"])
    return total / max(count, 1)


@torch.no_grad()
def predict(model: ProbeModel, source: Any, cfg: ProbeConfig, device: torch.device,
            use_features: bool) -> tuple[np.ndarray, np.ndarray]:
    """Targets and sigmoid scores (N, 15) of a split, in dataset order."""
    model.eval()
    batches = (_feature_batches(source, cfg.optim.batch_size, None, device) if use_features
               else _image_batches(source, cfg, device, shuffle=False))
    targets, scores = [], []
    for x, y in batches:
        with autocast(x.device, "none" if use_features else cfg.amp):
            logits = model.head(x) if use_features else model(x)
        scores.append(torch.sigmoid(logits.float()).cpu())
        targets.append(y.cpu())
    return torch.cat(targets).numpy(), torch.cat(scores).numpy()


def evaluate(model: ProbeModel, source: Any, cfg: ProbeConfig, device: torch.device,
             use_features: bool, split: str, quiet: bool = False) -> AurocReport:
    targets, scores = predict(model, source, cfg, device, use_features)
    return auroc_report(targets, scores, NIH_LABELS, split=split, quiet=quiet)


@torch.no_grad()
def extract_features(model: ProbeModel, loader: DataLoader, device: torch.device, amp: str = "none",
                     name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (N, D) float32 and targets (N, 15) of a whole split, with the backbone in eval mode."""
    model.eval()
    feats, targets = [], []
    for images, y in tqdm(loader, desc=f"features {name}", leave=False, disable=progress_disabled()):
        with autocast(device, amp):
            feats.append(model.features(images.to(device, non_blocking=True)).float())
        targets.append(y.to(device).float())
    return torch.cat(feats), torch.cat(targets)


# ----------------------------------------------------------------------------------------------- helpers
def _feature_batches(source: tuple[torch.Tensor, torch.Tensor], batch_size: int, seed: int | None,
                     device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    feats, targets = source
    n = len(feats)
    order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if seed is not None
             else torch.arange(n)).to(feats.device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield feats[idx].to(device), targets[idx].to(device)


def _image_batches(dataset: Dataset, cfg: ProbeConfig, device: torch.device, shuffle: bool,
                   seed: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for images, y in _loader(dataset, cfg, device, shuffle, seed):
        yield images.to(device, non_blocking=True), y.to(device, non_blocking=True).float()


def _loader(dataset: Dataset, cfg: ProbeConfig, device: torch.device, shuffle: bool = False,
            seed: int | None = None) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(dataset, batch_size=cfg.optim.batch_size, shuffle=shuffle, generator=generator,
                      num_workers=cfg.data.workers, pin_memory=device.type == "cuda",
                      persistent_workers=False)


def lr_factors(optim: OptimConfig, steps_per_epoch: int) -> np.ndarray:
    """One factor per step, multiplied into each group's own peak lr (head and backbone decay together).
    The cosine reaches 0 one step after the end, so the last step still learns (as CosineAnnealingLR);
    cosine_by="epoch" holds each epoch at the value of its first step (CosineAnnealingLR stepped per epoch)."""
    factor = warmup_cosine(1.0, steps_per_epoch * optim.epochs + 1, optim.warmup_epochs * steps_per_epoch, final=0.0)
    if optim.cosine_by == "epoch":
        factor = np.repeat(factor[:-1:steps_per_epoch], steps_per_epoch)
    return factor


def _optimizer(model: ProbeModel, cfg: ProbeConfig, frozen: bool) -> torch.optim.Optimizer:
    groups = [{"params": list(model.head.parameters()), "lr": cfg.optim.lr_head}]
    if not frozen:
        groups.append({"params": list(model.backbone.parameters()), "lr": cfg.optim.lr_backbone})
    for group in groups:
        group["initial_lr"] = group["lr"]
    return torch.optim.SGD(groups, lr=cfg.optim.lr_head, momentum=cfg.optim.momentum,
                           weight_decay=cfg.optim.weight_decay)


def _model_state(model: ProbeModel, frozen: bool, epoch: int, cfg: ProbeConfig) -> dict[str, Any]:
    """A frozen backbone is the input file, so only the head is stored; a fine-tuned one is stored too."""
    state: dict[str, Any] = {"head": {k: v.detach().cpu() for k, v in model.head.state_dict().items()},
                             "epoch": epoch, "backbone_source": str(cfg.model.init), "mode": cfg.probe.mode,
                             "labels": list(NIH_LABELS), "config": config_to_dict(cfg),
                             "versions": library_versions()}
    if not frozen:
        state["backbone"] = {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}
    return state


def _load_model_state(model: ProbeModel, state: dict[str, Any], frozen: bool) -> None:
    model.head.load_state_dict(state["head"])
    if not frozen:
        model.backbone.load_state_dict(state["backbone"])


def _log_auroc(metrics: MetricsLog | None, step: int, phase: str, report: AurocReport, **extra: Any) -> None:
    if metrics is not None:
        metrics.log(step, phase, **extra, mean_auroc=_nan_to_none(report.mean),
                    **{f"auroc/{k}": _nan_to_none(v) for k, v in report.per_label.items()})


def _nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)
