"""`btcxr browse`: a static case browser of a cache split, its ground truth, each model's detections and heatmaps.

One folder that works from file:// with no network (plain HTML, CSS and JavaScript in btcxr/browse/static):
  index.html, browse.js, browse.css   the page
  data/index.js                       every image's counts data: ground-truth classes, and per model its
                                      detections' scores, classes and true-positive flags at each IoU option
  data/cases/<image>.js               one image: boxes in the cache's pixels (fused ground truth, each
                                      radiologist's, each model's detections, explained boxes), loaded lazily
  images/<image>.png                  the cache's radiographs (hard links where the filesystem allows)
  heatmaps/<model>/<image>/box<k>.png Ablation-CAM heatmaps of `btcxr explain` (coloured, opacity on the page)
Data files are JavaScript (a call of window.btcxrData), not JSON: a page opened from file:// may not fetch.

Counts are recomputed on the page from the flags, with the matching `btcxr evaluate --counts-at` writes
(detect/counts.py); only image ids, classes, splits and sizes reach the site, never a DICOM header value.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from btcxr.data.cache_format import READERS, read_annotations, read_manifest
from btcxr.data.classes import NO_FINDING_ID, VINDR_CLASSES
from btcxr.detect.counts import match_flags
from btcxr.detect.predictions import read_predictions
from btcxr.engine.io import ensure_dir, write_text
from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)

IOU_OPTIONS = (0.3, 0.4, 0.5, 0.6, 0.7)
STATIC = ("index.html", "browse.js", "browse.css")
BOX = ["x_min", "y_min", "x_max", "y_max"]


@dataclass(frozen=True)
class Model:
    label: str
    predictions: Path


def model_of(run: str | Path, label: str | None = None) -> Model:
    """A --run: a fine-tuning run folder (its test_predictions.csv) or a predictions.csv file."""
    path = Path(run)
    file = path / "test_predictions.csv" if path.is_dir() else path
    if not file.is_file():
        raise BtcxrError(f"--run {run}: no {'test_predictions.csv in the folder' if path.is_dir() else 'such file'} "
                         "(give a `btcxr finetune` run folder or a predictions.csv)")
    return Model(label or (path.name if path.is_dir() else path.stem), file)


def _slug(image_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", image_id)
    return safe if safe == image_id else f"{safe}-{hashlib.sha1(image_id.encode()).hexdigest()[:8]}"


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copyfile(source, target)


def _round(values, digits: int = 1) -> list:
    return [round(float(v), digits) for v in values]


def _boxes(frame: pd.DataFrame, scale: float) -> np.ndarray:
    return frame[BOX].to_numpy(dtype=np.float64) * scale


def build_site(cache: str | Path, splits: Sequence[str], models: Sequence[Model], out: str | Path,
               cams: Sequence[str | Path] = (), min_score: float = 0.05,
               iou_options: Sequence[float] = IOU_OPTIONS) -> Path:
    """Write the case browser into `out`; returns its index.html."""
    cache, out = Path(cache), ensure_dir(out, "--out")
    if not models:
        raise BtcxrError("give at least one --run")
    if len({m.label for m in models}) != len(models):
        raise BtcxrError(f"two --run have the same label ({', '.join(m.label for m in models)}); name them with --label")
    manifest = read_manifest(cache)
    manifest = manifest[manifest["split"].isin(splits)].sort_values("image_id", kind="stable").reset_index(drop=True)
    if manifest.empty:
        raise BtcxrError(f"{cache}: no image in split(s) {', '.join(splits)}")
    ids = manifest["image_id"]
    scale = dict(zip(ids, manifest["scale"].astype(float)))
    gt = read_annotations(cache)
    gt = gt[gt["image_id"].isin(ids)]
    readers = pd.read_csv(cache / READERS, dtype={"image_id": str}) if (cache / READERS).is_file() else None
    flags = {m.label: _model_flags(m, gt, ids, min_score, iou_options) for m in models}
    explained = _explained_boxes(cams, [m.label for m in models], out)

    index_images, gt_find = [], gt[gt["class_id"] != NO_FINDING_ID]
    gt_by_image = dict(list(gt_find.groupby("image_id")))
    readers_by_image = dict(list(readers.groupby("image_id"))) if readers is not None else {}
    for row in manifest.itertuples(index=False):
        image_id, s = row.image_id, scale[row.image_id]
        slug = _slug(image_id)
        _link_or_copy(cache / row.file, out / "images" / f"{slug}.png")
        width, height = round(row.orig_width * s), round(row.orig_height * s)
        truth = gt_by_image.get(image_id, gt_find.iloc[:0])
        entry = {"id": image_id, "file": slug, "split": row.split, "w": width, "h": height,
                 "gt": truth["class_id"].astype(int).tolist(), "models": []}
        case = {"id": image_id, "image": f"images/{slug}.png", "w": width, "h": height,
                "gt": [[*_round(b), int(c)] for b, c in zip(_boxes(truth, s), truth["class_id"])],
                "readers": [], "models": []}
        if image_id in readers_by_image:
            rd = readers_by_image[image_id]
            case["readers"] = [[*_round(b), int(c), str(r)] for b, c, r in zip(_boxes(rd, s), rd["class_id"],
                                                                               rd["rad_id"])]
        for model in models:
            table, tp = flags[model.label].get(image_id, (None, None))
            if table is None:
                entry["models"].append({"s": [], "c": [], "t": []})
                case["models"].append({"label": model.label, "boxes": [], "cams": []})
                continue
            bits = (tp * (1 << np.arange(len(iou_options)))[:, None]).sum(axis=0).astype(int).tolist()
            # scores unrounded: the page compares them with its threshold exactly as Python does
            entry["models"].append({"s": table["score"].astype(float).tolist(), "c": table["class_id"].astype(int).tolist(),
                                    "t": bits})
            case["models"].append({
                "label": model.label,
                "boxes": [[*_round(b), int(c), float(sc), t] for b, c, sc, t in
                          zip(_boxes(table, s), table["class_id"], table["score"], bits)],
                "cams": [{**cam, "box": _round(np.asarray(cam["box"]) * s)}
                         for cam in explained.get((model.label, image_id), [])]})
        write_text(out / "data" / "cases" / f"{slug}.js", "btcxrData(" + json.dumps(case) + ");\n")
        index_images.append(entry)
    index = {"classes": list(VINDR_CLASSES[:NO_FINDING_ID]), "models": [m.label for m in models],
             "iou": list(iou_options), "min_score": min_score, "splits": list(splits), "images": index_images,
             "cache": cache.name}
    write_text(out / "data" / "index.js", "btcxrData(" + json.dumps(index, separators=(",", ":")) + ");\n")
    static = resources.files("btcxr.browse") / "static"
    for name in STATIC:
        write_text(out / name, (static / name).read_text(encoding="utf-8"))
    log.info("case browser: %d image(s), %d model(s): %s", len(index_images), len(models), out / "index.html")
    return out / "index.html"


def _model_flags(model: Model, gt: pd.DataFrame, ids: pd.Series, min_score: float,
                 iou_options: Sequence[float]) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """image_id -> (its detections with score >= min_score, sorted as matched; their TP flags)."""
    pred = read_predictions(model.predictions)
    outside = ~pred["image_id"].isin(ids)
    if outside.any():
        log.info("%s: %d prediction(s) on images outside the split(s) left out", model.predictions, int(outside.sum()))
    low = pred["score"] < min_score
    if (low & ~outside).any():
        log.info("%s: %d prediction(s) below --min-score %g left out", model.predictions, int((low & ~outside).sum()),
                 min_score)
    table, tp = match_flags(gt, pred[~outside & ~low], list(iou_options))
    groups = {}
    for image_id, rows in table.groupby("image_id", sort=False).indices.items():
        groups[image_id] = (table.iloc[rows], tp[:, rows])
    return groups


def _explained_boxes(cams: Sequence[str | Path], labels: Sequence[str], out: Path) -> dict:
    """(model label, image_id) -> [{box (original px), c, s, heatmap}] from `btcxr explain` folders."""
    found: dict = {}
    for cam in map(Path, cams):
        table_path = cam / "boxes.csv"
        if not table_path.is_file():
            raise BtcxrError(f"--cam {cam}: no boxes.csv (give a `btcxr explain` output folder)")
        table = pd.read_csv(table_path, dtype={"image_id": str, "model": str, "heatmap": str})
        if "heatmap" not in table.columns:
            raise BtcxrError(f"--cam {cam}: boxes.csv has no heatmap column (made by an older btcxr explain; rerun it)")
        unknown = sorted(set(table["model"]) - set(labels))
        if unknown:
            log.warning("--cam %s: heatmaps of %s match no --run label (%s); left out", cam, ", ".join(unknown),
                        ", ".join(labels))
        for row in table[table["model"].isin(labels) & table["heatmap"].notna()].itertuples(index=False):
            target = Path("heatmaps") / _slug(row.model) / _slug(row.image_id) / f"box{int(row.box)}.png"
            _link_or_copy(cam / row.heatmap, out / target)
            found.setdefault((row.model, row.image_id), []).append(
                {"box": [row.x_min, row.y_min, row.x_max, row.y_max], "c": int(row.class_id),
                 "s": float(row.score), "heatmap": target.as_posix()})
    return found
