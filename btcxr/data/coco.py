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
