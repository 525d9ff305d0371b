"""The NIH classification evaluation of a backbone: linear probe or fine-tune, selected on val, tested once.

One loop for both modes. With a frozen backbone and `probe.cache_features`, the features of every split
are extracted once and the linear head trains on those tensors; otherwise each epoch runs images through
the model. After every epoch the val split is scored; the epoch with the best mean val AUROC is kept
(best.pt) and, once training ends, that model alone scores the test split. The official code picked the
best epoch on its test split; selecting on val keeps the test number an honest estimate.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from btcxr.classify.config import ProbeConfig
from btcxr.classify.data import nih_splits
from btcxr.classify.metrics import AurocReport, auroc_report
from btcxr.classify.model import ProbeModel, build_probe_model
from btcxr.classify.results import write_results
from btcxr.config import config_to_dict, save_config
from btcxr.data.classes import NIH_LABELS
from btcxr.engine.checkpoint import (
    library_versions,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from btcxr.engine.runlog import MetricsLog
from btcxr.engine.schedule import warmup_cosine
from btcxr.errors import BtcxrError
from btcxr.logs import progress_disabled

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def probe(cfg: ProbeConfig, backbone: str, out_dir: str | Path, init_weights: str | Path | None = None,
          resume: bool = False) -> dict[str, Any]:
    """Train and evaluate a classifier over the 15 NIH labels on top of `backbone`.

    backbone: "imagenet", "random" or a file (backbone.pth, a pre-training checkpoint, a torchvision
    state dict); init_weights: the ImageNet weights file for backbone="imagenet" on offline machines.
    Writes config.yaml, metrics.jsonl, tb/, best.pt, last.pt, results.json and results.md into out_dir
    and returns the results dict (see results.json). resume: continue from out_dir/last.pt.
    """
    if init_weights is not None and backbone != "imagenet":
        raise BtcxrError(f"--init-weights {init_weights} only applies to --backbone imagenet "
                         f"(got --backbone {backbone})")
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise BtcxrError("the probe runs in one process; launch it without torchrun")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.device)
    frozen = cfg.probe.mode == "freeze"
    use_features = frozen and cfg.probe.cache_features
    if use_features and cfg.augment.train:
        log.info("probe.cache_features: features are extracted once from the eval view; no training "
                 "augmentation (set probe.cache_features=false to augment)")

    datasets = nih_splits(cfg.data, cfg.augment, train_augment=not use_features)
    n_images = {name: len(ds) for name, ds in datasets.items()}
    log.info("images: train %d (fraction %g), val %d, test %d", n_images["train"], cfg.data.fraction,
             n_images["val"], n_images["test"])
    _seed_everything(cfg.seed)  # a random backbone and the head start from the run seed
    model = build_probe_model(cfg.model.arch, backbone, frozen=frozen, init_weights=init_weights,
                              imagenet_weights=cfg.model.imagenet_weights).to(device)
    save_config(cfg, out_dir / "config.yaml")

    amp = cfg.optim.amp and device.type == "cuda"
    if use_features:
        source: dict[str, Any] = {name: extract_features(model, _loader(ds, cfg, device), device, amp, name)
                                  for name, ds in datasets.items()}
    else:
        source = dict(datasets)

    optimizer = _optimizer(model, cfg, frozen)
    steps_per_epoch = math.ceil(n_images["train"] / cfg.optim.batch_size)
    total_steps = cfg.optim.epochs * steps_per_epoch
    # One factor per step, multiplied into each group's own peak lr (head and backbone decay together).
    # The cosine reaches 0 one step after the end, so the last step still learns (as CosineAnnealingLR).
    factor = warmup_cosine(1.0, total_steps + 1, cfg.optim.warmup_epochs * steps_per_epoch, final=0.0)

    state = {"epoch": 0, "best_epoch": 0, "best_val": -math.inf, "val_history": []}
    if resume and (out_dir / "last.pt").is_file():
        state = _resume(out_dir / "last.pt", model, optimizer, frozen)
        log.info("resuming %s after epoch %d", out_dir, state["epoch"])
    elif resume:
        log.info("no %s: starting a new run", out_dir / "last.pt")

    metrics = MetricsLog(out_dir, tensorboard=cfg.tensorboard)
    criterion = nn.BCEWithLogitsLoss()
    started = time.time()
    try:
        for epoch in range(state["epoch"] + 1, cfg.optim.epochs + 1):
            epoch_seed = cfg.seed * 1000 + epoch
            _seed_everything(epoch_seed)  # each epoch's shuffle and crops, the same after a resume
            batches = (_feature_batches(source["train"], cfg.optim.batch_size, epoch_seed, device)
                       if use_features else _image_batches(source["train"], cfg, device, True, epoch_seed))
            first = (epoch - 1) * steps_per_epoch
            lr_factor = factor[first:first + steps_per_epoch]
            loss = train_one_epoch(model, batches, optimizer, criterion, lr_factor, amp,
                                   head_only=use_features, desc=f"epoch {epoch}/{cfg.optim.epochs}")
            val = evaluate(model, source["val"], cfg, device, amp, use_features, "val", quiet=epoch > 1)
            state["val_history"].append(val.mean)
            metrics.log(epoch, "train", loss=loss, lr_head=optimizer.param_groups[0]["lr"])
            metrics.log(epoch, "val", mean_auroc=_nan_to_none(val.mean),
                        **{f"auroc/{k}": _nan_to_none(v) for k, v in val.per_label.items()})
            improved = not math.isnan(val.mean) and val.mean > state["best_val"]
            log.info("epoch %d: train loss %.4f, val mean AUROC %.4f%s", epoch, loss, val.mean,
                     " (best so far)" if improved else "")
            if improved:
                state.update(best_epoch=epoch, best_val=val.mean)
                save_checkpoint(out_dir / "best.pt", _model_state(model, frozen, epoch, cfg, backbone))
            state["epoch"] = epoch
            save_checkpoint(out_dir / "last.pt", {**_model_state(model, frozen, epoch, cfg, backbone),
                                                  "optimizer": optimizer.state_dict(), "rng": rng_state(),
                                                  **{k: state[k] for k in ("best_epoch", "best_val")},
                                                  "val_history": [float(v) for v in state["val_history"]]})
        if state["best_epoch"] == 0:
            raise BtcxrError(f"no epoch gave a defined mean val AUROC (every label has a single class in the "
                             f"{cfg.data.val_split!r} split of {cfg.data.cache}): nothing to select")
        # The selected (val-best) model, read back from the file we keep, scores the test split once.
        best = load_checkpoint(out_dir / "best.pt", map_location=device)
        _load_model_state(model, best, frozen)
        val_best = evaluate(model, source["val"], cfg, device, amp, use_features, "val", quiet=True)
        test = evaluate(model, source["test"], cfg, device, amp, use_features, "test")
        metrics.log(state["best_epoch"], "test", mean_auroc=_nan_to_none(test.mean),
                    **{f"auroc/{k}": _nan_to_none(v) for k, v in test.per_label.items()})
    finally:
        metrics.close()

    results = {
        "backbone": str(backbone),
        "init_weights": str(init_weights) if init_weights else None,
        "arch": cfg.model.arch,
        "mode": cfg.probe.mode,
        "fraction": cfg.data.fraction,
        "fraction_seed": cfg.data.fraction_seed,
        "seed": cfg.seed,
        "cache": str(cfg.data.cache),
        "input_size": cfg.data.input_size,
        "cached_features": use_features,
        "epochs": cfg.optim.epochs,
        "selected_epoch": state["best_epoch"],
        "selection": "best mean AUROC on the val split",
        "labels": list(NIH_LABELS),
        "n_images": n_images,
        "val": val_best.as_json(),
        "test": test.as_json(),
        "val_mean_auroc_per_epoch": [_nan_to_none(v) for v in state["val_history"]],
        "train_seconds": round(time.time() - started, 1),
        "versions": library_versions(),
    }
    write_results(results, out_dir)
    log.info("selected epoch %d: val mean AUROC %.4f, test mean AUROC %.4f -> %s", state["best_epoch"],
             val_best.mean, test.mean, out_dir / "results.json")
    return results


def train_one_epoch(model: ProbeModel, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
                    optimizer: torch.optim.Optimizer, criterion: nn.Module, lr_factor: np.ndarray, amp: bool,
                    head_only: bool, desc: str = "") -> float:
    """One pass over `batches` (images, or features when head_only); returns the mean loss."""
    model.train()
    base = [g["initial_lr"] for g in optimizer.param_groups]
    total, count = 0.0, 0
    bar = tqdm(batches, total=len(lr_factor), desc=desc, leave=False, disable=progress_disabled())
    for i, (x, y) in enumerate(bar):
        for group, peak in zip(optimizer.param_groups, base):
            group["lr"] = peak * float(lr_factor[min(i, len(lr_factor) - 1)])
        with _autocast(x.device, amp and not head_only):
            logits = model.head(x) if head_only else model(x)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        count += len(y)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return total / max(count, 1)


@torch.no_grad()
def predict(model: ProbeModel, source: Any, cfg: ProbeConfig, device: torch.device, amp: bool,
            use_features: bool) -> tuple[np.ndarray, np.ndarray]:
    """Targets and sigmoid scores (N, 15) of a split, in dataset order."""
    model.eval()
    batches = (_feature_batches(source, cfg.optim.batch_size, None, device) if use_features
               else _image_batches(source, cfg, device, shuffle=False))
    targets, scores = [], []
    for x, y in batches:
        with _autocast(x.device, amp and not use_features):
            logits = model.head(x) if use_features else model(x)
        scores.append(torch.sigmoid(logits.float()).cpu())
        targets.append(y.cpu())
    return torch.cat(targets).numpy(), torch.cat(scores).numpy()


def evaluate(model: ProbeModel, source: Any, cfg: ProbeConfig, device: torch.device, amp: bool,
             use_features: bool, split: str, quiet: bool = False) -> AurocReport:
    targets, scores = predict(model, source, cfg, device, amp, use_features)
    return auroc_report(targets, scores, NIH_LABELS, split=split, quiet=quiet)


@torch.no_grad()
def extract_features(model: ProbeModel, loader: DataLoader, device: torch.device, amp: bool,
                     name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (N, D) float32 and targets (N, 15) of a whole split, with the backbone in eval mode."""
    model.eval()
    feats, targets = [], []
    for images, y in tqdm(loader, desc=f"features {name}", leave=False, disable=progress_disabled()):
        with _autocast(device, amp):
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


