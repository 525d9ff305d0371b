"""NIH ChestX-ray14: the label index, the box list, the official split lists, and finding the PNGs."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from btcxr.data.classes import NIH_FINDINGS, NIH_LABELS, NIH_NO_FINDING
from btcxr.data.csvcheck import fail, first_bad, read_table, require_text, to_number
from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)

DATA_ENTRY_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")  # preferred first
BBOX_FILE = "BBox_List_2017.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"

# File header -> our column. The brackets in "OriginalImage[Width,Height]" split into two odd names.
_ENTRY_COLUMNS = {
    "Image Index": "image_id",
    "Finding Labels": "labels",
    "Follow-up #": "follow_up",
    "Patient ID": "patient_id",
    "Patient Age": "age",
    "Patient Gender": "sex",
    "View Position": "view",
    "OriginalImage[Width": "orig_width",
    "Height]": "orig_height",
    "OriginalImagePixelSpacing[x": "spacing_x",
    "y]": "spacing_y",
}
ENTRY_COLUMNS = list(_ENTRY_COLUMNS.values())
_BBOX_COLUMNS = {"Image Index": "image_id", "Finding Label": "class_name", "Bbox [x": "x", "y": "y", "w": "w",
                 "h]": "h"}
# DICOM age string units (the 2017 file writes "058Y"): value / unit-per-year, floored to whole years.
_AGE_UNITS_PER_YEAR = {"": 1.0, "Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}


def read_data_entry(path: str | Path) -> pd.DataFrame:
    """Read ``Data_Entry_2017_v2020.csv`` or ``Data_Entry_2017.csv`` (plain or .gz).

    Returns ``image_id, labels, follow_up, patient_id, age, sex, view, orig_width, orig_height,
    spacing_x, spacing_y``. ``labels`` is the file's pipe-separated text. The 2017 file's trailing
    comma (an extra unnamed column) is ignored and its ages like ``058Y`` become 58 (``M``/``W``/``D``
    ages are converted to whole years). Checked, with file, line and field in the error: every label
    is one of the 15 NIH labels and "No Finding" stands alone; ids non-empty and unique; numbers
    whole and non-negative (sizes and spacings positive); sex M/F; view PA/AP.
    """
    df = read_table(path, list(_ENTRY_COLUMNS), what="NIH Data_Entry file")
    if df.empty:
        raise BtcxrError(f"{path}: no rows, only a header; the NIH Data_Entry file lists one image a line")
    extra = [c for c in df.columns if c not in _ENTRY_COLUMNS]
    if extra:
        filled = [c for c in extra if not (df[c].fillna("").astype(str).str.strip() == "").all()]
        if filled:
            fail(path, None, filled[0], "unexpected column with values in the Data_Entry file")
    out = pd.DataFrame(index=df.index)
    out["image_id"] = require_text(path, df, "Image Index")
    first_bad(path, df, out["image_id"].duplicated(), "Image Index", "image listed twice")
    labels = require_text(path, df, "Finding Labels")
    _check_labels(path, df, labels, "Finding Labels")
    out["labels"] = labels
    out["follow_up"] = to_number(path, df, "Follow-up #", integer=True, min_value=0)
    out["patient_id"] = to_number(path, df, "Patient ID", integer=True, min_value=0)
    out["age"] = _parse_age(path, df, "Patient Age")
    out["sex"] = df["Patient Gender"].astype(str).str.strip().str.upper()
    first_bad(path, df, ~out["sex"].isin(["M", "F"]), "Patient Gender", "expected M or F")
    out["view"] = df["View Position"].astype(str).str.strip().str.upper()
    first_bad(path, df, ~out["view"].isin(["PA", "AP"]), "View Position", "expected PA or AP")
    out["orig_width"] = to_number(path, df, "OriginalImage[Width", integer=True, positive=True)
    out["orig_height"] = to_number(path, df, "Height]", integer=True, positive=True)
    out["spacing_x"] = to_number(path, df, "OriginalImagePixelSpacing[x", positive=True)
    out["spacing_y"] = to_number(path, df, "y]", positive=True)
    return out.reset_index(drop=True)


def labels_multihot(labels: pd.Series) -> np.ndarray:
    """(N, 15) float32 multi-hot matrix of pipe-separated NIH labels, columns in ``NIH_LABELS`` order."""
    dummies = labels.astype(str).str.get_dummies(sep="|")
    unknown = [c for c in dummies.columns if c not in NIH_LABELS]
    if unknown:
        raise BtcxrError(f"unknown NIH label(s) {', '.join(repr(u) for u in unknown)}; expected {', '.join(NIH_LABELS)}")
    return dummies.reindex(columns=NIH_LABELS, fill_value=0).to_numpy(dtype=np.float32)


def read_bbox_list(path: str | Path) -> pd.DataFrame:
    """Read ``BBox_List_2017.csv``: ``image_id, class_name, x_min, y_min, x_max, y_max`` in 1024-px coordinates.

    The file gives top-left x, y and width, height; "Infiltrate" is renamed "Infiltration" (the label
    name of the Data_Entry file). Class names must be NIH findings; w and h positive; x, y >= 0.
    """
    df = read_table(path, list(_BBOX_COLUMNS), what="NIH bounding box list")
    image_id = require_text(path, df, "Image Index")
    name = df["Finding Label"].astype(str).str.strip().replace({"Infiltrate": "Infiltration"})
    first_bad(path, df, ~name.isin(NIH_FINDINGS), "Finding Label",
              f"unknown finding (expected one of: {', '.join(NIH_FINDINGS)})")
    x = to_number(path, df, "Bbox [x", min_value=0)
    y = to_number(path, df, "y", min_value=0)
    w = to_number(path, df, "w", positive=True)
    h = to_number(path, df, "h]", positive=True)
    out = pd.DataFrame({"image_id": image_id, "class_name": name, "x_min": x, "y_min": y, "x_max": x + w,
                        "y_max": y + h})
    return out.reset_index(drop=True)


def read_split_list(path: str | Path) -> list[str]:
    """Read ``train_val_list.txt`` / ``test_list.txt``: one image file name a line (blank lines skipped)."""
    return list(read_split_list_lines(path))


def read_split_list_lines(path: str | Path) -> dict[str, int]:
    """:func:`read_split_list` as name -> line number (1-based), in file order."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BtcxrError(f"{path}: cannot read the split list ({exc})") from None
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            continue
        if "," in name or " " in name:
            fail(path, number, "image", f"expected one file name a line, got {name!r}")
        if name in seen:
            fail(path, number, "image", f"{name} already listed on line {seen[name]}")
        seen[name] = number
    return seen


