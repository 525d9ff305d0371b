"""`btcxr browse`: a static case browser of a cache split, its ground truth, each model's detections and heatmaps.

One folder that works from file:// with no network (plain HTML, CSS and JavaScript in btcxr/browse/static):
  index.html, browse.js, browse.css   the page
  data/index.js                       every image's counts data: ground-truth classes, and per model its
                                      detections' scores, classes and true-positive flags at each IoU option
                                      (null where the model did not predict the image), each model's
                                      default score threshold and where it came from
  data/cases/<image>.js               one image: boxes in the cache's pixels (fused ground truth, each
                                      radiologist's, each model's detections, explained boxes), loaded lazily
  images/<image>.png                  the cache's radiographs (hard links where the filesystem allows)
  heatmaps/<model>/<image>/box<k>.png Ablation-CAM heatmaps of `btcxr explain` (coloured, opacity on the page)
Data files are JavaScript (a call of window.btcxrData), not JSON: a page opened from file:// may not fetch.

Counts are recomputed on the page from the flags, with the matching `btcxr evaluate --counts-at` writes
(detect/counts.py); only image ids, classes, splits and sizes reach the site, never a DICOM header value.

The images a model covered (processed, whether or not it found anything) are the ids of its predictions plus
the list written beside them: `images.csv` of `btcxr predict`, `test_images.csv` / `val_images.csv` of a
`btcxr finetune` run. Another image reads "not predicted" for that model, never 0 true positives and all
boxes missed. A model's default score threshold is its best-F1 threshold on the val images it covered.

Every name from the data that becomes a file name (image id, model label) goes through `engine.paths.file_names`
(one safe, distinct file-name part each), and every path read from a file (boxes.csv's heatmap) must stay in
the folder it belongs to.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from btcxr.data.cache_format import READERS, read_annotations, read_manifest, read_settings
from btcxr.data.classes import NO_FINDING_ID, VINDR_CLASSES
from btcxr.data.csvcheck import fail, first_bad, read_table, require_text, to_number
from btcxr.detect.counts import match_flags
from btcxr.detect.predictions import check_predictions, csv_header, read_predictions
from btcxr.engine.io import ensure_dir, write_text
from btcxr.engine.paths import confined, file_names
from btcxr.errors import BtcxrError, cut

log = logging.getLogger(__name__)

IOU_OPTIONS = (0.3, 0.4, 0.5, 0.6, 0.7)
STATIC = ("index.html", "browse.js", "browse.css")
BOX = ["x_min", "y_min", "x_max", "y_max"]
VAL_SPLIT = "val"  # the cache split whose predictions choose a model's default score threshold
F1_IOU = 0.5  # the IoU of that choice
FALLBACK_SCORE = 0.3  # the default threshold of a model without predictions on val images
# The list of the images a predictions file covers, written beside it: `btcxr predict` (images.csv) and
# `btcxr finetune` (test_images.csv, val_images.csv). An image listed there without a row in the
# predictions was processed and nothing was found on it.
IMAGE_LISTS = {"predictions.csv": "images.csv", "test_predictions.csv": "test_images.csv",
               "val_predictions.csv": "val_images.csv"}


@dataclass(frozen=True)
class Model:
    label: str
    predictions: Path


@dataclass
class Predicted:
    """A model's detections (every file of it) and the images it covered."""
    boxes: pd.DataFrame
    covered: set[str] = field(default_factory=set)
    val: set[str] = field(default_factory=set)  # images of its run's val_images.csv


def model_of(run: str | Path, label: str | None = None) -> Model:
    """A --run: a fine-tuning run folder (its test_predictions.csv) or a predictions.csv file."""
    path = Path(run)
    file = path / "test_predictions.csv" if path.is_dir() else path
    if not file.is_file():
        raise BtcxrError(f"--run {run}: no {'test_predictions.csv in the folder' if path.is_dir() else 'such file'} "
                         "(give a `btcxr finetune` run folder or a predictions.csv)")
    return Model(label or (path.name if path.is_dir() else path.stem), file)


