"""`btcxr predict`: run a fine-tuned detector on radiograph files or folders.

Every image is read with btcxr.data.images.read_image (PNG, JPEG, DICOM; patient tags are never read),
resized with resize_longest to the detector's size setting -- the very pixels `btcxr prepare` would cache at
that size -- and its boxes are mapped back to ORIGINAL pixels.

OUT/predictions.csv   image_id, class_id, class_name, score, x_min, y_min, x_max, y_max (original pixels)
OUT/predictions.coco.json   the same boxes as COCO results: image_id = the image id above, category_id =
                      class_id + 1, bbox [x, y, width, height] (original pixels)
OUT/images.csv        image_id, file (as given), orig_width, orig_height, boxes (count above --score-thr)
OUT/overlays/<image_id>.png   (the id as a safe file name: see engine.paths.safe_name) boxes with class and score drawn over the radiograph (unless disabled)
OUT/submission.csv    Kaggle VinBigData format (with --submission), "No finding" = 1 - max score
OUT/errors.csv        unreadable files (file, reason) when they are skipped (--on-error skip)

Image ids are the file names without suffix (VinDr's ids); files sharing a name in different folders get
their relative path instead (separators as "__").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from btcxr.data.coco import coco_results
from btcxr.data.images import read_image, resize_longest
from btcxr.detect.engine import predict_batch, predictions_frame
from btcxr.detect.model import load_detector
from btcxr.detect.predictions import CLASS_NAMES, add_no_finding, write_predictions, write_submission
from btcxr.engine.io import atomic_output, ensure_dir, write_csv, write_error, write_json
from btcxr.engine.paths import safe_name
from btcxr.engine.runtime import resolve_device
from btcxr.errors import ON_ERROR as ON_ERROR  # the words of --on-error, kept importable from here
from btcxr.errors import BtcxrError, check_on_error
from btcxr.logs import progress_disabled

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
OVERLAY_SIZE = 1024  # longest side of overlay pictures (smaller originals keep their size)


@dataclass
class PredictReport:
    out_dir: Path
    images: int  # images predicted
    boxes: int  # rows of predictions.csv
    skipped: int  # unreadable files skipped (--on-error skip)
    predictions: pd.DataFrame


def find_images(inputs: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Files and folders (searched recursively for IMAGE_SUFFIXES) -> (files, image ids), in input order."""
    files: list[Path] = []
    relative: list[str] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            pairs = [(p, p.relative_to(path).with_suffix("").as_posix()) for p in found]
        elif path.is_file():
            pairs = [(path, path.stem)]
        else:
            raise BtcxrError(f"input {path} does not exist")
        for file, rel in pairs:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                files.append(file)
                relative.append(rel)
    if not files:
        raise BtcxrError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, inputs))}")
    stems = [f.stem for f in files]
    counts = pd.Series(stems).value_counts()
    ids = [s if counts[s] == 1 else r.replace("/", "__") for s, r in zip(stems, relative)]
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise BtcxrError(f"two inputs map to the same image id {dup!r}; pass them in separate runs")
    return files, ids


class _Radiographs(Dataset):
    """Read + resize in DataLoader workers; errors travel back as values so the main process decides."""

    def __init__(self, files: Sequence[Path], size: int, overlays: bool):
        self.files, self.size, self.overlays = list(files), size, overlays

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, dict[str, Any]]:
        try:
            radiograph = read_image(self.files[index], bits=8)
        except BtcxrError as exc:
            return None, {"index": index, "error": str(exc)}
        pixels, _ = resize_longest(radiograph.pixels, self.size)
        meta: dict[str, Any] = {"index": index, "orig_size": (radiograph.orig_height, radiograph.orig_width)}
        if self.overlays:
            longest = max(radiograph.pixels.shape)
            meta["display"] = resize_longest(radiograph.pixels, min(longest, OVERLAY_SIZE))[0]
        return torch.from_numpy(pixels.astype(np.float32) / 255.0)[None], meta


def _collate(batch):
    return [b[0] for b in batch], [b[1] for b in batch]


