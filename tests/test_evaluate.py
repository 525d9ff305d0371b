"""`btcxr evaluate` from files: formats told apart by their columns, outputs, and errors naming file/line/field."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from btcxr.cli import main
from btcxr.data.classes import NO_FINDING_ID
from btcxr.detect.evaluate_files import evaluate_predictions, read_ground_truth
from btcxr.detect.metrics import evaluate_detections
from btcxr.detect.predictions import (
    PREDICTION_COLUMNS,
    add_no_finding,
    read_predictions,
    write_predictions,
    write_submission,
)
from btcxr.errors import BtcxrError

BOX = ["x_min", "y_min", "x_max", "y_max"]


@pytest.fixture(scope="module")
def files(vindr_train_csv, tmp_path_factory):
    """A raw Kaggle train.csv of 80 real images, its WBF-fused annotations.csv, and jittered predictions."""
    d = tmp_path_factory.mktemp("evaluate")
    raw = pd.read_csv(vindr_train_csv)
    ids = np.sort(raw["image_id"].unique())[1000:1080]
    raw = raw[raw["image_id"].isin(ids)]
    raw.to_csv(d / "train.csv", index=False)
    gt, _ = read_ground_truth(d / "train.csv")  # WBF 0.4 through btcxr.data.fusion
    from btcxr.data.fusion import fuse_readers
    from btcxr.data.vindr import read_kaggle_train_csv

    fuse_readers(read_kaggle_train_csv(d / "train.csv")).to_csv(d / "annotations.csv", index=False)
    rng = np.random.default_rng(0)
    boxes = gt[gt["class_id"] != NO_FINDING_ID].copy()
    boxes[BOX] = boxes[BOX].to_numpy() + rng.normal(0, 15, (len(boxes), 4))
    boxes["x_max"] = np.maximum(boxes["x_max"], boxes["x_min"] + 1)
    boxes["y_max"] = np.maximum(boxes["y_max"], boxes["y_min"] + 1)
    boxes["score"] = rng.random(len(boxes))
    fp = boxes.sample(frac=0.5, random_state=0).assign(image_id=lambda f: rng.choice(ids, len(f)),
                                                      score=lambda f: rng.random(len(f)) * 0.5)
    pred = pd.concat([boxes, fp], ignore_index=True)
    pred["image_id"] = pred["image_id"].astype(object)
    write_predictions(pred, d / "predictions.csv")
    return d


def test_cli_end_to_end_matches_library(files, tmp_path):
    out = tmp_path / "eval"
    rc = main(["-q", "evaluate", "--pred", str(files / "predictions.csv"), "--gt", str(files / "train.csv"),
               "--out", str(out), "--bootstrap", "200", "--seed", "3"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("map50", "map", "map50_voc", "kaggle_map40", "per_class_ap50", "per_class_ap40_voc", "map50_ci",
                "counts", "no_finding_rule"):
        assert key in metrics, key
    gt, _ = read_ground_truth(files / "train.csv", fusion="wbf", iou_thr=0.4, skip_box_thr=0.0)
    lib = evaluate_detections(gt, read_predictions(files / "predictions.csv"), bootstrap=200, seed=3).metrics
    for key in ("map50", "map", "map50_voc", "kaggle_map40"):
        assert metrics[key] == pytest.approx(lib[key], abs=1e-15), key
    assert metrics["map50_ci"] == pytest.approx(lib["map50_ci"], abs=1e-15)
    assert metrics["per_class_ap50"] == {k: (None if v is None else pytest.approx(v, abs=1e-15))
                                         for k, v in lib["per_class_ap50"].items()}
    assert metrics["no_finding_rule"] == "1-max"
    assert metrics["counts"]["images"] == 80
    assert metrics["sources"]["fusion"] == "wbf"
    assert 0 < metrics["map50"] < 1
    png = (out / "pr_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    table = pd.read_csv(out / "per_class.csv")
    assert len(table) == 15 and table["gt_boxes"].sum() == metrics["counts"]["gt_boxes"] + \
        metrics["counts"]["images_no_finding"]
    assert f"**{metrics['map50']:.3f}**" in (out / "per_class.md").read_text()


def test_gt_and_prediction_formats_agree(files, tmp_path):
    """annotations.csv vs raw train.csv (fused here), predictions.csv vs a Kaggle submission: same numbers."""
    pred = read_predictions(files / "predictions.csv")
    gt_ids = pd.read_csv(files / "annotations.csv")["image_id"].unique()
    write_submission(add_no_finding(pred, image_ids=gt_ids), tmp_path / "sub.csv", image_ids=gt_ids)
    runs = {}
    for name, p, g in (("csv+raw", files / "predictions.csv", files / "train.csv"),
                       ("sub+cache", tmp_path / "sub.csv", files / "annotations.csv")):
        assert main(["-q", "evaluate", "--pred", str(p), "--gt", str(g), "--out", str(tmp_path / name),
                     "--bootstrap", "0"]) == 0
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    a, b = runs["csv+raw"], runs["sub+cache"]
    assert a["sources"]["gt_format"].startswith("kaggle train.csv")
    assert b["sources"]["gt_format"].startswith("annotations.csv")
    for key in ("map50", "map", "map50_voc", "kaggle_map40"):
        assert a[key] == pytest.approx(b[key], abs=1e-12), key
    assert (a["no_finding_rule"], b["no_finding_rule"]) == ("1-max", "given")
    assert a["map50_ci"] is None


def test_evaluate_predictions_is_the_library_entry(files, tmp_path):
    gt = pd.read_csv(files / "annotations.csv")
    pred = read_predictions(files / "predictions.csv")
    m = evaluate_predictions(pred, gt, tmp_path, bootstrap=0, plots=False)
    assert m == json.loads((tmp_path / "metrics.json").read_text())
    assert not (tmp_path / "pr_curves.png").exists()


def test_unknown_images_error_or_lenient_skip(files, tmp_path):
    pred = read_predictions(files / "predictions.csv")
    extra = pred.iloc[:3].assign(image_id="not-in-gt")
    pd.concat([pred, extra]).to_csv(tmp_path / "p.csv", index=False)
    args = ["-q", "evaluate", "--pred", str(tmp_path / "p.csv"), "--gt", str(files / "annotations.csv"),
            "--bootstrap", "0"]
    assert main([*args, "--out", str(tmp_path / "strict")]) == 2
    assert not (tmp_path / "strict" / "metrics.json").exists()
    with pytest.raises(BtcxrError, match=r"3 prediction\(s\) on 1 image\(s\).*not-in-gt"):
        evaluate_predictions(pd.concat([pred, extra]), pd.read_csv(files / "annotations.csv"), tmp_path / "x")
    assert main([*args, "--out", str(tmp_path / "lenient"), "--lenient"]) == 0
    lenient = json.loads((tmp_path / "lenient" / "metrics.json").read_text())
    assert lenient["counts"]["skipped_predictions"] == 3
    assert main([*args[:2], "--pred", str(files / "predictions.csv"), *args[4:], "--out", str(tmp_path / "ref")]) == 0
    ref = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    assert lenient["map50"] == ref["map50"]


def _good_rows() -> pd.DataFrame:
    return pd.DataFrame({"image_id": ["a", "a", "b"], "class_id": [0, 3, 14],
                         "class_name": ["Aortic enlargement", "Cardiomegaly", "No finding"],
                         "score": [0.9, 0.5, 0.8], "x_min": [1.0, 2.0, np.nan], "y_min": [1.0, 2.0, np.nan],
                         "x_max": [5.0, 6.0, np.nan], "y_max": [5.0, 6.0, np.nan]})


@pytest.mark.parametrize(("change", "pattern"), [
    (lambda f: f.drop(columns="score"), r"missing column\(s\) 'score'"),
    (lambda f: f.assign(score=[0.9, np.nan, 0.8]), r"line 3, field 'score': value is empty"),
    (lambda f: f.assign(score=["0.9", "high", "0.8"]), r"line 3, field 'score': not a number"),
    (lambda f: f.assign(x_max=[5.0, 1.0, np.nan]), r"line 3, field 'x_max': x_max is smaller than x_min"),
    (lambda f: f.assign(y_min=[np.nan, 2.0, np.nan]), r"line 2, field 'y_min': box coordinate missing"),
    (lambda f: f.assign(class_id=[0, 15, 14]), r"line 3, field 'class_id': class id outside 0..14"),
    (lambda f: f.assign(class_name=["Aortic enlargement", "ILD", "No finding"]),
     r"line 3, field 'class_name': class_name does not match class_id"),
])
def test_bad_predictions_csv_names_file_line_field(tmp_path, change, pattern):
    path = tmp_path / "bad.csv"
    change(_good_rows()).to_csv(path, index=False)
    with pytest.raises(BtcxrError, match=pattern) as err:
        read_predictions(path)
    assert str(path) in str(err.value)


def test_good_predictions_csv_reads_no_finding_box(tmp_path):
    _good_rows().to_csv(tmp_path / "ok.csv", index=False)
    pred = read_predictions(tmp_path / "ok.csv")
    assert list(pred.columns) == PREDICTION_COLUMNS
    assert pred.iloc[2][BOX].tolist() == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize(("text", "pattern"), [
    ("0 0.5 1 1 5", r"5 values, expected groups of 6"),
    ("0 0.5 1 1 5 x", r"'x' is not a number"),
    ("3 0.5 10 1 5 5", r"box 1 \(3 0.5 10 1 5 5\): x_max is smaller than x_min"),
    ("14 1 0 0 1 1 15 0.2 0 0 1 1", r"box 2 .*class must be a whole number 0..14"),
])
def test_bad_submission_names_line_and_box(tmp_path, text, pattern):
    path = tmp_path / "sub.csv"
    pd.DataFrame({"image_id": ["a", "b"], "PredictionString": ["14 1 0 0 1 1", text]}).to_csv(path, index=False)
    with pytest.raises(BtcxrError, match=rf"line 3, field 'PredictionString': {pattern}") as err:
        read_predictions(path)
    assert str(path) in str(err.value)


def test_bad_ground_truth_names_line(tmp_path):
    gt = pd.DataFrame({"image_id": ["a", "b"], "class_id": [0, 14], "class_name": ["Aortic enlargement", "No finding"],
                       "x_min": [5.0, np.nan], "y_min": [1.0, np.nan], "x_max": [2.0, np.nan],
                       "y_max": [4.0, np.nan], "score": [1.0, 1.0]})
    gt.to_csv(tmp_path / "annotations.csv", index=False)
    with pytest.raises(BtcxrError, match=r"annotations.csv, line 2, field 'x_max'"):
        read_ground_truth(tmp_path / "annotations.csv")
    pd.DataFrame({"image_id": ["a"], "PredictionString": [""]}).to_csv(tmp_path / "p.csv", index=False)
    assert main(["-q", "evaluate", "--pred", str(tmp_path / "p.csv"), "--gt", str(tmp_path / "annotations.csv"),
                 "--out", str(tmp_path / "o")]) == 2


def test_no_predictions_at_all(files, tmp_path):
    pd.DataFrame({"image_id": ["x"], "PredictionString": [""]}).iloc[:0].to_csv(tmp_path / "empty.csv", index=False)
    m = evaluate_predictions(read_predictions(tmp_path / "empty.csv"), pd.read_csv(files / "annotations.csv"),
                             tmp_path / "o", bootstrap=20)
    assert m["map50"] == 0.0 and m["map50_voc"] == 0.0 and m["counts"]["predictions"] == 0
    # Every image then gets "14 1 0 0 1 1": the No-finding class is ranked without information.
    assert 0 < m["per_class_ap40_voc"]["No finding"] <= 1
    assert not any(v is not None and math.isnan(v) for v in m["per_class_ap50"].values())