def _optimizer(model: ProbeModel, cfg: ProbeConfig, frozen: bool) -> torch.optim.Optimizer:
    groups = [{"params": list(model.head.parameters()), "lr": cfg.optim.lr_head}]
    if not frozen:
        groups.append({"params": list(model.backbone.parameters()), "lr": cfg.optim.lr_backbone})
    for group in groups:
        group["initial_lr"] = group["lr"]
    return torch.optim.SGD(groups, lr=cfg.optim.lr_head, momentum=cfg.optim.momentum,
                           weight_decay=cfg.optim.weight_decay)


def _model_state(model: ProbeModel, frozen: bool, epoch: int, cfg: ProbeConfig,
                 backbone: str) -> dict[str, Any]:
    """A frozen backbone is the input file, so only the head is stored; a fine-tuned one is stored too."""
    state: dict[str, Any] = {"head": {k: v.detach().cpu() for k, v in model.head.state_dict().items()},
                             "epoch": epoch, "backbone_source": str(backbone), "mode": cfg.probe.mode,
                             "labels": list(NIH_LABELS), "config": config_to_dict(cfg),
                             "versions": library_versions()}
    if not frozen:
        state["backbone"] = {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}
    return state


def _load_model_state(model: ProbeModel, state: dict[str, Any], frozen: bool) -> None:
    model.head.load_state_dict(state["head"])
    if not frozen:
        model.backbone.load_state_dict(state["backbone"])


def _resume(path: Path, model: ProbeModel, optimizer: torch.optim.Optimizer, frozen: bool) -> dict[str, Any]:
    ckpt = load_checkpoint(path)
    if ckpt.get("mode") != ("freeze" if frozen else "finetune"):
        raise BtcxrError(f"{path} was written by a {ckpt.get('mode')} run; resume it with the same "
                         f"probe.mode")
    _load_model_state(model, ckpt, frozen)
    optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"])
    return {"epoch": int(ckpt["epoch"]), "best_epoch": int(ckpt["best_epoch"]),
            "best_val": float(ckpt["best_val"]), "val_history": list(ckpt["val_history"])}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BtcxrError(f"device={name} but CUDA is not available; use device=cpu or device=auto")
    return device


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16) if enabled and device.type == "cuda" \
        else nullcontext()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)