def predict_files(checkpoint: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, *,
                  score_thr: float = 0.05, batch_size: int = 8, device: str = "auto", workers: int = 2,
                  submission: bool = False, overlays: bool = True, overlay_thr: float = 0.3,
                  on_error: str = "stop") -> PredictReport:
    """Detect findings in every input image and write the outputs listed in the module docstring.

    on_error: one of btcxr.errors.ON_ERROR (stop | skip); "raise" is a deprecated spelling of stop."""
    on_error = check_on_error(on_error, "on_error")
    if not 0 <= score_thr <= 1 or batch_size < 1:
        raise BtcxrError("--score-thr must be in [0, 1] and --batch-size at least 1")
    out = ensure_dir(out_dir, "--out")
    if overlays:
        ensure_dir(out / "overlays", "overlay folder")
    files, ids = find_images(inputs)
    dev = resolve_device(device)
    model, meta = load_detector(checkpoint, dev)
    model.roi_heads.score_thresh = score_thr
    size = int(meta["detector"]["size"])
    log.info("predicting %d image(s) at %d px with %s on %s", len(files), size, checkpoint, dev)

    loader = DataLoader(_Radiographs(files, size, overlays), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_collate)
    done_ids: list[str] = []
    results: list[dict[str, np.ndarray]] = []
    sizes: list[tuple[int, int]] = []
    errors: list[tuple[str, str]] = []
    for images, metas in tqdm(loader, desc="predict", disable=progress_disabled(), dynamic_ncols=True):
        good = [k for k, m in enumerate(metas) if "error" not in m]
        for m in metas:
            if "error" in m:
                if on_error == "stop":
                    raise BtcxrError(f"{m['error']} (pass --on-error skip to skip unreadable files)")
                errors.append((str(files[m["index"]]), m["error"]))
                log.warning("skipped: %s", m["error"])
        if not good:
            continue
        batch = predict_batch(model, [images[k] for k in good], [metas[k]["orig_size"] for k in good], dev)
        for k, result in zip(good, batch):
            image_id = ids[metas[k]["index"]]
            done_ids.append(image_id)
            results.append(result)
            sizes.append(metas[k]["orig_size"])
            if overlays:
                draw_overlay(metas[k]["display"], result, metas[k]["orig_size"], overlay_thr,
                             out / "overlays" / f"{safe_name(image_id)}.png")

    pred = predictions_frame(done_ids, results)
    try:  # detect.predictions writes with pandas: a full disk is an OSError there
        write_predictions(pred, out / "predictions.csv")
    except OSError as exc:
        raise write_error(out / "predictions.csv", exc) from exc
    write_json(out / "predictions.coco.json", coco_results(pred))
    index = {i: k for k, i in enumerate(ids)}
    write_csv(out / "images.csv", pd.DataFrame({
        "image_id": done_ids,
        "file": [str(files[index[i]]) for i in done_ids],
        "orig_width": [s[1] for s in sizes],
        "orig_height": [s[0] for s in sizes],
        "boxes": [len(r["scores"]) for r in results],
    }))
    if submission:
        try:
            write_submission(add_no_finding(pred, "1-max", done_ids), out / "submission.csv", done_ids)
        except OSError as exc:
            raise write_error(out / "submission.csv", exc) from exc
    if errors:
        write_csv(out / "errors.csv", pd.DataFrame(errors, columns=["file", "reason"]))
        log.warning("skipped %d unreadable file(s) of %d; see %s", len(errors), len(files), out / "errors.csv")
    log.info("%d image(s), %d box(es) with score >= %g: wrote %s", len(done_ids), len(pred), score_thr,
             out / "predictions.csv")
    return PredictReport(out_dir=out, images=len(done_ids), boxes=len(pred), skipped=len(errors),
                         predictions=pred)


def draw_overlay(display: np.ndarray, result: dict[str, np.ndarray], orig_size: tuple[int, int],
                 score_thr: float, path: Path) -> Path:
    """Boxes of one image (original pixels) with class and score, drawn over `display` (the radiograph
    resized for viewing)."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.fromarray(display).convert("RGB")
    factor = max(display.shape) / max(orig_size)
    draw = ImageDraw.Draw(canvas)
    line = max(1, round(max(display.shape) / 400))
    try:
        font = ImageFont.load_default(size=max(10, round(max(display.shape) / 60)))
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    palette = colormaps["tab20"]
    keep = np.flatnonzero(result["scores"] >= score_thr)
    for k in keep[np.argsort(result["scores"][keep])]:  # highest score drawn last, on top
        cls = int(result["class_id"][k])
        colour = tuple(int(255 * c) for c in palette(cls % 20)[:3])
        x0, y0, x1, y1 = (result["boxes"][k] * factor).tolist()
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=line)
        label = f"{CLASS_NAMES[cls]} {result['scores'][k]:.2f}"
        left, top, right, bottom = draw.textbbox((x0, y0), label, font=font)
        ty = y0 - (bottom - top) - 2 * line if y0 - (bottom - top) - 2 * line >= 0 else y0 + line
        tb = draw.textbbox((x0 + line, ty), label, font=font)
        draw.rectangle(tb, fill=colour)
        draw.text((x0 + line, ty), label, fill=(0, 0, 0), font=font)
    with atomic_output(path) as handle:
        canvas.save(handle, format="PNG")
    return path
