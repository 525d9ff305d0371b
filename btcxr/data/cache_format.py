"""The files of a prepared cache: names, columns, atomic writes, and readers that check them.

CACHE/
  prepare.json      settings (dataset, root, size, bits, fusion, split options, versions) + counts
  images/*.png      single-channel, longest side = size (8- or 16-bit)
  manifest.csv      MANIFEST_COLUMNS
  annotations.csv   (VinDr) ANNOTATION_COLUMNS, original pixel frame
  readers.csv       (VinDr) READER_COLUMNS: each radiologist's own boxes before fusion, original pixels
  coco_<part>.json  (VinDr) COCO detection files in the cache frame
  splits/*.csv      saved splits
  errors.csv        files skipped with --on-error skip
  journal.csv       one line per finished image: what makes a killed prepare resumable
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from btcxr.engine import io as engine_io
from btcxr.engine.paths import check_relative
from btcxr.errors import BtcxrError, cut

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
ANNOTATIONS = "annotations.csv"
READERS = "readers.csv"
NIH_BOXES = "nih_boxes.csv"  # NIH BBox_List_2017 boxes of the cached images, original pixels
SETTINGS = "prepare.json"
ERRORS = "errors.csv"
JOURNAL = "journal.csv"
IMAGES_DIR = "images"

MANIFEST_COLUMNS = ["image_id", "file", "patient_id", "split", "labels", "orig_width", "orig_height", "scale"]
ANNOTATION_COLUMNS = ["image_id", "class_id", "class_name", "x_min", "y_min", "x_max", "y_max", "score"]
READER_COLUMNS = ["image_id", "rad_id", "class_id", "x_min", "y_min", "x_max", "y_max"]
JOURNAL_COLUMNS = ["image_id", "file", "orig_width", "orig_height", "width", "height", "scale", "bytes", "crc32"]
ERROR_COLUMNS = ["image_id", "path", "reason"]
TEMP_MARK = engine_io.TEMP_MARK


# ----------------------------------------------------------------------------------------------- writing
def png_checksum(path: Path) -> tuple[int, int]:
    """(bytes, CRC-32) of a file: what the journal records of a cached PNG to recognise it unchanged."""
    crc = 0
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc


MAX_ID_BYTES = 200  # + ".png" and a temporary write's prefix stay within the 255-byte file-name limit


def cache_file_name(image_id: str) -> str:
    """images/<image_id>.png, without doubling an extension the id already carries (NIH ids end in .png)."""
    stem = image_id[:-4] if image_id.lower().endswith(".png") else image_id
    return f"{IMAGES_DIR}/{stem}.png"


def check_image_id(image_id: str, where: str) -> None:
    """Image ids become file names: refuse the ones that would escape images/ or hide as temp files."""
    if (not image_id or "/" in image_id or "\\" in image_id or image_id.startswith(".")
            or "\x00" in image_id):
        raise BtcxrError(f"{where}: image id {cut(image_id)!r} cannot be a cache file name "
                         "(empty, contains a path separator or starts with a dot)")
    if len(image_id.encode("utf-8", "surrogateescape")) > MAX_ID_BYTES:
        raise BtcxrError(f"{where}: image id {cut(image_id)!r} is too long for a file name "
                         f"({len(image_id.encode('utf-8', 'surrogateescape'))} bytes; at most {MAX_ID_BYTES})")


# ----------------------------------------------------------------------------------------------- journal
class Journal:
    """Append-only record of finished images (written by the main process after each image's file
    has been renamed into place), so a rerun skips them without decoding.

    Each line records the PNG's byte count and CRC-32; a rerun reuses an image only when its file still
    has them (a truncated or damaged PNG is decoded again). A line is only trusted whole: the last line
    without its newline (a kill during the append) is dropped, and so are lines whose numbers do not
    parse or do not agree with each other and with the cache's size.
    """

    def __init__(self, cache: Path) -> None:
        self.path = Path(cache) / JOURNAL
        self._fh = None

    def read(self, size: int | None = None) -> dict[str, dict[str, Any]]:
        """image_id -> journal row, for rows whose cache file is still the one that was journaled.

        `size`: the cache's longest side; lines that disagree with it are dropped."""
        done: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return done
        try:
            text = self.path.read_bytes().decode("utf-8", errors="replace")
        except OSError as exc:
            raise BtcxrError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        lines = text.split("\n")[:-1]  # what follows the last newline was cut short by a kill
        dropped = 0
        for row in csv.reader(lines):
            if not row or row[0] == "image_id":
                continue
            entry = _journal_entry(row, size)
            if entry is None:
                dropped += 1
                continue
            done[entry["image_id"]] = entry
        if dropped:
            log.info("%s: %d damaged line(s) ignored; their images are prepared again", self.path, dropped)
        cache = self.path.parent
        kept: dict[str, dict[str, Any]] = {}
        for image_id, entry in done.items():
            problem = _check_cached_png(cache / entry["file"], entry)
            if problem is None:
                kept[image_id] = entry
            else:
                log.warning("cached image %s %s; it is prepared again", cache / entry["file"], problem)
        return kept

    def open(self) -> None:
        try:
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
        except OSError as exc:
            self.close()
            raise engine_io.write_error(self.path, exc) from exc

    def add(self, entry: dict[str, Any]) -> None:
        assert self._fh is not None
        writer = csv.writer(self._fh, lineterminator="\n")
        try:
            writer.writerow([entry[c] for c in JOURNAL_COLUMNS])
            self._fh.flush()
        except OSError as exc:
            raise engine_io.write_error(self.path, exc) from exc

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError as exc:  # the buffered tail of a full disk
                log.warning("cannot finish %s: %s", self.path, exc.strerror or exc)
            self._fh = None