@dataclass
class NihSource:
    """What :func:`load_nih` found.

    ``index``: :func:`read_data_entry` columns plus ``path`` (absolute, str) and ``official_split``
    ("train_val" / "test", or "" without the lists). ``bboxes``: :func:`read_bbox_list` or None.
    """

    index: pd.DataFrame
    bboxes: pd.DataFrame | None
    data_entry_path: Path | None = None


def load_nih(root: str | Path, require_images: bool = True) -> NihSource:
    """Find the NIH ChestX-ray14 files anywhere below ``root`` and join them into one index.

    One walk of ``root`` finds the Data_Entry file (the v2020 one preferred), the split lists and the
    box list (both optional), and every ``*.png`` by name, so the NIH ``images/`` layout and Kaggle's
    ``images_001/images/`` both work. Listed images that are missing are an error when
    ``require_images`` (a few names are shown), otherwise they are dropped with a logged count;
    PNGs not in the index are ignored with a logged count.
    """
    root = Path(root)
    if not root.is_dir():
        raise BtcxrError(f"{root}: NIH ChestX-ray14 folder not found")
    wanted = {*DATA_ENTRY_FILES, BBOX_FILE, TRAIN_VAL_LIST, TEST_LIST}
    found: dict[str, list[str]] = {}
    pngs: dict[str, str] = {}
    duplicates = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()  # deterministic: the first copy of a duplicated file wins
        for name in sorted(filenames):
            if name.lower().endswith(".png"):
                if name in pngs:
                    duplicates += 1
                else:
                    pngs[name] = os.path.abspath(os.path.join(dirpath, name))
            elif name in wanted:
                found.setdefault(name, []).append(os.path.join(dirpath, name))

    entry_name = next((n for n in DATA_ENTRY_FILES if n in found), None)
    if entry_name is None:
        raise BtcxrError(f"{root}: no {' or '.join(DATA_ENTRY_FILES)} found below this folder")
    entry_path = Path(_pick(found[entry_name]))
    index = read_data_entry(entry_path)
    log.info("NIH index %s: %d images", entry_path, len(index))
    if duplicates:
        log.warning("%s: %d PNG names occur more than once below the root; the first copy is used", root, duplicates)

    index["path"] = index["image_id"].map(pngs)
    missing = index["path"].isna()
    if missing.any():
        names = index.loc[missing, "image_id"].tolist()
        if require_images:
            raise BtcxrError(
                f"{root}: {len(names)} of {len(index)} images listed in {entry_path.name} were not found below "
                f"this folder (e.g. {', '.join(names[:5])}); pass --allow-missing-images to drop them instead"
            )
        log.warning("%s: %d of %d listed images not found; dropped", root, len(names), len(index))
        index = index[~missing].reset_index(drop=True)
    index["path"] = index["path"].astype(str)
    extra = len(pngs) - int((~missing).sum())
    if extra > 0:
        log.info("%s: %d PNGs below the root are not in the index; ignored", root, extra)

    index["official_split"] = _official_split(index, found, require_images)
    bboxes = None
    if BBOX_FILE in found:
        bbox_path = Path(_pick(found[BBOX_FILE]))
        bboxes = read_bbox_list(bbox_path)
        unknown = ~bboxes["image_id"].isin(index["image_id"])
        if unknown.any():
            if require_images or missing.sum() == 0:
                raise BtcxrError(
                    f"{bbox_path}: {int(unknown.sum())} boxes on images not in {entry_path.name} "
                    f"(e.g. {bboxes.loc[unknown, 'image_id'].iloc[0]})"
                )
            log.warning("%s: dropped %d boxes on missing images", bbox_path, int(unknown.sum()))
            bboxes = bboxes[~unknown].reset_index(drop=True)
    return NihSource(index=index, bboxes=bboxes, data_entry_path=entry_path)


