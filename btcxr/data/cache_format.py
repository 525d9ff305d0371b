"""The files of a prepared cache: names, columns, atomic writes, and readers that check them.

CACHE/
  prepare.json      settings (dataset, root, size, bits, fusion, split options, versions) + counts
  images/*.png      single-channel, longest side = size (8- or 16-bit)
  manifest.csv      MANIFEST_COLUMNS
  annotations.csv   (VinDr) ANNOTATION_COLUMNS, original pixel frame
  coco_<part>.json  (VinDr) COCO detection files in the cache frame
  splits/*.csv      saved splits
  errors.csv        files skipped with --on-error skip
  journal.csv       one line per finished image: what makes a killed prepare resumable
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from btcxr.errors import BtcxrError

MANIFEST = "manifest.csv"
ANNOTATIONS = "annotations.csv"
NIH_BOXES = "nih_boxes.csv"  # NIH BBox_List_2017 boxes of the cached images, original pixels
SETTINGS = "prepare.json"
ERRORS = "errors.csv"
JOURNAL = "journal.csv"
IMAGES_DIR = "images"

MANIFEST_COLUMNS = ["image_id", "file", "patient_id", "split", "labels", "orig_width", "orig_height", "scale"]
ANNOTATION_COLUMNS = ["image_id", "class_id", "class_name", "x_min", "y_min", "x_max", "y_max", "score"]
JOURNAL_COLUMNS = ["image_id", "file", "orig_width", "orig_height", "width", "height", "scale"]
ERROR_COLUMNS = ["image_id", "path", "reason"]
TEMP_MARK = ".tmp"


# ----------------------------------------------------------------------------------------------- writing
def temp_path(path: Path) -> Path:
    """A temporary name next to `path` (same directory, so os.replace is atomic), hidden and marked."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARK in name


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def write_csv_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Whole-file CSV write: readers see the old file or the new one, never half of one."""
    write_bytes_atomic(path, frame.to_csv(index=False, lineterminator="\n").encode("utf-8"))


def write_json_atomic(obj: Any, path: Path) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def cache_file_name(image_id: str) -> str:
    """images/<image_id>.png, without doubling an extension the id already carries (NIH ids end in .png)."""
    stem = image_id[:-4] if image_id.lower().endswith(".png") else image_id
    return f"{IMAGES_DIR}/{stem}.png"


def check_image_id(image_id: str, where: str) -> None:
    """Image ids become file names: refuse the ones that would escape images/ or hide as temp files."""
    if (not image_id or "/" in image_id or "\\" in image_id or image_id.startswith(".")
            or "\x00" in image_id):
        raise BtcxrError(f"{where}: image id {image_id!r} cannot be a cache file name "
                         "(empty, contains a path separator or starts with a dot)")


# ----------------------------------------------------------------------------------------------- journal
class Journal:
    """Append-only record of finished images (written by the main process after each image's file
    has been renamed into place), so a rerun skips them without decoding. A line cut short by a kill
    is ignored on reading."""

    def __init__(self, cache: Path) -> None:
        self.path = Path(cache) / JOURNAL
        self._fh = None

    def read(self) -> dict[str, dict[str, Any]]:
        """image_id -> journal row, for rows whose cache file still exists."""
        done: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return done
        with open(self.path, newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                if len(row) != len(JOURNAL_COLUMNS) or row[0] == "image_id":
                    continue
                try:
                    entry = {"image_id": row[0], "file": row[1], "orig_width": int(row[2]),
                             "orig_height": int(row[3]), "width": int(row[4]), "height": int(row[5]),
                             "scale": float(row[6])}
                except ValueError:
                    continue  # a truncated last line
                done[entry["image_id"]] = entry
        cache = self.path.parent
        return {k: v for k, v in done.items() if (cache / v["file"]).is_file()}

    def open(self) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._fh = open(self.path, "a", newline="", encoding="utf-8")
        if new:
            self._fh.write(",".join(JOURNAL_COLUMNS) + "\n")
        else:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":  # a line cut short by a kill: end it, the reader drops it
                    self._fh.write("\n")
        self._fh.flush()

    def add(self, entry: dict[str, Any]) -> None:
        assert self._fh is not None
        writer = csv.writer(self._fh, lineterminator="\n")
        writer.writerow([entry[c] for c in JOURNAL_COLUMNS])
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# ----------------------------------------------------------------------------------------------- reading
def read_settings(cache: str | Path) -> dict[str, Any]:
    """prepare.json of a cache ({} when absent)."""
    path = Path(cache) / SETTINGS
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BtcxrError(f"{path}: not a readable prepare.json ({exc})") from exc


def read_manifest(cache: str | Path) -> pd.DataFrame:
    """CACHE/manifest.csv with text ids, labels and splits ('' when empty) and numeric sizes/scale."""
    cache = Path(cache)
    path = cache / MANIFEST
    if not path.is_file():
        hint = (" (prepare did not finish: rerun the same `btcxr prepare` command to complete it)"
                if (cache / JOURNAL).exists() else " (make one with `btcxr prepare`)")
        raise BtcxrError(f"{cache}: not a prepared cache, {MANIFEST} is missing{hint}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BtcxrError(f"{path}: cannot parse the manifest ({exc})") from exc
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise BtcxrError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(MANIFEST_COLUMNS)}")
    for col, kind in (("orig_width", int), ("orig_height", int), ("scale", float)):
        try:
            frame[col] = frame[col].astype(kind)
        except ValueError as exc:
            raise BtcxrError(f"{path}: column {col} must hold numbers ({exc})") from exc
    return frame


def read_annotations(cache: str | Path) -> pd.DataFrame:
    """CACHE/annotations.csv (VinDr): boxes in the original frame; No finding rows have NaN coordinates."""
    cache = Path(cache)
    path = cache / ANNOTATIONS
    if not path.is_file():
        raise BtcxrError(f"{cache}: {ANNOTATIONS} is missing; detection needs a VinDr cache "
                         "(`btcxr prepare vindr ...`)")
    try:
        frame = pd.read_csv(path, dtype={"image_id": str, "class_name": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise BtcxrError(f"{path}: cannot parse the annotations ({exc})") from exc
    missing = [c for c in ANNOTATION_COLUMNS if c not in frame.columns]
    if missing:
        raise BtcxrError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame


def iter_temp_files(cache: Path) -> Iterator[Path]:
    """Temporary files a killed prepare may have left (never a finished file)."""
    for folder in (cache, cache / IMAGES_DIR, cache / "splits"):
        if folder.is_dir():
            for entry in os.scandir(folder):
                if is_temp_name(entry.name) and entry.is_file():
                    yield Path(entry.path)
