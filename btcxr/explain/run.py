"""`btcxr explain`: a heatmap for every detected box of one or more detectors, pictures, localisation score.

Two entry points share one loop:
- explain_images(checkpoints, images, out_dir, ...): radiograph files or folders (PNG, JPEG, DICOM), read and
  resized exactly as `btcxr predict` does; ground truth from a cache's annotations.csv when `cache` is given;
- explain_split(checkpoints, cache, split, out_dir, ...): the images of a cache split that have finding
  boxes, against their ground truth: the localisation score (energy in box, pointing game).

OUT/boxes.csv               one row per explained box: image_id, model, box, class_id, class_name, score,
                            x_min, y_min, x_max, y_max (ORIGINAL pixels), figure, and with ground truth
                            gt_iou, energy_in_box, pointing_game (empty for false positives)
OUT/skipped.csv             image_id, model, reason: images where a model detected nothing to explain
OUT/boxes/<image_id>/<model>_box<k>_<class>.png   one picture per box
OUT/grids/<image_id>.png    with two or more checkpoints: findings (rows) x models (columns)
OUT/localisation.json, OUT/localisation.md   with ground truth: per model and class, mean and 95 % interval
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from btcxr.data.classes import NO_FINDING, VINDR_CLASSES
from btcxr.engine.io import ensure_dir, write_bytes, write_csv, write_json, write_text
from btcxr.engine.paths import safe_name
from btcxr.errors import BtcxrError
from btcxr.explain.ablation import DEFAULT_MODE
from btcxr.explain.base import DEFAULT_LAYER, DetectorCAM, Explanation
from btcxr.explain.figures import box_figure, grid_figure, heatmap_png
from btcxr.explain.localisation import (
    RECORD_COLUMNS,
    empty_entry,
    energy_in_box,
    markdown_table,
    match_true_positives,
    pointing_hit,
    summarise,
)
from btcxr.explain.methods import build_cam
from btcxr.logs import progress_disabled

log = logging.getLogger(__name__)

BOX_COLUMNS = ["image_id", "model", "box", "class_id", "class_name", "score", "x_min", "y_min", "x_max", "y_max",
               "figure", "heatmap", "gt_iou", "energy_in_box", "pointing_game"]
SKIP_COLUMNS = ["image_id", "model", "reason"]


@dataclass
class Detector:
    """A loaded detector, the name its column carries, and the longest image side it was trained at."""

    model: torch.nn.Module
    label: str
    size: int
    path: Path


def run_name(path: Path) -> str:
    """A checkpoint's display name: its run folder for best.pt / last.pt, else the file name."""
    if path.stem in ("best", "last") and path.parent.name:
        return path.parent.name
    return path.stem


def load_detectors(checkpoints: Sequence[str | Path], labels: Sequence[str] | None,
                   device: torch.device) -> list[Detector]:
    from btcxr.detect.model import load_detector

    if not checkpoints:
        raise BtcxrError("give at least one --checkpoint")
    if labels and len(labels) != len(checkpoints):
        raise BtcxrError(f"{len(labels)} --label value(s) for {len(checkpoints)} --checkpoint(s): give one "
                         "label per checkpoint, in the same order")
    for path in checkpoints:
        if not Path(path).is_file():
            raise BtcxrError(f"checkpoint {path} does not exist")
    detectors, seen = [], set()
    for i, path in enumerate(map(Path, checkpoints)):
        model, meta = load_detector(path, device)
        label = labels[i] if labels else run_name(path)
        if label in seen:
            label = f"{label} ({i + 1})"
        seen.add(label)
        size = int((meta.get("detector") or {}).get("size") or model.transform.max_size)
        detectors.append(Detector(model, label, size, path))
    return detectors


@dataclass
class _GroundTruth:
    boxes: np.ndarray  # (n, 4) in the display frame
    class_id: np.ndarray


