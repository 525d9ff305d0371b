"""How well heatmaps point at the radiologists' boxes: energy in box, pointing game, bootstrap intervals.

For every true-positive detection (IoU >= 0.5 with a ground-truth box of its class, matched greedily by
descending score as COCO does, each ground-truth box matched once), against the ground-truth box it matched:
- energy in box: the share of the heatmap's sum that falls inside the box (a pixel counts when its centre
  lies inside); 1 = all the heat on the finding, the box's area share = no better than uniform;
- pointing game (Zhang et al., ECCV 2016): a hit when the heatmap's maximum lies inside the box or within
  `tolerance` pixels of it (they used 15 px).
Means come with percentile bootstrap intervals that resample images (boxes of one image are not
independent), per model and per class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torchvision.ops import box_iou

from btcxr.engine.escape import md_text

METRICS = ("energy_in_box", "pointing_game")
RECORD_COLUMNS = ["model", "image_id", "class_id", "class_name", "score", "iou", "energy_in_box", "pointing_game"]


def box_mask(shape: tuple[int, int], box: Sequence[float]) -> np.ndarray:
    """(H, W) bool: pixels whose centre (x + 0.5, y + 0.5) lies in [x_min, x_max] x [y_min, y_max]."""
    height, width = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    xs = np.arange(width) + 0.5
    ys = np.arange(height) + 0.5
    return ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]


def energy_in_box(heatmap: np.ndarray, box: Sequence[float]) -> float:
    """Sum of the heatmap inside the box / its total sum (NaN for an all-zero heatmap)."""
    heat = np.asarray(heatmap, dtype=np.float64)
    total = heat.sum()
    if total <= 0:
        return math.nan
    return float(heat[box_mask(heat.shape, box)].sum() / total)


def pointing_hit(heatmap: np.ndarray, box: Sequence[float], tolerance: float = 15.0) -> bool:
    """Whether the heatmap's maximum (its first occurrence, row-major; taken at the pixel centre) lies in
    the box or within `tolerance` pixels (Euclidean) of it."""
    heat = np.asarray(heatmap)
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    x, y = col + 0.5, row + 0.5
    x0, y0, x1, y1 = (float(v) for v in box)
    dx = max(x0 - x, 0.0, x - x1)
    dy = max(y0 - y, 0.0, y - y1)
    return bool(math.hypot(dx, dy) <= tolerance)


def match_true_positives(det_boxes: np.ndarray, det_class: np.ndarray, det_scores: np.ndarray,
                         gt_boxes: np.ndarray, gt_class: np.ndarray, iou_thr: float = 0.5
                         ) -> tuple[np.ndarray, np.ndarray]:
    """For each detection, the index of the ground-truth box it matches (-1: false positive) and the IoU.

    Greedy by descending score (stable); a detection takes the still unmatched ground-truth box of its class
    with the highest IoU >= iou_thr (pycocotools' rule).
    """
    n_det = len(det_scores)
    matched = np.full(n_det, -1, dtype=np.int64)
    overlap = np.zeros(n_det, dtype=np.float64)
    if n_det == 0 or len(gt_boxes) == 0:
        return matched, overlap
    iou = box_iou(torch.as_tensor(np.asarray(det_boxes, np.float64).reshape(-1, 4)),
                  torch.as_tensor(np.asarray(gt_boxes, np.float64).reshape(-1, 4))).numpy()
    iou = np.where(np.asarray(det_class)[:, None] == np.asarray(gt_class)[None, :], iou, -1.0)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for d in np.argsort(-np.asarray(det_scores), kind="stable"):
        candidates = np.where(taken, -1.0, iou[d])
        g = int(np.argmax(candidates))
        if candidates[g] >= iou_thr:
            taken[g] = True
            matched[d], overlap[d] = g, candidates[g]
    return matched, overlap


def bootstrap_mean(values: Sequence[float], groups: Sequence[object] | None = None, n_boot: int = 2000,
                   level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean and percentile bootstrap interval, resampling `groups` (e.g. images) with replacement.

    Hand-written because scipy.stats.bootstrap resamples single observations only: with one group per value
    it is the ordinary percentile bootstrap. Fewer than two groups give a NaN interval.
    """
    x = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(x)
    x = x[keep]
    if x.size == 0:
        return {"mean": math.nan, "ci_lo": math.nan, "ci_hi": math.nan, "n": 0}
    labels = np.arange(x.size) if groups is None else np.asarray(groups, dtype=object)[keep]
    _, cluster = np.unique(labels.astype(str), return_inverse=True)
    n_groups = int(cluster.max()) + 1
    sums = np.bincount(cluster, weights=x, minlength=n_groups)
    counts = np.bincount(cluster, minlength=n_groups).astype(np.float64)
    mean = float(x.mean())
    if n_groups < 2:
        return {"mean": mean, "ci_lo": math.nan, "ci_hi": math.nan, "n": int(x.size)}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
    stats = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return {"mean": mean, "ci_lo": float(lo), "ci_hi": float(hi), "n": int(x.size)}


def summarise(records: pd.DataFrame, n_boot: int = 2000, level: float = 0.95, seed: int = 0
              ) -> dict[str, dict]:
    """{model: {metric: {mean, ci_lo, ci_hi, n}, counts: {...}, per_class: {class: {metric: ...}}}} from one
    row per true-positive detection (RECORD_COLUMNS)."""
    out: dict[str, dict] = {}
    for model, part in records.groupby("model", sort=False):
        entry: dict[str, object] = {
            metric: bootstrap_mean(part[metric].astype(float), part["image_id"], n_boot, level, seed)
            for metric in METRICS}
        entry["counts"] = {"true_positives": int(len(part)), "images": int(part["image_id"].nunique())}
        entry["per_class"] = {
            str(cls): {metric: bootstrap_mean(rows[metric].astype(float), rows["image_id"], n_boot, level, seed)
                       for metric in METRICS}
            for cls, rows in part.groupby("class_name", sort=True)}
        out[str(model)] = entry
    return out


def empty_entry() -> dict[str, object]:
    """The summary entry of a model without any true positive."""
    nothing = {"mean": math.nan, "ci_lo": math.nan, "ci_hi": math.nan, "n": 0}
    return {"energy_in_box": dict(nothing), "pointing_game": dict(nothing),
            "counts": {"true_positives": 0, "images": 0}, "per_class": {}}


def _fmt(stat: dict[str, float]) -> str:
    if stat["n"] == 0 or math.isnan(stat["mean"]):
        return "n/a"
    if math.isnan(stat["ci_lo"]):
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} [{stat['ci_lo']:.3f}, {stat['ci_hi']:.3f}]"


def markdown_table(models: dict[str, dict]) -> str:
    """The summary as a Markdown table: overall rows per model, then one row per model and class."""
    lines = ["| Model | Class | n | Energy in box [95 % CI] | Pointing game [95 % CI] |",
             "|---|---|---:|---|---|"]
    for model, entry in models.items():
        lines.append(f"| {md_text(model)} | all | {entry['energy_in_box']['n']} | {_fmt(entry['energy_in_box'])} | "
                     f"{_fmt(entry['pointing_game'])} |")
        for cls, stats in entry["per_class"].items():
            lines.append(f"| {md_text(model)} | {md_text(cls)} | {stats['energy_in_box']['n']} | {_fmt(stats['energy_in_box'])} | "
                         f"{_fmt(stats['pointing_game'])} |")
    return "\n".join(lines) + "\n"
