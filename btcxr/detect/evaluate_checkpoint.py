"""Score a fine-tuned detector checkpoint on a part of a VinDr cache (`btcxr evaluate --checkpoint`, and the
test scoring at the end of `btcxr finetune`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from btcxr.data.cache_format import read_annotations
from btcxr.data.classes import NO_FINDING_ID
from btcxr.data.datasets import VindrDetection
from btcxr.detect.engine import collate, predict_loader
from btcxr.detect.evaluate_files import GT_COLUMNS, evaluate_predictions
from btcxr.detect.model import load_detector
from btcxr.detect.predictions import BOX_COLUMNS, write_predictions
from btcxr.detect.transforms import eval_transform
from btcxr.engine.distributed import DistEnv
from btcxr.engine.runtime import resolve_device


def ground_truth(dataset: Any) -> pd.DataFrame:
    """GT of a VindrDetection dataset in ORIGINAL pixels (annotations.csv rows of its images): finding
    boxes, and one class-14 row for every image without any, so every image of the dataset is listed."""
    ann = read_annotations(dataset.cache)
    ids = pd.Index(dataset.image_ids)
    ann = ann[ann["image_id"].isin(ids)]
    boxes = ann[(ann["class_id"] != NO_FINDING_ID) & ann[BOX_COLUMNS].notna().all(axis=1)]
    negatives = ids.difference(pd.Index(boxes["image_id"].unique()))
    rows = pd.DataFrame({"image_id": negatives.to_numpy(dtype=object), "class_id": NO_FINDING_ID,
                         **{c: np.nan for c in BOX_COLUMNS}})
    parts = [f for f in (boxes[GT_COLUMNS], rows) if len(f)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=GT_COLUMNS)


def evaluate_checkpoint(checkpoint: str | Path, cache: str | Path, split: str, out_dir: str | Path, *,
                        device: str = "auto", batch_size: int = 8, workers: int = 2,
                        include_negatives: bool | None = None, bootstrap: int = 1000, seed: int = 0,
                        predictions_path: str | Path | None = None, amp: str = "none",
                        counts_at: tuple[float, float] | None = None) -> dict:
    """Score a fine-tuned detector on a part of a VinDr cache (`btcxr evaluate --checkpoint`).

    Predicts every image of the part at the detector's size setting, maps the boxes to original pixels,
    writes them to `predictions_path` (default OUT/predictions.csv) and scores them against the cache's
    annotations.csv with btcxr.detect.evaluate_files.evaluate_predictions (OUT/metrics.json, per_class.csv,
    per_class.md, pr_curves.png). `include_negatives` None: as the run was validated (its
    data.eval_negatives). Returns the metrics dict.
    """
    dev = resolve_device(device)
    model, meta = load_detector(checkpoint, dev)
    if include_negatives is None:
        include_negatives = bool(meta.get("config", {}).get("data", {}).get("eval_negatives", False))
    dataset = VindrDetection(cache, split, include_negatives=include_negatives,
                             transform=eval_transform(int(meta["detector"]["size"])))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                        pin_memory=dev.type == "cuda")
    pred, _ = predict_loader(model, loader, DistEnv(device=dev), amp if dev.type == "cuda" else "none",
                             desc=f"predict {split}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(pred, predictions_path or out / "predictions.csv")
    sources = {"checkpoint": str(checkpoint), "cache": str(cache), "split": split,
               "include_negatives": include_negatives, "epoch": meta.get("epoch"),
               "detector_size": int(meta["detector"]["size"])}
    return evaluate_predictions(pred, ground_truth(dataset), out, bootstrap=bootstrap, seed=seed, sources=sources,
                                counts_at=counts_at)
