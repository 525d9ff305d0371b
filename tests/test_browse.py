"""The case browser: counts against an independent greedy matching and `btcxr evaluate --counts-at`, the site's
files, and the page itself in headless Chromium (selenium): no console error, the score slider draws the boxes
Python counts, and the index shows evaluate's TP / FP / FN."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from btcxr.browse.site import IOU_OPTIONS, Model, best_f1_threshold, build_site, model_of
from btcxr.data.classes import VINDR_CLASSES
from btcxr.detect.counts import per_image_counts
from btcxr.engine.paths import file_names
from btcxr.errors import BtcxrError, cut
from btcxr.explain.figures import heatmap_png

BOX = ["x_min", "y_min", "x_max", "y_max"]
MODELS = ("imagenet", "btcxr")


def make_case_cache(root: Path, n: int = 12, seed: int = 0) -> Path:
    """A VinDr-format cache with several classes and boxes per image, radiologists' boxes (readers.csv) and
    three splits; originals 400 x 320 px, cached at 160 px."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    manifest, ann, readers = [], [], []
    for i in range(n):
        image_id = f"img{i:03d}"
        split = ("test", "test", "val")[i % 3]
        scale = 160 / 400
        Image.fromarray(rng.integers(0, 255, (128, 160), dtype=np.uint8)).save(root / "images" / f"{image_id}.png")
        labels = []
        for _ in range(i % 4):  # 0 to 3 boxes; no box: "No finding"
            c = int(rng.integers(0, 14))
            x0, y0 = rng.uniform(0, 250), rng.uniform(0, 200)
            w, h = rng.uniform(40, 140), rng.uniform(40, 110)
            ann.append([image_id, c, VINDR_CLASSES[c], x0, y0, x0 + w, y0 + h, 1.0])
            for rad in ("R1", "R2"):
                jitter = rng.normal(0, 4, 4)
                readers.append([image_id, rad, c, x0 + jitter[0], y0 + jitter[1], x0 + w + jitter[2], y0 + h + jitter[3]])
            labels.append(VINDR_CLASSES[c])
        if not labels:
            ann.append([image_id, 14, "No finding", None, None, None, None, 1.0])
        manifest.append([image_id, f"images/{image_id}.png", "P-SECRET", split, "|".join(labels) or "No finding",
                         400, 320, scale])
    pd.DataFrame(manifest, columns=["image_id", "file", "patient_id", "split", "labels", "orig_width", "orig_height",
                                    "scale"]).to_csv(root / "manifest.csv", index=False)
    pd.DataFrame(ann, columns=["image_id", "class_id", "class_name", *BOX, "score"]).to_csv(root / "annotations.csv",
                                                                                           index=False)
    pd.DataFrame(readers, columns=["image_id", "rad_id", "class_id", *BOX]).to_csv(root / "readers.csv", index=False)
    (root / "prepare.json").write_text(json.dumps({"dataset": "vindr", "size": 160}))
    return root


def fake_predictions(cache: Path, path: Path, seed: int, ids=None) -> Path:
    """Detections near each ground-truth box (some shifted off it), duplicates, and false alarms on `ids`
    (default: the test split)."""
    rng = np.random.default_rng(seed)
    gt = pd.read_csv(cache / "annotations.csv", dtype={"image_id": str})
    if ids is None:
        ids = pd.read_csv(cache / "manifest.csv", dtype={"image_id": str}).query("split == 'test'")["image_id"]
    rows = []
    for image_id in ids:
        for g in gt[(gt["image_id"] == image_id) & (gt["class_id"] < 14)].itertuples():
            for _ in range(int(rng.integers(1, 3))):
                shift = rng.normal(0, rng.choice([3.0, 30.0]), 4)
                rows.append([image_id, g.class_id, VINDR_CLASSES[g.class_id], rng.uniform(0.05, 1),
                             g.x_min + shift[0], g.y_min + shift[1], g.x_max + shift[2], g.y_max + shift[3]])
        for _ in range(int(rng.integers(0, 4))):
            c = int(rng.integers(0, 14))
            x0, y0 = rng.uniform(0, 300), rng.uniform(0, 250)
            rows.append([image_id, c, VINDR_CLASSES[c], rng.uniform(0.05, 1), x0, y0, x0 + 60, y0 + 50])
    frame = pd.DataFrame(rows, columns=["image_id", "class_id", "class_name", "score", *BOX])
    frame.to_csv(path, index=False)
    return path


def fake_explanations(cache: Path, predictions: dict[str, Path], out: Path) -> Path:
    """A `btcxr explain` folder: boxes.csv with heatmap paths for the two best boxes of each image."""
    rows = []
    for model, path in predictions.items():
        pred = pd.read_csv(path).sort_values("score", ascending=False)
        for image_id, group in pred.groupby("image_id"):
            for k, r in enumerate(group.head(2).itertuples()):
                heat = Path("heatmaps") / image_id / f"{model}_box{k}.png"
                (out / heat).parent.mkdir(parents=True, exist_ok=True)
                (out / heat).write_bytes(heatmap_png(np.linspace(0, 1, 128 * 160).reshape(128, 160)))
                rows.append({"image_id": image_id, "model": model, "box": k, "class_id": r.class_id,
                             "class_name": r.class_name, "score": r.score, "x_min": r.x_min, "y_min": r.y_min,
                             "x_max": r.x_max, "y_max": r.y_max, "figure": "", "heatmap": heat.as_posix()})
    pd.DataFrame(rows).to_csv(out / "boxes.csv", index=False)
    return out


