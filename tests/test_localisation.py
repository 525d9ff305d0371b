"""Localisation scores on hand-made heatmaps: energy in box, pointing game, TP matching, bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from btcxr.explain.localisation import (
    bootstrap_mean,
    box_mask,
    empty_entry,
    energy_in_box,
    markdown_table,
    match_true_positives,
    pointing_hit,
    summarise,
)


def test_box_mask_counts_pixels_by_their_centre():
    mask = box_mask((6, 8), (1.0, 2.0, 4.0, 5.0))
    # pixel centres x + 0.5 in [1, 4] -> columns 1..3; y + 0.5 in [2, 5] -> rows 2..4
    expected = np.zeros((6, 8), bool)
    expected[2:5, 1:4] = True
    assert np.array_equal(mask, expected)
    assert box_mask((6, 8), (1.6, 2.0, 2.4, 5.0)).sum() == 0  # no centre inside a sliver
    assert box_mask((6, 8), (-10, -10, 100, 100)).all()


def test_energy_in_box_exact_shares():
    heat = np.zeros((20, 20))
    box = (0, 0, 10, 10)  # covers pixels 0..9 x 0..9
    heat[0:10, 0:5] = 1.0  # uniform over the left half of the box only
    assert energy_in_box(heat, box) == 1.0
    heat[10:20, 0:5] = 1.0  # as much heat again below the box
    assert energy_in_box(heat, box) == 0.5
    graded = np.zeros((20, 20))
    graded[0:10, 0:10] = 3.0  # whole box at 3, one row outside at 1 (20 px)
    graded[15, :] = 1.0
    assert energy_in_box(graded, box) == pytest.approx(300 / (300 + 20))
    uniform = np.ones((20, 20))
    assert energy_in_box(uniform, box) == pytest.approx(100 / 400)  # the box's area share
    assert math.isnan(energy_in_box(np.zeros((4, 4)), box))


def test_pointing_game_with_tolerance():
    heat = np.zeros((100, 100))
    box = (40, 40, 60, 60)
    heat[50, 50] = 1.0
    assert pointing_hit(heat, box, tolerance=0)
    heat[:] = 0
    heat[50, 69] = 1.0  # centre x = 69.5: 9.5 px right of the box
    assert pointing_hit(heat, box, tolerance=15) and not pointing_hit(heat, box, tolerance=9)
    heat[:] = 0
    heat[71, 71] = 1.0  # centre (71.5, 71.5): 11.5 px off on both axes, 16.26 px diagonally
    assert not pointing_hit(heat, box, tolerance=15)
    assert pointing_hit(heat, box, tolerance=math.hypot(11.5, 11.5) + 1e-9)


def test_true_positive_matching_agrees_with_pycocotools():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(3)
    n_gt, n_det = 6, 14
    xy = rng.uniform(0, 200, (n_gt, 2))
    gt_boxes = np.c_[xy, xy + rng.uniform(20, 60, (n_gt, 2))]
    gt_class = rng.integers(0, 3, n_gt)
    src = rng.integers(0, n_gt, n_det)
    det_boxes = gt_boxes[src] + rng.normal(0, 8, (n_det, 4))
    det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
    det_class = np.where(rng.uniform(size=n_det) < 0.8, gt_class[src], (gt_class[src] + 1) % 3)
    det_scores = rng.uniform(0.3, 1.0, n_det)
    matched, iou = match_true_positives(det_boxes, det_class, det_scores, gt_boxes, gt_class, 0.5)

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    coco = COCO()
    coco.dataset = {"images": [{"id": 1}], "categories": [{"id": c + 1} for c in range(3)],
                    "annotations": [{"id": i + 1, "image_id": 1, "category_id": int(c) + 1, "bbox": xywh(b),
                                     "area": xywh(b)[2] * xywh(b)[3], "iscrowd": 0}
                                    for i, (b, c) in enumerate(zip(gt_boxes, gt_class))]}
    coco.createIndex()
    dets = coco.loadRes([{"image_id": 1, "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)}
                         for b, c, s in zip(det_boxes, det_class, det_scores)])
    ev = COCOeval(coco, dets, "bbox")
    ev.params.iouThrs = np.array([0.5])
    ev.params.areaRng, ev.params.areaRngLbl = [ev.params.areaRng[0]], ["all"]
    ev.evaluate()
    expected = {}
    for img in ev.evalImgs:
        if img is None:
            continue
        for det_id, gt_id in zip(img["dtIds"], img["dtMatches"][0]):
            expected[det_id - 1] = int(gt_id) - 1  # loadRes numbers detections 1.. in input order
    assert len(expected) == n_det
    assert [expected[d] for d in range(n_det)] == matched.tolist()
    assert (matched >= 0).sum() >= 3  # the case is not trivial
    tp = matched >= 0
    assert np.all(iou[tp] >= 0.5) and np.all(iou[~tp] == 0)


def test_bootstrap_interval_contains_the_mean_and_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.beta(2, 5, 60)
    ours = bootstrap_mean(x, n_boot=20000, seed=1)
    ref = stats.bootstrap((x,), np.mean, n_resamples=20000, method="percentile", rng=np.random.default_rng(2))
    assert ours["mean"] == pytest.approx(x.mean()) and ours["n"] == 60
    assert ours["ci_lo"] < ours["mean"] < ours["ci_hi"]
    assert ours["ci_lo"] == pytest.approx(ref.confidence_interval.low, abs=0.004)
    assert ours["ci_hi"] == pytest.approx(ref.confidence_interval.high, abs=0.004)
    one = bootstrap_mean([0.4, 0.6], groups=["a", "a"])
    assert one["mean"] == 0.5 and math.isnan(one["ci_lo"])
    assert bootstrap_mean([math.nan, math.nan])["n"] == 0


def test_bootstrap_resamples_images_not_boxes():
    rng = np.random.default_rng(4)
    x = rng.uniform(size=30)
    images = np.arange(30)
    once = bootstrap_mean(x, images, n_boot=4000, seed=0)
    # every image holding three identical boxes: the image-level interval must not shrink
    thrice = bootstrap_mean(np.repeat(x, 3), np.repeat(images, 3), n_boot=4000, seed=0)
    assert thrice["ci_lo"] == pytest.approx(once["ci_lo"]) and thrice["ci_hi"] == pytest.approx(once["ci_hi"])
    naive = bootstrap_mean(np.repeat(x, 3), n_boot=4000, seed=0)
    assert naive["ci_hi"] - naive["ci_lo"] < 0.8 * (once["ci_hi"] - once["ci_lo"])


def test_summarise_per_model_and_class():
    records = pd.DataFrame({
        "model": ["a", "a", "a", "b"], "image_id": ["i1", "i1", "i2", "i1"],
        "class_id": [3, 0, 3, 3], "class_name": ["Cardiomegaly", "Aortic enlargement", "Cardiomegaly", "Cardiomegaly"],
        "score": [0.9, 0.8, 0.7, 0.6], "iou": [0.7, 0.6, 0.8, 0.9],
        "energy_in_box": [0.2, 0.4, 0.6, 0.5], "pointing_game": [1.0, 0.0, 1.0, 0.0]})
    out = summarise(records, n_boot=500)
    assert list(out) == ["a", "b"]
    assert out["a"]["energy_in_box"]["mean"] == pytest.approx(0.4)
    assert out["a"]["pointing_game"]["mean"] == pytest.approx(2 / 3)
    assert out["a"]["counts"] == {"true_positives": 3, "images": 2}
    assert out["a"]["per_class"]["Cardiomegaly"]["energy_in_box"]["mean"] == pytest.approx(0.4)
    assert out["a"]["per_class"]["Aortic enlargement"]["energy_in_box"]["n"] == 1
    assert out["b"]["energy_in_box"]["mean"] == 0.5 and math.isnan(out["b"]["energy_in_box"]["ci_lo"])
    table = markdown_table(out | {"c": empty_entry()})
    assert "| a | all | 3 | 0.400 [" in table
    assert "| b | Cardiomegaly | 1 | 0.500 | 0.000 |" in table
    assert "| c | all | 0 | n/a | n/a |" in table
