"""The public Python API: backbones, detectors, evaluation and heatmaps in a few calls (docs/api.md).

    import btcxr
    detector = btcxr.load_detector("runs/finetune/best.pt")
    pred = detector.predict(["chest.png", "scan.dcm"])        # DataFrame, ORIGINAL pixels, class names
    metrics = btcxr.evaluate("annotations.csv", pred)        # dict: map50, kaggle_map40, ... (+ .per_class)
    resnet = btcxr.load_backbone("lightly_checkpoint.ckpt")  # torchvision ResNet, arch from the keys

Every function here is a thin layer over the code the command line runs: `Detector.predict` reads, resizes
and maps boxes back exactly as `btcxr predict`, `evaluate` computes what `btcxr evaluate` computes, `explain`
is `btcxr explain`. Problems with the user's input raise btcxr.errors.BtcxrError with a message that names
the file or frame, the row and the value.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from btcxr.data.classes import NO_FINDING, VINDR_CLASSES
from btcxr.detect.metrics import DetectionEvaluation
from btcxr.detect.predictions import BOX_COLUMNS, check_predictions
from btcxr.errors import BtcxrError, cut

__all__ = ["Detector", "Evaluation", "evaluate", "explain", "load_backbone", "load_detector"]

DEFAULT_SCORE_THR = 0.05  # `btcxr predict --score-thr`
DEFAULT_BATCH_SIZE = 8  # `btcxr predict --batch-size`: the same batches give the same numbers


# ----------------------------------------------------------------------------------------------- backbones
def load_backbone(path: str | Path | Mapping[str, Any], arch: str | None = None) -> torch.nn.Module:
    """A torchvision ResNet (``fc`` = identity: it returns pooled features; eval mode, on the CPU) holding
    the backbone weights of `path`.

    `path`: a checkpoint file, or a state dict already in memory, in any layout btcxr reads: our
    ``backbone.pth`` and pre-training checkpoints, a torchvision or timm ResNet state dict, solo-learn
    (``backbone.`` prefix), lightly (``nn.Sequential(*list(resnet.children())[:-1])``: keys ``0.``, ``1.``,
    ``4.``..``7.``), MMDetection (``state_dict`` with ``backbone.``), the original Barlow Twins files, and
    the body of a detector (a btcxr ``best.pt`` or a torchvision Faster R-CNN state dict). `arch`: a
    torchvision ResNet name (btcxr.backbones.LOADABLE_ARCHS); None infers it from the tensors' names and
    shapes. Files are read with ``weights_only=True``: a checkpoint holding other pickled objects is refused
    (save its ``state_dict`` instead). Raises BtcxrError when a backbone tensor is missing or has another
    shape, or when no ResNet is recognised (the message lists some of the file's keys).
    """
    from btcxr.backbones import load_resnet

    model, _ = load_resnet(path, arch)
    return model.eval()


# ----------------------------------------------------------------------------------------------- detector
class Detector:
    """A fine-tuned Faster R-CNN from `load_detector`, ready to predict.

    Attributes: `model` (the torchvision FasterRCNN, eval mode; it works in the resized frame with labels
    class_id + 1), `meta` (the checkpoint's settings, epoch, metrics, ...), `size` (longest image side the
    model sees), `classes` (names of class ids 0..13), `path`, `device`.
    """

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any], path: Path, device: torch.device) -> None:
        self.model = model
        self.meta = meta
        self.path = path
        self.device = device
        self.size = int(meta["detector"]["size"])
        self.classes: list[str] = list(meta.get("classes") or VINDR_CLASSES)

    def __repr__(self) -> str:
        arch = self.meta["detector"].get("arch", "?")
        return f"Detector({str(self.path)!r}, {arch}, size={self.size}, device={self.device})"

    def predict(self, images: Any, score_thr: float = DEFAULT_SCORE_THR, *, ids: Sequence[str] | None = None,
                batch_size: int = DEFAULT_BATCH_SIZE) -> pd.DataFrame:
        """Boxes of every image, in the pixels of the ORIGINAL image.

        `images`: one image or a list of them, each a file path (str or Path: PNG, JPEG or DICOM, read as
        `btcxr predict` reads them; a folder stands for the images inside it), a PIL image, a numpy array
        (2-D grayscale: uint8 as is, float in [0, 1] times 255, other ranges and integer types min-max
        stretched as a 16-bit PNG is; or H x W x 3/4 colour, made gray as a colour PNG is) or a pydicom
        Dataset (decoded as a DICOM file is). `ids`: one image id per image (default: the file name without
        suffix for paths, ``image<k>`` for the k-th input otherwise). Images are batched `batch_size` at a
        time in the order given, as `btcxr predict` batches them, so the same files give the same numbers.

        Returns a DataFrame with predictions.csv's columns: image_id, class_id (0..13), class_name, score,
        x_min, y_min, x_max, y_max; boxes with a score >= `score_thr`; images without such a box have no
        row. Unreadable files raise BtcxrError naming them.
        """
        from btcxr.data.images import resize_longest
        from btcxr.detect.engine import predict_batch, predictions_frame

        if not 0 <= score_thr <= 1:
            raise BtcxrError(f"score_thr must be in [0, 1], got {score_thr}")
        if batch_size < 1:
            raise BtcxrError(f"batch_size must be at least 1, got {batch_size}")
        inputs = _image_inputs(images, ids)
        self.model.roi_heads.score_thresh = score_thr
        done: list[str] = []
        results: list[dict[str, np.ndarray]] = []
        for start in range(0, len(inputs), batch_size):
            batch, sizes = [], []
            for image_id, item in inputs[start:start + batch_size]:
                pixels = _gray_pixels(item, image_id)
                resized, _ = resize_longest(pixels, self.size)
                batch.append(torch.from_numpy(resized.astype(np.float32) / 255.0)[None])
                sizes.append(pixels.shape)
                done.append(image_id)
            results.extend(predict_batch(self.model, batch, sizes, self.device))
        return predictions_frame(done, results)


def load_detector(path: str | Path, device: str | torch.device = "auto") -> Detector:
    """A detector checkpoint written by `btcxr finetune` (``best.pt`` / ``last.pt``), rebuilt without any
    download, as a :class:`Detector`. `device`: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    Raises BtcxrError for a missing file or a file that is not such a checkpoint."""
    from btcxr.detect.model import load_detector as _load
    from btcxr.engine.runtime import resolve_device

    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    model, meta = _load(path, dev)
    return Detector(model, meta, Path(path), dev)


def _image_inputs(images: Any, ids: Sequence[str] | None) -> list[tuple[str, Any]]:
    """(image id, image) pairs: folders expanded, ids given or derived, unique."""
    from btcxr.detect.predict import find_images

    items = [images] if _is_single_image(images) else list(images)
    pairs: list[tuple[str, Any]] = []
    for k, item in enumerate(items):
        if isinstance(item, (str, Path)) and Path(item).is_dir():
            if ids is not None:
                raise BtcxrError(f"ids= names one image per input, but input {k} is the folder {item}; "
                                 "pass its files instead")
            files, names = find_images([item])
            pairs.extend(zip(names, files))
        elif isinstance(item, (str, Path)):
            pairs.append((Path(item).stem, Path(item)))
        else:
            pairs.append((f"image{k}", item))
    if ids is not None:
        ids = [ids] if isinstance(ids, str) else list(ids)
        if len(ids) != len(pairs):
            raise BtcxrError(f"{len(ids)} id(s) for {len(pairs)} image(s): give one id per image")
        pairs = [(str(i), item) for i, (_, item) in zip(ids, pairs)]
    seen: dict[str, int] = {}
    for k, (image_id, _) in enumerate(pairs):
        if not image_id.strip():
            raise BtcxrError(f"image {k}: empty image id")
        if image_id in seen:
            raise BtcxrError(f"images {seen[image_id]} and {k} have the same id {image_id!r}; pass ids=[...]")
        seen[image_id] = k
    if not pairs:
        raise BtcxrError("no images given")
    return pairs


def _is_single_image(images: Any) -> bool:
    return isinstance(images, (str, Path, np.ndarray, Image.Image)) or _is_dicom_dataset(images)


def _is_dicom_dataset(item: Any) -> bool:
    pydicom = sys.modules.get("pydicom")  # a Dataset exists only once pydicom was imported
    return pydicom is not None and isinstance(item, pydicom.Dataset)


def _gray_pixels(item: Any, label: str) -> np.ndarray:
    """Any accepted image -> the 2-D uint8 array `btcxr predict` would get from the same image as a file."""
    from btcxr.data.images import _pil_to_gray, read_image

    if isinstance(item, (str, Path)):
        return read_image(item, bits=8).pixels
    if isinstance(item, Image.Image):
        return _pil_to_gray(item, 8)
    if isinstance(item, np.ndarray):
        return _array_to_gray(item, label)
    if _is_dicom_dataset(item):
        return _dataset_to_gray(item, label)
    raise BtcxrError(f"image {label}: a {type(item).__name__} is not an image; give a file path, a PIL image, "
                     "a numpy array (H x W or H x W x 3) or a pydicom Dataset")


def _array_to_gray(array: np.ndarray, label: str) -> np.ndarray:
    from btcxr.data.images import _pil_to_gray

    a = array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array
    if a.ndim == 3 and a.shape[2] in (3, 4):
        rgb = np.ascontiguousarray(_to_uint8(a[..., :3], label))
        return _pil_to_gray(Image.fromarray(rgb, "RGB"), 8)
    if a.ndim != 2:
        raise BtcxrError(f"image {label}: expected a 2-D grayscale array or H x W x 3, got shape {array.shape}")
    return np.ascontiguousarray(_to_uint8(a, label))


def _to_uint8(a: np.ndarray, label: str) -> np.ndarray:
    from btcxr.data.images import _stretch

    if a.size == 0:
        raise BtcxrError(f"image {label}: empty array of shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise BtcxrError(f"image {label}: the array holds NaN or infinite values")
        if a.min() >= 0 and a.max() <= 1:
            return np.rint(a.astype(np.float64) * 255).astype(np.uint8)
    elif not np.issubdtype(a.dtype, np.integer):
        raise BtcxrError(f"image {label}: arrays of {a.dtype} are not images")
    return _stretch(a.astype(np.float64), 8)  # the range used, as a 16-bit PNG is read


def _dataset_to_gray(ds: Any, label: str) -> np.ndarray:
    """A pydicom Dataset through read_image's DICOM chain (header checks, modality LUT, VOI LUT or window,
    MONOCHROME1 inversion), the file parsing aside."""
    from btcxr.data.images import (
        DEFAULT_MAX_PIXELS,
        ImageReadError,
        _check_header,
        _check_size,
        _dicom_to_gray,
        _transfer_syntax,
    )

    where = f"pydicom Dataset {label}"
    if "PixelData" not in ds:
        raise ImageReadError(where, "DICOM dataset has no Pixel Data (7FE0,0010)")
    header = _check_header(ds, where)  # type: ignore[arg-type]  # (only named in messages)
    _check_size(where, header.cols, header.rows * header.frames, DEFAULT_MAX_PIXELS)  # type: ignore[arg-type]
    if header.frames != 1:
        raise ImageReadError(where, f"multi-frame DICOM ({header.frames} frames); a radiograph has one")
    if getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) is None:
        ds = copy.copy(ds)  # _transfer_syntax adds a file meta: not to the caller's dataset
    try:
        _transfer_syntax(ds)
        arr = ds.pixel_array
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # missing decoders, damaged data (see read_image)
        raise ImageReadError(where, f"pixel data cannot be decoded ({type(exc).__name__}: {cut(exc)})") from None
    want = (header.rows, header.cols) if header.samples == 1 else (header.rows, header.cols, header.samples)
    if not isinstance(arr, np.ndarray) or arr.shape != want:
        raise ImageReadError(where, f"decoded pixel data has shape {getattr(arr, 'shape', None)}, the header "
                                    f"(Rows, Columns, SamplesPerPixel) says {want}")
    try:
        return _dicom_to_gray(ds, arr, 8, header)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(where, f"invalid pixel module ({type(exc).__name__}: {cut(exc)})") from None


# ----------------------------------------------------------------------------------------------- evaluate
class Evaluation(dict):
    """The metrics of `evaluate`: a dict (the content of `btcxr evaluate`'s metrics.json as
    btcxr.detect.metrics.evaluate_detections computes it: map50, map, map75, map50_voc, kaggle_map40,
    their intervals, per-class APs by name, counts, ...) with three attributes: `per_class` (a DataFrame,
    one row per class plus "No finding"), `details` (the DetectionEvaluation: PR curves) and `skipped`
    (predictions dropped as outside the ground truth with lenient=True)."""

    def __init__(self, result: DetectionEvaluation, skipped: int = 0) -> None:
        super().__init__(result.metrics)
        self.per_class: pd.DataFrame = result.per_class
        self.details = result
        self.skipped = skipped


def evaluate(gt: pd.DataFrame | str | Path, pred: pd.DataFrame | str | Path, classes: Sequence[str] | None = None,
             *, bootstrap: int = 1000, seed: int = 0, no_finding_rule: str = "1-max", lenient: bool = False,
             fusion: str = "wbf") -> Evaluation:
    """COCO mAP50 / mAP / mAP75, VOC mAP50 and the Kaggle mAP40 of predictions against ground truth.

    `gt`, `pred`: DataFrames or CSV paths. Columns: image_id, the class (class_id: an id or a name, or
    class_name), x_min, y_min, x_max, y_max, and score for predictions. Class ids are 0..n-1 for the n
    `classes` and n for "No finding" (a GT row of that class with empty coordinates lists an image without
    findings); names are those of `classes` or "No finding"; a number is an id. `classes`: the finding names
    (default the 14 VinDr findings, ids 0..13). For the default classes a CSV path is read as `btcxr
    evaluate` reads it: a GT file with rad_id, or with class_name but no class_id, is a raw VinDr file
    (Kaggle train.csv, PhysioNet annotations) whose readers are fused with `fusion`; `pred` may be a Kaggle
    submission (image_id,PredictionString). Predictions on images outside the GT are an
    error unless `lenient` (then dropped and counted in `.skipped`). `bootstrap` resamples of images give
    95 % intervals (0: none); `no_finding_rule`: "1-max" or "none" (see btcxr.detect.metrics).

    Raises BtcxrError naming the frame or file, the row (0-based) or line (1-based, header = 1) and the value
    for unknown class names, class ids out of range, missing or non-numeric coordinates and scores.
    """
    from btcxr.detect.metrics import evaluate_detections

    names = _check_classes(classes)
    default = classes is None or names == list(VINDR_CLASSES)
    gt_frame = _ground_truth(gt, names, default, fusion)
    pred_frame = _predictions(pred, names, default)
    outside = ~pred_frame["image_id"].isin(set(gt_frame["image_id"]))
    skipped = int(outside.sum())
    if skipped and not lenient:
        raise BtcxrError(f"{_source(pred, 'predictions')}: {skipped} prediction(s) on "
                         f"{pred_frame.loc[outside, 'image_id'].nunique()} image(s) that are not in the ground "
                         f"truth, e.g. image_id {pred_frame.loc[outside, 'image_id'].iloc[0]!r} "
                         "(lenient=True skips them)")
    if skipped:
        pred_frame = pred_frame[~outside].reset_index(drop=True)
    result = evaluate_detections(gt_frame, pred_frame, bootstrap=bootstrap, seed=seed,
                                 no_finding_rule=no_finding_rule, classes=None if default else names)
    return Evaluation(result, skipped)


def _check_classes(classes: Sequence[str] | None) -> list[str]:
    if classes is None:
        return list(VINDR_CLASSES)
    if isinstance(classes, str):
        raise BtcxrError(f"classes must be a list of class names, got the string {cut(classes)!r}")
    names = [str(c).strip() for c in classes]
    if not names:
        raise BtcxrError("classes: give at least one finding class")
    if any(not n for n in names):
        raise BtcxrError(f"classes: empty class name at position {names.index('')}")
    if NO_FINDING in names:
        raise BtcxrError(f"classes: {NO_FINDING!r} is implied as the last id; list the finding classes only")
    dup = pd.Series(names)[pd.Series(names).duplicated()]
    if len(dup):
        raise BtcxrError(f"classes: {dup.iloc[0]!r} listed twice")
    return names


def _source(frame: Any, what: str) -> str:
    return str(frame) if isinstance(frame, (str, Path)) else what


class _Table:
    """A frame being checked and where its rows come from: a DataFrame (rows 0-based) or a CSV read as
    text by btcxr.data.csvcheck.read_table (index = line number)."""

    def __init__(self, frame: pd.DataFrame, source: str, lines: bool) -> None:
        self.frame, self.source, self.lines = frame, source, lines

    def fail(self, mask: np.ndarray, field: str, problem: str) -> None:
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        pos = int(np.argmax(mask))
        where = f"line {self.frame.index[pos]}" if self.lines else f"row {pos}"
        value = self.frame[field].iloc[pos] if field in self.frame.columns else None
        value = value.item() if isinstance(value, np.generic) else value  # 17, not np.int64(17)
        more = f" ({int(mask.sum()) - 1} more row(s) like it)" if mask.sum() > 1 else ""
        raise BtcxrError(f"{self.source}: {where}, field '{field}': {problem}, got {cut(repr(value))}{more}")

    def numbers(self, field: str, required: np.ndarray | None = None) -> np.ndarray:
        """A numeric column as float64; rows in `required` (default all) must hold a finite number."""
        column = self.frame[field]
        empty = column.isna().to_numpy()
        if not pd.api.types.is_numeric_dtype(column):  # text (a CSV is read as text): "" is empty
            empty = empty | (column.astype(str).str.strip() == "").to_numpy()
            column = column.where(~empty, None)
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
        need = np.ones(len(values), dtype=bool) if required is None else required
        self.fail(need & empty, field, "value is empty, expected a number")
        self.fail(~empty & ~np.isfinite(values), field, "not a finite number")
        return values


def _table(data: pd.DataFrame | str | Path, what: str, required: Sequence[str]) -> _Table:
    from btcxr.data.csvcheck import read_table

    if isinstance(data, (str, Path)):
        return _Table(read_table(data, required, what=f"{what} CSV"), str(data), lines=True)
    if not isinstance(data, pd.DataFrame):
        raise BtcxrError(f"{what}: expected a pandas DataFrame or a CSV path, got a {type(data).__name__}")
    missing = [c for c in required if c not in data.columns]
    if missing:
        raise BtcxrError(f"{what}: missing column(s) {', '.join(missing)} (found: {', '.join(map(str, data.columns))})")
    return _Table(data, what, lines=False)


def _class_ids(table: _Table, names: list[str]) -> np.ndarray:
    """class_id (ids or names) or class_name -> ids 0..n (n = "No finding"), checked against class_name."""
    frame, n = table.frame, len(names)
    all_names = [*names, NO_FINDING]
    lookup = {name: i for i, name in enumerate(all_names)}
    if "class_id" not in frame.columns and "class_name" not in frame.columns:
        raise BtcxrError(f"{table.source}: no class_id or class_name column (found: "
                         f"{', '.join(map(str, frame.columns))})")
    field = "class_id" if "class_id" in frame.columns else "class_name"
    column = frame[field]
    text = column.astype(str).str.strip().where(column.notna(), "")
    number = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    by_name = text.map(lookup).to_numpy(dtype=np.float64)
    is_number = np.isfinite(number)
    table.fail(text.to_numpy() == "", field, "empty class")
    table.fail(is_number & ((number % 1 != 0) | (number < 0) | (number > n)), field,
               f"class id outside 0..{n} ({n} classes, {n} = {NO_FINDING})")
    known = ", ".join(repr(x) for x in all_names[:5]) + (", ..." if len(all_names) > 5 else "")
    table.fail(~is_number & np.isnan(by_name), field, f"unknown class name (known: {known})")
    ids = np.where(is_number, number, by_name).astype(np.int64)
    if field == "class_id" and "class_name" in frame.columns:
        given = frame["class_name"].astype(str).str.strip().where(frame["class_name"].notna(), "").to_numpy()
        expected = np.asarray(all_names, dtype=object)[ids]
        table.fail((given != "") & (given != expected), "class_name", "class_name does not name the row's class_id")
    return ids


def _image_ids(table: _Table) -> np.ndarray:
    column = table.frame["image_id"]
    text = column.astype(str).str.strip().where(column.notna(), "")
    table.fail(text.to_numpy() == "", "image_id", "empty image id")
    return text.to_numpy(dtype=object)


def _ground_truth(gt: pd.DataFrame | str | Path, names: list[str], default: bool, fusion: str) -> pd.DataFrame:
    if isinstance(gt, (str, Path)):
        from btcxr.detect.predictions import csv_header

        if not Path(gt).is_file():
            raise BtcxrError(f"{gt}: ground-truth file not found")
        header = set(csv_header(gt, "ground-truth file"))
        # `btcxr evaluate`'s rule (evaluate_files.read_ground_truth): readers' rows to fuse
        if default and ("rad_id" in header or ("class_id" not in header and "class_name" in header)):
            from btcxr.detect.evaluate_files import read_ground_truth

            return read_ground_truth(gt, fusion=fusion)[0]
        if "rad_id" in header:
            raise BtcxrError(f"{gt}: a raw VinDr file (one row per reader, rad_id) holds VinDr's classes; "
                             "evaluate it with the default classes")
    table = _table(gt, "ground truth", ["image_id", *BOX_COLUMNS])
    image_id = _image_ids(table)
    class_id = _class_ids(table, names)
    is_box = class_id != len(names)
    coords = {c: table.numbers(c, required=is_box) for c in BOX_COLUMNS}
    table.fail(coords["x_max"] < coords["x_min"], "x_max", "x_max is smaller than x_min")
    table.fail(coords["y_max"] < coords["y_min"], "y_max", "y_max is smaller than y_min")
    return pd.DataFrame({"image_id": image_id, "class_id": class_id, **coords})


def _predictions(pred: pd.DataFrame | str | Path, names: list[str], default: bool) -> pd.DataFrame:
    source = _source(pred, "predictions")
    if isinstance(pred, (str, Path)):
        from btcxr.detect.predictions import csv_header, read_submission

        if not Path(pred).is_file():
            raise BtcxrError(f"{pred}: predictions file not found")
        if "PredictionString" in csv_header(pred, "predictions file"):
            if not default:
                raise BtcxrError(f"{pred}: a Kaggle submission holds VinDr's class ids; evaluate it with the "
                                 "default classes")
            return read_submission(pred)
    table = _table(pred, "predictions", ["image_id", "score", *BOX_COLUMNS])
    image_id = _image_ids(table)
    class_id = _class_ids(table, names)
    is_box = class_id != len(names)
    score = table.numbers("score")
    coords = {c: table.numbers(c, required=is_box) for c in BOX_COLUMNS}
    frame = pd.DataFrame({"image_id": image_id, "class_id": class_id, "score": score, **coords})
    return check_predictions(frame, source, classes=None if default else names)


# ----------------------------------------------------------------------------------------------- explain
def explain(detector: Detector | str | Path | Sequence[Detector | str | Path], images: str | Path | Iterable[str | Path],
            out: str | Path, *, method: str = "ablation", score_thr: float = 0.3, top_k: int = 10,
            device: str | None = None, **options: Any) -> dict[str, Any]:
    """Heatmaps for the boxes of one or more detectors (`btcxr explain`, docs/explain.md).

    `detector`: a :class:`Detector`, a checkpoint path, or a list of them (side-by-side grids). `images`:
    files or folders (PNG, JPEG, DICOM). Writes boxes.csv, skipped.csv and pictures into `out`. `method`:
    ablation (the paper's), gradcam or eigencam; `device`: default the Detector's, else "auto"; `options`:
    the other keywords of btcxr.explain.run.explain_images (labels, layer, ratio, batch_size, cache, figures,
    ...). Returns the summary (localisation.json's content when `cache` gives ground truth).
    """
    from btcxr.explain.run import explain_images

    many = isinstance(detector, Sequence) and not isinstance(detector, (str, Path))
    detectors = list(detector) if many else [detector]  # type: ignore[arg-type]
    checkpoints = [d.path if isinstance(d, Detector) else Path(d) for d in detectors]
    if device is None:
        own = next((d.device for d in detectors if isinstance(d, Detector)), None)
        device = str(own) if own is not None else "auto"
    paths = [images] if isinstance(images, (str, Path)) else list(images)
    for k, item in enumerate(paths):
        if not isinstance(item, (str, Path)):
            raise BtcxrError(f"explain reads image files: input {k} is a {type(item).__name__} (save it as a "
                             "PNG first)")
    return explain_images(checkpoints, paths, out, method=method, score_thr=score_thr, top_k=top_k,
                          device=device, **options)
