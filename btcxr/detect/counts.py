"""True and false positives and misses per image, with the matching `btcxr evaluate` scores AP with.

The matching is pycocotools' (metrics.match_coco: per image and class, detections by descending score, each
taking the unmatched ground-truth box of highest IoU >= the threshold, 100 detections per image and class).
Because it is greedy in score order, dropping the detections below a score threshold leaves the matches of
the others unchanged: one matching per IoU threshold gives the counts at every score threshold. That is how
the case browser (btcxr browse) recounts on the page as its score slider moves.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from btcxr.data.classes import NO_FINDING_ID
from btcxr.detect.ap import match_coco
from btcxr.detect.metrics import MAX_DETS, N_FINDINGS, _boxset

COUNT_COLUMNS = ["image_id", "tp", "fp", "fn", "gt_boxes", "detections"]


def match_flags(gt: pd.DataFrame, pred: pd.DataFrame, iou_thrs: list[float]) -> tuple[pd.DataFrame, np.ndarray]:
    """The finding detections that take part in the matching (image_id, class_id, score, box columns; sorted
    by image, class and descending score) and their (len(iou_thrs), n) true-positive flags."""
    images = pd.Index(np.sort(gt["image_id"].unique()))
    gt_find = gt[gt["class_id"] != NO_FINDING_ID]
    pred_find = pred[pred["class_id"] != NO_FINDING_ID].reset_index(drop=True)
    matches = match_coco(_boxset(gt_find, images, with_score=False), _boxset(pred_find, images, with_score=True),
                         N_FINDINGS, np.asarray(iou_thrs, dtype=np.float64), MAX_DETS)
    det = matches.det
    table = pd.DataFrame({"image_id": images[det.image], "class_id": det.label, "score": det.score,
                          "x_min": det.boxes[:, 0], "y_min": det.boxes[:, 1], "x_max": det.boxes[:, 2],
                          "y_max": det.boxes[:, 3]})
    return table, matches.tp


def per_image_counts(gt: pd.DataFrame, pred: pd.DataFrame, iou_thr: float, score_thr: float) -> pd.DataFrame:
    """COUNT_COLUMNS for every ground-truth image: detections with score >= score_thr matched at iou_thr."""
    table, tp = match_flags(gt, pred, [iou_thr])
    kept = table["score"].to_numpy() >= score_thr
    table = table.assign(tp=tp[0] & kept, kept=kept)
    per = table.groupby("image_id").agg(tp=("tp", "sum"), detections=("kept", "sum"))
    gt_boxes = gt[gt["class_id"] != NO_FINDING_ID].groupby("image_id").size()
    out = pd.DataFrame(index=pd.Index(np.sort(gt["image_id"].unique()), name="image_id"))
    out["tp"] = per["tp"].reindex(out.index, fill_value=0).astype(int)
    out["detections"] = per["detections"].reindex(out.index, fill_value=0).astype(int)
    out["gt_boxes"] = gt_boxes.reindex(out.index, fill_value=0).astype(int)
    out["fp"] = out["detections"] - out["tp"]
    out["fn"] = out["gt_boxes"] - out["tp"]
    return out.reset_index()[COUNT_COLUMNS]