def _check_labels(path: str | Path, df: pd.DataFrame, labels: pd.Series, field: str) -> None:
    parts = labels.str.split("|")
    exploded = parts.explode().str.strip()
    bad = ~exploded.isin(NIH_LABELS)
    if bad.any():
        line = exploded.index[int(np.argmax(bad.to_numpy()))]
        fail(path, int(line), field, f"unknown label {exploded[bad].iloc[0]!r} (expected: {', '.join(NIH_LABELS)})")
    n_parts = parts.str.len()
    has_nf = exploded.eq(NIH_NO_FINDING).groupby(level=0).any().reindex(labels.index)
    first_bad(path, df, has_nf & (n_parts > 1), field, f"{NIH_NO_FINDING!r} combined with findings")
    n_unique = exploded.groupby(level=0).nunique().reindex(labels.index)
    first_bad(path, df, n_unique != n_parts, field, "a label repeated")


def _parse_age(path: str | Path, df: pd.DataFrame, field: str) -> pd.Series:
    text = df[field].fillna("").astype(str).str.strip().str.upper()
    parts = text.str.extract(r"^(\d+(?:\.\d+)?)([YMWD]?)$")
    first_bad(path, df, parts[0].isna(), field, "expected an age like 58 or 058Y")
    per_year = parts[1].map(_AGE_UNITS_PER_YEAR)
    return np.floor(parts[0].astype(np.float64) / per_year).astype(np.int64)


def _official_split(index: pd.DataFrame, found: dict[str, list[str]], require_images: bool = True) -> pd.Series:
    """train_val / test / "" per indexed image. A listed name that is not an indexed image is an error
    naming the list and the line; without ``require_images`` (--allow-missing-images) a logged count."""
    if TRAIN_VAL_LIST not in found or TEST_LIST not in found:
        log.info("official split lists (%s, %s) not both found: official_split left empty", TRAIN_VAL_LIST, TEST_LIST)
        return pd.Series("", index=index.index, dtype=object)
    train_path, test_path = _pick(found[TRAIN_VAL_LIST]), _pick(found[TEST_LIST])
    indexed = set(index["image_id"])
    lists = {}
    for list_path in (train_path, test_path):
        lines = read_split_list_lines(list_path)
        unknown = [(name, line) for name, line in lines.items() if name not in indexed]
        if unknown:
            name, line = unknown[0]
            if require_images:
                more = f" ({len(unknown) - 1} more such line(s))" if len(unknown) > 1 else ""
                fail(list_path, line, "image", f"{name} is not an image of the index (not in the Data_Entry file, "
                     f"or its PNG is missing){more}; pass --allow-missing-images to leave such names out")
            log.warning("%s: %d listed name(s) are not indexed images (e.g. %s on line %d); left out", list_path,
                        len(unknown), name, line)
        lists[list_path] = set(lines)
    train_val, test = lists[train_path], lists[test_path]
    both = train_val & test
    if both:
        raise BtcxrError(f"{test_path}: {len(both)} images are also in {train_path} (e.g. {sorted(both)[0]})")
    split = np.where(index["image_id"].isin(test), "test", np.where(index["image_id"].isin(train_val), "train_val", ""))
    unlisted = int((split == "").sum())
    if unlisted:
        log.warning("%d indexed images are in neither split list; official_split is empty for them", unlisted)
    return pd.Series(split, index=index.index, dtype=object)


def _pick(paths: list[str]) -> str:
    """The shallowest copy of a file found more than once (then alphabetical)."""
    chosen = min(paths, key=lambda p: (p.count(os.sep), p))
    if len(paths) > 1:
        log.info("found %d copies of %s; using %s", len(paths), os.path.basename(chosen), chosen)
    return chosen
