"""Detection metrics at full VinDr size: our vectorised evaluation vs pycocotools' COCOeval.

Run: .venv/bin/python benchmarks/evaluate.py [--gt wbf|reader] [--bootstrap 1000]
Needs the test extra (`pip install -e '.[test]'`): pycocotools and torchxrayvision.

Ground truth: the real VinDr-CXR train.csv shipped in the torchxrayvision wheel, 15,000 images, fused
with WBF (default) or one reader per image. Predictions: every reader's box jittered (12 % of its size),
15 % dropped, 10 % of classes swapped, 30 % more as false positives on random images, random scores.
Prints the seconds of: our COCO matching + AP (map50 and map), our full `evaluate_detections`
(COCO, VOC, Kaggle, with and without the bootstrap), pycocotools' evaluate + accumulate + summarize
(and its index building, separately); then both sets of numbers, which must agree.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
from pathlib import Path

import numpy as np
import pandas as pd
from timing import timed  # benchmarks/timing.py, beside this script


def perturbed_predictions(raw: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ids = raw["image_id"].unique()
    base = raw[raw["class_id"] != 14][["image_id", "class_id", "x_min", "y_min", "x_max", "y_max"]]
    base = base[rng.random(len(base)) > 0.15].reset_index(drop=True)
    w = (base["x_max"] - base["x_min"]).to_numpy()
    h = (base["y_max"] - base["y_min"]).to_numpy()
    for c, s in (("x_min", w), ("x_max", w), ("y_min", h), ("y_max", h)):
        base[c] = base[c] + rng.normal(0, 0.12, len(base)) * s
    base["x_max"] = np.maximum(base["x_max"], base["x_min"] + 1)
    base["y_max"] = np.maximum(base["y_max"], base["y_min"] + 1)
    swap = rng.random(len(base)) < 0.1
    base.loc[swap, "class_id"] = rng.integers(0, 14, int(swap.sum()))
    fp = base.sample(frac=0.3, random_state=seed).copy()
    fp["image_id"] = rng.choice(ids, len(fp))
    pred = pd.concat([base, fp], ignore_index=True)
    pred["score"] = rng.random(len(pred))
    return pred


def pycocotools_objects(gt: pd.DataFrame, pred: pd.DataFrame):
    from pycocotools.coco import COCO

    images = np.sort(gt["image_id"].unique())
    img_id = {k: i + 1 for i, k in enumerate(images)}
    boxes = gt[gt["class_id"] != 14]
    pred = pred[pred["class_id"] != 14]

    def anns(frame: pd.DataFrame, with_score: bool) -> list[dict]:
        xywh = np.stack([frame["x_min"], frame["y_min"], frame["x_max"] - frame["x_min"],
                         frame["y_max"] - frame["y_min"]], 1).tolist()
        out = []
        for j, (img, cls, b) in enumerate(zip(frame["image_id"], frame["class_id"], xywh)):
            a = {"id": j + 1, "image_id": img_id[img], "category_id": int(cls) + 1, "bbox": b,
                 "area": b[2] * b[3], "iscrowd": 0}
            out.append(a)
        if with_score:
            for a, s in zip(out, frame["score"]):
                a["score"] = float(s)
        return out

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": [{"id": i} for i in img_id.values()],
                           "categories": [{"id": k + 1} for k in range(14)], "annotations": anns(boxes, False)}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(anns(pred, True))
    return coco_gt, coco_dt


def run_cocoeval(coco_gt, coco_dt):
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt", choices=["wbf", "reader"], default="wbf", help="WBF-fused GT or the first reader")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()

    from btcxr.data.fusion import fuse_readers
    from btcxr.data.vindr import read_kaggle_train_csv
    from btcxr.detect.ap import BoxSet, coco_ap_per_class, match_coco
    from btcxr.detect.metrics import evaluate_detections
    from btcxr.detect.predictions import check_predictions

    path = Path(list(importlib.util.find_spec("torchxrayvision").submodule_search_locations)[0]) / "data"
    raw = read_kaggle_train_csv(path / "vinbigdata-train.csv.gz")
    if args.gt == "wbf":
        gt = timed("GT: WBF fusion of the 3 readers (btcxr.data.fusion)", lambda: fuse_readers(raw, "wbf", 0.4))
    else:
        first = raw.groupby("image_id")["rad_id"].transform("first")
        gt = raw[raw["rad_id"] == first]
    gt = gt[["image_id", "class_id", "x_min", "y_min", "x_max", "y_max"]].reset_index(drop=True)
    pred = check_predictions(perturbed_predictions(raw))
    n_img = gt["image_id"].nunique()
    n_box = int((gt["class_id"] != 14).sum())
    print(f"{n_img} images, {n_box} GT boxes ({args.gt}), {len(pred)} predictions")

    images = pd.Index(np.sort(gt["image_id"].unique()))
    g = gt[gt["class_id"] != 14]

    def ours_coco():
        gb = BoxSet(images.get_indexer(g["image_id"]), g["class_id"].to_numpy(), g[["x_min", "y_min", "x_max",
                                                                                   "y_max"]].to_numpy(float))
        db = BoxSet(images.get_indexer(pred["image_id"]), pred["class_id"].to_numpy(),
                    pred[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float), pred["score"].to_numpy(float))
        return coco_ap_per_class(match_coco(gb, db, 14), 14)[0]

    ap = timed("ours: COCO match + AP, 10 IoU thresholds (btcxr.detect.ap)", ours_coco, repeat=3)
    timed("ours: evaluate_detections, no bootstrap (COCO+VOC+Kaggle)",
          lambda: evaluate_detections(gt, pred, bootstrap=0), repeat=3)
    full = timed(f"ours: evaluate_detections, bootstrap {args.bootstrap}",
                 lambda: evaluate_detections(gt, pred, bootstrap=args.bootstrap, seed=0))
    coco_gt, coco_dt = timed("pycocotools: COCO index + loadRes", lambda: pycocotools_objects(gt, pred))
    ev = timed("pycocotools: COCOeval evaluate + accumulate + summarize", lambda: run_cocoeval(coco_gt, coco_dt))

    print(f"map50  ours {np.nanmean(ap[0]):.10f}  pycocotools {ev.stats[1]:.10f}")
    print(f"map    ours {np.nanmean(ap):.10f}  pycocotools {ev.stats[0]:.10f}")
    m = full.metrics
    print(f"map50_voc {m['map50_voc']:.4f}  kaggle_map40 {m['kaggle_map40']:.4f}  "
          f"map50 95% CI [{m['map50_ci'][0]:.4f}, {m['map50_ci'][1]:.4f}]")


if __name__ == "__main__":
    main()