@dataclass
class _Session:
    """What one `explain` call accumulates over images: box rows, skips, localisation records."""

    detectors: list[Detector]
    cams: list[DetectorCAM]
    out: Path
    method: str
    layer: str
    score_thr: float
    top_k: int
    tolerance: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    images: int = 0
    grids: int = 0

    def add_image(self, image_id: str, display: np.ndarray, inputs: Sequence[torch.Tensor],
                  to_original: float, gt: _GroundTruth | None, figures: bool) -> None:
        """Explain one image with every detector. display: (H, W) float image the outputs are drawn in;
        inputs[i]: detector i's input (1, h, w); to_original: original px per display px."""
        self.images += 1
        explanations = []
        for detector, cam, image in zip(self.detectors, self.cams, inputs):
            explanation = _to_display(cam.explain(image, self.score_thr, self.top_k), image, display.shape)
            explanations.append(explanation)
            if len(explanation) == 0:
                reason = f"no detection with score >= {self.score_thr:g}"
                log.info("%s: %s by %s, listed in skipped.csv", image_id, reason, detector.label)
                self.skipped.append({"image_id": image_id, "model": detector.label, "reason": reason})
                continue
            self._add_boxes(image_id, detector.label, explanation, display, to_original, gt, figures)
        if figures and len(self.detectors) > 1:
            path = grid_figure(display, explanations, [d.label for d in self.detectors],
                               self.out / "grids" / f"{safe_name(image_id)}.png",
                               gt_boxes=None if gt is None else gt.boxes, gt_class=None if gt is None else gt.class_id,
                               title=f"{image_id}: {self.method} heatmaps at {self.layer}")
            self.grids += path is not None

    def _add_boxes(self, image_id: str, label: str, e: Explanation, display: np.ndarray, to_original: float,
                   gt: _GroundTruth | None, figures: bool) -> None:
        matched = np.full(len(e), -1)
        overlap = np.zeros(len(e))
        if gt is not None:
            matched, overlap = match_true_positives(e.boxes, e.class_id, e.scores, gt.boxes, gt.class_id)
        for k in range(len(e)):
            name = VINDR_CLASSES[int(e.class_id[k])]
            row: dict[str, Any] = {"image_id": image_id, "model": label, "box": k, "class_id": int(e.class_id[k]),
                                   "class_name": name, "score": float(e.scores[k])}
            row |= dict(zip(["x_min", "y_min", "x_max", "y_max"], (e.boxes[k] * to_original).tolist()))
            row["figure"] = ""
            heatmap = self.out / "heatmaps" / safe_name(image_id) / f"{safe_name(label)}_box{k}.png"
            write_bytes(heatmap, heatmap_png(e.heatmaps[k]), durable=False)  # the case browser's overlay
            row["heatmap"] = heatmap.relative_to(self.out).as_posix()
            if figures:
                path = (self.out / "boxes" / safe_name(image_id)
                        / f"{safe_name(label)}_box{k}_{safe_name(name)}.png")
                gt_boxes = [] if gt is None else gt.boxes
                gt_names = [] if gt is None else [VINDR_CLASSES[int(c)] for c in gt.class_id]
                box_figure(display, e.heatmaps[k], e.boxes[k], name, float(e.scores[k]), path,
                           model_label=label, method=self.method, layer=self.layer,
                           gt_boxes=gt_boxes, gt_names=gt_names)
                row["figure"] = path.relative_to(self.out).as_posix()
            if matched[k] >= 0:
                gt_box = gt.boxes[matched[k]]
                row |= {"gt_iou": float(overlap[k]), "energy_in_box": energy_in_box(e.heatmaps[k], gt_box),
                        "pointing_game": float(pointing_hit(e.heatmaps[k], gt_box, self.tolerance))}
                self.records.append({c: row[c] for c in RECORD_COLUMNS if c in row} | {"iou": row["gt_iou"]})
            self.rows.append(row)

    def finish(self, settings: dict[str, Any], scored: bool, n_boot: int, seed: int) -> dict[str, Any]:
        """Write boxes.csv, skipped.csv and, when `scored` (ground truth known), localisation.json/.md."""
        boxes = pd.DataFrame(self.rows, columns=BOX_COLUMNS)
        write_csv(self.out / "boxes.csv", boxes)
        write_csv(self.out / "skipped.csv", pd.DataFrame(self.skipped, columns=SKIP_COLUMNS))
        summary: dict[str, Any] = settings | {"images": self.images, "boxes": len(boxes),
                                             "skipped": len(self.skipped), "grids": self.grids}
        if scored:
            records = pd.DataFrame(self.records, columns=RECORD_COLUMNS)
            models = summarise(records, n_boot=n_boot, seed=seed)
            # Every model gets an entry, in checkpoint order; one without a true positive scores n = 0.
            summary["models"] = {d.label: models.get(d.label, empty_entry()) for d in self.detectors}
            _write_json(summary, self.out / "localisation.json")
            header = (f"Localisation of {settings['method']} heatmaps at {settings['layer']}: "
                      f"{self.images} image(s), true positives at IoU >= 0.5; pointing game tolerance "
                      f"{self.tolerance:g} px; 95 % bootstrap intervals over images.\n\n")
            write_text(self.out / "localisation.md", header + markdown_table(summary["models"]))
            log.info("localisation: %s", self.out / "localisation.md")
        log.info("%d image(s), %d box(es) explained, %d skip(s): %s", self.images, len(boxes),
                 len(self.skipped), self.out)
        return summary


def _write_json(obj: Any, path: Path) -> None:
    def clean(value):
        if isinstance(value, float) and not np.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    write_json(path, clean(obj))


