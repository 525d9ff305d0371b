"""Evaluate detections from files: read GT and predictions, compute the metrics, write the outputs.

Outputs in OUT: metrics.json, per_class.csv, per_class.md, pr_curves.png.

GT may be a cache's annotations.csv (already fused; class 14 rows with empty coordinates mark images
without findings), a raw Kaggle train.csv or a PhysioNet annotations_*.csv (told apart by their columns;
the readers' boxes are then fused with btcxr.data.fusion.fuse_readers).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from btcxr.data.classes import NO_FINDING_ID
from btcxr.data.csvcheck import read_table, require_text
from btcxr.detect.ap import COCO_REC_THRS
from btcxr.detect.metrics import DetectionEvaluation, evaluate_detections
from btcxr.detect.predictions import (
    BOX_COLUMNS,
    CLASS_NAMES,
    check_predictions,
    class_and_boxes,
    csv_header,
    read_predictions,
)
from btcxr.engine.escape import csv_table, md_text
from btcxr.engine.io import ensure_dir, save_figure, write_csv, write_json, write_text
from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)

GT_COLUMNS = ["image_id", "class_id", *BOX_COLUMNS]


def read_ground_truth(path: str | Path, *, fusion: str = "wbf", iou_thr: float = 0.4,
                      skip_box_thr: float = 0.0) -> tuple[pd.DataFrame, dict]:
    """Read GT boxes (canonical GT_COLUMNS frame) and a description of where they came from."""
    path = Path(path)
    if not path.is_file():
        raise BtcxrError(f"{path}: ground-truth file not found")
    header = set(csv_header(path, "ground-truth file"))
    if "rad_id" in header or ("class_id" not in header and "class_name" in header):
        from btcxr.data.fusion import fuse_readers, parse_fusion
        from btcxr.data.vindr import read_kaggle_train_csv, read_physionet_annotations

        if "class_id" in header:
            ann, kind = read_kaggle_train_csv(path), "kaggle train.csv (readers fused)"
        else:
            ann, kind = read_physionet_annotations(path), "physionet annotations (readers fused)"
        fused = fuse_readers(ann, parse_fusion(fusion), iou_thr=iou_thr, skip_box_thr=skip_box_thr)
        info = {"gt_format": kind, "fusion": str(parse_fusion(fusion)), "fusion_iou_thr": iou_thr,
                "fusion_skip_box_thr": skip_box_thr}
        return check_ground_truth(fused, str(path)), info
    df = read_table(path, GT_COLUMNS, what="ground-truth annotations.csv")
    image_id = require_text(path, df, "image_id")
    class_id, coords = class_and_boxes(path, df)
    gt = pd.DataFrame({"image_id": image_id.to_numpy(dtype=object), "class_id": class_id.to_numpy(),
                       **{c: coords[c].to_numpy() for c in BOX_COLUMNS}})
    return gt, {"gt_format": "annotations.csv (fused boxes)"}


def check_ground_truth(gt: pd.DataFrame, source: str = "ground truth") -> pd.DataFrame:
    """Check an in-memory GT frame (annotations.csv columns) and return the canonical GT_COLUMNS frame."""
    missing = [c for c in GT_COLUMNS if c not in gt.columns]
    if missing:
        raise BtcxrError(f"{source}: missing column(s) {', '.join(missing)}; expected {', '.join(GT_COLUMNS)}")
    class_id = pd.to_numeric(gt["class_id"], errors="coerce").to_numpy(dtype=np.float64)
    boxes = np.stack([pd.to_numeric(gt[c], errors="coerce").to_numpy(dtype=np.float64) for c in BOX_COLUMNS], 1) \
        if len(gt) else np.zeros((0, 4))

    def bad(mask: np.ndarray, field: str, problem: str) -> None:
        if mask.any():
            row = int(np.argmax(mask))
            raise BtcxrError(f"{source}: row {row}, field '{field}': {problem}, got {gt[field].iloc[row]!r}")

    bad(gt["image_id"].isna().to_numpy(), "image_id", "empty image id")
    bad(~np.isfinite(class_id) | (class_id % 1 != 0) | (class_id < 0) | (class_id > NO_FINDING_ID), "class_id",
        f"expected a whole number 0..{NO_FINDING_ID}")
    is_box = class_id != NO_FINDING_ID
    for i, c in enumerate(BOX_COLUMNS):
        bad(is_box & ~np.isfinite(boxes[:, i]), c, "box coordinate missing on a finding row")
    bad(boxes[:, 2] < boxes[:, 0], "x_max", "x_max is smaller than x_min")
    bad(boxes[:, 3] < boxes[:, 1], "y_max", "y_max is smaller than y_min")
    return pd.DataFrame({"image_id": gt["image_id"].astype(str).to_numpy(dtype=object),
                         "class_id": class_id.astype(np.int64), **{c: boxes[:, i] for i, c in enumerate(BOX_COLUMNS)}})


def restrict_to_ground_truth(pred: pd.DataFrame, gt: pd.DataFrame, *, lenient: bool,
                             source: str = "predictions") -> tuple[pd.DataFrame, int]:
    """Predictions on images outside the GT: a BtcxrError, or with `lenient` dropped (count logged)."""
    outside = ~pred["image_id"].isin(set(gt["image_id"]))
    if not outside.any():
        return pred, 0
    n_rows, n_images = int(outside.sum()), pred.loc[outside, "image_id"].nunique()
    example = pred.loc[outside, "image_id"].iloc[0]
    if not lenient:
        raise BtcxrError(f"{source}: {n_rows} prediction(s) on {n_images} image(s) that are not in the ground "
                         f"truth, e.g. image_id {example!r} (pass --lenient to skip them)")
    log.warning("%s: skipped %d prediction(s) on %d image(s) not in the ground truth (e.g. %s)", source, n_rows,
                n_images, example)
    return pred[~outside].reset_index(drop=True), n_rows


def evaluate_predictions(pred_df: pd.DataFrame, gt_df: pd.DataFrame, out_dir: str | Path, *, bootstrap: int = 1000,
                         seed: int = 0, no_finding_rule: str = "1-max", lenient: bool = False,
                         sources: dict | None = None, plots: bool = True,
                         counts_at: tuple[float, float] | None = None) -> dict:
    """Score predictions against GT frames and write metrics.json, per_class.csv/.md and pr_curves.png.

    `pred_df`: predictions.csv columns (class 14 rows optional); `gt_df`: annotations.csv columns. The
    entry point for any source of predictions (files, a model run on a cache). Returns the metrics dict
    written to metrics.json. counts_at (IoU, score): also per_image.csv, each image's true positives,
    false positives and misses at those thresholds (detect/counts.py).
    """
    sources = dict(sources or {})
    gt = check_ground_truth(gt_df, str(sources.get("gt", "ground truth")))
    pred = check_predictions(pred_df, str(sources.get("pred", "predictions")))
    pred, skipped = restrict_to_ground_truth(pred, gt, lenient=lenient, source=str(sources.get("pred", "predictions")))
    result = evaluate_detections(gt, pred, bootstrap=bootstrap, seed=seed, no_finding_rule=no_finding_rule)
    metrics = result.metrics
    metrics["counts"]["skipped_predictions"] = skipped
    unseen = int((~pd.Index(gt["image_id"].unique()).isin(pred["image_id"].unique())).sum())
    metrics["counts"]["images_without_predictions"] = unseen
    if unseen > 0.5 * metrics["counts"]["images"]:
        log.warning("%d of %d ground-truth images have no prediction at all and count as missed detections; "
                    "is the ground truth limited to the images that were predicted (e.g. the test split)?",
                    unseen, metrics["counts"]["images"])
    metrics["sources"] = sources
    out = ensure_dir(out_dir, "--out")
    write_json(out / "metrics.json", _json_ready(metrics), allow_nan=False)
    write_csv(out / "per_class.csv", csv_table(result.per_class))
    write_text(out / "per_class.md", per_class_markdown(result))
    if plots:
        plot_pr_curves(result, out / "pr_curves.png")
    if counts_at is not None:
        from btcxr.detect.counts import per_image_counts

        write_csv(out / "per_image.csv", csv_table(per_image_counts(gt, pred, *counts_at)))
    ci = metrics.get("map50_ci")
    log.info("mAP50 %.4f%s | mAP %.4f | VOC mAP50 %.4f | Kaggle mAP40 %.4f (%d images, %d GT boxes, %d predictions)",
             _num(metrics["map50"]), f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "", _num(metrics["map"]),
             _num(metrics["map50_voc"]), _num(metrics["kaggle_map40"]), metrics["counts"]["images"],
             metrics["counts"]["gt_boxes"], metrics["counts"]["predictions"])
    log.info("wrote %s", out / "metrics.json")
    return metrics


def evaluate_files(pred_path: str | Path, gt_path: str | Path, out_dir: str | Path, *, fusion: str = "wbf",
                   iou_thr: float = 0.4, skip_box_thr: float = 0.0, bootstrap: int = 1000, seed: int = 0,
                   no_finding_rule: str = "1-max", lenient: bool = False,
                   counts_at: tuple[float, float] | None = None, split: str | None = None) -> dict:
    """`btcxr evaluate --pred --gt --out`: read both files, then :func:`evaluate_predictions`.

    Either file may be COCO JSON (results, ground truth): a COCO results file's image ids are those of a
    COCO ground-truth file, or the images' names against a CSV ground truth. split: keep the ground truth
    of that cache split (a cache's annotations.csv, whose manifest.csv lies beside it)."""
    names = categories = None
    if Path(gt_path).suffix.lower() == ".json":
        from btcxr.data.coco import read_coco_ground_truth

        gt, names, categories = read_coco_ground_truth(gt_path, CLASS_NAMES)
        info = {"gt_format": "COCO ground truth"}
    else:
        gt, info = read_ground_truth(gt_path, fusion=fusion, iou_thr=iou_thr, skip_box_thr=skip_box_thr)
    if split is not None:
        gt = _split_of(gt, gt_path, split)
        info["split"] = split
    if Path(pred_path).suffix.lower() == ".json":
        from btcxr.data.coco import read_coco_results

        pred = read_coco_results(pred_path, names, categories)
    else:
        pred = read_predictions(pred_path)
    sources = {"pred": str(pred_path), "gt": str(gt_path), **info}
    return evaluate_predictions(pred, gt, out_dir, bootstrap=bootstrap, seed=seed, no_finding_rule=no_finding_rule,
                                lenient=lenient, sources=sources, counts_at=counts_at)


def _split_of(gt: pd.DataFrame, gt_path: str | Path, split: str) -> pd.DataFrame:
    """The ground truth of the images of cache split `split` (the manifest beside a cache's annotations)."""
    from btcxr.data.cache_format import read_manifest

    cache = Path(gt_path).parent
    if not (cache / "manifest.csv").is_file():
        raise BtcxrError(f"--split {split}: {gt_path} is not a cache's annotations.csv (no manifest.csv beside it "
                         "says which images each split holds)")
    manifest = read_manifest(cache)
    ids = set(manifest.loc[manifest["split"] == split, "image_id"])
    if not ids:
        splits = ", ".join(sorted(set(manifest["split"]) - {""}))
        raise BtcxrError(f"--split {split}: {cache} has no image in that split (its splits: {splits})")
    return gt[gt["image_id"].isin(ids)].reset_index(drop=True)


def _num(v: float | None) -> float:
    return float("nan") if v is None else v


def _json_ready(obj):
    """NaN -> null (JSON has no NaN), numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(obj) else float(obj)
    return obj


def per_class_markdown(result: DetectionEvaluation) -> str:
    """The per-class table as Markdown, with the means in the last row."""
    def f(v: float) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    m = result.metrics
    lines = ["| class | GT boxes | predictions | AP50 (COCO) | AP50:95 | AP50 (VOC) | AP40 (Kaggle) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result.per_class.itertuples():
        lines.append(f"| {r.class_id} {md_text(r.class_name)} | {r.gt_boxes} | {r.predictions} | {f(r.ap50)} | "
                     f"{f(r.ap50_95)} | {f(r.ap50_voc)} | {f(r.ap40_kaggle)} |")
    lines.append(f"| **mean** | {m['counts']['gt_boxes']} | {m['counts']['predictions']} | **{f(m['map50'])}** | "
                 f"{f(m['map'])} | {f(m['map50_voc'])} | {f(m['kaggle_map40'])} |")
    ci = m.get("map50_ci")
    note = (f"\nmAP50 {100 * m['bootstrap']['level']:.0f} % bootstrap interval over images "
            f"({m['bootstrap']['resamples']} resamples, seed {m['bootstrap']['seed']}): [{f(ci[0])}, {f(ci[1])}]\n"
            if ci else "\n")
    return "\n".join(lines) + "\n" + note + f"No-finding rule for the Kaggle score: {m['no_finding_rule']}\n"


def plot_pr_curves(result: DetectionEvaluation, path: str | Path) -> Path:
    """Precision-recall curves, one line per class: COCO at IoU 0.5 (left) and the Kaggle score (right)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas

    fig = Figure(figsize=(13, 5.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    colours = [_tab20(i) for i in range(len(CLASS_NAMES))]
    for k in range(result.coco_precision50.shape[1]):
        prec = result.coco_precision50[:, k]
        if np.isnan(prec).all():
            continue
        left.plot(COCO_REC_THRS, prec, color=colours[k], label=f"{CLASS_NAMES[k]} ({np.mean(prec):.3f})")
    left.set_title(f"COCO, IoU 0.5 (mAP50 {_num(result.metrics['map50']):.3f})")
    for k, (rec, prec) in enumerate(result.voc40_curves):
        if result.per_class["gt_boxes"].iloc[k] == 0:
            continue
        env = np.maximum.accumulate(np.r_[prec, 0.0][::-1])[::-1][:-1]  # the interpolated (envelope) curve
        right.plot(np.r_[0.0, rec], np.r_[env[:1] if len(env) else [0.0], env], color=colours[k],
                   drawstyle="steps-pre", label=f"{CLASS_NAMES[k]} ({result.per_class['ap40_kaggle'].iloc[k]:.3f})")
    right.set_title(f"Kaggle VOC, IoU > 0.4, 15 classes (mAP {_num(result.metrics['kaggle_map40']):.3f})")
    for ax in (left, right):
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    path = Path(path)
    save_figure(fig, path, dpi=110)
    return path


def _tab20(i: int):
    from matplotlib import colormaps

    return colormaps["tab20"](i % 20)
