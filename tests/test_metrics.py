"""Detection metrics against independent references: pycocotools' COCOeval, a loop transcription of the
PASCAL VOC devkit, hand-computed curves, explicit image duplication for the bootstrap."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd
import pytest

from btcxr.data.classes import NO_FINDING_ID, VINDR_CLASSES
from btcxr.detect.ap import BoxSet, match_coco, match_voc, rank_class
from btcxr.detect.bootstrap import bootstrap_map, mean_ap_on_weights, reduce_to_tps
from btcxr.detect.metrics import evaluate_detections
from btcxr.detect.predictions import (
    add_no_finding,
    check_predictions,
    read_submission,
    write_submission,
)
from btcxr.errors import BtcxrError

BOX = ["x_min", "y_min", "x_max", "y_max"]


# ------------------------------------------------------------------------------------------- test data
@pytest.fixture(scope="module")
def vindr_raw(vindr_train_csv) -> pd.DataFrame:
    return pd.read_csv(vindr_train_csv)


def real_gt(raw: pd.DataFrame, n_images: int, offset: int = 0) -> pd.DataFrame:
    """GT = the first reader's boxes of n real VinDr images; images that reader left empty get class 14."""
    ids = np.sort(raw["image_id"].unique())[offset:offset + n_images]
    df = raw[raw["image_id"].isin(ids)]
    first = df.groupby("image_id")["rad_id"].transform("first")
    df = df[df["rad_id"] == first]
    boxes = df[df["class_id"] != NO_FINDING_ID]
    negative = np.setdiff1d(ids, boxes["image_id"].unique())
    nf = pd.DataFrame({"image_id": negative, "class_id": NO_FINDING_ID, **{c: np.nan for c in BOX}})
    return pd.concat([boxes[["image_id", "class_id", *BOX]], nf], ignore_index=True)


def perturbed(raw: pd.DataFrame, gt: pd.DataFrame, seed: int, round_scores: bool = False,
              crowd_image: bool = False) -> pd.DataFrame:
    """Predictions: the other readers' boxes (and the GT boxes) jittered, some dropped, some classes
    swapped, false positives on random images (negatives included), random scores."""
    rng = np.random.default_rng(seed)
    ids = gt["image_id"].unique()
    others = raw[raw["image_id"].isin(ids) & (raw["class_id"] != NO_FINDING_ID)][["image_id", "class_id", *BOX]]
    base = pd.concat([others, gt[gt["class_id"] != NO_FINDING_ID]], ignore_index=True)
    base = base[rng.random(len(base)) > 0.15].reset_index(drop=True)  # drop some
    w = (base["x_max"] - base["x_min"]).to_numpy()
    h = (base["y_max"] - base["y_min"]).to_numpy()
    for c, s in (("x_min", w), ("x_max", w), ("y_min", h), ("y_max", h)):
        base[c] = base[c] + rng.normal(0, 0.12, len(base)) * s
    base["x_max"] = np.maximum(base["x_max"], base["x_min"] + 1)
    base["y_max"] = np.maximum(base["y_max"], base["y_min"] + 1)
    swap = rng.random(len(base)) < 0.1
    base.loc[swap, "class_id"] = rng.integers(0, NO_FINDING_ID, int(swap.sum()))
    fp = base.sample(frac=0.3, random_state=seed).copy()
    fp["image_id"] = rng.choice(ids, len(fp))
    pred = pd.concat([base, fp], ignore_index=True)
    if crowd_image:  # more than 100 detections of one class on one image: the maxDets cut matters
        img = gt.loc[gt["class_id"] == 0, "image_id"].iloc[0]
        g = gt[(gt["image_id"] == img) & (gt["class_id"] == 0)].iloc[0]
        many = pd.DataFrame({"image_id": img, "class_id": 0,
                             "x_min": g["x_min"] + rng.normal(0, 20, 150), "y_min": g["y_min"] + rng.normal(0, 20, 150)})
        many["x_max"] = many["x_min"] + (g["x_max"] - g["x_min"])
        many["y_max"] = many["y_min"] + (g["y_max"] - g["y_min"])
        pred = pd.concat([pred, many], ignore_index=True)
    pred["score"] = rng.random(len(pred))
    if round_scores:  # many ties: their order must follow pycocotools' stable sorts
        pred["score"] = pred["score"].round(1)
    pred["image_id"] = pred["image_id"].astype(object)
    return check_predictions(pred)