def _to_display(e: Explanation, image: torch.Tensor, display_hw: tuple[int, int]) -> Explanation:
    """Boxes and heatmaps of a detector's input frame mapped to the display frame (same aspect)."""
    in_hw = tuple(image.shape[-2:])
    if in_hw == tuple(display_hw):
        return e
    factor = max(display_hw) / max(in_hw)
    maps = e.heatmaps
    if len(maps):
        maps = F.interpolate(torch.from_numpy(maps)[:, None], size=tuple(display_hw), mode="bilinear",
                             align_corners=False)[:, 0].clamp(0, 1).numpy()
    else:
        maps = np.zeros((0, *display_hw), dtype=np.float32)
    return Explanation(e.boxes * factor, e.class_id, e.scores, maps)


class _Rate:
    """Logs images per hour and the time left over a split: at the first image, then every minute."""

    def __init__(self, total: int, split: str, every_s: float = 60.0) -> None:
        self.total, self.split, self.every_s = total, split, every_s
        self.start = self.last = time.perf_counter()

    def report(self, done: int) -> None:
        now = time.perf_counter()
        if done == 0 or (done < self.total and now - self.last < self.every_s):
            return
        self.last = now
        per_hour = done / max(now - self.start, 1e-9) * 3600
        left = (self.total - done) / per_hour * 3600 if per_hour else float("inf")
        log.info("explain %s: %d of %d images, %.0f images per hour, %s left", self.split, done, self.total,
                 per_hour, _duration(left))


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min" if seconds >= 3600 else f"{seconds // 60} min {seconds % 60:02d} s"


def _setup(checkpoints, labels, method, layer, score_thr, top_k, ratio, batch_size, device, out_dir,
           ablation_mode) -> tuple[list[Detector], list[DetectorCAM], Path]:
    from btcxr.engine.runtime import resolve_device

    if not 0 <= score_thr <= 1:
        raise BtcxrError(f"--score-thr must be in [0, 1], got {score_thr}")
    if top_k < 1:
        raise BtcxrError(f"--top-k must be at least 1, got {top_k}")
    dev = resolve_device(device)
    detectors = load_detectors(checkpoints, labels, dev)
    cams = []
    for d in detectors:
        # Boxes below the detector's own output threshold would never reach us.
        d.model.roi_heads.score_thresh = min(float(d.model.roi_heads.score_thresh), score_thr)
        cams.append(build_cam(method, d.model, layer, ratio=ratio, batch_size=batch_size,
                              ablation_mode=ablation_mode))
    out = ensure_dir(out_dir)
    log.info("explaining with %s at %s on %s: %s", method, cams[0].layer.name, dev,
             ", ".join(f"{d.label} ({d.path})" for d in detectors))
    return detectors, cams, out


def _settings(method, layer, score_thr, top_k, ratio, ablation_mode, tolerance, n_boot, **extra
              ) -> dict[str, Any]:
    return {"method": method, "layer": layer, "score_thr": score_thr, "top_k": top_k,
            "ratio": ratio if method == "ablation" else None,
            "ablation_mode": ablation_mode if method == "ablation" else None, "iou_thr": 0.5,
            "pointing_tolerance_px": tolerance,
            "bootstrap": n_boot, "level": 0.95} | extra


def _ground_truth(cache: str | Path) -> tuple[dict[str, _GroundTruth], dict[str, tuple[int, int]]]:
    """{image_id: boxes in ORIGINAL pixels}, {image_id: (orig_h, orig_w)} from a cache."""
    from btcxr.data.cache_format import read_annotations, read_manifest

    manifest = read_manifest(cache)
    sizes = {r.image_id: (int(r.orig_height), int(r.orig_width)) for r in manifest.itertuples()}
    ann = read_annotations(cache)
    coords = ["x_min", "y_min", "x_max", "y_max"]
    ann = ann[ann[coords].notna().all(axis=1) & (ann["class_name"] != NO_FINDING)]
    truth = {image_id: _GroundTruth(g[coords].to_numpy(np.float64), g["class_id"].to_numpy(np.int64))
             for image_id, g in ann.groupby("image_id", sort=False)}
    for image_id in sizes:  # a cached image without finding boxes is a known negative
        truth.setdefault(image_id, _GroundTruth(np.zeros((0, 4)), np.zeros(0, dtype=np.int64)))
    return truth, sizes


def explain_images(checkpoints: Sequence[str | Path], images: Sequence[str | Path], out_dir: str | Path, *,
                   labels: Sequence[str] | None = None, method: str = "ablation", layer: str = DEFAULT_LAYER,
                   score_thr: float = 0.3, top_k: int = 10, ratio: float = 0.5, batch_size: int = 32,
                  ablation_mode: str = DEFAULT_MODE,
                   device: str = "auto", cache: str | Path | None = None, figures: bool = True,
                   tolerance: float = 0.0, n_boot: int = 2000, seed: int = 0,
                   on_error: str = "stop") -> dict[str, Any]:
    """Explain every box of every image (files or folders) for each checkpoint; see the module docstring.

    on_error: an unreadable image stops the run (stop) or is skipped and listed in skipped.csv (skip).

    With `cache`, images whose id (file name without suffix) is in the cache get their ground-truth boxes
    drawn and scored. Returns the summary (the content of localisation.json when ground truth was found).
    """
    from btcxr.data.images import read_image, resize_longest
    from btcxr.detect.predict import find_images

    files, ids = find_images(images)
    detectors, cams, out = _setup(checkpoints, labels, method, layer, score_thr, top_k, ratio, batch_size,
                                  device, out_dir, ablation_mode)
    truth, sizes = _ground_truth(cache) if cache else ({}, {})
    session = _Session(detectors, cams, out, method, cams[0].layer.name, score_thr, top_k, tolerance)
    display_size = max(d.size for d in detectors)
    for file, image_id in tqdm(list(zip(files, ids)), desc="explain", disable=progress_disabled(),
                               dynamic_ncols=True):
        try:
            radiograph = read_image(file, bits=8)
        except BtcxrError as exc:
            if on_error == "stop":
                raise BtcxrError(f"{exc} (pass --on-error skip to skip unreadable files)") from exc
            log.warning("skipped: %s", exc)
            session.skipped.append({"image_id": image_id, "model": "", "reason": str(exc)})
            continue
        display_pixels, _ = resize_longest(radiograph.pixels, display_size)
        display = display_pixels.astype(np.float32) / 255.0
        inputs = [torch.from_numpy(resize_longest(radiograph.pixels, d.size)[0].astype(np.float32) / 255.0)[None]
                  for d in detectors]
        orig_hw = sizes.get(image_id, (radiograph.orig_height, radiograph.orig_width))
        to_original = max(orig_hw) / max(display.shape)
        gt = truth.get(image_id)
        if gt is not None:
            gt = _GroundTruth(gt.boxes / to_original, gt.class_id)
        elif cache:
            log.info("%s is not in %s: no ground truth drawn or scored", image_id, cache)
        session.add_image(image_id, display, inputs, to_original, gt, figures)
    settings = _settings(method, session.layer, score_thr, top_k, ratio, ablation_mode, tolerance, n_boot)
    return session.finish(settings, bool(cache), n_boot, seed)


def explain_split(checkpoints: Sequence[str | Path], cache: str | Path, split: str, out_dir: str | Path, *,
                  labels: Sequence[str] | None = None, method: str = "ablation", layer: str = DEFAULT_LAYER,
                  score_thr: float = 0.3, top_k: int = 10, ratio: float = 0.5, batch_size: int = 32,
                  ablation_mode: str = DEFAULT_MODE,
                  device: str = "auto", max_images: int | None = None, grid_images: int = 8,
                  tolerance: float = 0.0, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Localisation score of each checkpoint's heatmaps over the images of a cache split that hold finding
    boxes (the first `max_images`); pictures (per box and grids) for the first `grid_images` of them.
    Returns the summary written to localisation.json (settings + {"models": ...})."""
    from btcxr.data.datasets import VindrDetection
    from btcxr.detect.transforms import eval_transform

    if max_images is not None and max_images < 1:
        raise BtcxrError(f"--max-images must be at least 1, got {max_images}")
    dataset = VindrDetection(cache, split)
    detectors, cams, out = _setup(checkpoints, labels, method, layer, score_thr, top_k, ratio, batch_size,
                                  device, out_dir, ablation_mode)
    session = _Session(detectors, cams, out, method, cams[0].layer.name, score_thr, top_k, tolerance)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    resizers = [eval_transform(d.size) for d in detectors]
    rate = _Rate(n, split)
    for index in tqdm(range(n), desc=f"explain {split}", disable=progress_disabled(), dynamic_ncols=True):
        rate.report(index)
        image, target = dataset[index]
        inputs = [resize(image, {})[0] for resize in resizers]
        gt = _GroundTruth(target["boxes"].numpy().astype(np.float64), target["labels"].numpy())
        session.add_image(target["image_id"], image[0].numpy(), inputs, 1.0 / float(target["scale"]), gt,
                          figures=index < grid_images)
    rate.report(n)
    settings = _settings(method, session.layer, score_thr, top_k, ratio, ablation_mode, tolerance, n_boot, split=split,
                         cache=str(cache))
    return session.finish(settings, True, n_boot, seed)
