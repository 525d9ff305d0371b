"""COCO results in and out: `btcxr evaluate` scores COCO results against COCO or CSV ground truth exactly as
pycocotools does on the very same files, `--split` keeps one cache split, and bad COCO files are named."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
from test_browse import fake_predictions, make_case_cache

from btcxr.cli import main
from btcxr.data.classes import VINDR_CLASSES
from btcxr.data.coco import coco_results, read_coco_results, write_coco

BOX = ["x_min", "y_min", "x_max", "y_max"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    base = tmp_path_factory.mktemp("coco")
    cache = make_case_cache(base / "cache", n=24)
    pred = fake_predictions(cache, base / "pred.csv", seed=3)
    frame = pd.read_csv(pred)   # a shifted box may come out inverted: order its corners
    xs, ys = np.sort(frame[["x_min", "x_max"]].to_numpy(), 1), np.sort(frame[["y_min", "y_max"]].to_numpy(), 1)
    frame[["x_min", "x_max"]], frame[["y_min", "y_max"]] = xs + [0, 1], ys + [0, 1]
    frame.to_csv(pred, index=False)
    manifest = pd.read_csv(cache / "manifest.csv")
    test = manifest[manifest["split"] == "test"]
    # COCO files in the original frame (scale 1), as btcxr's cache writes them (ids 1.. in this order)
    images = pd.DataFrame({"image_id": test["image_id"], "file": test["file"], "width": test["orig_width"],
                           "height": test["orig_height"], "scale": 1.0})
    write_coco(base / "gt.json", images, pd.read_csv(cache / "annotations.csv"), VINDR_CLASSES[:14])
    ids = {name: k + 1 for k, name in enumerate(test["image_id"])}
    results = [{**r, "image_id": ids[r["image_id"]]} for r in coco_results(pd.read_csv(pred))]
    (base / "results.json").write_text(json.dumps(results))
    return {"base": base, "cache": cache, "pred": pred}


def _map50(args, out) -> float:
    assert main([*args, "--out", str(out), "--bootstrap", "0"]) == 0
    return json.loads((out / "metrics.json").read_text())["map50"]


def test_coco_results_against_coco_ground_truth_score_as_pycocotools_does(case, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    base = case["base"]
    ours = _map50(["evaluate", "--pred", str(base / "results.json"), "--gt", str(base / "gt.json")], tmp_path / "a")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(base / "gt.json"))
        ev = COCOeval(gt, gt.loadRes(str(base / "results.json")), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert 0.05 < ours < 0.95 and ours == pytest.approx(ev.stats[1], abs=1e-9)
    # the same detections as CSV, against the cache's annotations of the test split: the same number
    csv = _map50(["evaluate", "--pred", str(case["pred"]), "--gt", str(case["cache"] / "annotations.csv"),
                  "--split", "test"], tmp_path / "b")
    assert csv == pytest.approx(ours, abs=1e-12)


def test_predictions_round_trip_through_coco_results(case, tmp_path):
    pred = pd.read_csv(case["pred"])
    (tmp_path / "p.coco.json").write_text(json.dumps(coco_results(pred)))   # as `btcxr predict` writes it
    back = read_coco_results(tmp_path / "p.coco.json")
    assert back["image_id"].tolist() == pred["image_id"].tolist()
    assert back["class_id"].tolist() == pred["class_id"].tolist()
    np.testing.assert_allclose(back[BOX].to_numpy(), pred[BOX].to_numpy(), atol=1e-9)
    by_name = _map50(["evaluate", "--pred", str(tmp_path / "p.coco.json"), "--gt",
                      str(case["cache"] / "annotations.csv"), "--split", "test"], tmp_path / "a")
    csv = _map50(["evaluate", "--pred", str(case["pred"]), "--gt", str(case["cache"] / "annotations.csv"),
                  "--split", "test"], tmp_path / "b")
    assert by_name == csv


def test_split_keeps_one_cache_split(case, tmp_path, capsys):
    ann = case["cache"] / "annotations.csv"
    main(["evaluate", "--pred", str(case["pred"]), "--gt", str(ann), "--split", "test", "--out",
          str(tmp_path / "t"), "--bootstrap", "0"])
    test_ids = pd.read_csv(case["cache"] / "manifest.csv").query("split == 'test'")["image_id"]
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["counts"]["images"] == len(test_ids)
    assert main(["evaluate", "--pred", str(case["pred"]), "--gt", str(ann), "--split", "tset", "--out",
                 str(tmp_path / "x")]) == 2
    assert "has no image in that split (its splits: test, val)" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(case["pred"]), "--gt", str(case["base"] / "gt.json"), "--split",
                 "test", "--out", str(tmp_path / "y")]) == 2
    assert "is not a cache's annotations.csv" in capsys.readouterr().err


@pytest.mark.parametrize("results, words", [
    ({"image_id": 1}, "is a JSON list of detections"),
    ([{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "score": 0.5}], "detection 0: bbox must be"),
    ([{"image_id": 999, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}], "image_id 999 is not an image"),
    ([{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}], "detection 0 has no score"),
    ("not json", "cannot read the COCO results file as JSON"),
])
def test_a_bad_coco_results_file_is_named(case, tmp_path, capsys, results, words):
    path = tmp_path / "bad.json"
    path.write_text(results if isinstance(results, str) else json.dumps(results))
    assert main(["evaluate", "--pred", str(path), "--gt", str(case["base"] / "gt.json"), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert words in err and str(path) in err and "Traceback" not in err


def test_browse_shows_coco_results_of_a_model_trained_on_the_cache(case, tmp_path):
    """MMDetection trained on the cache's coco_test.json ids and pixels: the browser maps them back to image
    names and original pixels, and counts exactly what it counts for the same boxes as predictions.csv."""
    from test_browse import _data

    from btcxr.browse.site import Model, build_site

    cache = case["cache"]
    manifest = pd.read_csv(cache / "manifest.csv")
    test = manifest[manifest["split"] == "test"]
    images = pd.DataFrame({"image_id": test["image_id"], "file": test["file"],
                           "width": (test["orig_width"] * test["scale"]).round().astype(int),
                           "height": (test["orig_height"] * test["scale"]).round().astype(int), "scale": test["scale"]})
    write_coco(cache / "coco_test.json", images, pd.read_csv(cache / "annotations.csv"), VINDR_CLASSES[:14])
    ids = {name: k + 1 for k, name in enumerate(test["image_id"])}
    scale = dict(zip(test["image_id"], test["scale"]))
    pred = pd.read_csv(case["pred"])
    results = [{**r, "image_id": ids[r["image_id"]], "bbox": [v * scale[r["image_id"]] for v in r["bbox"]]}
               for r in coco_results(pred)]
    (tmp_path / "mmdet.json").write_text(json.dumps(results))
    by_csv = build_site(cache, ["test"], [Model("m", case["pred"])], tmp_path / "a")
    by_coco = build_site(cache, ["test"], [Model("m", tmp_path / "mmdet.json")], tmp_path / "b")
    a, b = _data(by_csv.parent / "data" / "index.js"), _data(by_coco.parent / "data" / "index.js")
    assert [i["id"] for i in a["images"]] == [i["id"] for i in b["images"]]
    assert sum(len(i["models"][0]["s"]) for i in a["images"] if i["models"][0]) > 10
    for x, y in zip(a["images"], b["images"]):
        if x["models"][0] is None:   # an image without a detection: not predicted by either file
            assert y["models"][0] is None
            continue
        assert x["models"][0]["c"] == y["models"][0]["c"] and x["models"][0]["t"] == y["models"][0]["t"]
        np.testing.assert_allclose(x["models"][0]["s"], y["models"][0]["s"])