# ------------------------------------------------------------------------------------------- pycocotools
def pycocotools_eval(gt: pd.DataFrame, pred: pd.DataFrame):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = np.sort(gt["image_id"].unique())
    img_id = {k: i + 1 for i, k in enumerate(images)}  # sorted ids, as our image order
    boxes = gt[gt["class_id"] != NO_FINDING_ID]
    pred = pred[pred["class_id"] != NO_FINDING_ID]

    def xywh(r):
        return [r.x_min, r.y_min, r.x_max - r.x_min, r.y_max - r.y_min]

    dataset = {
        "images": [{"id": img_id[k]} for k in images],
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(VINDR_CLASSES)],
        # annotation ids from 1: pycocotools reads a match with GT id 0 as "unmatched"
        "annotations": [{"id": j + 1, "image_id": img_id[r.image_id], "category_id": int(r.class_id) + 1,
                         "bbox": xywh(r), "area": (r.x_max - r.x_min) * (r.y_max - r.y_min), "iscrowd": 0}
                        for j, r in enumerate(boxes.itertuples())],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([{"image_id": img_id[r.image_id], "category_id": int(r.class_id) + 1,
                                    "bbox": xywh(r), "score": float(r.score)} for r in pred.itertuples()])
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.mark.parametrize("round_scores", [False, True], ids=["distinct-scores", "tied-scores-maxdets"])
def test_coco_metrics_equal_pycocotools(vindr_raw, round_scores):
    gt = real_gt(vindr_raw, 700)
    pred = perturbed(vindr_raw, gt, seed=1, round_scores=round_scores, crowd_image=round_scores)
    res = evaluate_detections(gt, pred, bootstrap=0)
    ev = pycocotools_eval(gt, pred)
    assert res.metrics["map50"] == pytest.approx(ev.stats[1], abs=1e-9)
    assert res.metrics["map"] == pytest.approx(ev.stats[0], abs=1e-9)
    assert res.metrics["map75"] == pytest.approx(ev.stats[2], abs=1e-9)
    prec50 = ev.eval["precision"][0, :, :, 0, 2]  # IoU 0.5, area all, maxDets 100
    for k, name in enumerate(VINDR_CLASSES):
        ours = res.metrics["per_class_ap50"][name]
        if (prec50[:, k] > -1).any():
            assert ours == pytest.approx(prec50[:, k].mean(), abs=1e-9), name
        else:
            assert ours is None, name  # class absent from the GT
    assert 0.2 < res.metrics["map50"] < 0.9  # the perturbation leaves a non-trivial score


def test_max_dets_cut_is_per_image_and_class():
    # 101 detections on one image: the lowest-scored one is the only true positive and is cut.
    gt = pd.DataFrame({"image_id": ["a"], "class_id": [0], "x_min": [0.0], "y_min": [0.0], "x_max": [10.0],
                       "y_max": [10.0]})
    far = pd.DataFrame({"image_id": "a", "class_id": 0, "score": np.linspace(0.9, 0.5, 100),
                        "x_min": 50.0, "y_min": 50.0, "x_max": 60.0, "y_max": 60.0})
    hit = pd.DataFrame({"image_id": ["a"], "class_id": [0], "score": [0.1], "x_min": [0.0], "y_min": [0.0],
                        "x_max": [10.0], "y_max": [10.0]})
    res = evaluate_detections(gt, check_predictions(pd.concat([far, hit])), bootstrap=0)
    assert res.metrics["map50"] == 0.0
    assert res.metrics["map50_voc"] == pytest.approx(1 / 101)  # VOC has no cut: P = 1/101 at recall 1
    # The same detections split over another class do not count towards the cut of class 0.
    other = far.assign(class_id=1)
    res = evaluate_detections(gt, check_predictions(pd.concat([other, hit])), bootstrap=0)
    assert res.metrics["map50"] == pytest.approx(1.0)  # pycocotools' precision tp/(tp+fp+eps)


