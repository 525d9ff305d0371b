"""Detection metrics of VinDr-CXR predictions against ground truth: COCO mAP, VOC mAP, the Kaggle score.

- ``map50``: COCO AP at IoU 0.5 (101 recall points, 100 detections per image and class), the paper's
  mAP50; ``map``: COCO AP averaged over IoU 0.50:0.05:0.95; ``map75``. 14 finding classes.
- ``map50_voc``: PASCAL VOC 2010 all-point AP at IoU >= 0.5 (devkit matching), 14 finding classes.
- ``kaggle_map40``: the VinBigData competition score: VOC all-point AP at IoU > 0.4 over 15 classes,
  where every ground-truth "No finding" image carries a class-14 box ``0 0 1 1`` and a prediction
  ``14 s 0 0 1 1`` is a class-14 detection. Predictions without any class 14 get one per image from
  :func:`~btcxr.detect.predictions.add_no_finding` (s = 1 - max finding score), unless the rule is "none".
- Means are over the classes that have GT boxes (a class absent from the GT has AP null).
- Any class list: ``classes`` names the finding classes 0..n-1 (default the 14 VinDr findings) and n is
  "No finding" (VinDr's 14); class ids outside 0..n are an error naming the frame, row and value.
- 95 % percentile bootstrap intervals over images for ``map50`` and ``kaggle_map40``.

Both inputs are canonical frames: GT with image_id, class_id, x_min.. (one class-14 row with empty
coordinates for an image without findings, so every image is listed) and predictions as in
:mod:`btcxr.detect.predictions`. Every prediction must be on a GT image; GT images without predictions
count as images where nothing was detected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from btcxr.data.classes import NO_FINDING, NO_FINDING_ID, VINDR_CLASSES
from btcxr.detect.ap import (
    COCO_IOU_THRS,
    COCO_REC_THRS,
    BoxSet,
    coco_ap_per_class,
    match_coco,
    match_voc,
    rank_class,
    voc_ap_per_class,
)
from btcxr.detect.bootstrap import bootstrap_map
from btcxr.detect.predictions import (
    BOX_COLUMNS,
    NO_FINDING_BOX,
    NO_FINDING_RULES,
    add_no_finding,
    empty_predictions,
)
from btcxr.errors import BtcxrError

N_FINDINGS = NO_FINDING_ID  # classes 0..13 are findings
KAGGLE_IOU_THR = 0.4
VOC_IOU_THR = 0.5
MAX_DETS = 100

CONVENTIONS = {
    "iou": "continuous pixel coordinates, area = (x_max - x_min) * (y_max - y_min), no +1",
    "coco": "pycocotools COCOeval semantics: greedy by score per image and class, best unmatched GT with "
            "IoU >= threshold, area range all, no crowd, 101 recall points, at most 100 detections per image "
            "and class (pycocotools applies maxDets per image and category)",
    "voc": "VOC devkit semantics: detections sorted by score over all images, each compared with its "
           "highest-IoU GT; TP if that GT is free and IoU >= 0.5 (Kaggle: IoU > 0.4), else FP; all-point "
           "interpolation",
    "kaggle_no_finding": "every GT image without a finding box has a class-14 GT box 0 0 1 1",
    "class_mean": "mean over classes with at least one GT box",
}


@dataclass
class DetectionEvaluation:
    """Everything `evaluate_detections` computed: the JSON-ready metrics, a per-class table, PR curves."""

    metrics: dict
    per_class: pd.DataFrame
    coco_precision50: np.ndarray  # (101, n) interpolated precision at IoU 0.5 (NaN: class without GT); n = 14
    voc40_curves: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # n + 1 (recall, precision)


def _image_index(ids: pd.Series, images: pd.Index) -> np.ndarray:
    idx = images.get_indexer(ids)
    if (idx < 0).any():
        raise BtcxrError(f"{int((idx < 0).sum())} prediction(s) on images that are not in the ground truth, "
                         f"e.g. {ids[idx < 0].iloc[0]}")
    return idx.astype(np.int64)


def _boxset(frame: pd.DataFrame, images: pd.Index, with_score: bool) -> BoxSet:
    return BoxSet(
        image=_image_index(frame["image_id"], images),
        label=frame["class_id"].to_numpy(dtype=np.int64),
        boxes=frame[BOX_COLUMNS].to_numpy(dtype=np.float64).reshape(-1, 4),
        score=frame["score"].to_numpy(dtype=np.float64) if with_score else None,
    )


def check_class_ids(frame: pd.DataFrame, source: str, n_findings: int = N_FINDINGS) -> None:
    """class_id must hold whole numbers 0..n_findings (the last is "No finding"): a BtcxrError naming
    `source`, the row (0-based position) and the value otherwise."""
    if "class_id" not in frame.columns:
        raise BtcxrError(f"{source}: no class_id column")
    values = pd.to_numeric(frame["class_id"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values % 1 != 0) | (values < 0) | (values > n_findings)
    if bad.any():
        row = int(np.argmax(bad))
        value = frame["class_id"].iloc[row]
        value = value.item() if isinstance(value, np.generic) else value
        raise BtcxrError(f"{source}: row {row}, field 'class_id': expected a class id 0..{n_findings} "
                         f"({n_findings} = {NO_FINDING}; btcxr.evaluate also takes class names), got {value!r}")


def kaggle_ground_truth(gt: pd.DataFrame, no_finding_id: int = NO_FINDING_ID) -> pd.DataFrame:
    """GT for the Kaggle score: the finding boxes plus a class-14 (`no_finding_id`) box 0 0 1 1 on every
    image without one."""
    findings = gt[gt["class_id"] != no_finding_id]
    ids = pd.Series(gt["image_id"].unique())
    negative = ids[~ids.isin(findings["image_id"])].to_numpy()  # (np.setdiff1d is slow on strings)
    nf = pd.DataFrame({"image_id": negative, "class_id": no_finding_id,
                       **{c: v for c, v in zip(BOX_COLUMNS, NO_FINDING_BOX)}})
    return pd.concat([findings[["image_id", "class_id", *BOX_COLUMNS]], nf], ignore_index=True)


def kaggle_predictions(pred: pd.DataFrame, image_ids: pd.Index, rule: str,
                       no_finding_id: int = NO_FINDING_ID) -> tuple[pd.DataFrame, str]:
    """Predictions for the Kaggle score and the No-finding rule used ('given' when they carry class 14,
    i.e. `no_finding_id`)."""
    if rule not in NO_FINDING_RULES:
        raise BtcxrError(f"unknown No-finding rule {rule!r}; choose one of {', '.join(NO_FINDING_RULES)}")
    if (pred["class_id"] == no_finding_id).any():
        return pred, "given"
    if rule == "none":
        return pred, "none"
    if no_finding_id == NO_FINDING_ID:
        return add_no_finding(pred, rule, image_ids), rule
    return _add_no_finding(pred, image_ids, no_finding_id), rule


def _add_no_finding(pred: pd.DataFrame, image_ids: pd.Index, no_finding_id: int) -> pd.DataFrame:
    """`add_no_finding`'s "1-max" rule for a class list other than VinDr's: "No finding" is `no_finding_id`."""
    findings = pred[pred["class_id"] != no_finding_id]
    if len(findings) and ((findings["score"] < 0) | (findings["score"] > 1)).any():
        raise BtcxrError("the '1-max' No-finding rule needs scores in [0, 1]; "
                         f"got scores from {findings['score'].min():g} to {findings['score'].max():g}")
    ids = pd.Index(pd.unique(pd.Series(list(image_ids))))
    top = findings.groupby("image_id")["score"].max().reindex(ids).fillna(0.0).to_numpy()
    extra = pd.DataFrame({"image_id": ids.to_numpy(dtype=object), "class_id": np.int64(no_finding_id),
                          "score": 1.0 - top, **{c: v for c, v in zip(BOX_COLUMNS, NO_FINDING_BOX)}})
    parts = [f for f in (findings, extra) if len(f)]
    return pd.concat(parts, ignore_index=True) if parts else empty_predictions()


def evaluate_detections(gt: pd.DataFrame, pred: pd.DataFrame, *, bootstrap: int = 1000, seed: int = 0,
                        no_finding_rule: str = "1-max", level: float = 0.95,
                        classes: Sequence[str] | None = None) -> DetectionEvaluation:
    """Compute every metric of this module (see its docstring) for canonical GT and prediction frames.

    `bootstrap` = number of resamples (0: no intervals). `classes`: the names of finding classes 0..n-1
    (default the 14 VinDr findings); class n is "No finding". Raises BtcxrError for predictions on images
    outside the GT and for class ids outside 0..n.
    """
    finding_names = list(VINDR_CLASSES if classes is None else classes)
    n_find = len(finding_names)
    nf_id = n_find  # "No finding": 14 for VinDr
    names = [*finding_names, NO_FINDING]
    if n_find == 0:
        raise BtcxrError("classes: give at least one finding class")
    check_class_ids(gt, "ground truth", n_find)
    check_class_ids(pred, "predictions", n_find)
    images = pd.Index(np.sort(gt["image_id"].unique()))
    n_images = len(images)
    gt_find = gt[gt["class_id"] != nf_id]
    pred_find = pred[pred["class_id"] != nf_id]
    g14 = _boxset(gt_find, images, with_score=False)
    d14 = _boxset(pred_find, images, with_score=True)

    coco = match_coco(g14, d14, n_find, COCO_IOU_THRS, MAX_DETS)
    coco_ap, coco_prec = coco_ap_per_class(coco, n_find, COCO_REC_THRS)
    t50 = int(np.flatnonzero(np.isclose(COCO_IOU_THRS, 0.5))[0])
    t75 = int(np.flatnonzero(np.isclose(COCO_IOU_THRS, 0.75))[0])
    voc50_ap, _ = voc_ap_per_class(match_voc(g14, d14, n_find, VOC_IOU_THR), n_find)

    gt_kaggle = kaggle_ground_truth(gt, nf_id)
    pred_kaggle, rule_used = kaggle_predictions(pred, images, no_finding_rule, nf_id)
    kaggle = match_voc(_boxset(gt_kaggle, images, False), _boxset(pred_kaggle, images, True), nf_id + 1,
                       KAGGLE_IOU_THR, strict=True)
    kaggle_ap, kaggle_curves = voc_ap_per_class(kaggle, nf_id + 1)

    def mean(values: np.ndarray) -> float | None:
        return float(np.nanmean(values)) if np.isfinite(values).any() else None

    ap_all = coco_ap.mean(axis=0)  # 0.50:0.95 per class; NaN stays NaN for classes without GT
    metrics: dict = {
        "map50": mean(coco_ap[t50]),
        "map": mean(ap_all),
        "map75": mean(coco_ap[t75]),
        "map50_voc": mean(voc50_ap),
        "kaggle_map40": mean(kaggle_ap),
    }
    if bootstrap:
        coco_rank = [rank_class(coco, k) for k in range(n_find)]
        ci = bootstrap_map(coco_rank, n_images, "coco", n_boot=bootstrap, seed=seed, level=level, t=t50)
        kaggle_rank = [rank_class(kaggle, k) for k in range(nf_id + 1)]
        ci_k = bootstrap_map(kaggle_rank, n_images, "voc", n_boot=bootstrap, seed=seed, level=level)
        metrics["map50_ci"] = ci.as_list() if metrics["map50"] is not None else None
        metrics["kaggle_map40_ci"] = ci_k.as_list() if metrics["kaggle_map40"] is not None else None
    else:
        metrics["map50_ci"] = metrics["kaggle_map40_ci"] = None
    metrics["bootstrap"] = {"resamples": int(bootstrap), "seed": int(seed), "level": level, "unit": "image",
                            "method": "percentile"}

    metrics["per_class_ap50"] = _named(finding_names, coco_ap[t50])
    metrics["per_class_ap"] = _named(finding_names, ap_all)
    metrics["per_class_ap50_voc"] = _named(finding_names, voc50_ap)
    metrics["per_class_ap40_voc"] = _named(names, kaggle_ap)
    metrics["no_finding_rule"] = rule_used

    gt_per_class = np.bincount(gt_find["class_id"].to_numpy(dtype=np.int64), minlength=n_find + 1)
    gt_per_class[nf_id] = int((gt_kaggle["class_id"] == nf_id).sum())
    pred_per_class = np.bincount(pred_kaggle["class_id"].to_numpy(dtype=np.int64), minlength=n_find + 1)
    metrics["counts"] = {
        "images": n_images,
        "images_no_finding": int(gt_per_class[nf_id]),
        "gt_boxes": len(gt_find),
        "predictions": len(pred_find),
        "predictions_no_finding": int(pred_per_class[nf_id]),
        "classes_with_gt": int((gt_per_class[:n_find] > 0).sum()),
    }
    metrics["iou_thresholds"] = {"coco": [float(t) for t in COCO_IOU_THRS], "voc": VOC_IOU_THR,
                                 "kaggle": KAGGLE_IOU_THR}
    metrics["max_dets"] = MAX_DETS
    metrics["conventions"] = CONVENTIONS

    recall50 = np.full(n_find + 1, np.nan)
    tp50 = coco.tp[t50]
    for k in range(n_find):
        if gt_per_class[k]:
            recall50[k] = tp50[coco.det.label == k].sum() / gt_per_class[k]
    pad = np.full(1, np.nan)
    per_class = pd.DataFrame({
        "class_id": np.arange(n_find + 1),
        "class_name": names,
        "gt_boxes": gt_per_class,
        "predictions": pred_per_class,
        "ap50": np.r_[coco_ap[t50], pad],
        "ap50_95": np.r_[ap_all, pad],
        "ap50_voc": np.r_[voc50_ap, pad],
        "ap40_kaggle": kaggle_ap,
        "recall50": recall50,
    })
    return DetectionEvaluation(metrics=metrics, per_class=per_class, coco_precision50=coco_prec[t50],
                               voc40_curves=kaggle_curves)


def _named(names: list[str], values: np.ndarray) -> dict[str, float | None]:
    return {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, values)}