def reference_counts(gt: pd.DataFrame, pred: pd.DataFrame, iou_thr: float, score_thr: float) -> dict:
    """Independent greedy matching (COCO's rule, written out plainly): per image and class, detections by
    descending score, each takes the unmatched ground-truth box with the highest IoU >= the threshold."""
    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    out = {}
    gt = gt[gt["class_id"] < 14]
    for image_id in pred["image_id"].unique():
        tp = fp = 0
        g_img = gt[gt["image_id"] == image_id]
        d_img = pred[(pred["image_id"] == image_id) & (pred["score"] >= score_thr)]
        for c in d_img["class_id"].unique():
            truths = g_img[g_img["class_id"] == c][BOX].to_numpy()
            taken = [False] * len(truths)
            for d in d_img[d_img["class_id"] == c].sort_values("score", ascending=False, kind="stable")[BOX].to_numpy():
                best, best_iou = -1, iou_thr
                for j, t in enumerate(truths):
                    v = iou(d, t)
                    if not taken[j] and v >= best_iou:
                        best, best_iou = j, v
                if best >= 0:
                    taken[best] = True
                    tp += 1
                else:
                    fp += 1
        out[image_id] = (tp, fp, len(g_img) - tp)
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("browse")
    cache = make_case_cache(base / "cache")
    preds = {m: fake_predictions(cache, base / f"{m}.csv", seed=i) for i, m in enumerate(MODELS)}
    cam = fake_explanations(cache, preds, base / "cam")
    index = build_site(cache, ["test"], [Model(m, p) for m, p in preds.items()], base / "site", cams=[cam])
    return {"cache": cache, "preds": preds, "index": index, "base": base}


def _data(path: Path) -> dict:
    text = path.read_text()
    assert text.startswith("btcxrData(") and text.rstrip().endswith(");")
    return json.loads(text.strip()[len("btcxrData("):-2])


@pytest.mark.parametrize("iou_thr, score_thr", [(0.5, 0.3), (0.3, 0.05), (0.7, 0.6)])
def test_counts_are_the_greedy_matching(site, iou_thr, score_thr):
    gt = pd.read_csv(site["cache"] / "annotations.csv")
    pred = pd.read_csv(site["preds"]["btcxr"])
    counts = per_image_counts(gt, pred, iou_thr, score_thr).set_index("image_id")
    reference = reference_counts(gt, pred, iou_thr, score_thr)
    assert reference  # detections on every test image
    for image_id, (tp, fp, fn) in reference.items():
        assert tuple(counts.loc[image_id, ["tp", "fp", "fn"]]) == (tp, fp, fn), image_id
    assert counts["tp"].sum() > 0 and counts["fp"].sum() > 0 and counts["fn"].sum() > 0


def test_site_holds_the_counts_flags_boxes_and_no_header_value(site):
    out = site["index"].parent
    index = _data(out / "data" / "index.js")
    test_ids = pd.read_csv(site["cache"] / "manifest.csv").query("split == 'test'")["image_id"].tolist()
    assert [img["id"] for img in index["images"]] == sorted(test_ids)
    assert index["models"] == list(MODELS) and index["iou"] == list(IOU_OPTIONS)
    gt = pd.read_csv(site["cache"] / "annotations.csv")
    for m, model in enumerate(MODELS):
        pred = pd.read_csv(site["preds"][model])
        for t, iou in enumerate(IOU_OPTIONS):
            for score in (0.05, 0.4, 0.9):
                expected = per_image_counts(gt, pred, iou, score).set_index("image_id")
                for img in index["images"]:
                    d = img["models"][m]
                    kept = [i for i, s in enumerate(d["s"]) if s >= score]
                    tp = sum((d["t"][i] >> t) & 1 for i in kept)
                    assert (tp, len(kept) - tp, len(img["gt"]) - tp) == tuple(
                        expected.loc[img["id"], ["tp", "fp", "fn"]]), (model, iou, score, img["id"])
    case = _data(out / "data" / "cases" / "img001.js")
    assert len(case["readers"]) == 2 * len(case["gt"]) == 2
    assert case["gt"][0][:4] == pytest.approx((gt.query("image_id == 'img001'")[BOX].to_numpy()[0] * 0.4).round(1))
    explained = pd.read_csv(site["base"] / "cam" / "boxes.csv").query("image_id == 'img001'")
    assert [len(m["cams"]) for m in case["models"]] == [int((explained["model"] == m).sum()) for m in MODELS]
    assert sum(len(m["cams"]) for m in case["models"]) > 0
    assert all((out / cam["heatmap"]).is_file() for m in case["models"] for cam in m["cams"])
    assert (out / "images" / "img001.png").is_file()
    text = "".join(p.read_text() for p in (out / "data").rglob("*.js"))
    assert "P-SECRET" not in text  # the manifest's patient id never reaches the site
    assert "http://" not in (out / "browse.js").read_text() and "https://" not in (out / "index.html").read_text()