# ------------------------------------------------------------------------------------------- VOC devkit
def _iou(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def voc_reference(gt: pd.DataFrame, pred: pd.DataFrame, classes, thr: float, strict: bool) -> dict:
    """Straight transcription of the VOC devkit (VOCevaldet + VOCap): one class at a time, one detection
    at a time, all-point interpolated AP. Returns {class: AP} for classes with GT."""
    out = {}
    for c in classes:
        gts: dict[str, list] = {}
        for r in gt[gt["class_id"] == c].itertuples():
            gts.setdefault(r.image_id, []).append([r.x_min, r.y_min, r.x_max, r.y_max])
        npos = sum(len(v) for v in gts.values())
        if npos == 0:
            continue
        taken = {k: [False] * len(v) for k, v in gts.items()}
        dets = [(r.score, r.image_id, (r.x_min, r.y_min, r.x_max, r.y_max)) for r in pred[pred["class_id"] == c].itertuples()]
        dets = sorted(dets, key=lambda d: -d[0])  # stable, as MATLAB's sort
        tp, fp = [], []
        for _, img, box in dets:
            ovmax, jmax = -np.inf, -1
            for j, g in enumerate(gts.get(img, [])):
                ov = _iou(box, g)
                if ov > ovmax:
                    ovmax, jmax = ov, j
            if (ovmax > thr) if strict else (ovmax >= thr):
                if not taken[img][jmax]:
                    taken[img][jmax] = True
                    tp.append(1), fp.append(0)
                else:
                    tp.append(0), fp.append(1)
            else:
                tp.append(0), fp.append(1)
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = list(tp / npos)
        prec = list(tp / np.maximum(tp + fp, np.finfo(np.float64).eps))
        mrec = [0.0, *rec, 1.0]
        mpre = [0.0, *prec, 0.0]
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        out[c] = sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])
    return out


def test_voc_and_kaggle_metrics_equal_devkit_loop(vindr_raw):
    gt = real_gt(vindr_raw, 500, offset=3000)
    pred = perturbed(vindr_raw, gt, seed=2)
    res = evaluate_detections(gt, pred, bootstrap=0)

    ref50 = voc_reference(gt, pred, range(NO_FINDING_ID), 0.5, strict=False)
    assert res.metrics["map50_voc"] == pytest.approx(np.mean(list(ref50.values())), abs=1e-12)
    for c, ap in ref50.items():
        assert res.metrics["per_class_ap50_voc"][VINDR_CLASSES[c]] == pytest.approx(ap, abs=1e-12)

    # Kaggle: a class-14 GT box 0 0 1 1 on every image without findings; "14 (1 - max score) 0 0 1 1"
    # predicted on every image (written out here with a plain loop).
    findings = gt[gt["class_id"] != NO_FINDING_ID]
    gt_k = pd.concat([findings, pd.DataFrame([{"image_id": i, "class_id": 14, "x_min": 0.0, "y_min": 0.0,
                                               "x_max": 1.0, "y_max": 1.0}
                                              for i in sorted(set(gt["image_id"]) - set(findings["image_id"]))])])
    top = {}
    for r in pred.itertuples():
        top[r.image_id] = max(top.get(r.image_id, 0.0), r.score)
    nf = pd.DataFrame([{"image_id": i, "class_id": 14, "score": 1.0 - top.get(i, 0.0), "x_min": 0.0,
                        "y_min": 0.0, "x_max": 1.0, "y_max": 1.0} for i in np.sort(gt["image_id"].unique())])
    ref40 = voc_reference(gt_k, pd.concat([pred, nf]), range(15), 0.4, strict=True)
    assert res.metrics["kaggle_map40"] == pytest.approx(np.mean(list(ref40.values())), abs=1e-12)
    assert res.metrics["per_class_ap40_voc"]["No finding"] == pytest.approx(ref40[14], abs=1e-12)
    assert res.metrics["no_finding_rule"] == "1-max"
    assert res.metrics["counts"]["images_no_finding"] == len(gt_k) - len(findings)


