"""Detection predictions on disk: our predictions.csv and the Kaggle VinBigData submission format.

predictions.csv: one row per box, columns ``image_id, class_id, class_name, score, x_min, y_min, x_max,
y_max`` in original image pixels (``class_name`` optional on reading; checked against ``class_id`` when
present). A "No finding" row (class 14) may leave the coordinates empty: they become ``0 0 1 1``.

Kaggle submission: ``image_id,PredictionString``, the string being ``class conf x_min y_min x_max y_max``
repeated; an image where nothing was found is written ``14 1 0 0 1 1``.

In memory both become one frame of PREDICTION_COLUMNS (image_id str, class_id int64, class_name str,
score and coordinates float64).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from btcxr.data.classes import NO_FINDING, NO_FINDING_ID, VINDR_CLASSES
from btcxr.data.csvcheck import fail, first_bad, read_table, require_text, to_number
from btcxr.engine.io import write_csv
from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)

BOX_COLUMNS = ["x_min", "y_min", "x_max", "y_max"]
PREDICTION_COLUMNS = ["image_id", "class_id", "class_name", "score", *BOX_COLUMNS]
SUBMISSION_COLUMNS = ["image_id", "PredictionString"]
CLASS_NAMES: list[str] = [*VINDR_CLASSES, NO_FINDING]
# The competition's "No finding" box: a one-pixel box in the corner.
NO_FINDING_BOX = (0.0, 0.0, 1.0, 1.0)
EMPTY_IMAGE_STRING = "14 1 0 0 1 1"
NO_FINDING_RULES = ("1-max", "none")


def empty_predictions() -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": pd.Series(dtype=object), "class_id": pd.Series(dtype=np.int64),
        "class_name": pd.Series(dtype=object), "score": pd.Series(dtype=np.float64),
        **{c: pd.Series(dtype=np.float64) for c in BOX_COLUMNS},
    })


def _finish(image_id, class_id, score, boxes: np.ndarray, names: Sequence[str] = CLASS_NAMES) -> pd.DataFrame:
    """The canonical frame; `names`: class names by id, the last being "No finding" (default VinDr's)."""
    class_id = np.asarray(class_id, dtype=np.int64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    nf = class_id == len(names) - 1
    boxes[nf & np.isnan(boxes).any(axis=1)] = NO_FINDING_BOX
    return pd.DataFrame({
        "image_id": np.asarray(image_id, dtype=object).astype(str).astype(object),
        "class_id": class_id,
        "class_name": np.asarray(list(names), dtype=object)[class_id],
        "score": np.asarray(score, dtype=np.float64),
        **{c: boxes[:, i] for i, c in enumerate(BOX_COLUMNS)},
    })


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read predictions.csv or a Kaggle submission, told apart by the header."""
    path = Path(path)
    if not path.is_file():
        raise BtcxrError(f"{path}: predictions file not found")
    if "PredictionString" in csv_header(path, "predictions file"):
        return read_submission(path)
    return read_predictions_csv(path)


def csv_header(path: str | Path, what: str) -> list[str]:
    """Column names of a CSV file (to tell formats apart), or a BtcxrError naming the file."""
    try:
        return [str(c).strip() for c in pd.read_csv(path, nrows=0).columns]
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise BtcxrError(f"{path}: cannot read the header of the {what}: {exc}") from None


def read_predictions_csv(path: str | Path) -> pd.DataFrame:
    """Read and check our predictions.csv; errors name the file, line and field."""
    required = ["image_id", "class_id", "score", *BOX_COLUMNS]
    df = read_table(path, required, what="predictions CSV (or a Kaggle submission: image_id,PredictionString)")
    image_id = require_text(path, df, "image_id")
    class_id, coords = class_and_boxes(path, df)
    if "class_name" in df.columns:
        name = df["class_name"].fillna("").astype(str).str.strip()
        expected = pd.Series(np.asarray(CLASS_NAMES, dtype=object)[class_id.clip(0, NO_FINDING_ID)],
                             index=df.index)
        first_bad(path, df, (name != "") & (name != expected), "class_name",
                  "class_name does not match class_id (Kaggle numbering: 0 Aortic enlargement .. 14 No finding)")
    score = to_number(path, df, "score")
    boxes = np.stack([coords[c].to_numpy() for c in BOX_COLUMNS], axis=1) if len(df) else np.zeros((0, 4))
    return _finish(image_id.to_numpy(), class_id.to_numpy(), score.to_numpy(), boxes)


def class_and_boxes(path: str | Path, df: pd.DataFrame) -> tuple[pd.Series, dict[str, pd.Series]]:
    """Checked class_id and box columns of a predictions or annotations table (class 14 rows may lack
    coordinates); errors name the file, line and field."""
    class_id = to_number(path, df, "class_id", integer=True)
    first_bad(path, df, (class_id < 0) | (class_id > NO_FINDING_ID), "class_id",
              f"class id outside 0..{NO_FINDING_ID}")
    is_box = class_id != NO_FINDING_ID
    coords = {c: to_number(path, df, c, allow_empty=True) for c in BOX_COLUMNS}
    for c in BOX_COLUMNS:
        first_bad(path, df, is_box & coords[c].isna(), c, "box coordinate missing on a finding row")
    first_bad(path, df, coords["x_max"] < coords["x_min"], "x_max", "x_max is smaller than x_min")
    first_bad(path, df, coords["y_max"] < coords["y_min"], "y_max", "y_max is smaller than y_min")
    return class_id, coords


def parse_prediction_string(text: str, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``class conf x_min y_min x_max y_max`` repeated -> (class_id int64, score, boxes (n, 4)).

    `where` prefixes error messages (file, line, field).
    """
    tokens = str(text).split()
    if len(tokens) % 6:
        raise BtcxrError(f"{where}: {len(tokens)} values, expected groups of 6 "
                         "(class conf x_min y_min x_max y_max)")
    try:
        values = np.array(tokens, dtype=np.float64).reshape(-1, 6)
    except ValueError:
        bad = next(t for t in tokens if not _is_float(t))
        raise BtcxrError(f"{where}: {bad!r} is not a number") from None
    cls, score, boxes = values[:, 0], values[:, 1], values[:, 2:]

    def check(mask: np.ndarray, problem: str) -> None:
        if mask.any():
            i = int(np.argmax(mask))
            raise BtcxrError(f"{where}: box {i + 1} ({' '.join(tokens[6 * i:6 * i + 6])}): {problem}")

    check(~np.isfinite(values).all(axis=1), "a value is not a finite number")
    check((cls % 1 != 0) | (cls < 0) | (cls > NO_FINDING_ID), f"class must be a whole number 0..{NO_FINDING_ID}")
    check(boxes[:, 2] < boxes[:, 0], "x_max is smaller than x_min")
    check(boxes[:, 3] < boxes[:, 1], "y_max is smaller than y_min")
    return cls.astype(np.int64), score, boxes


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def read_submission(path: str | Path) -> pd.DataFrame:
    """Read a Kaggle submission (image_id,PredictionString); an empty string means no box on that image."""
    df = read_table(path, SUBMISSION_COLUMNS, what="Kaggle submission")
    image_id = require_text(path, df, "image_id")
    first_bad(path, df, image_id.duplicated(), "image_id", "image listed twice")
    ids, classes, scores, boxes = [], [], [], []
    for line, img, text in zip(df.index, image_id, df["PredictionString"].fillna("")):
        if not text.strip():
            continue
        c, s, b = parse_prediction_string(text, f"{path}, line {line}, field 'PredictionString'")
        ids.append(np.full(len(c), img, dtype=object))
        classes.append(c)
        scores.append(s)
        boxes.append(b)
    if not ids:
        return empty_predictions()
    return _finish(np.concatenate(ids), np.concatenate(classes), np.concatenate(scores), np.concatenate(boxes))


def check_predictions(pred: pd.DataFrame, source: str = "predictions",
                      classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Check an in-memory predictions frame (e.g. a model's output) and return it in canonical form.

    Errors name `source`, the row (0-based position in the frame) and the field. `classes`: the finding
    classes 0..n-1 (default the 14 VinDr findings); n is "No finding", and class_name follows class_id.
    """
    names = CLASS_NAMES if classes is None else [*classes, NO_FINDING]
    nf_id = len(names) - 1
    missing = [c for c in ["image_id", "class_id", "score", *BOX_COLUMNS] if c not in pred.columns]
    if missing:
        raise BtcxrError(f"{source}: missing column(s) {', '.join(missing)}; expected {', '.join(PREDICTION_COLUMNS)}")
    if len(pred) == 0:
        return empty_predictions()
    class_id = pd.to_numeric(pred["class_id"], errors="coerce").to_numpy(dtype=np.float64)
    score = pd.to_numeric(pred["score"], errors="coerce").to_numpy(dtype=np.float64)
    boxes = np.stack([pd.to_numeric(pred[c], errors="coerce").to_numpy(dtype=np.float64) for c in BOX_COLUMNS], 1)

    def bad(mask: np.ndarray, field: str, problem: str) -> None:
        if mask.any():
            row = int(np.argmax(mask))
            fail(source, None, None, f"row {row}, field '{field}': {problem}, got {pred[field].iloc[row]!r}")

    bad(pred["image_id"].isna().to_numpy() | (pred["image_id"].astype(str).str.strip() == "").to_numpy(),
        "image_id", "empty image id")
    bad(~np.isfinite(class_id) | (class_id % 1 != 0) | (class_id < 0) | (class_id > nf_id), "class_id",
        f"expected a whole number 0..{nf_id}")
    bad(~np.isfinite(score), "score", "expected a finite number")
    is_box = class_id != nf_id
    for i, c in enumerate(BOX_COLUMNS):
        bad(is_box & ~np.isfinite(boxes[:, i]), c, "expected a finite number")
    bad(boxes[:, 2] < boxes[:, 0], "x_max", "x_max is smaller than x_min")
    bad(boxes[:, 3] < boxes[:, 1], "y_max", "y_max is smaller than y_min")
    return _finish(pred["image_id"].to_numpy(), class_id.astype(np.int64), score, boxes, names)


def add_no_finding(pred: pd.DataFrame, rule: str = "1-max", image_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """Add the Kaggle "No finding" prediction ``14 s 0 0 1 1`` to every image, for a detector without class 14.

    rule "1-max": s = 1 - (highest finding score on the image), the usual Kaggle approach (an image with
    no box gets s = 1, the competition's ``14 1 0 0 1 1``). Scores must lie in [0, 1]. `image_ids` lists
    every image to cover (default: the images in `pred`). Existing class-14 rows are replaced.
    """
    if rule != "1-max":
        raise BtcxrError(f"unknown No-finding rule {rule!r}; the rule implemented is '1-max'")
    findings = pred[pred["class_id"] != NO_FINDING_ID]
    if len(findings) and ((findings["score"] < 0) | (findings["score"] > 1)).any():
        raise BtcxrError("the '1-max' No-finding rule needs scores in [0, 1]; "
                         f"got scores from {findings['score'].min():g} to {findings['score'].max():g}")
    ids = pd.Index(pd.unique(pred["image_id"]) if image_ids is None else pd.unique(pd.Series(list(image_ids))))
    top = findings.groupby("image_id")["score"].max().reindex(ids).fillna(0.0).to_numpy()
    extra = _finish(ids.to_numpy(), np.full(len(ids), NO_FINDING_ID), 1.0 - top,
                    np.tile(NO_FINDING_BOX, (len(ids), 1)))
    parts = [f for f in (findings, extra) if len(f)]
    return pd.concat(parts, ignore_index=True) if parts else empty_predictions()


def _fmt(value: float) -> str:
    # Shortest text that reads back to the same float ("1" for 1.0, "0.1" for 0.1).
    return np.format_float_positional(float(value), trim="-")


def format_prediction_string(class_id: np.ndarray, score: np.ndarray, boxes: np.ndarray) -> str:
    """``class conf x_min y_min x_max y_max`` repeated; no boxes -> the "nothing found" string."""
    if len(class_id) == 0:
        return EMPTY_IMAGE_STRING
    return " ".join(f"{int(c)} {_fmt(s)} " + " ".join(_fmt(v) for v in b) for c, s, b in zip(class_id, score, boxes))


def write_submission(pred: pd.DataFrame, path: str | Path, image_ids: Iterable[str] | None = None) -> Path:
    """Write a Kaggle submission: one line per image of `image_ids` (default: those in `pred`), in order.

    Boxes are written as given (call :func:`add_no_finding` first for a detector's output); an image
    without any box gets ``14 1 0 0 1 1``. Numbers are written in their shortest exact form, so reading
    the file back gives the same floats.
    """
    pred = check_predictions(pred, "predictions to write")
    ids = list(pd.unique(pred["image_id"])) if image_ids is None else list(pd.unique(pd.Series(list(image_ids))))
    groups = {k: g for k, g in pred.groupby("image_id", sort=False)}
    rows = []
    for img in ids:
        g = groups.get(img)
        if g is None:
            rows.append((img, EMPTY_IMAGE_STRING))
        else:
            rows.append((img, format_prediction_string(g["class_id"].to_numpy(), g["score"].to_numpy(),
                                                       g[BOX_COLUMNS].to_numpy())))
    missing = set(groups) - set(ids)
    if missing:
        raise BtcxrError(f"{len(missing)} image(s) with predictions are not in the image list, e.g. {sorted(missing)[0]}")
    path = Path(path)
    write_csv(path, pd.DataFrame(rows, columns=SUBMISSION_COLUMNS))
    return path


def write_predictions(pred: pd.DataFrame, path: str | Path) -> Path:
    """Write our predictions.csv (PREDICTION_COLUMNS), floats in their exact shortest form."""
    pred = check_predictions(pred, "predictions to write")
    path = Path(path)
    write_csv(path, pred[PREDICTION_COLUMNS])  # floats as repr: exact
    return path