def _journal_entry(row: list[str], size: int | None) -> dict[str, Any] | None:
    """A parsed, self-consistent journal row, or None."""
    if len(row) != len(JOURNAL_COLUMNS):
        return None
    try:
        entry: dict[str, Any] = {"image_id": row[0], "file": row[1], "orig_width": int(row[2]),
                                 "orig_height": int(row[3]), "width": int(row[4]), "height": int(row[5]),
                                 "scale": float(row[6]), "bytes": int(row[7]), "crc32": int(row[8])}
    except ValueError:
        return None
    if not entry["image_id"] or entry["file"] != cache_file_name(entry["image_id"]):
        return None
    if min(entry["orig_width"], entry["orig_height"], entry["width"], entry["height"]) < 1:
        return None
    longest = max(entry["orig_width"], entry["orig_height"])
    scale = entry["scale"]
    if not math.isfinite(scale) or scale <= 0:
        return None
    # The scale is size / longest original side, and the cached sides follow from it: a number cut
    # short (0.21875 -> 0.2) breaks these equalities.
    if size is not None and (max(entry["width"], entry["height"]) != size
                             or not math.isclose(scale, size / longest, rel_tol=1e-12)):
        return None
    if not math.isclose(scale * longest, max(entry["width"], entry["height"]), rel_tol=1e-9):
        return None
    for side, orig in (("width", "orig_width"), ("height", "orig_height")):
        if abs(entry[side] - max(1, round(entry[orig] * scale))) > 1:
            return None
    return entry


def _check_cached_png(path: Path, entry: dict[str, Any]) -> str | None:
    """Why the cached PNG is not the one journaled (None when it is)."""
    try:
        if path.stat().st_size != entry["bytes"]:
            return f"has {path.stat().st_size} bytes, the journal recorded {entry['bytes']}"
        if png_checksum(path)[1] != entry["crc32"]:
            return "does not match its journaled checksum (damaged)"
    except FileNotFoundError:
        return "is missing"
    except Exception as exc:  # unreadable, truncated, not a PNG
        return f"cannot be read ({type(exc).__name__}: {exc})"
    return None


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
    check_relative(frame["file"], path, "file", cache)  # a crafted row must not point at /etc/passwd
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
                if engine_io.is_temp_name(entry.name) and entry.is_file():
                    yield Path(entry.path)