def test_voc_and_coco_matching_differ_as_documented():
    # Two GT boxes; det1 overlaps A most; det2 overlaps A most too (A taken) but B above 0.5 as well.
    gt = pd.DataFrame({"image_id": "i", "class_id": 0, "x_min": [0.0, 2.0], "y_min": 0.0, "x_max": [10.0, 12.0],
                       "y_max": 10.0})
    pred = check_predictions(pd.DataFrame({"image_id": "i", "class_id": 0, "score": [0.9, 0.8],
                                           "x_min": [0.0, 1.0], "y_min": 0.0, "x_max": [10.0, 11.0], "y_max": 10.0}))
    g = BoxSet(np.zeros(2, int), np.zeros(2, int), gt[BOX].to_numpy())
    d = BoxSet(np.zeros(2, int), np.zeros(2, int), pred[BOX].to_numpy(), pred["score"].to_numpy())
    assert match_coco(g, d, 1, np.array([0.5])).tp[0].tolist() == [True, True]  # det2 -> free B (IoU 0.82)
    assert match_voc(g, d, 1, 0.5).tp[0].tolist() == [True, False]  # det2's best GT is A, taken: FP
    res = evaluate_detections(gt, pred, bootstrap=0)
    assert res.metrics["map50"] == pytest.approx(1.0)  # pycocotools' precision tp/(tp+fp+eps)
    assert res.metrics["map50_voc"] == pytest.approx(0.5)  # recall 0.5 at precision 1, then never more


def test_equal_iou_ties_follow_each_reference():
    # det1 overlaps A and B with IoU exactly 0.5; det2 (lower score) is A itself.
    # pycocotools keeps the *last* best GT (B), leaving A to det2: two TPs. The VOC devkit takes the
    # *first* best (A), so det2's best GT is taken: a FP.
    gt = pd.DataFrame({"image_id": "i", "class_id": 0, "x_min": [0.0, 10.0], "y_min": 0.0, "x_max": [10.0, 20.0],
                       "y_max": 10.0})
    pred = check_predictions(pd.DataFrame({"image_id": "i", "class_id": 0, "score": [0.9, 0.8],
                                           "x_min": [0.0, 0.0], "y_min": 0.0, "x_max": [20.0, 10.0], "y_max": 10.0}))
    res = evaluate_detections(gt, pred, bootstrap=0)
    ev = pycocotools_eval(gt, pred)
    assert res.metrics["map50"] == pytest.approx(ev.stats[1], abs=1e-12)
    assert res.metrics["map50"] == pytest.approx(1.0)
    assert res.metrics["map50_voc"] == pytest.approx(voc_reference(gt, pred, [0], 0.5, strict=False)[0])
    assert res.metrics["map50_voc"] == pytest.approx(0.5)


@pytest.mark.parametrize(("x_max", "expected"), [(4.0, 0.0), (4.001, 1.0)])
def test_kaggle_needs_iou_above_0_4(x_max, expected):
    # IoU = 40 / 100 = 0.4 exactly: the competition asks for IoU > 0.4.
    gt = pd.DataFrame({"image_id": ["i"], "class_id": [2], "x_min": [0.0], "y_min": [0.0], "x_max": [10.0],
                       "y_max": [10.0]})
    pred = check_predictions(pd.DataFrame({"image_id": ["i"], "class_id": [2], "score": [0.7], "x_min": [0.0],
                                           "y_min": [0.0], "x_max": [x_max], "y_max": [10.0]}))
    assert evaluate_detections(gt, pred, bootstrap=0).metrics["kaggle_map40"] == pytest.approx(expected)