# ------------------------------------------------------------------------------------------------ file names
def _inside(folder: Path, value: str, table: Path, line: int, column: str) -> Path:
    """`folder/value` with symlinks resolved; an error naming the table, line and value when the value
    leads outside `folder` (absolute, `..`, a symlink pointing out), or names no file."""
    target = confined(folder, value, f"{table}, line {line}, field '{column}'")
    if not target.is_file():
        fail(table, line, column, f"no such file {cut(value)!r} in {folder}")
    return target


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copyfile(source, target)


def _round(values, digits: int = 1) -> list:
    return [round(float(v), digits) for v in values]


def _boxes(frame: pd.DataFrame, scale: float) -> np.ndarray:
    return frame[BOX].to_numpy(dtype=np.float64) * scale


# ------------------------------------------------------------------------------------------------ the site
def build_site(cache: str | Path, splits: Sequence[str], models: Sequence[Model], out: str | Path,
               cams: Sequence[str | Path] = (), min_score: float = 0.05,
               iou_options: Sequence[float] = IOU_OPTIONS) -> Path:
    """Write the case browser into `out`; returns its index.html."""
    cache, out = Path(cache), ensure_dir(out, "--out")
    if not models:
        raise BtcxrError("give at least one --run")
    labels = [m.label for m in models]
    if len(set(labels)) != len(models):
        raise BtcxrError(f"two --run have the same label ({', '.join(labels)}); name them with --label")
    everything = read_manifest(cache)
    manifest = everything[everything["split"].isin(splits)].sort_values("image_id", kind="stable")
    manifest = manifest.reset_index(drop=True)
    if manifest.empty:
        raise BtcxrError(f"{cache}: no image in split(s) {', '.join(splits)}")
    ids = manifest["image_id"]
    files, folders = file_names(ids, "image id"), file_names(labels, "--run label")
    gt_all = read_annotations(cache)
    gt = gt_all[gt_all["image_id"].isin(ids)]
    readers = pd.read_csv(cache / READERS, dtype={"image_id": str}) if (cache / READERS).is_file() else None
    predicted = [_predicted(m, cache, splits) for m in models]
    for model, p in zip(models, predicted):
        _log_coverage(model, p.covered, set(ids), splits)
    flags = {m.label: _model_flags(m, p.boxes, gt, ids, min_score, iou_options) for m, p in zip(models, predicted)}
    val_ids = set(everything.loc[everything["split"] == VAL_SPLIT, "image_id"])
    thresholds = [default_threshold(m.label, p, val_ids, set(everything["image_id"]), gt_all, min_score)
                  for m, p in zip(models, predicted)]
    explained = _explained_boxes(cams, labels, folders, files, out)

    index_images, gt_find = [], gt[gt["class_id"] != NO_FINDING_ID]
    gt_by_image = dict(list(gt_find.groupby("image_id")))
    readers_by_image = dict(list(readers.groupby("image_id"))) if readers is not None else {}
    for row in manifest.itertuples(index=False):
        image_id, s, slug = row.image_id, float(row.scale), files[row.image_id]
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
        for model, p in zip(models, predicted):
            covered = image_id in p.covered
            table, tp = flags[model.label].get(image_id, (None, None))
            cams_here = [{**cam, "box": _round(np.asarray(cam["box"]) * s)}
                         for cam in explained.get((model.label, image_id), [])]
            if table is None:
                # covered, nothing found: no detection; not covered: null, "not predicted" on the page
                entry["models"].append({"s": [], "c": [], "t": []} if covered else None)
                case["models"].append({"label": model.label, "predicted": covered, "boxes": [], "cams": cams_here})
                continue
            bits = (tp * (1 << np.arange(len(iou_options)))[:, None]).sum(axis=0).astype(int).tolist()
            # scores unrounded: the page compares them with its threshold exactly as Python does
            entry["models"].append({"s": table["score"].astype(float).tolist(), "c": table["class_id"].astype(int).tolist(),
                                    "t": bits})
            case["models"].append({
                "label": model.label, "predicted": True,
                "boxes": [[*_round(b), int(c), float(sc), t] for b, c, sc, t in
                          zip(_boxes(table, s), table["class_id"], table["score"], bits)],
                "cams": cams_here})
        write_text(out / "data" / "cases" / f"{slug}.js", "btcxrData(" + json.dumps(case) + ");\n")
        index_images.append(entry)
    index = {"classes": list(VINDR_CLASSES[:NO_FINDING_ID]), "models": labels,
             "iou": list(iou_options), "min_score": min_score, "splits": list(splits), "images": index_images,
             "cache": cache.name, "bits": int(read_settings(cache).get("bits", 8)), "thresholds": thresholds}
    write_text(out / "data" / "index.js", "btcxrData(" + json.dumps(index, separators=(",", ":")) + ");\n")
    static = resources.files("btcxr.browse") / "static"
    for name in STATIC:
        write_text(out / name, (static / name).read_text(encoding="utf-8"))
    log.info("case browser: %d image(s), %d model(s): %s", len(index_images), len(models), out / "index.html")
    return out / "index.html"


