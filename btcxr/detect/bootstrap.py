"""Bootstrap confidence intervals for mAP, resampling images with replacement.

Matching is done once. A resample draws n images with replacement; image i drawn c_i times counts as c_i
copies of its detections and GT boxes. Copies of a detection sit next to each other in the score ranking
and share its TP/FP flag, so a resample only re-weights the running TP/FP totals of each class's ranked
detections and its GT count (ap.cumulative_counts explains why that gives the AP of the copies).
Nothing is re-matched.

A second saving: both AP definitions only read the precision-recall curve at true positives. Recall
grows only there, COCO reads the first point reaching each recall threshold (a TP, or the first point when
the threshold is 0, whose envelope is the maximum over TPs as well) and the running maximum of precision
from the right is attained at TPs (after a TP, FPs only lower precision). So each class keeps its TPs in
rank order plus, per TP, the FPs ranked since the previous TP (a sparse image x segment count matrix);
a resample costs (resamples x TPs) dense work plus (resamples x FP entries) sparse work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from btcxr.detect.ap import ClassRanking, coco_precision, voc_ap


@dataclass(frozen=True)
class BootstrapInterval:
    samples: np.ndarray  # (n_boot,) the statistic on each resample
    low: float
    high: float
    level: float

    def as_list(self) -> list[float]:
        return [float(self.low), float(self.high)]


@dataclass(frozen=True)
class TPCurve:
    """One class reduced to what the AP reads: its TPs in rank order and the FPs ranked before each."""

    tp_image: np.ndarray  # (n_tp,) image of each TP, best score first
    fp_between: sparse.csr_matrix  # (n_tp, n_images): FPs of each image ranked after TP j-1 and before TP j
    gt_image: np.ndarray  # (m,) the images holding GT boxes of the class
    gt_count: np.ndarray  # (m,) how many each


def reduce_to_tps(ranked: ClassRanking, n_images: int, t: int = 0) -> TPCurve:
    """Reduce a class ranking at IoU-threshold row `t` (see the module docstring)."""
    tp = ranked.tp[t]
    tp_pos, fp_pos = np.flatnonzero(tp), np.flatnonzero(~tp)
    segment = np.searchsorted(tp_pos, fp_pos)  # index of the next TP
    keep = segment < len(tp_pos)  # FPs after the last TP change no point that the AP reads
    fp_between = sparse.csr_matrix(
        (np.ones(int(keep.sum())), (segment[keep], ranked.image[fp_pos[keep]])), shape=(len(tp_pos), n_images))
    gt_image, gt_count = np.unique(ranked.gt_image, return_counts=True)
    return TPCurve(tp_image=ranked.image[tp_pos], fp_between=fp_between, gt_image=gt_image,
                   gt_count=gt_count.astype(np.float64))


def resample_counts(rng: np.random.Generator, n_images: int, n_boot: int) -> np.ndarray:
    """(n_boot, n_images) counts of how often each image is drawn in each resample."""
    draws = rng.integers(0, n_images, size=(n_boot, n_images))
    offsets = (np.arange(n_boot) * n_images)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=n_boot * n_images).reshape(n_boot, n_images)


def mean_ap_on_weights(curves: list[TPCurve], counts: np.ndarray, style: str) -> np.ndarray:
    """mAP over classes for each row of image `counts` (n_rows, n_images); style 'coco' (101-point) or
    'voc' (all-point). Classes without GT in a row are left out of that row's mean, as in the point
    estimate. With all counts 1 this is the point estimate."""
    counts = counts.astype(np.float64)
    counts_t = np.ascontiguousarray(counts.T)  # once, for the sparse products
    per_class = np.full((counts.shape[0], len(curves)), np.nan)
    for k, c in enumerate(curves):
        if len(c.gt_image) == 0:
            continue  # no GT in any resample: NaN, left out of the mean
        npos = (counts[:, c.gt_image] * c.gt_count).sum(axis=1)
        tp_cum = np.cumsum(counts[:, c.tp_image], axis=1)
        fp_cum = np.cumsum((c.fp_between @ counts_t).T, axis=1)
        if style == "coco":
            per_class[:, k] = coco_precision(tp_cum, fp_cum, npos).mean(axis=1)
        elif style == "voc":
            per_class[:, k] = voc_ap(tp_cum, fp_cum, npos)
        else:
            raise ValueError(f"unknown AP style {style!r}")
    valid = ~np.isnan(per_class)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid.any(axis=1), np.nansum(per_class, axis=1) / valid.sum(axis=1), np.nan)


def bootstrap_map(rankings: list[ClassRanking], n_images: int, style: str, *, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95, t: int = 0, chunk: int = 100) -> BootstrapInterval:
    """Percentile bootstrap interval of mAP over images (`level` two-sided), seeded and deterministic.

    `rankings`: one per class (ap.rank_class); `t`: the IoU-threshold row of their TP flags.
    """
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    curves = [reduce_to_tps(r, n_images, t) for r in rankings]
    rng = np.random.default_rng(seed)
    samples = []
    for start in range(0, n_boot, chunk):  # chunks bound the (resamples x TPs) arrays
        counts = resample_counts(rng, n_images, min(chunk, n_boot - start))
        samples.append(mean_ap_on_weights(curves, counts, style))
    values = np.concatenate(samples)
    alpha = (1.0 - level) / 2.0
    finite = values[np.isfinite(values)]
    low, high = (np.quantile(finite, [alpha, 1.0 - alpha]) if len(finite) else (np.nan, np.nan))
    return BootstrapInterval(samples=values, low=float(low), high=float(high), level=level)
