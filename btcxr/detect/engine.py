"""One training epoch and prediction over a loader (torchvision references/detection/engine.py in spirit).

Predictions leave this module as a predictions frame (btcxr.detect.predictions.PREDICTION_COLUMNS) in the
pixels of the ORIGINAL radiographs: the model answers in the frame of its input, which maps back with the
ratio of the longest sides (btcxr.detect.transforms.to_original_frame).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

from btcxr.detect.predictions import PREDICTION_COLUMNS, check_predictions
from btcxr.detect.transforms import to_original_frame
from btcxr.engine.distributed import DistEnv, mean_over_ranks
from btcxr.engine.loop import backward_step, set_learning_rates
from btcxr.engine.progress import Progress
from btcxr.engine.run import RunDir
from btcxr.engine.runlog import MetricsLog
from btcxr.engine.runtime import autocast, grad_scaler
from btcxr.engine.schedule import warmup_cosine
from btcxr.logs import progress_disabled

log = logging.getLogger(__name__)

LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


def collate(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Detection batches stay lists: images differ in size (the model pads them)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def model_targets(images: Sequence[torch.Tensor], targets: Sequence[dict], device: torch.device) -> list[dict]:
    """Dataset targets -> what torchvision's detector trains on: boxes clipped to the image, boxes without
    area dropped (torchvision refuses them), labels shifted by one (0 is the background)."""
    out = []
    for image, target in zip(images, targets):
        h, w = image.shape[-2:]
        boxes = target["boxes"].to(torch.float32).reshape(-1, 4).clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        out.append({"boxes": boxes[keep].to(device, non_blocking=True),
                    "labels": (target["labels"].to(torch.int64)[keep] + 1).to(device, non_blocking=True)})
    return out


def train_one_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: Iterable,
                    lr_values: np.ndarray, step: int, *, run: RunDir, amp: str = "none",
                    scaler: torch.amp.GradScaler | None = None, clip_grad: float | None = None,
                    metrics: MetricsLog | None = None, log_every: int = 20, epoch: int = 0,
                    max_steps: int | None = None) -> tuple[int, dict[str, float]]:
    """Train for one pass over `loader`, setting the learning rate of every step from `lr_values[step]`.

    Returns (next global step, mean of each loss and the throughput over the epoch, averaged over ranks).
    Metrics rows every `log_every` steps and at the run's last step (`len(lr_values)`); `scaler`: the run's
    loss scaler (none: a disabled one); `max_steps` cuts the epoch short (benchmarks).
    """
    model.train()
    env = run.env
    device = env.device
    scaler = scaler if scaler is not None else grad_scaler(device, "none")
    sums = dict.fromkeys(("loss", *LOSS_KEYS), 0.0)
    n_iter, n_images = 0, 0
    start = time.perf_counter()
    length = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    with Progress(env, metrics, log_every=log_every, last=len(lr_values), start=step, length=length,
                  desc=f"epoch {epoch + 1}", leave=False, rate="images_per_s") as progress:
        for images, targets in loader:
            lr = float(lr_values[min(step, len(lr_values) - 1)])
            set_learning_rates(optimizer, [lr] * len(optimizer.param_groups))
            images = [img.to(device, non_blocking=True) for img in images]
            tgts = model_targets(images, targets, device)
            with autocast(device, amp):
                loss_dict = model(images, tgts)
            loss = sum(loss_dict.values())
            run.check_finite(loss, step, epoch, f"Loss terms: { {k: round(float(v.detach()), 4) for k, v in loss_dict.items()} }; "
                             "lower optim.lr, use amp=none or check the boxes of the cache.")
            backward_step(loss, optimizer, scaler, clip=clip_grad)

            values = {"loss": float(loss.detach())} | {k: float(v.detach()) for k, v in loss_dict.items()}
            for key in sums:
                sums[key] += values.get(key, 0.0)
            n_iter += 1
            n_images += len(images)
            step += 1
            if progress.update(step, items=len(images) * env.world_size):
                progress.row(step, epoch=epoch + 1, lr=lr, **values, mean=tuple(values))
            if max_steps is not None and n_iter >= max_steps:
                break
    elapsed = time.perf_counter() - start
    means = {k: mean_over_ranks(v / max(n_iter, 1), env) for k, v in sums.items()}
    means["images_per_s"] = n_images * env.world_size / max(elapsed, 1e-9)
    return step, means


@torch.no_grad()
def predict_batch(model: torch.nn.Module, images: Sequence[torch.Tensor], orig_sizes: Sequence[Sequence[int]],
                  device: torch.device, amp: str = "none") -> list[dict[str, np.ndarray]]:
    """Run the detector on images (float (1|3, h, w) in [0, 1]) and return per image
    {"boxes" (n, 4) in ORIGINAL pixels, "scores", "class_id" (0..13)} as numpy arrays."""
    model.eval()
    images = [img.to(device, non_blocking=True) for img in images]
    with autocast(device, amp):
        outputs = model(images)
    results = []
    for image, out, orig in zip(images, outputs, orig_sizes):
        boxes = to_original_frame(out["boxes"].float(), image.shape[-2:], orig)
        # The short side of a resized image is rounded to whole pixels, so the one-factor mapping can
        # overshoot the original extent by < 0.5 input px: clip to the original image.
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, float(orig[1]))
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, float(orig[0]))
        results.append({"boxes": boxes.cpu().numpy().astype(np.float64),
                        "scores": out["scores"].float().cpu().numpy().astype(np.float64),
                        "class_id": (out["labels"].cpu().numpy() - 1).astype(np.int64)})
    return results


def predictions_frame(image_ids: Sequence[str], results: Sequence[dict[str, np.ndarray]]) -> pd.DataFrame:
    """Per-image results of `predict_batch` -> one canonical predictions frame (PREDICTION_COLUMNS)."""
    counts = [len(r["scores"]) for r in results]
    if sum(counts) == 0:
        return check_predictions(pd.DataFrame(columns=PREDICTION_COLUMNS), "detector output")
    boxes = np.concatenate([r["boxes"].reshape(-1, 4) for r in results])
    frame = pd.DataFrame({
        "image_id": np.repeat(np.asarray(image_ids, dtype=object), counts),
        "class_id": np.concatenate([r["class_id"] for r in results]),
        "score": np.concatenate([r["scores"] for r in results]),
        "x_min": boxes[:, 0], "y_min": boxes[:, 1], "x_max": boxes[:, 2], "y_max": boxes[:, 3],
    })
    return check_predictions(frame, "detector output")


def predict_loader(model: torch.nn.Module, loader: Iterable, env: DistEnv, amp: str = "none",
                   desc: str = "predict") -> tuple[pd.DataFrame, list[str]]:
    """Predict every image of a detection loader (targets carry image_id and orig_size).

    Under DDP each rank predicts its shard and the results are gathered on every rank (duplicates that a
    DistributedSampler adds to even out the shards are dropped). Returns (predictions in original pixels,
    the ids of all images seen, sorted).
    """
    per_image: dict[str, dict[str, np.ndarray]] = {}
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    for images, targets in tqdm(loader, total=total, desc=desc, leave=False, dynamic_ncols=True,
                                disable=progress_disabled() or not env.is_main):
        results = predict_batch(model, images, [t["orig_size"] for t in targets], env.device, amp)
        for target, result in zip(targets, results):
            per_image[str(target["image_id"])] = result
    if env.distributed:
        gathered: list[Any] = [None] * env.world_size
        dist.all_gather_object(gathered, per_image)
        per_image = {}
        for part in gathered:
            for key, value in part.items():
                per_image.setdefault(key, value)
    ids = sorted(per_image)
    return predictions_frame(ids, [per_image[i] for i in ids]), ids


def lr_for_steps(lr: float, total_steps: int, warmup_iters: int, warmup_factor: float, final_lr: float,
                 steps_per_epoch: int = 1, cosine_by: str = "step") -> np.ndarray:
    """The learning rate of every iteration: linear warm-up from lr * warmup_factor, then cosine to final_lr.

    cosine_by="epoch" is MMDetection 2.x / mmcv's CosineAnnealing with by_epoch=True and a linear warm-up
    by iterations, the paper's detector: epoch e runs at final + (lr - final)(1 + cos(pi e / epochs)) / 2,
    and iteration i < warmup_iters at that value x (1 - (1 - i / warmup_iters)(1 - warmup_factor))."""
    if cosine_by == "step":
        return warmup_cosine(lr, total_steps, warmup_iters, final_lr, warmup_start=lr * warmup_factor)
    steps = np.arange(total_steps)
    epoch = steps // steps_per_epoch
    epochs = -(-total_steps // steps_per_epoch)
    regular = final_lr + 0.5 * (lr - final_lr) * (1 + np.cos(np.pi * epoch / epochs))
    warm = (1 - (1 - steps / max(warmup_iters, 1)) * (1 - warmup_factor))
    return np.where(steps < warmup_iters, regular * warm, regular)