# ------------------------------------------------------------------------------------------------ predictions
def _prediction_files(model: Model) -> list[Path]:
    """The model's predictions file, and a fine-tuning run's val_predictions.csv beside test_predictions.csv."""
    files = [model.predictions]
    val = model.predictions.with_name("val_predictions.csv")
    if model.predictions.name == "test_predictions.csv" and val.is_file():
        files.append(val)
    return files


def _image_list(predictions: Path) -> set[str]:
    """The ids of the list written beside a predictions file (IMAGE_LISTS), or none."""
    name = IMAGE_LISTS.get(predictions.name)
    listing = predictions.with_name(name) if name else None
    if listing is None or not listing.is_file():
        if predictions.name == "test_predictions.csv":
            log.info("%s: no test_images.csv beside it (a run of an older btcxr): an image it found nothing on "
                     "reads 'not predicted'", predictions)
        return set()
    table = read_table(listing, ["image_id"], what=f"list of the images of {predictions.name}")
    return set(require_text(listing, table, "image_id"))


def _read(path: Path, cache: Path, splits: Sequence[str]) -> pd.DataFrame:
    """A predictions.csv, a Kaggle submission, or COCO results (of the cache's coco_<split>.json or named by
    image), in original pixels."""
    if path.suffix.lower() != ".json":
        return read_predictions(path)
    from btcxr.data.coco import read_cache_coco_results

    return check_predictions(read_cache_coco_results(path, cache, splits[0] if len(splits) == 1 else None), str(path))


def _predicted(model: Model, cache: Path, splits: Sequence[str]) -> Predicted:
    frames, covered, val = [], set(), set()
    for path in _prediction_files(model):
        pred = _read(path, cache, splits)
        # an image in two files (a run validated on its test split) is taken from the first, test
        pred = pred[~pred["image_id"].isin(covered)]
        ids = set(pred["image_id"]) | _image_list(path)
        if path.name == "val_predictions.csv":
            val |= ids
        covered |= ids
        frames.append(pred)
    return Predicted(pd.concat(frames, ignore_index=True), covered, val)


def _log_coverage(model: Model, covered: set[str], ids: set[str], splits: Sequence[str]) -> None:
    found = len(covered & ids)
    if found == 0:
        log.warning("%s (%s) predicted none of the %d image(s) of split(s) %s: its cells read 'not predicted'",
                    model.label, model.predictions, len(ids), ", ".join(splits))
    elif found < len(ids):
        log.info("%s predicted %d of the %d image(s) of split(s) %s; the other %d read 'not predicted'",
                 model.label, found, len(ids), ", ".join(splits), len(ids) - found)


def _model_flags(model: Model, pred: pd.DataFrame, gt: pd.DataFrame, ids: pd.Series, min_score: float,
                 iou_options: Sequence[float]) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """image_id -> (its detections with score >= min_score, sorted as matched; their TP flags)."""
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