def test_cli_builds_a_site_and_names_bad_input(site, tmp_path):
    cache, preds = site["cache"], site["preds"]
    run = [sys.executable, "-m", "btcxr", "browse", "--cache", str(cache)]
    ok = subprocess.run([*run, "--run", str(preds["btcxr"]), "--split", "test", "--split", "val",
                         "--out", str(tmp_path / "s")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert len(_data(tmp_path / "s" / "data" / "index.js")["images"]) == 12  # test and val: every image
    missing = subprocess.run([*run, "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "x")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "nope" in missing.stderr
    split = subprocess.run([*run, "--run", str(preds["btcxr"]), "--split", "tset", "--out", str(tmp_path / "y")],
                           capture_output=True, text=True)
    assert split.returncode == 2 and "no image in split(s) tset" in split.stderr
    (tmp_path / "nocam").mkdir()
    cam = subprocess.run([*run, "--run", str(preds["btcxr"]), "--cam", str(tmp_path / "nocam"), "--out",
                          str(tmp_path / "z")], capture_output=True, text=True)
    assert cam.returncode == 2 and "no boxes.csv" in cam.stderr


def test_evaluate_writes_the_same_counts(site, tmp_path):
    result = subprocess.run([sys.executable, "-m", "btcxr", "evaluate", "--pred", str(site["preds"]["imagenet"]),
                             "--gt", str(site["cache"] / "annotations.csv"), "--out", str(tmp_path), "--bootstrap", "0",
                             "--counts-at", "0.5", "0.3"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    written = pd.read_csv(tmp_path / "per_image.csv").set_index("image_id")
    reference = reference_counts(pd.read_csv(site["cache"] / "annotations.csv"),
                                 pd.read_csv(site["preds"]["imagenet"]), 0.5, 0.3)
    for image_id, counts in reference.items():
        assert tuple(written.loc[image_id, ["tp", "fp", "fn"]]) == counts


# ------------------------------------------------------------------------------------------------ browser
def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser():
    found = _chromium()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: chromium and chromium-driver are missing (.ci/run installs them)")
        pytest.skip("Chromium or chromedriver is not installed here (Debian: apt install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    yield driver
    driver.quit()


def _wait(driver, script: str, timeout: float = 10.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: d.execute_script(script))


def _set(driver, element_id: str, value, event: str) -> None:
    driver.execute_script(f"const e = document.getElementById('{element_id}'); e.value = arguments[0]; "
                          f"e.dispatchEvent(new Event('{event}'));", str(value))


def _open(driver, url: str) -> None:
    """A fresh load of the page (a URL differing only in its hash would not reload it), the index drawn."""
    driver.get("about:blank")
    driver.get(url)
    _wait(driver, "return typeof state !== 'undefined' && state.index !== null && "
                  "document.querySelectorAll('#cases tbody tr').length > 0")


def test_page_counts_and_draws_what_python_computes(site, browser, tmp_path):
    index = site["index"]
    _open(browser, index.as_uri())
    for t, score in [(2, 0.3), (0, 0.05), (4, 0.6)]:
        _set(browser, "iou", t, "change")
        _set(browser, "score", score, "input")
        rows = browser.execute_script(
            "return [...document.querySelectorAll('#cases tbody tr')].map(r => [r.dataset.id, "
            "[...r.querySelectorAll('td.tp, td.fp, td.fn')].map(c => Number(c.textContent))])")
        assert len(rows) == 8
        for m, model in enumerate(MODELS):
            expected = _evaluate(site["preds"][model], site["cache"], tmp_path / f"eval_{model}_{t}", IOU_OPTIONS[t],
                                 score)
            for image_id, cells in rows:
                assert tuple(cells[3 * m: 3 * m + 3]) == tuple(expected.loc[image_id, ["tp", "fp", "fn"]]), \
                    (model, t, score, image_id)
    # the image view: the score slider changes the number of boxes drawn to the number of detections above it
    pred = {m: pd.read_csv(p) for m, p in site["preds"].items()}
    image_id = "img003"
    browser.execute_script(f"location.hash = 'case={image_id}'")
    _wait(browser, "return document.querySelectorAll('#panels .panel[data-drawn]').length == 2")
    seen = set()
    for score in (0.05, 0.35, 0.7, 0.95):
        _set(browser, "score", score, "input")
        drawn = browser.execute_script("return [...document.querySelectorAll('#panels .panel')].map(p => "
                                       "Number(p.dataset.drawn))")
        python = [int(((pred[m]["image_id"] == image_id) & (pred[m]["score"] >= score)).sum()) for m in MODELS]
        assert drawn == python, score
        seen.add(tuple(drawn))
    assert len(seen) > 1  # the threshold really changed what is drawn
    if os.environ.get("BTCXR_SCREENSHOTS"):  # docs/: python -m pytest tests/test_browse.py with the variable set
        shots = Path(os.environ["BTCXR_SCREENSHOTS"])
        _set(browser, "score", 0.3, "input")
        browser.save_screenshot(str(shots / "browse_case.png"))
    # keyboard: the next image in the index's order
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    order = browser.execute_script("document.activeElement.blur(); return state.order")
    following = order[order.index(image_id) + 1] if order.index(image_id) + 1 < len(order) else image_id
    ActionChains(browser).send_keys(Keys.ARROW_RIGHT).perform()
    _wait(browser, f"return location.hash.endsWith('&case={following}')")
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    _wait(browser, "return !document.getElementById('index-view').hidden")
    if os.environ.get("BTCXR_SCREENSHOTS"):
        browser.save_screenshot(str(Path(os.environ["BTCXR_SCREENSHOTS"]) / "browse_index.png"))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


# ------------------------------------------------------------------------------------------------ file names, paths
def _copy_cam(site, target: Path, line: int, heatmap: str) -> Path:
    """The site's `btcxr explain` folder copied, with boxes.csv line `line` naming `heatmap`."""
    shutil.copytree(site["base"] / "cam", target)
    boxes = pd.read_csv(target / "boxes.csv", dtype=str, keep_default_na=False)
    boxes.loc[line - 2, "heatmap"] = heatmap
    boxes.to_csv(target / "boxes.csv", index=False)
    return target


@pytest.mark.parametrize("case", ["absolute", "climbs", "symlink", "missing", "long"])
def test_heatmap_paths_stay_in_the_cam_folder(site, tmp_path, case):
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"not a heatmap of this folder")
    cam = tmp_path / "cam"
    values = {"absolute": str(outside), "climbs": "../outside.png", "symlink": "heatmaps/link.png",
              "missing": "heatmaps/gone.png", "long": "../" * 300 + "outside.png"}
    boxes = pd.read_csv(site["base"] / "cam" / "boxes.csv", dtype={"image_id": str})
    line = int(np.flatnonzero(boxes["image_id"] == "img003")[0]) + 2  # a test image: the site uses the row
    _copy_cam(site, cam, line, values[case])
    if case == "symlink":
        (cam / "heatmaps" / "link.png").symlink_to(outside)
    models = [Model(m, p) for m, p in site["preds"].items()]
    with pytest.raises(BtcxrError) as error:
        build_site(site["cache"], ["test"], models, tmp_path / "site", cams=[cam])
    message = str(error.value)
    assert str(cam / "boxes.csv") in message and f"line {line}" in message and "heatmap" in message
    assert ("no such file" if case == "missing" else "leads outside") in message
    assert cut(values[case]) in message and len(message) < 600  # a long value is cut
    assert not (tmp_path / "site" / "heatmaps").exists() or not any(
        p.read_bytes() == outside.read_bytes() for p in (tmp_path / "site").rglob("*.png"))


def test_a_symlink_inside_the_cam_folder_is_followed(site, tmp_path):
    cam = tmp_path / "cam"
    boxes = pd.read_csv(site["base"] / "cam" / "boxes.csv", dtype={"image_id": str})
    row = int(np.flatnonzero(boxes["image_id"] == "img003")[0])
    _copy_cam(site, cam, row + 2, "heatmaps/inside.png")
    (cam / "heatmaps" / "inside.png").symlink_to(cam / boxes.loc[row, "heatmap"])
    build_site(site["cache"], ["test"], [Model(m, p) for m, p in site["preds"].items()], tmp_path / "site", cams=[cam])


def test_file_names_are_distinct_and_stay_in_their_folder():
    names = ["a/b", "a_b", "..", ".", ".hidden", "Case", "case", "x" * 400, "x" * 400 + "y", "ok-1.2", ""]
    parts = file_names(names, "name")
    assert len({p.casefold() for p in parts.values()}) == len(names)
    for name, part in parts.items():
        assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", part) and len(part) < 120, (name, part)
    assert parts["a_b"] == "a_b" and parts["ok-1.2"] == "ok-1.2"  # plain names stay readable


# ------------------------------------------------------------------------------------------------ not predicted
@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """A site of the test and val splits with two models that each predicted part of them:
    - "run", a `btcxr finetune` run folder that predicted the test split only (test_images.csv); on one test
      image it found nothing;
    - "predict", a `btcxr predict` output (predictions.csv, images.csv) of the first half of the test split
      and of the val split; nothing found on one of its test images."""
    base = tmp_path_factory.mktemp("partial")
    cache = make_case_cache(base / "cache")
    manifest = pd.read_csv(cache / "manifest.csv", dtype={"image_id": str})
    test = sorted(manifest.query("split == 'test'")["image_id"])
    val = sorted(manifest.query("split == 'val'")["image_id"])
    (base / "run").mkdir()
    run = pd.read_csv(fake_predictions(cache, base / "run" / "test_predictions.csv", seed=5, ids=test))
    run[run["image_id"] != test[2]].to_csv(base / "run" / "test_predictions.csv", index=False)
    pd.DataFrame({"image_id": test}).to_csv(base / "run" / "test_images.csv", index=False)
    (base / "predict").mkdir()
    covered = test[:4] + val
    pred = pd.read_csv(fake_predictions(cache, base / "predict" / "predictions.csv", seed=6, ids=covered))
    pred[pred["image_id"] != test[1]].to_csv(base / "predict" / "predictions.csv", index=False)
    pd.DataFrame({"image_id": covered, "file": [f"x/{i}.png" for i in covered]}).to_csv(
        base / "predict" / "images.csv", index=False)
    models = [model_of(base / "run"), model_of(base / "predict" / "predictions.csv", "predict")]
    index = build_site(cache, ["test", "val"], models, base / "site")
    return {"cache": cache, "index": index, "base": base, "test": test, "val": val,
            "covered": {"run": set(test), "predict": set(covered)},
            "preds": {"run": base / "run" / "test_predictions.csv", "predict": base / "predict" / "predictions.csv"}}


def test_site_marks_images_a_model_did_not_predict(partial):
    index = _data(partial["index"].parent / "data" / "index.js")
    assert index["models"] == ["run", "predict"]
    for image in index["images"]:
        for m, label in enumerate(index["models"]):
            assert (image["models"][m] is None) == (image["id"] not in partial["covered"][label]), (label, image["id"])
    found_nothing = next(i for i in index["images"] if i["id"] == partial["test"][2])
    assert found_nothing["models"][0] == {"s": [], "c": [], "t": []}  # predicted, nothing found: not "not predicted"


def test_coverage_is_logged(partial, tmp_path, caplog):
    run, predict = model_of(partial["base"] / "run"), model_of(partial["preds"]["predict"], "predict")
    with caplog.at_level(logging.INFO, logger="btcxr.browse.site"):
        build_site(partial["cache"], ["val"], [run, predict], tmp_path / "a")
        build_site(partial["cache"], ["test"], [run, predict], tmp_path / "b")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert [w for w in warnings if "predicted none" in w] == [
        f"run ({partial['preds']['run']}) predicted none of the 4 image(s) of split(s) val: its cells read "
        "'not predicted'"]
    assert "predict predicted 4 of the 8 image(s) of split(s) test; the other 4 read 'not predicted'" in infos
    assert not any(m.startswith("predict predicted") and "val" in m for m in infos)  # all of val: nothing to say


def _brute_force_f1(gt: pd.DataFrame, pred: pd.DataFrame, ids: list[str], min_score: float) -> tuple[float, float]:
    """Every detection score as the threshold, TP / FP by the plain greedy matching above, the best F1
    (the highest threshold among equals)."""
    gt, pred = gt[gt["image_id"].isin(ids)], pred[pred["image_id"].isin(ids) & (pred["score"] >= min_score)]
    n_truth = int((gt["class_id"] < 14).sum())
    best = (-1.0, None)
    for t in sorted(set(pred["score"]), reverse=True):
        counts = reference_counts(gt, pred, 0.5, t).values()
        tp, fp = sum(c[0] for c in counts), sum(c[1] for c in counts)
        f1 = 2 * tp / (2 * tp + fp + (n_truth - tp))
        if f1 > best[0]:
            best = (f1, t)
    return best[1], best[0]


def test_default_threshold_is_the_best_f1_on_val(partial):
    index = _data(partial["index"].parent / "data" / "index.js")
    gt = pd.read_csv(partial["cache"] / "annotations.csv", dtype={"image_id": str})
    pred = pd.read_csv(partial["preds"]["predict"], dtype={"image_id": str})
    score, f1 = _brute_force_f1(gt, pred, partial["val"], 0.05)
    run, predict = index["thresholds"]
    assert predict["score"] == score and predict["f1"] == pytest.approx(f1)
    assert predict["note"] == f"best F1 {f1:.2f} on 4 val images" and 0.05 < score < 1
    # chosen on val, never on test: the test predictions do not move it
    assert best_f1_threshold(gt, pred, partial["val"], 0.05) == (score, pytest.approx(f1))
    assert best_f1_threshold(gt, pred, partial["test"][:4], 0.05)[0] != score
    assert run == {"score": 0.3, "note": "fixed: no predictions on val images"}  # the run predicted test only


def _rows(driver) -> list[dict]:
    """The index table: id, split and findings as text; per model its three counts, or "not predicted"."""
    return driver.execute_script("""return [...document.querySelectorAll('#cases tbody tr')].map(r => {
        const cells = [...r.children].slice(4), models = [];
        while (cells.length) models.push(cells[0].classList.contains('np') ? cells.shift().textContent
                                         : cells.splice(0, 3).map(c => Number(c.textContent)));
        return {id: r.querySelector('td.id').textContent, split: r.querySelector('td.split').textContent,
                findings: r.querySelector('td.findings').textContent, models: models};
      })""")


def _evaluate(pred: Path, cache: Path, out: Path, iou: float, score: float) -> pd.DataFrame:
    from btcxr.cli import main

    assert main(["evaluate", "--pred", str(pred), "--gt", str(cache / "annotations.csv"), "--out", str(out),
                 "--bootstrap", "0", "--counts-at", repr(iou), repr(score)]) == 0
    return pd.read_csv(out / "per_image.csv", dtype={"image_id": str}).set_index("image_id")


def test_page_counts_covered_images_only(partial, browser, tmp_path):
    _open(browser, partial["index"].as_uri())
    index = _data(partial["index"].parent / "data" / "index.js")
    labels = index["models"]
    text = browser.find_element("id", "thresholds").text
    for label, t in zip(labels, index["thresholds"]):
        assert f"{label}: score \u2265 {t['score']:#.3g} ({t['note']})" in text
    # each model's own threshold (the default), then one threshold for both
    for iou_index, score in [(2, None), (0, 0.3)]:
        _set(browser, "iou", iou_index, "change")
        if score is not None:
            _set(browser, "score", score, "input")
        rows = _rows(browser)
        assert len(rows) == 12
        totals = browser.execute_script("return [...document.querySelectorAll('#summary .total')].map(t => "
                                        "[Number(t.dataset.tp), Number(t.dataset.fp), Number(t.dataset.fn)])")
        for m, label in enumerate(labels):
            threshold = index["thresholds"][m]["score"] if score is None else score
            expected = _evaluate(partial["preds"][label], partial["cache"], tmp_path / f"{label}{iou_index}",
                                 IOU_OPTIONS[iou_index], threshold)
            total = np.zeros(3, dtype=int)
            for row in rows:
                if row["id"] in partial["covered"][label]:
                    assert row["models"][m] == expected.loc[row["id"], ["tp", "fp", "fn"]].tolist(), (label, row)
                    total += expected.loc[row["id"], ["tp", "fp", "fn"]].to_numpy()
                else:
                    assert row["models"][m] == "not predicted", (label, row)
            assert totals[m] == total.tolist(), label
    summary = browser.find_element("id", "summary").text
    assert "predict: TP" in summary and "on 8 images (4 not predicted)" in summary
    # worst first for "predict": its four uncovered test images last, the others by FP + FN
    _set(browser, "sort", "worst:1", "change")
    rows = _rows(browser)
    assert [r["models"][1] for r in rows[-4:]] == ["not predicted"] * 4
    worst = [r["models"][1][1] + r["models"][1][2] for r in rows[:-4]]
    assert worst == sorted(worst, reverse=True)
    # the image view of an image "run" did not predict
    val_image = partial["val"][0]
    browser.execute_script("location.hash = arguments[0]", f"case={val_image}")
    _wait(browser, "return document.querySelectorAll('#panels .panel[data-drawn]').length == 2")
    panels = browser.execute_script("return [...document.querySelectorAll('#panels .panel')].map(p => "
                                    "[p.dataset.predicted, p.querySelector('.drawn').textContent])")
    assert panels[0] == ["false", "not predicted"] and panels[1][0] == "true" and "TP" in panels[1][1]
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_url_keeps_the_view(partial, browser):
    _open(browser, partial["index"].as_uri())
    _set(browser, "iou", 1, "change")
    _set(browser, "split", "test", "change")
    _set(browser, "score", 0.42, "input")
    gt = pd.read_csv(partial["cache"] / "annotations.csv", dtype={"image_id": str})
    cls = int(gt.loc[gt["image_id"].isin(partial["test"]) & (gt["class_id"] < 14), "class_id"].iloc[0])
    _set(browser, "class", cls, "change")
    browser.execute_script("document.querySelector('th[data-key=fn][data-model=\"1\"]').click()")  # FN of predict
    controls = "return ['iou', 'score', 'per-model', 'class', 'finding', 'split', 'sort'].map(id => " \
               "id == 'per-model' ? document.getElementById(id).checked : document.getElementById(id).value)"
    before, rows, sort = browser.execute_script(controls), _rows(browser), browser.execute_script("return state.sort")
    _wait(browser, "return location.hash.includes('sort=fn%3A1%3Adesc')")  # written once the controls rest
    url = browser.current_url
    assert "iou=1" in url and "score=0.42" in url and f"class={cls}" in url and "split=test" in url
    _open(browser, url)
    assert browser.execute_script(controls) == before and _rows(browser) == rows
    assert browser.execute_script("return state.sort") == sort == {"key": "fn", "model": 1, "desc": True}
    # an open image: its URL opens it, with the same controls
    browser.execute_script("document.querySelector('#cases tbody tr:nth-child(2) td.id a').click()")
    _wait(browser, "return !document.getElementById('case-view').hidden && state.current !== null")
    opened, url = browser.execute_script("return state.current.id"), browser.current_url
    assert opened == rows[1]["id"]
    browser.get("about:blank")
    browser.get(url)
    _wait(browser, f"return typeof state !== 'undefined' && state.current && state.current.id == {json.dumps(opened)}")
    assert browser.find_element("id", "case-id").text == opened and browser.execute_script(controls) == before
    # each model's own threshold is kept too
    browser.execute_script("document.getElementById('per-model').click()")
    _wait(browser, "return location.hash.includes('score=best')")
    _open(browser, browser.current_url)
    assert browser.execute_script("return document.getElementById('per-model').checked")


def test_csv_export_is_the_table(partial, browser):
    _open(browser, partial["index"].as_uri())
    _set(browser, "sort", "worst:1", "change")
    text = browser.execute_script("return window.btcxrExportCsv()")
    assert text.endswith("\r\n")
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == ["image_id", "split", "ground_truth", "run tp", "run fp", "run fn", "predict tp", "predict fp",
                        "predict fn"]
    expected = [[r["id"], r["split"], r["findings"]] + sum(
        ([c] * 3 if isinstance(c, str) else [str(v) for v in c] for c in r["models"]), []) for r in _rows(browser)]
    assert table[1:] == expected and len(expected) == 12
    assert "not predicted" in {cell for row in table for cell in row}


# ------------------------------------------------------------------------------------------------ hostile names
HOSTILE_IDS = ['<img src=x onerror="window.__pwned=1">', "__proto__", "constructor",
               "\"'><script>window.__pwned=2</script>", "quote\"s 'and' `back`ticks", "${1+1}", "a/b", "a_b", "..",
               "Case", "case", '=HYPERLINK("http://x")', "@SUM(A1)", "-2+3", "a,b", "100%25 #x&y=z"]
HOSTILE_SPLIT = '<b>te"st</b>&amp;'
HOSTILE_LABELS = ["__proto__", '<img src=x onerror="window.__pwned=3">', "a/b", "a_b", "=1+1"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A 16-bit cache whose image ids, split and model labels are markup, object-prototype names, names that
    sanitise alike and spreadsheet formulas; every model predicted and explained every image."""
    base = tmp_path_factory.mktemp("hostile")
    cache = base / "cache"
    (cache / "images").mkdir(parents=True)
    rng = np.random.default_rng(3)
    manifest, ann = [], []
    for k, image_id in enumerate(HOSTILE_IDS):
        Image.fromarray(rng.integers(0, 65535, (128, 160)).astype(np.uint16)).save(cache / "images" / f"h{k}.png")
        manifest.append([image_id, f"images/h{k}.png", "", HOSTILE_SPLIT, "x", 400, 320, 0.4])
        if k % 5 == 4:
            ann.append([image_id, 14, "No finding", None, None, None, None, 1.0])
            continue
        c = k % 14
        ann.append([image_id, c, VINDR_CLASSES[c], 50 + 10 * k, 40, 200 + 5 * k, 220, 1.0])
    pd.DataFrame(manifest, columns=["image_id", "file", "patient_id", "split", "labels", "orig_width", "orig_height",
                                    "scale"]).to_csv(cache / "manifest.csv", index=False)
    pd.DataFrame(ann, columns=["image_id", "class_id", "class_name", *BOX, "score"]).to_csv(cache / "annotations.csv",
                                                                                           index=False)
    (cache / "prepare.json").write_text(json.dumps({"dataset": "vindr", "size": 160, "bits": 16}))
    preds, rows = {}, []
    (base / "cam" / "heatmaps").mkdir(parents=True)
    for m, label in enumerate(HOSTILE_LABELS):
        preds[label] = fake_predictions(cache, base / f"model{m}.csv", seed=10 + m, ids=HOSTILE_IDS)
        pred = pd.read_csv(preds[label], dtype={"image_id": str})
        for i, image_id in enumerate(HOSTILE_IDS):
            top = pred[pred["image_id"] == image_id].sort_values("score", ascending=False).head(1)
            for r in top.itertuples():
                heat = f"heatmaps/m{m}_i{i}.png"  # each model's heatmap its own picture
                (base / "cam" / heat).write_bytes(heatmap_png(np.full((8, 10), (m + 1) / len(HOSTILE_LABELS))))
                rows.append({"image_id": image_id, "model": label, "box": 0, "class_id": r.class_id,
                             "class_name": r.class_name, "score": r.score, "x_min": r.x_min, "y_min": r.y_min,
                             "x_max": r.x_max, "y_max": r.y_max, "figure": "", "heatmap": heat})
    pd.DataFrame(rows).to_csv(base / "cam" / "boxes.csv", index=False)
    index = build_site(cache, [HOSTILE_SPLIT], [Model(label, p) for label, p in preds.items()], base / "site",
                       cams=[base / "cam"])
    return {"cache": cache, "index": index, "preds": preds, "cam": base / "cam", "boxes": pd.DataFrame(rows)}


def test_names_that_sanitise_alike_keep_their_own_files(hostile):
    out = hostile["index"].parent
    index = _data(out / "data" / "index.js")
    files = [img["file"] for img in index["images"]]
    assert len({f.casefold() for f in files}) == len(HOSTILE_IDS)
    assert {p.name for p in (out / "images").iterdir()} == {f"{f}.png" for f in files}
    assert {p.name for p in (out / "data" / "cases").iterdir()} == {f"{f}.js" for f in files}
    assert all(p.resolve().is_relative_to(out.resolve()) for p in out.rglob("*"))
    # "a/b" and "a_b" (models and images): each heatmap is its own model's picture
    linked = 0
    for img in index["images"]:
        case = _data(out / "data" / "cases" / f"{img['file']}.js")
        assert case["id"] == img["id"]
        for model in case["models"]:
            for cam in model["cams"]:
                source = hostile["boxes"].query("model == @model['label'] and image_id == @img['id']")["heatmap"]
                assert (out / cam["heatmap"]).read_bytes() == (hostile["cam"] / source.iloc[0]).read_bytes()
                linked += 1
    assert linked == len(hostile["boxes"])
    folders = {p.name for p in (out / "heatmaps").iterdir()}
    assert len(folders) == len(HOSTILE_LABELS) and "a_b" in folders


def test_hostile_names_stay_text(hostile, browser):
    browser.get_log("browser")  # earlier tests' messages
    _open(browser, hostile["index"].as_uri())
    assert browser.execute_script("return window.__pwned") is None
    rows = _rows(browser)
    assert sorted(r["id"] for r in rows) == sorted(HOSTILE_IDS) and {r["split"] for r in rows} == {HOSTILE_SPLIT}
    heads = browser.execute_script("return [...document.querySelectorAll('#cases thead th[colspan]')].map(t => "
                                   "t.textContent)")
    assert heads == HOSTILE_LABELS
    options = browser.execute_script("return [...document.getElementById('split').options].map(o => o.textContent)")
    assert HOSTILE_SPLIT in options
    assert all(f"{label}: score" in browser.find_element("id", "thresholds").get_attribute("textContent")
               for label in HOSTILE_LABELS)
    # a 16-bit cache: the window in its intensities, mapped onto the 8 bits the browser draws
    assert browser.execute_script("return document.getElementById('wl-centre').max") == "65535"
    _set(browser, "wl-centre", 20000, "input")
    _set(browser, "wl-width", 10000, "input")
    assert browser.execute_script("return windowFilter()") == "url(#window-level)"
    transfer = browser.execute_script("return [...document.querySelectorAll('#window-level feFuncR, #window-level "
                                      "feFuncB')].map(f => [Number(f.getAttribute('slope')), "
                                      "Number(f.getAttribute('intercept'))])")
    assert transfer == [pytest.approx([65535 / 10000, -15000 / 10000])] * 2
    pred = {label: pd.read_csv(p, dtype={"image_id": str}) for label, p in hostile["preds"].items()}
    gt = pd.read_csv(hostile["cache"] / "annotations.csv", dtype={"image_id": str})
    thresholds = browser.execute_script("return state.index.thresholds.map(t => t.score)")
    for image_id in HOSTILE_IDS:  # each opens through its link: the id survives the URL
        browser.execute_script("[...document.querySelectorAll('#cases td.id a')].find(a => a.textContent == "
                               "arguments[0]).click()", image_id)
        shown = _wait(browser, f"""return state.current && state.current.id == {json.dumps(image_id)} &&
            document.querySelectorAll('#panels .panel[data-drawn]').length == 5 && {{
              id: document.getElementById('case-id').textContent,
              hash: decodeURIComponent(location.hash.split('&case=')[1]), gt: state.current.gt.length,
              panels: [...document.querySelectorAll('#panels .panel')].map(p => [p.dataset.model,
                p.querySelector('strong').textContent, Number(p.dataset.drawn),
                [...p.querySelectorAll('option')].map(o => o.textContent)])}}""")
        assert shown["id"] == shown["hash"] == image_id
        panels = shown["panels"]
        for (model, caption, drawn, cams), label, t in zip(panels, HOSTILE_LABELS, thresholds):
            assert model == caption == label
            assert drawn == int(((pred[label]["image_id"] == image_id) & (pred[label]["score"] >= t)).sum())
            explained = hostile["boxes"].query("model == @label and image_id == @image_id")
            assert cams == [f"{VINDR_CLASSES[c]} {s:#.3g}" for c, s in zip(explained["class_id"], explained["score"])]
        if image_id == "__proto__":
            assert shown["gt"] == int(((gt["image_id"] == image_id) & (gt["class_id"] < 14)).sum()) == 1
            assert sum(p[2] for p in panels) > 0
    assert browser.execute_script("return window.__pwned") is None
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_csv_export_defuses_formulas(hostile, browser):
    _open(browser, hostile["index"].as_uri())
    table = list(csv.reader(io.StringIO(browser.execute_script("return window.btcxrExportCsv()"))))
    assert "'=1+1 tp" in table[0] and "__proto__ tp" in table[0]
    ids = [row[0] for row in table[1:]]
    defused = {i: ("'" + i if i[0] in "=+-@" else i) for i in HOSTILE_IDS}
    assert sorted(ids) == sorted(defused.values())
    assert [row[0] for row in table[1:]] == [defused[r["id"]] for r in _rows(browser)]
    assert all(row[1] == HOSTILE_SPLIT for row in table[1:])


# ------------------------------------------------------------------------------------------------ drawing
RECORD_DRAWING = """
window.__drawn = [];
const P = CanvasRenderingContext2D.prototype, panelOf = (ctx) => [...document.querySelectorAll('#panels canvas')]
  .indexOf(ctx.canvas);
const rect = P.strokeRect, text = P.fillText, image = P.drawImage;
P.strokeRect = function (...a) {
  __drawn.push({op: 'rect', panel: panelOf(this), style: this.strokeStyle, dashed: this.getLineDash().length > 0});
  return rect.apply(this, a);
};
P.fillText = function (...a) {
  __drawn.push({op: 'text', panel: panelOf(this), style: this.fillStyle, text: a[0]});
  return text.apply(this, a);
};
P.drawImage = function (...a) {
  __drawn.push({op: 'image', panel: panelOf(this), src: a[0].src || ''});
  return image.apply(this, a);
};
"""


def _drawn(driver) -> list[dict]:
    return driver.execute_script("window.__drawn = []; draw(); return window.__drawn")


def _labelled_boxes(calls: list[dict], panel: int) -> list[tuple[str, str, str, bool]]:
    """(label, label colour, line colour, dashed) of the boxes drawn with a label in a panel (drawBox writes
    a box's label right after its rectangle)."""
    out, last = [], None
    for c in calls:
        if c["panel"] != panel:
            continue
        if c["op"] == "rect":
            last = c
        elif c["op"] == "text":
            out.append((c["text"], c["style"], last["style"], last["dashed"]))
    return out


def test_boxes_in_class_colours_and_heatmaps_follow_the_threshold(site, browser):
    _open(browser, site["index"].as_uri())
    colors = browser.execute_script("return COLORS")
    explained = pd.read_csv(site["base"] / "cam" / "boxes.csv", dtype={"image_id": str})
    image_id = "img001"
    cams = explained.query("image_id == @image_id and model == 'btcxr'").sort_values("box")
    browser.execute_script("location.hash = viewHash(arguments[0])", image_id)
    _wait(browser, "return document.querySelectorAll('#panels .panel[data-drawn]').length == 2")
    browser.execute_script(RECORD_DRAWING)
    score = float(cams["score"].iloc[0]) - 0.005  # just below the first explained box of btcxr
    _set(browser, "score", score, "input")
    browser.execute_script("document.getElementById('show-readers').checked = false")
    calls = _drawn(browser)
    case = _data(site["index"].parent / "data" / "cases" / f"{image_id}.js")
    iou = int(browser.execute_script("return settings().iou"))
    for m, model in enumerate(case["models"]):
        boxes = _labelled_boxes(calls, m)
        assert [b for b in boxes if b[0].startswith("GT ")] == [
            (f"GT {VINDR_CLASSES[g[4]]}", colors[g[4]], colors[g[4]], True) for g in case["gt"]]
        shown = [b for b in model["boxes"] if b[5] >= browser.execute_script("return settings().score")]
        dets = [b for b in boxes if b[0][:3] in ("TP ", "FP ")]
        assert len(dets) == len(shown) > 0
        for b, drawn in zip(shown, dets):  # in the case file's order
            tp = (b[6] >> iou) & 1
            colour = colors[b[4]]
            assert drawn == (f"{'TP' if tp else 'FP'} {VINDR_CLASSES[b[4]]} {b[5]:#.3g}", colour, colour, not tp)
    # the heatmap select: class and score to 3 significant digits
    options = browser.execute_script("return [...document.querySelectorAll('#panels .panel')][1].querySelectorAll"
                                     "('option').length ? [...[...document.querySelectorAll('#panels .panel')][1]"
                                     ".querySelectorAll('option')].map(o => o.textContent) : []")
    assert options == [f"{VINDR_CLASSES[c]} {s:#.3g}" for c, s in zip(cams["class_id"], cams["score"])]

    def heat(calls):  # panel 1 (btcxr): its heatmap drawn, its explained box (white, dotted) drawn
        return (any(c["op"] == "image" and "heatmaps/" in c["src"] and c["panel"] == 1 for c in calls),
                any(c["op"] == "rect" and c["style"] == "#ffffff" and c["panel"] == 1 for c in calls))

    assert heat(calls) == (True, True)
    _set(browser, "score", score + 0.01, "input")  # now above the box's score: both hidden
    assert heat(_drawn(browser)) == (False, False)
    assert "below the score threshold" in browser.execute_script(
        "return document.querySelectorAll('#panels .panel')[1].querySelector('.cam-note').textContent")


def test_window_and_level_map_the_drawn_pixels(site, browser):
    """Served over HTTP: a page from file:// may not read its canvas back (the page itself never does)."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site["index"].parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _open(browser, f"http://127.0.0.1:{server.server_address[1]}/index.html#case=img003")
        _wait(browser, "return state.current && state.image.complete && state.image.naturalWidth > 0")
        for layer in ("show-gt", "show-dets", "show-cam"):
            browser.execute_script(f"document.getElementById('{layer}').checked = false")
        read = ("draw(); const c = document.querySelector('#panels canvas'); return [...c.getContext('2d')"
                ".getImageData(100, 100, 160, 120).data].filter((v, i) => i % 4 == 0)")
        full = np.array(browser.execute_script(read), dtype=float)
        assert browser.execute_script("return windowFilter()") == "none"  # full range: the pixels as they are
        seen, clipped = set(), set()
        for centre, width in [(100, 80), (180.5, 31), (60, 255)]:
            _set(browser, "wl-centre", centre, "input")
            _set(browser, "wl-width", width, "input")
            windowed = np.array(browser.execute_script(read), dtype=float)
            low = centre - width / 2
            expected = np.round(np.clip((full - low) / width, 0, 1) * 255)
            assert np.abs(windowed - expected).max() <= 1, (centre, width)
            seen.add(tuple(windowed[:50]))
            clipped |= {v for v in (0, 255) if (windowed == v).sum() > (full == v).sum()}
        assert len(seen) == 3 and clipped == {0, 255}  # three different pictures, clipped at both ends
        browser.execute_script("document.getElementById('wl-reset').click()")
        assert np.array_equal(np.array(browser.execute_script(read), dtype=float), full)
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------------------ a finetune run
def test_finetune_run_lists_what_it_predicted_for_the_browser(tmp_path):
    """What `btcxr finetune` leaves in a run folder: val and test predictions of best.pt with the lists of the
    images predicted (val: the best epoch's, written by the training loop; here by the same evaluation); the
    browser then chooses the threshold on val and marks the images left out."""
    import torch

    from btcxr.config import load_config
    from btcxr.detect.config import FinetuneConfig, ModelConfig
    from btcxr.detect.evaluate_checkpoint import evaluate_checkpoint
    from btcxr.detect.model import build_detector, detector_checkpoint
    from btcxr.detect.train import test_model_on_split, write_image_list
    from btcxr.engine.checkpoint import save_checkpoint

    cache = make_case_cache(tmp_path / "cache")
    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    model_cfg = ModelConfig(arch="resnet18", init="random", size=64, fpn_channels=16, box_head_dim=32)
    save_checkpoint(run / "best.pt", detector_checkpoint(build_detector(model_cfg), model_cfg))
    cfg = load_config(FinetuneConfig, None, [f"data.cache={cache}", "data.workers=0", "data.test_split=test",
                                             "optim.batch_size=4", "device=cpu"])
    evaluate_checkpoint(run / "best.pt", cache, "val", run / "val", device="cpu", workers=0, bootstrap=0,
                        predictions_path=run / "val_predictions.csv")
    write_image_list(run / "val_images.csv", cache, "val", cfg.data.eval_negatives)
    test_model_on_split(run / "best.pt", cfg, run)
    gt = pd.read_csv(cache / "annotations.csv", dtype={"image_id": str})
    manifest = pd.read_csv(cache / "manifest.csv", dtype={"image_id": str})
    with_boxes = set(gt.loc[gt["class_id"] < 14, "image_id"])  # eval_negatives off: the others are not predicted
    for split in ("test", "val"):
        listed = pd.read_csv(run / f"{split}_images.csv", dtype={"image_id": str})["image_id"]
        assert set(listed) == set(manifest.query("split == @split")["image_id"]) & with_boxes
        predicted = pd.read_csv(run / f"{split}_predictions.csv", dtype={"image_id": str})["image_id"]
        assert set(predicted) <= set(listed)
    index = _data(build_site(cache, ["test", "val"], [model_of(run)], tmp_path / "site").parent / "data" / "index.js")
    n_val = len(set(manifest.query("split == 'val'")["image_id"]) & with_boxes)
    assert index["thresholds"][0]["note"].endswith(f"on its {n_val} val images") or \
        index["thresholds"][0]["note"].endswith(f"on {n_val} val images")
    for image in index["images"]:
        assert (image["models"][0] is None) == (image["id"] not in with_boxes), image["id"]
