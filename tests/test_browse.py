"""The case browser: counts against an independent greedy matching and `btcxr evaluate --counts-at`, the site's
files, and the page itself in headless Chromium (selenium): no console error, the score slider draws the boxes
Python counts, and the index shows evaluate's TP / FP / FN."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from btcxr.browse.site import IOU_OPTIONS, Model, build_site
from btcxr.data.classes import VINDR_CLASSES
from btcxr.detect.counts import per_image_counts
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


def fake_predictions(cache: Path, path: Path, seed: int) -> Path:
    """Detections near each ground-truth box (some shifted off it), duplicates, and false alarms."""
    rng = np.random.default_rng(seed)
    gt = pd.read_csv(cache / "annotations.csv")
    ids = pd.read_csv(cache / "manifest.csv").query("split == 'test'")["image_id"]
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
    cam = subprocess.run([*run, "--run", str(preds["btcxr"]), "--cam", str(tmp_path), "--out", str(tmp_path / "z")],
                         capture_output=True, text=True)
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

    return WebDriverWait(driver, timeout).until(lambda d: d.execute_script(script))


def _set(driver, element_id: str, value, event: str) -> None:
    driver.execute_script(f"const e = document.getElementById('{element_id}'); e.value = arguments[0]; "
                          f"e.dispatchEvent(new Event('{event}'));", str(value))


def test_page_counts_and_draws_what_python_computes(site, browser, tmp_path):
    index = site["index"]
    browser.get(index.as_uri())
    _wait(browser, "return document.querySelectorAll('#cases tbody tr').length > 0")
    for t, score in [(2, 0.3), (0, 0.05), (4, 0.6)]:
        _set(browser, "iou", t, "change")
        _set(browser, "score", score, "input")
        rows = browser.execute_script(
            "return [...document.querySelectorAll('#cases tbody tr')].map(r => [r.dataset.id, "
            "[...r.querySelectorAll('td.tp, td.fp, td.fn')].map(c => Number(c.textContent))])")
        assert len(rows) == 8
        for m, model in enumerate(MODELS):
            out = tmp_path / f"eval_{model}_{t}"
            result = subprocess.run([sys.executable, "-m", "btcxr", "evaluate", "--pred", str(site["preds"][model]),
                                     "--gt", str(site["cache"] / "annotations.csv"), "--out", str(out),
                                     "--bootstrap", "0", "--counts-at", str(IOU_OPTIONS[t]), str(score)],
                                    capture_output=True, text=True)
            assert result.returncode == 0, result.stderr
            expected = pd.read_csv(out / "per_image.csv").set_index("image_id")
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
    _wait(browser, f"return location.hash == '#case={following}'")
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    _wait(browser, "return !document.getElementById('index-view').hidden")
    if os.environ.get("BTCXR_SCREENSHOTS"):
        browser.save_screenshot(str(Path(os.environ["BTCXR_SCREENSHOTS"]) / "browse_index.png"))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