# ------------------------------------------------------------------------------------------------ threshold
def best_f1_threshold(gt: pd.DataFrame, pred: pd.DataFrame, image_ids: Iterable[str],
                      min_score: float = 0.0) -> tuple[float, float] | None:
    """(score threshold, F1) of the best F1 over `image_ids`: IoU 0.5, finding classes pooled,
    F1 = 2 TP / (2 TP + FP + FN), the candidates being the detections' scores >= min_score (a threshold t keeps
    the detections with score >= t). Ties go to the higher threshold (fewer boxes for the same F1). None when
    no detection is a true positive."""
    ids = set(image_ids)
    gt = gt[gt["image_id"].isin(ids)]
    pred = pred[pred["image_id"].isin(ids) & (pred["score"] >= min_score)]
    n_truth = int(((gt["class_id"] != NO_FINDING_ID) & gt[BOX].notna().all(axis=1)).sum())
    if gt.empty or pred.empty:
        return None
    table, tp = match_flags(gt, pred, [F1_IOU])
    order = np.argsort(-table["score"].to_numpy(), kind="stable")
    scores, hits = table["score"].to_numpy()[order], tp[0][order]
    if not hits.any():
        return None
    true_pos = np.cumsum(hits)
    kept = np.arange(1, len(scores) + 1)  # TP + FP of the threshold at scores[k]: all detections up to k ...
    last = np.r_[scores[1:] != scores[:-1], True]  # ... when k is the last of its score
    f1 = np.where(last, 2 * true_pos / (kept + n_truth), -1.0)  # 2TP + FP + FN = kept + n_truth
    k = int(np.argmax(f1))  # the first maximum: the highest threshold
    return float(scores[k]), float(f1[k])


def default_threshold(label: str, predicted: Predicted, val_split_ids: set[str], cache_ids: set[str],
                      gt: pd.DataFrame, min_score: float) -> dict:
    """{"score", "note"}: the model's best-F1 threshold on the val images it covered (the cache's val split,
    and the val split of its fine-tuning run); never chosen on test. Without one, FALLBACK_SCORE."""
    val = predicted.covered & (val_split_ids | predicted.val) & cache_ids
    fallback = max(FALLBACK_SCORE, min_score)
    best = best_f1_threshold(gt, predicted.boxes, val, min_score) if val else None
    if best is None:
        why = f"no true positive on its {len(val)} val images" if val else "no predictions on val images"
        log.info("%s: default score threshold %g (fixed: %s)", label, fallback, why)
        return {"score": fallback, "note": f"fixed: {why}"}
    log.info("%s: default score threshold %g (best F1 %.3f on %d val images)", label, best[0], best[1], len(val))
    return {"score": best[0], "note": f"best F1 {best[1]:.2f} on {len(val)} val images", "f1": best[1],
            "images": len(val)}


# ------------------------------------------------------------------------------------------------ heatmaps
def _explained_boxes(cams: Sequence[str | Path], labels: Sequence[str], folders: dict[str, str],
                     files: dict[str, str], out: Path) -> dict:
    """(model label, image_id) -> [{box (original px), c, s, heatmap}] from `btcxr explain` folders, the
    heatmaps of the site's images linked into out/heatmaps/<model>/<image>/."""
    found: dict = {}
    for cam in map(Path, cams):
        table_path = cam / "boxes.csv"
        if not table_path.is_file():
            raise BtcxrError(f"--cam {cam}: no boxes.csv (give a `btcxr explain` output folder)")
        if "heatmap" not in csv_header(table_path, "boxes.csv"):
            raise BtcxrError(f"--cam {cam}: boxes.csv has no heatmap column (made by an older btcxr explain; rerun it)")
        table = read_table(table_path, ["image_id", "model", "box", "class_id", "score", *BOX, "heatmap"],
                           what="boxes.csv of `btcxr explain`")
        unknown = sorted(set(table["model"]) - set(labels))
        if unknown:
            log.warning("--cam %s: heatmaps of %s match no --run label (%s); left out", cam,
                        ", ".join(map(cut, unknown)), ", ".join(labels))
        table = table[table["model"].isin(labels) & table["image_id"].isin(set(files)) & (table["heatmap"] != "")]
        if table.empty:
            continue
        numbers = {c: to_number(table_path, table, c) for c in ["score", *BOX]}
        box = to_number(table_path, table, "box", integer=True, min_value=0)
        class_id = to_number(table_path, table, "class_id", integer=True, min_value=0)
        first_bad(table_path, table, class_id >= NO_FINDING_ID, "class_id", "not a finding class (0 to 13)")
        for line, row in table.iterrows():
            source = _inside(cam, row["heatmap"], table_path, int(line), "heatmap")
            target = Path("heatmaps") / folders[row["model"]] / files[row["image_id"]] / f"box{box[line]}.png"
            _link_or_copy(source, out / target)
            found.setdefault((row["model"], row["image_id"]), []).append(
                {"box": [float(numbers[c][line]) for c in BOX], "c": int(class_id[line]),
                 "s": float(numbers["score"][line]), "heatmap": target.as_posix()})
    return found
