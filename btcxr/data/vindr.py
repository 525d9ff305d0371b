"""VinDr-CXR annotations and image listing (DICOM, or PNG/JPEG copies), for the Kaggle and the PhysioNet layouts.

Every reader returns one table of radiologist annotations with the columns
``image_id, rad_id, class_id, class_name, x_min, y_min, x_max, y_max``: one row per box, plus one
"No finding" row (NaN coordinates) per reader who found nothing. Coordinates are in original DICOM pixels.

Label sets (``label_set``):

* ``"kaggle"`` (default): the 14 Kaggle classes, ids 0..13 in :data:`btcxr.data.classes.VINDR_CLASSES`
  order, "No finding" = 14.
* ``"local"``: the 22 local labels of VinDr-CXR 1.0.0, ids 0..21 in
  :data:`btcxr.data.classes.VINDR_LOCAL_LABELS` order, "No finding" = 22.

PhysioNet files carry no class_id: it is derived from the name. With ``label_set="kaggle"`` the 8 local
labels outside the Kaggle 14 are dropped (count logged); a reader left with no row on an image then
gets a "No finding" row, so every image keeps all its readers (fusion's agreement scores count them).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from btcxr.data.classes import (
    NO_FINDING,
    VINDR_CLASS_ID,
    VINDR_CLASSES,
    VINDR_GLOBAL_LABELS,
    VINDR_LOCAL_LABELS,
)
from btcxr.data.csvcheck import first_bad, read_table, require_text, to_number
from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)

KAGGLE_COLUMNS = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
ANNOTATION_COLUMNS = ["image_id", "rad_id", "class_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
BOX_COLUMNS = ["x_min", "y_min", "x_max", "y_max"]
LABEL_SETS = ("kaggle", "local")
# PhysioNet test files carry the 5-radiologist consensus and no rad_id column.
CONSENSUS_READER = "consensus"
DICOM_SUFFIXES = (".dicom", ".dcm")
# Re-encoded copies (Kaggle users' PNG/JPEG sets), at original size or resized with a <split>_meta.csv.
IMAGE_SUFFIXES = (*DICOM_SUFFIXES, ".png", ".jpg", ".jpeg")
META_COLUMNS = ["image_id", "dim0", "dim1"]  # dim0 = rows (height), dim1 = columns (width) of the original
# image_labels_test.csv spells one global label in the singular.
_LABEL_ALIASES = {"Other disease": "Other diseases"}


def class_names(label_set: str = "kaggle") -> list[str]:
    """Class names indexed by class_id for a label set; the last one is "No finding"."""
    if label_set == "kaggle":
        return [*VINDR_CLASSES, NO_FINDING]
    if label_set == "local":
        return [*VINDR_LOCAL_LABELS, NO_FINDING]
    raise BtcxrError(f"unknown VinDr label set {label_set!r}; choose one of {', '.join(LABEL_SETS)}")


def no_finding_id(label_set: str = "kaggle") -> int:
    """class_id of "No finding" in a label set (14 for kaggle, 22 for local)."""
    return len(class_names(label_set)) - 1


def read_kaggle_train_csv(path: str | Path, label_set: str = "kaggle", *, on_duplicate: str = "stop",
                          dropped: list[dict[str, str]] | None = None) -> pd.DataFrame:
    """Read and validate the Kaggle ``train.csv`` (67,914 rows for the real file).

    Checks, each failing with a BtcxrError naming file, line and field: all columns present; image_id
    and rad_id non-empty; class_name known and matching class_id; box rows ("No finding" excluded) with
    four non-negative numbers and x_max > x_min, y_max > y_min. Coordinates on "No finding" rows are
    set to NaN (some re-exports write ``0 0 1 1`` there). With ``label_set="local"`` the ids are renumbered
    to the local label set. A file without rows is an error. A row that repeats an earlier one exactly
    (or the header) would count one reader twice in the fusion: an error naming the lines, or with
    ``on_duplicate="skip"`` dropped, logged and appended to ``dropped`` (image_id, path, reason).
    """
    names = class_names(label_set)
    df = read_table(path, KAGGLE_COLUMNS, what="VinDr train.csv")
    df = _check_rows(path, df, "VinDr train.csv", on_duplicate, dropped)
    image_id = require_text(path, df, "image_id")
    rad_id = require_text(path, df, "rad_id")
    class_name = df["class_name"].astype(str).str.strip()
    first_bad(path, df, ~class_name.isin(list(VINDR_CLASS_ID)), "class_name",
              f"unknown class name (expected one of: {', '.join(VINDR_CLASS_ID)})")
    class_id = to_number(path, df, "class_id", integer=True)
    first_bad(path, df, (class_id < 0) | (class_id > 14), "class_id", "class id outside 0..14")
    expected = class_name.map(VINDR_CLASS_ID)
    first_bad(path, df, class_id != expected, "class_id",
              "class_id does not match class_name (Kaggle numbering: 0 Aortic enlargement .. 14 No finding)")
    out = pd.DataFrame({"image_id": image_id, "rad_id": rad_id, "class_id": class_id, "class_name": class_name})
    boxes = _read_boxes(path, df, class_name != NO_FINDING)
    out = pd.concat([out, boxes], axis=1)
    if label_set != "kaggle":
        out["class_id"] = out["class_name"].map({n: i for i, n in enumerate(names)}).astype(np.int64)
    return out[ANNOTATION_COLUMNS].reset_index(drop=True)


def read_physionet_annotations(path: str | Path, label_set: str = "kaggle", *, on_duplicate: str = "stop",
                               dropped: list[dict[str, str]] | None = None) -> pd.DataFrame:
    """Read ``annotations_train.csv`` / ``annotations_test.csv`` of VinDr-CXR 1.0.0 (PhysioNet).

    Columns ``image_id, rad_id, class_name, x_min, y_min, x_max, y_max``; a file without ``rad_id`` (the
    test consensus) gets rad_id "consensus". class_id is derived from the name in ``label_set`` (see the
    module docstring for the ids and for what ``"kaggle"`` drops). Same checks as the Kaggle reader
    (repeated rows and ``on_duplicate`` included).
    """
    names = class_names(label_set)
    df = read_table(path, ["image_id", "class_name", *BOX_COLUMNS], what="VinDr annotations file")
    df = _check_rows(path, df, "VinDr annotations file", on_duplicate, dropped)
    image_id = require_text(path, df, "image_id")
    if "rad_id" in df.columns:
        rad_id = require_text(path, df, "rad_id")
    else:
        rad_id = pd.Series(CONSENSUS_READER, index=df.index, dtype=object)
    class_name = df["class_name"].astype(str).str.strip()
    known = [*VINDR_LOCAL_LABELS, NO_FINDING]
    first_bad(path, df, ~class_name.isin(known), "class_name",
              f"unknown local label (expected one of: {', '.join(known)})")
    boxes = _read_boxes(path, df, class_name != NO_FINDING)
    out = pd.DataFrame({"image_id": image_id, "rad_id": rad_id, "class_name": class_name})
    out = pd.concat([out, boxes], axis=1)
    keep = out["class_name"].isin(names)
    if not keep.all():
        dropped = out[~keep]
        log.info("%s: dropped %d annotation rows with labels outside the %s label set (%s)", path,
                 len(dropped), label_set, ", ".join(sorted(dropped["class_name"].unique())))
        out = out[keep]
        # Readers whose every row was dropped found nothing in this label set.
        pairs_before = dropped[["image_id", "rad_id"]].drop_duplicates()
        pairs_after = out[["image_id", "rad_id"]].drop_duplicates()
        lost = pairs_before.merge(pairs_after, how="left", indicator=True)
        lost = lost[lost["_merge"] == "left_only"][["image_id", "rad_id"]]
        if len(lost):
            filler = lost.assign(class_name=NO_FINDING, **{c: np.nan for c in BOX_COLUMNS})
            out = pd.concat([out, filler], ignore_index=True)
    out["class_id"] = out["class_name"].map({n: i for i, n in enumerate(names)}).astype(np.int64)
    return out[ANNOTATION_COLUMNS].reset_index(drop=True)


def read_physionet_image_labels(path: str | Path) -> pd.DataFrame:
    """Read ``image_labels_train.csv`` / ``image_labels_test.csv``: image_id, rad_id and 28 0/1 columns.

    The label columns come back in :data:`VINDR_LOCAL_LABELS` + :data:`VINDR_GLOBAL_LABELS` order as int8;
    "Other disease" (test file spelling) is renamed "Other diseases"; a file without rad_id (the test
    consensus) gets rad_id "consensus". Values other than 0/1 fail with file, line and field.
    """
    labels = [*VINDR_LOCAL_LABELS, *VINDR_GLOBAL_LABELS]
    df = read_table(path, ["image_id"], what="VinDr image labels file")
    df = df.rename(columns=_LABEL_ALIASES)
    missing = [c for c in labels if c not in df.columns]
    if missing:
        raise BtcxrError(f"{path}: missing label column(s) {', '.join(repr(c) for c in missing)} in the header")
    out = pd.DataFrame({"image_id": require_text(path, df, "image_id")})
    out["rad_id"] = require_text(path, df, "rad_id") if "rad_id" in df.columns else CONSENSUS_READER
    for name in labels:
        values = to_number(path, df, name)
        first_bad(path, df, ~values.isin([0.0, 1.0]), name, "label must be 0 or 1")
        out[name] = values.astype(np.int8)
    return out.reset_index(drop=True)


def read_meta_csv(path: str | Path) -> pd.DataFrame:
    """Read a ``train_meta.csv`` (image_id, dim0 = rows, dim1 = columns of the original image): the original
    size of resized PNG/JPEG copies. Returns image_id, orig_width, orig_height; an id given twice, or a
    size that is not a positive whole number, is an error naming the line."""
    df = read_table(path, META_COLUMNS, what="VinDr image size file (image_id,dim0,dim1)")
    image_id = require_text(path, df, "image_id")
    first_bad(path, df, image_id.duplicated(), "image_id", "image id given twice")
    rows = to_number(path, df, "dim0", integer=True, positive=True)
    cols = to_number(path, df, "dim1", integer=True, positive=True)
    return pd.DataFrame({"image_id": image_id.to_numpy(), "orig_width": cols.to_numpy(),
                         "orig_height": rows.to_numpy()})


@dataclass
class VindrSource:
    """What :func:`load_vindr` found: the layout, the images of a split and their annotations."""

    layout: str  # "kaggle" or "physionet"
    # image_id, path (absolute), sorted by image_id; orig_width, orig_height (NaN for DICOMs) when a
    # size file gives the original size of PNG/JPEG copies
    images: pd.DataFrame
    annotations: pd.DataFrame | None  # ANNOTATION_COLUMNS; None where the layout ships none (Kaggle test)
    image_labels: pd.DataFrame | None = None  # PhysioNet image_labels_<split>.csv when present
    root: Path | None = None
    dropped_rows: list[dict[str, str]] = field(default_factory=list)  # repeated rows dropped (on_duplicate="skip")
    missing_images: list[str] = field(default_factory=list)  # annotated ids without a file (allow_missing_images)
    meta_csv: Path | None = None  # the size file used, if any


def load_vindr(root: str | Path, split: str = "train", label_set: str = "kaggle", *,
               on_duplicate: str = "stop", allow_missing_images: bool = False,
               meta_csv: str | Path | None = None) -> VindrSource:
    """Find a VinDr-CXR copy below ``root`` and read one split.

    Layout: ``root/train.csv`` -> Kaggle (``train/``, ``test/``; test has no annotations); ``root/annotations/``
    -> PhysioNet 1.0.0 (``annotations/annotations_<split>.csv`` and ``image_labels_<split>.csv``). Images
    are ``root/<split>/<image_id>`` + ``.dicom``/``.dcm``/``.png``/``.jpg``/``.jpeg``; two files for one id
    is an error. PNG/JPEG copies may be resized: their original size then comes from ``meta_csv``, or from
    ``root/<split>_meta.csv`` when it exists (image_id, dim0 = rows, dim1 = columns); with a size file in
    use, a PNG/JPEG it does not list is an error. An annotated image without a file is an error, or with
    ``allow_missing_images`` dropped with its rows, counted and returned in ``missing_images``. Image files
    without annotations are kept and counted in the log. ``on_duplicate`` (stop | skip): what a row
    repeated exactly in the annotation file does (see :func:`read_kaggle_train_csv`).
    """
    root = Path(root)
    if split not in ("train", "test"):
        raise BtcxrError(f"unknown VinDr split {split!r}; choose train or test")
    class_names(label_set)  # validates label_set early
    kaggle_csv = root / "train.csv"
    physio_dir = root / "annotations"
    if kaggle_csv.is_file():
        layout = "kaggle"
        if physio_dir.is_dir():
            log.info("%s holds both train.csv and annotations/: using the Kaggle layout", root)
    elif physio_dir.is_dir():
        layout = "physionet"
    else:
        raise BtcxrError(
            f"{root}: no VinDr-CXR copy found; looked for {kaggle_csv} (Kaggle layout) and "
            f"{physio_dir}/ (PhysioNet layout with annotations_train.csv)"
        )
    images = _list_images(root / split)
    meta_path = Path(meta_csv) if meta_csv else root / f"{split}_meta.csv"
    if meta_csv and not meta_path.is_file():
        raise BtcxrError(f"--meta-csv {meta_csv}: file not found (expected image_id,dim0,dim1)")
    if meta_path.is_file():
        images = _with_original_sizes(images, meta_path)
    else:
        meta_path = None
    annotations = image_labels = None
    dropped: list[dict[str, str]] = []
    if layout == "kaggle":
        if split == "train":
            annotations = read_kaggle_train_csv(kaggle_csv, label_set, on_duplicate=on_duplicate, dropped=dropped)
    else:
        ann_path = physio_dir / f"annotations_{split}.csv"
        if not ann_path.is_file():
            raise BtcxrError(f"{ann_path}: annotation file of the PhysioNet layout not found")
        annotations = read_physionet_annotations(ann_path, label_set, on_duplicate=on_duplicate, dropped=dropped)
        labels_path = physio_dir / f"image_labels_{split}.csv"
        if labels_path.is_file():
            image_labels = read_physionet_image_labels(labels_path)
    missing: list[str] = []
    if annotations is not None:
        have = set(images["image_id"])
        annotated = pd.unique(annotations["image_id"])
        missing = [i for i in annotated if i not in have]
        if missing and not allow_missing_images:
            raise BtcxrError(
                f"{root / split}: {len(missing)} of {len(annotated)} annotated images have no image file "
                f"(e.g. {', '.join(missing[:5])}); pass --allow-missing-images to leave them out (counted and "
                "listed in errors.csv)"
            )
        if missing:
            log.warning("%s: %d of %d annotated images have no image file; left out (e.g. %s)", root / split,
                        len(missing), len(annotated), missing[0])
            annotations = annotations[annotations["image_id"].isin(have)].reset_index(drop=True)
            if image_labels is not None:
                image_labels = image_labels[image_labels["image_id"].isin(have)].reset_index(drop=True)
        extra = len(have) - (len(annotated) - len(missing))
        if extra:
            log.info("%s: %d image files have no annotation rows", root / split, extra)
    log.info("VinDr %s layout, %s split: %d image files", layout, split, len(images))
    return VindrSource(layout=layout, images=images, annotations=annotations, image_labels=image_labels,
                       root=root.resolve(), dropped_rows=dropped, missing_images=missing, meta_csv=meta_path)


def check_boxes_inside(ann: pd.DataFrame, sizes: pd.DataFrame, source: str, hint: str = "") -> None:
    """Fail when a box leaves its image (1 px tolerance) or an annotated image has no size.

    ``sizes`` has columns image_id, orig_width, orig_height. The message names ``source`` (the file the
    boxes came from), the image, the box and the image size, then ``hint``.
    """
    boxes = ann[ann[BOX_COLUMNS].notna().all(axis=1)]
    if boxes.empty:
        return
    merged = boxes.merge(sizes[["image_id", "orig_width", "orig_height"]], on="image_id", how="left",
                         validate="many_to_one")
    no_size = merged["orig_width"].isna() | merged["orig_height"].isna()
    if no_size.any():
        ids = pd.unique(merged.loc[no_size, "image_id"])
        raise BtcxrError(f"{source}: no image size known for {len(ids)} annotated image(s), e.g. {ids[0]}")
    tol = 1.0
    bad = (
        (merged["x_min"] < -tol) | (merged["y_min"] < -tol)
        | (merged["x_max"] > merged["orig_width"] + tol) | (merged["y_max"] > merged["orig_height"] + tol)
    )
    if bad.any():
        row = merged[bad].iloc[0]
        raise BtcxrError(
            f"{source}: image {row['image_id']}: box {row.get('class_name', '')}"
            f"{' by ' + str(row['rad_id']) if 'rad_id' in row else ''} "
            f"[{row['x_min']:g}, {row['y_min']:g}, {row['x_max']:g}, {row['y_max']:g}] lies outside the "
            f"{int(row['orig_width'])} x {int(row['orig_height'])} image ({int(bad.sum())} such box(es)){hint}"
        )


# ----------------------------------------------------------------------------------------------------


def _check_rows(path: str | Path, df: pd.DataFrame, what: str, on_duplicate: str,
                dropped: list[dict[str, str]] | None) -> pd.DataFrame:
    """No rows at all is an error; a row repeating the header or an earlier row exactly is an error, or
    with on_duplicate="skip" dropped (and recorded in `dropped`). Index = line numbers (read_table)."""
    if on_duplicate not in ("stop", "skip"):
        raise BtcxrError(f"on_duplicate {on_duplicate!r}: expected stop or skip")
    if df.empty:
        raise BtcxrError(f"{path}: no rows, only a header; the {what} holds one row per reader and finding")
    header = pd.Series(list(df.columns), index=df.columns)
    is_header = (df == header).all(axis=1)
    groups = df.groupby(list(df.columns), sort=False, dropna=False).ngroup()
    first_line = pd.Series(df.index, index=df.index).groupby(groups.to_numpy()).transform("first")
    repeat = (first_line != df.index) | is_header
    if not repeat.any():
        return df
    lines = df.index[repeat.to_numpy()]
    line = int(lines[0])
    first = "the header" if is_header.loc[line] else f"line {int(first_line.loc[line])}"
    total = int(repeat.sum())
    whole = (" (the whole file seems to be in it twice)" if total * 2 >= len(df) else "")
    problem = (f"{total} row(s) repeat an earlier row exactly{whole}, e.g. line {line} repeats {first}; a "
               "repeated reader row changes the fused boxes and their scores")
    if on_duplicate == "stop":
        raise BtcxrError(f"{path}: {problem}. Remove the repeats (`btcxr prepare --on-error skip` drops them "
                         "and lists them in errors.csv)")
    log.warning("%s: dropped %d repeated row(s) (e.g. line %d repeats %s)", path, total, line, first)
    if dropped is not None:
        for k in lines:
            k = int(k)
            again = "the header" if is_header.loc[k] else f"line {int(first_line.loc[k])}"
            dropped.append({"image_id": str(df.at[k, "image_id"]), "path": f"{path}",
                            "reason": f"line {k} repeats {again} exactly; row dropped"})
    return df[~repeat]


def _read_boxes(path: str | Path, df: pd.DataFrame, is_box: pd.Series) -> pd.DataFrame:
    """Coordinates: required, non-negative and ordered on box rows; NaN on "No finding" rows."""
    coords = {c: to_number(path, df, c, allow_empty=True) for c in BOX_COLUMNS}
    for c in BOX_COLUMNS:
        first_bad(path, df, is_box & coords[c].isna(), c, "box coordinate missing on a finding row")
        first_bad(path, df, is_box & (coords[c] < 0), c, "box coordinate must be >= 0")
    first_bad(path, df, is_box & (coords["x_max"] <= coords["x_min"]), "x_max", "x_max must be greater than x_min")
    first_bad(path, df, is_box & (coords["y_max"] <= coords["y_min"]), "y_max", "y_max must be greater than y_min")
    out = pd.DataFrame(coords)
    stray = ~is_box & out.notna().any(axis=1)
    if stray.any():
        log.info("%s: ignored coordinates on %d 'No finding' rows", path, int(stray.sum()))
        out.loc[~is_box, BOX_COLUMNS] = np.nan
    return out


def _list_images(folder: Path) -> pd.DataFrame:
    if not folder.is_dir():
        raise BtcxrError(f"{folder}: image folder not found (expected the split's <image_id>.dicom files there, "
                         "or .png/.jpg copies)")
    rows: dict[str, str] = {}
    with os.scandir(folder) as it:
        for entry in sorted(it, key=lambda e: e.name):
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                if stem in rows:
                    raise BtcxrError(f"{folder}: two image files for image {stem}: {rows[stem]} and "
                                     f"{os.path.abspath(entry.path)}; keep one")
                rows[stem] = os.path.abspath(entry.path)
    if not rows:
        raise BtcxrError(f"{folder}: no image files found (looked for {', '.join(IMAGE_SUFFIXES)})")
    images = pd.DataFrame({"image_id": list(rows), "path": list(rows.values())})
    return images.sort_values("image_id", kind="stable").reset_index(drop=True)


def _with_original_sizes(images: pd.DataFrame, meta_path: Path) -> pd.DataFrame:
    """images + orig_width, orig_height from the size file, for PNG/JPEG copies (DICOMs carry their own)."""
    meta = read_meta_csv(meta_path)
    out = images.merge(meta, on="image_id", how="left", validate="one_to_one")
    is_dicom = out["path"].str.lower().str.endswith(DICOM_SUFFIXES)
    out.loc[is_dicom, ["orig_width", "orig_height"]] = np.nan
    unsized = ~is_dicom & out["orig_width"].isna()
    if unsized.any():
        raise BtcxrError(f"{out.loc[unsized, 'path'].iloc[0]}: not listed in {meta_path}, so its original size is "
                         f"unknown and its boxes cannot be scaled ({int(unsized.sum())} such image(s)); add its "
                         "image_id,dim0,dim1 row")
    log.info("%s: original sizes of %d PNG/JPEG images", meta_path, int((~is_dicom).sum()))
    return out


__all__ = [
    "ANNOTATION_COLUMNS",
    "KAGGLE_COLUMNS",
    "VindrSource",
    "check_boxes_inside",
    "class_names",
    "load_vindr",
    "no_finding_id",
    "read_meta_csv",
    "read_kaggle_train_csv",
    "read_physionet_annotations",
    "read_physionet_image_labels",
]
