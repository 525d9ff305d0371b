"""COCO detection files of a VinDr cache, so MMDetection or Detectron2 can train on our preparation.

One file per part (coco_train.json, ...), in the cache frame: an image's width/height are those of the
cached PNG, a box is the original box times the image's scale. Category ids are class_id + 1 (COCO
reserves 0); "No finding" is not a category, negative images are listed with no annotation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from btcxr.data.classes import NO_FINDING_ID
from btcxr.data.vindr import BOX_COLUMNS
from btcxr.engine.io import write_json


def coco_detection(images: pd.DataFrame, annotations: pd.DataFrame, classes: Sequence[str],
                   description: str = "") -> dict[str, Any]:
    """Build a COCO detection dict.

    images: image_id, file (relative to the cache), width, height (cached image), scale.
    annotations: image_id, class_id, x_min, y_min, x_max, y_max in the original frame (rows without
    coordinates, the "No finding" rows, are ignored).
    Image ids are 1.. in the order of `images`; the dataset's own id is kept as "image_name".
    """
    images = images.reset_index(drop=True)
    coco_ids = pd.Series(np.arange(1, len(images) + 1), index=images["image_id"])
    image_entries = [
        {"id": int(i), "file_name": str(f), "width": int(w), "height": int(h), "image_name": str(name)}
        for i, f, w, h, name in zip(coco_ids.to_numpy(), images["file"], images["width"], images["height"],
                                    images["image_id"])
    ]
    boxes = annotations[annotations["image_id"].isin(coco_ids.index)
                        & annotations[BOX_COLUMNS].notna().all(axis=1)]
    scale = images.set_index("image_id")["scale"].reindex(boxes["image_id"]).to_numpy(dtype=np.float64)
    xyxy = boxes[BOX_COLUMNS].to_numpy(dtype=np.float64) * scale[:, None]
    w = xyxy[:, 2] - xyxy[:, 0]
    h = xyxy[:, 3] - xyxy[:, 1]
    image_ids = coco_ids.reindex(boxes["image_id"]).to_numpy()
    ann_entries = [
        {"id": k + 1, "image_id": int(img), "category_id": int(c) + 1,
         "bbox": [float(x), float(y), float(bw), float(bh)], "area": float(bw * bh), "iscrowd": 0}
        for k, (img, c, x, y, bw, bh) in enumerate(
            zip(image_ids, boxes["class_id"].to_numpy(), xyxy[:, 0], xyxy[:, 1], w, h))
    ]
    categories = [{"id": i + 1, "name": name, "supercategory": "finding"} for i, name in enumerate(classes)]
    return {"info": {"description": description, "version": "1.0"}, "licenses": [],
            "images": image_entries, "annotations": ann_entries, "categories": categories}


def write_coco(path: Path, images: pd.DataFrame, annotations: pd.DataFrame, classes: Sequence[str],
               description: str = "") -> None:
    """coco_detection(...) written atomically as JSON."""
    write_json(Path(path), coco_detection(images, annotations, classes, description), sort_keys=False)


# ------------------------------------------------------------------------------------ reading COCO files
# COCO detection results (a list of {image_id, category_id, bbox [x, y, w, h], score}) and ground truth
# (a dict of images, annotations, categories), as MMDetection and Detectron2 write and read them, turned
# into btcxr's frames: image ids as names (a ground-truth image's "image_name", else its file name without
# suffix), class ids 0.. of `classes` (categories matched by name), boxes as x_min, y_min, x_max, y_max.

def _read_json(path: Path, what: str) -> Any:
    import json

    from btcxr.errors import BtcxrError

    if not path.is_file():
        raise BtcxrError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BtcxrError(f"{path}: cannot read the {what} as JSON ({exc})") from exc


def _coco_boxes(entries: list[dict], path: Path, what: str) -> np.ndarray:
    from btcxr.errors import BtcxrError, cut

    boxes = np.full((len(entries), 4), np.nan)
    for k, entry in enumerate(entries):
        box = entry.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
                and box[2] >= 0 and box[3] >= 0):
            raise BtcxrError(f"{path}: {what} {k}: bbox must be [x, y, width, height] with width, height >= 0, "
                             f"got {cut(repr(box))}")
        boxes[k] = box
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def _category_classes(doc: dict, path: Path, classes: Sequence[str]) -> dict[int, int]:
    """COCO category id -> index in `classes`, matched by name (an unknown name is an error)."""
    from btcxr.errors import BtcxrError, cut

    mapping = {}
    for entry in doc.get("categories", []):
        name = str(entry.get("name", ""))
        if name not in classes:
            raise BtcxrError(f"{path}: category {cut(name)!r} (id {entry.get('id')}) is none of the classes "
                             f"({', '.join(classes)})")
        mapping[int(entry["id"])] = list(classes).index(name)
    return mapping


def read_coco_ground_truth(path: str | Path, classes: Sequence[str]
                           ) -> tuple[pd.DataFrame, dict[Any, str], dict[int, int]]:
    """(ground truth as annotations.csv columns, COCO image id -> image name, category id -> class id) of a
    COCO detection file.

    An image without annotations gets a row of the last class of `classes` ("No finding") without a box,
    as in a cache's annotations.csv."""
    from btcxr.errors import BtcxrError

    path = Path(path)
    doc = _read_json(path, "COCO ground-truth file")
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or "annotations" not in doc:
        raise BtcxrError(f"{path}: not a COCO detection file (a JSON object with images, annotations, categories)")
    names = {}
    for entry in doc["images"]:
        name = entry.get("image_name") or Path(str(entry.get("file_name", ""))).stem
        if not name or "id" not in entry:
            raise BtcxrError(f"{path}: image entry {entry!r:.200} has no id or file_name")
        names[entry["id"]] = str(name)
    categories = _category_classes(doc, path, classes)
    anns = [a for a in doc["annotations"] if not a.get("iscrowd", 0)]
    unknown = [a for a in anns if a.get("image_id") not in names or a.get("category_id") not in categories]
    if unknown:
        raise BtcxrError(f"{path}: annotation {unknown[0].get('id')} names an image or category the file does not "
                         f"list (image_id {unknown[0].get('image_id')!r}, category_id {unknown[0].get('category_id')!r})")
    boxes = _coco_boxes(anns, path, "annotation")
    frame = pd.DataFrame({"image_id": [names[a["image_id"]] for a in anns],
                          "class_id": [categories[a["category_id"]] for a in anns],
                          **{c: boxes[:, i] for i, c in enumerate(BOX_COLUMNS)}})
    empty = sorted(set(names.values()) - set(frame["image_id"]))
    normals = pd.DataFrame({"image_id": empty, "class_id": len(classes) - 1,
                            **{c: np.nan for c in BOX_COLUMNS}})
    return pd.concat([frame, normals], ignore_index=True), names, categories


