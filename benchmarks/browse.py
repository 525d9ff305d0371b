"""Case browser at the scale of the VinDr test split: 3,000 images, three models, in headless Chromium.

Builds a site from a synthetic cache manifest (tiny PNGs: the index never loads images) and predictions with
--dets detections per image and model, then measures in Chromium (Debian's chromium + chromium-driver):
the time from navigation to the filled index table, one score-slider move (recount and redraw of every
row), and opening one image. Printed: build seconds, index size, and those times.

    .venv/bin/python benchmarks/browse.py                  # 3000 images, 3 models, 30 detections each
    .venv/bin/python benchmarks/browse.py --images 500 --models 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from btcxr.browse.site import Model, build_site
from btcxr.data.classes import VINDR_CLASSES

BOX = ["x_min", "y_min", "x_max", "y_max"]


def synthetic_inputs(root: Path, n_images: int, n_models: int, dets: int, seed: int = 0) -> tuple[Path, list[Model]]:
    rng = np.random.default_rng(seed)
    cache = root / "cache"
    (cache / "images").mkdir(parents=True)
    png = cache / "images" / "blank.png"
    Image.fromarray(np.zeros((64, 52), np.uint8)).save(png)
    ids = [f"{i:032x}" for i in range(n_images)]
    manifest = pd.DataFrame({"image_id": ids, "file": "images/blank.png", "patient_id": "", "split": "test",
                             "labels": "", "orig_width": 2400, "orig_height": 3000, "scale": 640 / 3000})
    manifest.to_csv(cache / "manifest.csv", index=False)
    n_gt = rng.integers(0, 6, n_images)
    gt_ids = np.repeat(ids, n_gt)
    x0, y0 = rng.uniform(0, 2000, len(gt_ids)), rng.uniform(0, 2600, len(gt_ids))
    gt = pd.DataFrame({"image_id": gt_ids, "class_id": rng.integers(0, 14, len(gt_ids)), "x_min": x0, "y_min": y0,
                       "x_max": x0 + 300, "y_max": y0 + 300, "score": 1.0})
    gt["class_name"] = [VINDR_CLASSES[c] for c in gt["class_id"]]
    normal = pd.DataFrame({"image_id": np.asarray(ids)[n_gt == 0], "class_id": 14, "class_name": "No finding"})
    pd.concat([gt, normal], ignore_index=True)[["image_id", "class_id", "class_name", *BOX, "score"]].to_csv(
        cache / "annotations.csv", index=False)
    (cache / "prepare.json").write_text(json.dumps({"dataset": "vindr", "size": 640}))
    models = []
    for m in range(n_models):
        k = n_images * dets
        x, y = rng.uniform(0, 2000, k), rng.uniform(0, 2600, k)
        pred = pd.DataFrame({"image_id": np.repeat(ids, dets), "class_id": rng.integers(0, 14, k),
                             "score": rng.uniform(0.05, 1, k), "x_min": x, "y_min": y, "x_max": x + 300,
                             "y_max": y + 300})
        pred["class_name"] = [VINDR_CLASSES[c] for c in pred["class_id"]]
        path = root / f"model{m}.csv"
        pred[["image_id", "class_id", "class_name", "score", *BOX]].to_csv(path, index=False)
        models.append(Model(f"model{m}", path))
    return cache, models


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not binary or not driver:
        raise SystemExit("needs Debian's chromium and chromium-driver (apt install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--dets", type=int, default=30, help="detections per image and model (default: 30)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache, models = synthetic_inputs(Path(tmp), args.images, args.models, args.dets)
        start = time.perf_counter()
        index = build_site(cache, ["test"], models, Path(tmp) / "site")
        build = time.perf_counter() - start
        size = (index.parent / "data" / "index.js").stat().st_size / 2**20
        driver = browser()
        try:
            start = time.perf_counter()
            driver.get(index.as_uri())
            while not driver.execute_script(f"return document.querySelectorAll('#cases tbody tr').length == {args.images}"):
                time.sleep(0.01)
            opened = time.perf_counter() - start
            slider = driver.execute_script(
                "const e = document.getElementById('score'); const t = performance.now(); e.value = 0.7; "
                "e.dispatchEvent(new Event('input')); return performance.now() - t;")
            first = driver.execute_script("return state.order[0]")
            start = time.perf_counter()
            driver.execute_script(f"location.hash = 'case={first}'")
            while not driver.execute_script("return document.querySelectorAll('#panels .panel[data-drawn]').length"):
                time.sleep(0.01)
            case = time.perf_counter() - start
        finally:
            driver.quit()
    print(f"{args.images} images x {args.models} models x {args.dets} detections: build {build:.1f} s, "
          f"index.js {size:.1f} MiB")
    print(f"Chromium (headless): index filled {opened:.2f} s after navigation; score slider move "
          f"(recount + redraw of every row) {slider:.0f} ms; one image opened in {case:.2f} s")


if __name__ == "__main__":
    main()