def test_hand_computed_curve():
    # 2 GT; detections by score: TP, FP, TP.  Points (recall, precision): (.5, 1), (.5, .5), (1, 2/3).
    gt = pd.DataFrame({"image_id": "i", "class_id": 3, "x_min": [0.0, 100.0], "y_min": 0.0,
                       "x_max": [10.0, 110.0], "y_max": 10.0})
    pred = check_predictions(pd.DataFrame({"image_id": "i", "class_id": 3, "score": [0.9, 0.8, 0.7],
                                           "x_min": [0.0, 50.0, 100.0], "y_min": 0.0,
                                           "x_max": [10.0, 60.0, 110.0], "y_max": 10.0}))
    m = evaluate_detections(gt, pred, bootstrap=0).metrics
    assert m["map50_voc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # COCO: recall thresholds 0.00..0.50 (51 of them) read precision 1, 0.51..1.00 (50) read 2/3.
    assert m["map50"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)
    assert m["per_class_ap50"]["Cardiomegaly"] == m["map50"]
    assert m["per_class_ap50"]["Atelectasis"] is None
    # Kaggle: class 14 has no GT (the only image has findings), so the score is the class-3 VOC AP at 0.4.
    assert m["kaggle_map40"] == pytest.approx(m["map50_voc"])
    assert m["counts"] == {"images": 1, "images_no_finding": 0, "gt_boxes": 2, "predictions": 3,
                           "predictions_no_finding": 1, "classes_with_gt": 1}


def test_perfect_predictions_score_one(vindr_raw):
    gt = real_gt(vindr_raw, 200)
    pred = gt[gt["class_id"] != NO_FINDING_ID].assign(score=1.0)
    m = evaluate_detections(gt, check_predictions(pred), bootstrap=0).metrics
    for key in ("map50", "map", "map50_voc", "kaggle_map40"):
        assert m[key] == pytest.approx(1.0), key


# ------------------------------------------------------------------------------------------- bootstrap
def _rankings(gt, pred, style="coco"):
    from btcxr.detect.metrics import _boxset

    images = pd.Index(np.sort(gt["image_id"].unique()))
    g = _boxset(gt[gt["class_id"] != 14], images, False)
    d = _boxset(pred[pred["class_id"] != 14], images, True)
    m = match_coco(g, d, 14, np.array([0.5])) if style == "coco" else match_voc(g, d, 14, 0.5)
    return [rank_class(m, k) for k in range(14)], images


@pytest.mark.parametrize(("style", "key"), [("coco", "map50"), ("voc", "map50_voc")])
def test_bootstrap_weights_equal_explicit_duplication(vindr_raw, style, key):
    gt = real_gt(vindr_raw, 150, offset=500)
    pred = perturbed(vindr_raw, gt, seed=3)
    rankings, images = _rankings(gt, pred, style)
    curves = [reduce_to_tps(r, len(images)) for r in rankings]
    counts = np.random.default_rng(5).integers(0, 4, size=len(images))  # some images 0, 2, 3 times
    weighted = mean_ap_on_weights(curves, counts[None, :], style)[0]
    # The same resample built by copying images under new ids, scored from scratch.
    copies_gt, copies_pred = [], []
    for img, c in zip(images, counts):
        for j in range(c):
            copies_gt.append(gt[gt["image_id"] == img].assign(image_id=f"{img}#{j}"))
            copies_pred.append(pred[pred["image_id"] == img].assign(image_id=f"{img}#{j}"))
    explicit = evaluate_detections(pd.concat(copies_gt), pd.concat(copies_pred), bootstrap=0).metrics[key]
    assert weighted == pytest.approx(explicit, abs=1e-12)
    ones = mean_ap_on_weights(curves, np.ones((1, len(images)), int), style)[0]
    assert ones == pytest.approx(evaluate_detections(gt, pred, bootstrap=0).metrics[key], abs=1e-12)


def test_bootstrap_interval_contains_estimate_narrows_and_is_seeded(vindr_raw):
    widths = []
    for n in (150, 1200):
        gt = real_gt(vindr_raw, n, offset=6000)
        pred = perturbed(vindr_raw, gt, seed=4)
        m = evaluate_detections(gt, pred, bootstrap=300, seed=0).metrics
        lo, hi = m["map50_ci"]
        assert lo < m["map50"] < hi
        assert m["kaggle_map40_ci"][0] < m["kaggle_map40"] < m["kaggle_map40_ci"][1]
        widths.append(hi - lo)
    assert widths[1] < 0.7 * widths[0]  # ~1/sqrt(8) expected
    rankings, images = _rankings(gt, pred)
    a = bootstrap_map(rankings, len(images), "coco", n_boot=50, seed=7)
    b = bootstrap_map(rankings, len(images), "coco", n_boot=50, seed=7, chunk=7)
    c = bootstrap_map(rankings, len(images), "coco", n_boot=50, seed=8)
    np.testing.assert_array_equal(a.samples, b.samples)  # same seed, any chunking: same resamples
    assert not np.array_equal(a.samples, c.samples)


# ------------------------------------------------------------------------------------------- Kaggle format
def test_submission_round_trip_and_empty_image_rule(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    x0, y0 = rng.random(n) * 1000, rng.random(n) * 1000
    pred = check_predictions(pd.DataFrame({
        "image_id": rng.choice(["a", "b", "c"], n), "class_id": rng.integers(0, 14, n), "score": rng.random(n),
        "x_min": x0, "y_min": y0, "x_max": x0 + rng.random(n) * 300, "y_max": y0 + rng.random(n) * 300}))
    path = write_submission(pred, tmp_path / "sub.csv", image_ids=["a", "b", "c", "empty"])
    lines = path.read_text().splitlines()
    assert lines[0] == "image_id,PredictionString"
    assert lines[-1] == "empty,14 1 0 0 1 1"
    back = read_submission(path)
    key = ["image_id", "class_id", "score"]
    got = back[back["image_id"] != "empty"].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, pred.sort_values(key).reset_index(drop=True), check_exact=True)
    empty = back[back["image_id"] == "empty"].iloc[0]
    assert (empty["class_id"], empty["score"], *empty[BOX]) == (14, 1.0, 0.0, 0.0, 1.0, 1.0)


def test_add_no_finding_one_minus_max():
    pred = check_predictions(pd.DataFrame({"image_id": ["a", "a", "b"], "class_id": [0, 3, 5],
                                           "score": [0.2, 0.7, 0.4], "x_min": 0, "y_min": 0, "x_max": 5, "y_max": 5}))
    out = add_no_finding(pred, "1-max", image_ids=["a", "b", "c"])
    nf = out[out["class_id"] == 14].set_index("image_id")
    assert nf["score"].to_dict() == pytest.approx({"a": 0.3, "b": 0.6, "c": 1.0})
    assert (nf[BOX].to_numpy() == [0, 0, 1, 1]).all()
    assert len(out) == 3 + 3
    with pytest.raises(BtcxrError, match=r"\[0, 1\]"):
        add_no_finding(pred.assign(score=[2.0, 0.1, 0.1]))
    with pytest.raises(BtcxrError, match="rule"):
        add_no_finding(pred, "mean")


def test_given_class_14_predictions_are_used_as_is():
    gt = pd.DataFrame({"image_id": ["neg", "pos"], "class_id": [14, 0], "x_min": [np.nan, 0.0],
                       "y_min": [np.nan, 0.0], "x_max": [np.nan, 10.0], "y_max": [np.nan, 10.0]})
    # A submission that ranks the finding image as more "normal" than the normal one: class-14 AP 0.5.
    pred = check_predictions(pd.DataFrame({"image_id": ["pos", "pos", "neg"], "class_id": [0, 14, 14],
                                           "score": [0.9, 0.8, 0.3], "x_min": [0.0, np.nan, 0.0],
                                           "y_min": [0.0, np.nan, 0.0], "x_max": [10.0, np.nan, 1.0],
                                           "y_max": [10.0, np.nan, 1.0]}))
    m = evaluate_detections(gt, pred, bootstrap=0).metrics
    assert m["no_finding_rule"] == "given"
    assert m["per_class_ap40_voc"]["No finding"] == pytest.approx(0.5)
    assert m["kaggle_map40"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["map50"] == pytest.approx(1.0)  # class 14 plays no part in the 14-class COCO metric
    m = evaluate_detections(gt, pred[pred["class_id"] != 14], bootstrap=0, no_finding_rule="none").metrics
    assert m["no_finding_rule"] == "none" and m["per_class_ap40_voc"]["No finding"] == 0.0


def test_predictions_outside_ground_truth_are_an_error():
    gt = pd.DataFrame({"image_id": ["a"], "class_id": [14], "x_min": [np.nan], "y_min": [np.nan],
                       "x_max": [np.nan], "y_max": [np.nan]})
    pred = check_predictions(pd.DataFrame({"image_id": ["zzz"], "class_id": [0], "score": [0.5], "x_min": [0],
                                           "y_min": [0], "x_max": [1], "y_max": [1]}))
    with pytest.raises(BtcxrError, match="zzz"):
        evaluate_detections(gt, pred, bootstrap=0)