def read_coco_results(path: str | Path, names: dict[Any, str] | None = None,
                      categories: dict[int, int] | None = None) -> pd.DataFrame:
    """Detections of a COCO results file as predictions.csv columns (image_id, class_id, score, boxes).

    names: COCO image id -> image name (from the ground-truth file the results refer to); without it the
    ids are taken as names (btcxr predict writes names). categories: category id -> class id (default:
    category_id - 1, the convention of btcxr's COCO files)."""
    path = Path(path)
    return _results_frame(_read_json(path, "COCO results file"), path, names, categories)


def _results_frame(results: Any, path: Path, names: dict[Any, str] | None,
                   categories: dict[int, int] | None) -> pd.DataFrame:
    """`read_coco_results` of the file's JSON, already loaded."""
    from btcxr.errors import BtcxrError, cut

    if not isinstance(results, list):
        raise BtcxrError(f"{path}: a COCO results file is a JSON list of detections "
                         "({image_id, category_id, bbox, score}), got a " + type(results).__name__)
    for k, entry in enumerate(results):
        missing = [f for f in ("image_id", "category_id", "bbox", "score") if f not in entry]
        if missing:
            raise BtcxrError(f"{path}: detection {k} has no {', '.join(missing)}")
        if names is not None and entry["image_id"] not in names:
            raise BtcxrError(f"{path}: detection {k}: image_id {cut(repr(entry['image_id']))} is not an image of "
                             "the ground-truth file")
        if categories is not None and entry["category_id"] not in categories:
            raise BtcxrError(f"{path}: detection {k}: category_id {entry['category_id']!r} is not a category of the "
                             "ground-truth file")
    boxes = _coco_boxes(results, path, "detection")
    image_id = [names[r["image_id"]] if names is not None else str(r["image_id"]) for r in results]
    class_id = [categories[r["category_id"]] if categories is not None else int(r["category_id"]) - 1
                for r in results]
    return pd.DataFrame({"image_id": image_id, "class_id": class_id,
                         "score": [float(r["score"]) for r in results],
                         **{c: boxes[:, i] for i, c in enumerate(BOX_COLUMNS)}})


def coco_results(pred: pd.DataFrame) -> list[dict[str, Any]]:
    """predictions.csv rows (findings only) as a COCO results list: image_id = the image's name,
    category_id = class_id + 1 (as in the cache's coco_*.json), bbox [x, y, width, height]."""
    rows = pred[(pred["class_id"] != NO_FINDING_ID) & pred[BOX_COLUMNS].notna().all(axis=1)]
    xyxy = rows[BOX_COLUMNS].to_numpy(dtype=np.float64)
    return [{"image_id": str(i), "category_id": int(c) + 1, "bbox": [float(x0), float(y0), float(x1 - x0),
                                                                     float(y1 - y0)], "score": float(s)}
            for i, c, s, (x0, y0, x1, y1) in zip(rows["image_id"], rows["class_id"], rows["score"], xyxy)]


def read_cache_coco_results(path: str | Path, cache: str | Path, split: str | None) -> pd.DataFrame:
    """COCO results on a cache as predictions.csv columns in original pixels: results whose image ids are
    those of the cache's coco_<split>.json (MMDetection or Detectron2 trained on the cache: cache pixels)
    are mapped to names and scaled back; results named by image (`btcxr predict`) are taken as they are."""
    from btcxr.data.cache_format import read_manifest
    from btcxr.data.classes import VINDR_CLASSES
    from btcxr.errors import BtcxrError

    path, cache = Path(path), Path(cache)
    results = _read_json(path, "COCO results file")
    if not (isinstance(results, list) and results and all(isinstance(r, dict) and isinstance(r.get("image_id"), int)
                                                          for r in results)):
        return _results_frame(results, path, None, None)
    if split is None:
        raise BtcxrError(f"{path}: COCO image ids are numbers of one split's coco_<split>.json: show one --split")
    gt_file = cache / f"coco_{split}.json"
    doc = _read_json(gt_file, "COCO ground-truth file of the cache")
    names = {e["id"]: str(e.get("image_name") or Path(str(e.get("file_name", ""))).stem) for e in doc["images"]}
    pred = _results_frame(results, path, names, _category_classes(doc, gt_file, VINDR_CLASSES[:NO_FINDING_ID]))
    scale = read_manifest(cache).set_index("image_id")["scale"].reindex(pred["image_id"]).to_numpy(dtype=np.float64)
    pred[BOX_COLUMNS] = pred[BOX_COLUMNS].to_numpy(dtype=np.float64) / scale[:, None]
    return pred
