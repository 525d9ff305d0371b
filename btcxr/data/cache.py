"""`btcxr prepare`: decode every radiograph once, resize it, and write a cache that training reads fast.

The cache (see btcxr.data.cache_format) holds single-channel PNGs whose longest side is `size`, a
manifest with each image's split, labels, original size and scale, and for VinDr the fused boxes
(annotations.csv, original frame) and COCO files (cache frame).

Work is spread over a process pool (a few chunks in flight, so memory stays flat in the number of images); the
main process journals every finished image, so a killed run, rerun with the same command, decodes only
what is left. Every file reaches its final name by os.replace from a temporary file in the same folder.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import itertools
import logging
import multiprocessing
import os
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from btcxr.data import splits as splitting
from btcxr.data.cache_format import (
    ANNOTATION_COLUMNS,
    ANNOTATIONS,
    ERROR_COLUMNS,
    ERRORS,
    IMAGES_DIR,
    MANIFEST,
    MANIFEST_COLUMNS,
    NIH_BOXES,
    READER_COLUMNS,
    READERS,
    SETTINGS,
    Journal,
    cache_file_name,
    check_image_id,
    iter_temp_files,
    read_settings,
)
from btcxr.data.classes import NO_FINDING
from btcxr.data.images import (
    DICOM_SUFFIXES,
    ImageReadError,
    longest_side_shape,
    read_image,
    resize_longest,
    resize_to,
)
from btcxr.data.protocol import PAPER_SPLIT_FILE, check_protocol, paper_lists, paper_split
from btcxr.engine.io import ensure_dir, write_bytes, write_csv, write_json
from btcxr.engine.lock import has_content
from btcxr.errors import BtcxrError, check_on_error
from btcxr.logs import progress_disabled

log = logging.getLogger(__name__)

DATASETS = ("nih", "vindr", "folder")
FOLDER_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
# zlib level 1 instead of PIL's default 6: measured on noisy synthetic radiographs, writing is 7-15 %
# faster and files 10 % larger; decoding (what training pays per epoch) is as fast.
PNG_COMPRESS_LEVEL = 1
# Settings that change the pixels: a cache prepared with others cannot be resumed or reused.
IMAGE_SETTINGS = ("dataset", "size", "bits")
# Settings that mean something for some datasets only (prepare.json records those of its dataset).
_DATASET_FIELDS = {
    **dict.fromkeys(("protocol", "fusion", "iou_thr", "skip_box_thr", "label_set", "ratios", "with_normals",
                     "official_test", "meta_csv"), ("vindr",)),
    **dict.fromkeys(("val_fraction", "include_test_in_pretrain"), ("nih",)),
    "allow_missing_images": ("nih", "vindr"),
    "reserve": ("nih", "folder"),
}


@dataclass
class PrepareSettings:
    """Everything `btcxr prepare` takes; saved in CACHE/prepare.json."""

    dataset: str  # nih | vindr | folder
    root: str
    out: str
    size: int
    bits: int = 8
    # VinDr. protocol: btcxr | paper (btcxr.data.protocol); fusion and iou_thr None = the protocol's
    protocol: str = "btcxr"
    fusion: str | None = None
    iou_thr: float | None = None
    skip_box_thr: float = 0.0
    label_set: str = "kaggle"
    ratios: tuple[float, float, float] = splitting.DEFAULT_VINDR_RATIOS
    with_normals: bool = False
    official_test: bool = False
    meta_csv: str | None = None  # original sizes of resized PNG/JPEG copies (default <root>/<split>_meta.csv)
    # NIH
    val_fraction: float = 0.1
    include_test_in_pretrain: bool = False
    # NIH and VinDr: leave out listed/annotated images that have no file (counted, listed in errors.csv)
    allow_missing_images: bool = False
    # NIH and folder: image names (one a line) kept out of pre-training and probe training
    reserve: str | None = None
    seed: int = 0
    workers: int | None = None
    on_error: str = "stop"  # one of btcxr.errors.ON_ERROR: stop | skip


@dataclass
class PrepareReport:
    """What a prepare run did."""

    cache: Path
    images: int  # images in the manifest
    prepared: int  # decoded by this run
    reused: int  # found finished in the cache (journal)
    skipped: int  # bad files left out (--on-error skip)
    errors: list[dict[str, str]] = field(default_factory=list)  # what errors.csv lists
    dropped_rows: int = 0  # VinDr annotation rows given twice, left out (--on-error skip)


@dataclass
class _Plan:
    """The images to decode and how to turn the finished ones into manifest (+ annotations, COCO)."""

    tasks: pd.DataFrame  # image_id, path
    finish: Callable[[Path, pd.DataFrame], dict[str, Any]]  # (cache, done rows) -> summary for prepare.json
    dropped_rows: list[dict[str, str]] = field(default_factory=list)  # annotation rows left out (--on-error skip)
    missing: list[dict[str, str]] = field(default_factory=list)  # listed images without a file (--allow-missing-images)


# A task: image_id, path, cache file, and the original width and height when the file is a resized copy
# (0, 0: the file is at its original size).
Task = tuple[str, str, str, int, int]


# ----------------------------------------------------------------------------------------------- worker
def _prepare_one(task: Task, cache: str, size: int, bits: int) -> dict[str, Any]:
    """Decode, resize and write one image (runs in a pool worker). A file that cannot be read comes
    back as an error row; a failed write (full disk) is a BtcxrError naming the file; anything else (a
    bug) propagates and stops the run."""
    image_id, path, file, orig_w, orig_h = task
    try:
        radiograph = read_image(path, bits=bits)
    except ImageReadError as exc:
        return {"error": True, "image_id": image_id, "path": path, "reason": exc.reason}
    except BtcxrError as exc:
        return {"error": True, "image_id": image_id, "path": path, "reason": str(exc)}
    if orig_w:  # a resized copy: the size file gives the original frame
        pixels, scale, problem = _from_resized_copy(radiograph.pixels, orig_w, orig_h, size)
        if problem:
            return {"error": True, "image_id": image_id, "path": path, "reason": problem}
    else:
        pixels, scale = resize_longest(radiograph.pixels, size)
        orig_w, orig_h = radiograph.orig_width, radiograph.orig_height
    dest = Path(cache) / file
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    data = buffer.getvalue()
    write_bytes(dest, data, durable=False)  # the journal records its size and CRC: a rerun checks it
    return {"error": False, "image_id": image_id, "file": file, "orig_width": int(orig_w),
            "orig_height": int(orig_h), "width": int(pixels.shape[1]),
            "height": int(pixels.shape[0]), "scale": scale, "bytes": len(data), "crc32": zlib.crc32(data)}


def _from_resized_copy(pixels: np.ndarray, orig_w: int, orig_h: int, size: int) -> tuple[np.ndarray, float, str]:
    """The cache image of a copy resized from an orig_w x orig_h original: the same shape and scale as
    preparing the original would give. A copy resized without keeping the aspect ratio (Kaggle's square
    sets) is brought back to the original's aspect here. (pixels, scale, problem; problem "" if none)."""
    height, width = pixels.shape
    if width > orig_w or height > orig_h:
        return pixels, 1.0, (f"the file is {width} x {height} px, larger than its original size {orig_w} x "
                             f"{orig_h} in the size file (image_id,dim0,dim1): the size file does not belong "
                             "to this image")
    new_w, new_h, scale = longest_side_shape(orig_w, orig_h, size)
    if (width, height) == (new_w, new_h):
        return pixels.copy(), scale, ""
    return resize_to(pixels, new_w, new_h), scale, ""


def _prepare_chunk(chunk: list[Task], cache: str, size: int, bits: int) -> list[dict[str, Any]]:
    return [_prepare_one(task, cache, size, bits) for task in chunk]


def _run_tasks(todo: list[Task], cache: Path, settings: PrepareSettings,
               workers: int) -> Iterator[dict[str, Any]]:
    """Results of _prepare_one over `todo`, in completion order, in-process when one worker is enough.

    A bounded number of chunks is in flight (memory stays flat in the number of images). A worker that
    dies (the out-of-memory killer, kill -9) breaks the pool: the run stops with a BtcxrError naming the
    files that were being decoded, instead of waiting forever for them."""
    work = partial(_prepare_chunk, cache=str(cache), size=settings.size, bits=settings.bits)
    if workers <= 1 or len(todo) <= 1:
        for task in todo:
            yield from work([task])
        return
    chunksize = max(1, min(16, len(todo) // (workers * 8)))
    chunks = [todo[k:k + chunksize] for k in range(0, len(todo), chunksize)]
    pending = iter(chunks)
    in_flight: dict[cf.Future, list[Task]] = {}
    pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context())
    lost: list[Task] = []  # the tasks of the chunk that came back broken
    try:
        for chunk in itertools.islice(pending, 2 * workers):
            lost = chunk
            in_flight[pool.submit(work, chunk)] = chunk
        while in_flight:
            finished, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                lost = in_flight.pop(future)
                results = future.result()
                for nxt in itertools.islice(pending, 1):
                    lost = nxt
                    in_flight[pool.submit(work, nxt)] = nxt
                yield from results
    except BrokenProcessPool:
        files = [task[1] for c in (lost, *in_flight.values()) for task in c]
        raise BtcxrError(
            f"a prepare worker process died (killed by a signal, e.g. the out-of-memory killer) while decoding "
            f"one of: {_name_files(files)}. Finished images are kept: rerun the same command to finish (with "
            "fewer --workers if memory is short)") from None
    finally:
        for future in in_flight:
            future.cancel()
        # Running chunks are few (2 per worker) and short; a broken pool has no live workers left.
        pool.shutdown(wait=True, cancel_futures=True)


def _name_files(paths: list[str], limit: int = 6) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


# ----------------------------------------------------------------------------------------------- main
def prepare(settings: PrepareSettings) -> PrepareReport:
    """Prepare (or finish, or re-split) the cache settings.out from the dataset at settings.root."""
    _validate(settings)
    cache = Path(settings.out)
    _check_compatible(cache, settings)
    ensure_dir(cache, "--out")
    ensure_dir(cache / IMAGES_DIR, "cache image folder")
    for stale in iter_temp_files(cache):  # left by a killed run; never a finished file
        stale.unlink(missing_ok=True)

    plan = _plan(settings, cache)
    if plan.tasks.empty:
        hint = (" (no image has a finding: pass --with-normals to prepare the normal ones)"
                if settings.dataset == "vindr" and not settings.with_normals else "")
        raise BtcxrError(f"--root {settings.root}: no images to prepare{hint}")
    tasks = plan.tasks.sort_values("image_id", kind="stable").reset_index(drop=True)
    tasks["file"] = [cache_file_name(i) for i in tasks["image_id"]]
    dup = tasks["file"].duplicated(keep=False)
    if dup.any():
        raise BtcxrError(f"{settings.root}: images {', '.join(tasks.loc[dup, 'image_id'][:2])} would share "
                         f"the cache file {tasks.loc[dup, 'file'].iloc[0]}")

    started = time.time()
    write_json(cache / SETTINGS, _settings_record(settings, status="running"), sort_keys=False)
    journal = Journal(cache)
    done = journal.read(size=settings.size)  # only images whose PNG is still the one journaled
    wanted = set(tasks["image_id"])
    reused = sum(1 for i in wanted if i in done)
    sized = "orig_width" in tasks.columns
    orig_w = tasks["orig_width"].fillna(0).astype(int) if sized else pd.Series(0, index=tasks.index)
    orig_h = tasks["orig_height"].fillna(0).astype(int) if sized else pd.Series(0, index=tasks.index)
    todo = [(i, p, f, w, h) for i, p, f, w, h in zip(tasks["image_id"], tasks["path"], tasks["file"], orig_w, orig_h)
            if i not in done]
    workers = max(1, min(settings.workers or os.cpu_count() or 1, len(todo)))
    log.info("%d images: %d already in the cache, %d to prepare with %d worker(s)", len(tasks), reused,
             len(todo), workers)

    errors: list[dict[str, str]] = []
    prepared = 0
    from tqdm import tqdm

    journal.open()
    try:
        # closing(): an error stops the pool at once, not when the generator is garbage-collected.
        with (tqdm(total=len(todo), unit="img", desc="prepare", disable=progress_disabled()) as bar,
              closing(_run_tasks(todo, cache, settings, workers)) as results):
            for result in results:
                bar.update(1)
                if result.pop("error"):
                    if settings.on_error == "stop":
                        raise BtcxrError(
                            f"cannot read image {result['path']}: {result['reason']} (finished images are "
                            "kept; fix or remove the file and rerun, or pass --on-error skip)")
                    log.warning("skipping %s: %s", result["path"], result["reason"])
                    errors.append(result)
                    continue
                journal.add(result)
                done[result["image_id"]] = result
                prepared += 1
    finally:
        journal.close()

    done_rows = pd.DataFrame([done[i] for i in tasks["image_id"] if i in done],
                             columns=["image_id", "file", "orig_width", "orig_height", "width", "height", "scale"])
    summary = plan.finish(cache, done_rows)
    # the same order on every run
    listed = plan.dropped_rows + plan.missing + sorted(errors, key=lambda e: e["image_id"])
    if listed:
        write_csv(cache / ERRORS, pd.DataFrame(listed, columns=ERROR_COLUMNS))
        log.warning("skipped %d unreadable file(s), %d repeated annotation row(s) and %d image(s) without a file; "
                    "they are listed in %s", len(errors), len(plan.dropped_rows), len(plan.missing), cache / ERRORS)
    else:
        (cache / ERRORS).unlink(missing_ok=True)
    counts = {"images": int(summary.pop("images")), "prepared": prepared, "reused": reused,
              "skipped": len(errors), "dropped_rows": len(plan.dropped_rows), "missing_images": len(plan.missing)}
    record = _settings_record(settings, status="complete") | summary | {
        "counts": counts, "seconds": round(time.time() - started, 1)}
    write_json(cache / SETTINGS, record, sort_keys=False)
    log.info("cache %s: %d images (%d prepared now, %d reused, %d skipped)", cache, counts["images"],
             prepared, reused, len(errors))
    return PrepareReport(cache=cache, images=counts["images"], prepared=prepared, reused=reused,
                         skipped=len(errors), errors=listed, dropped_rows=len(plan.dropped_rows))


def _validate(s: PrepareSettings) -> None:
    if s.dataset not in DATASETS:
        raise BtcxrError(f"unknown dataset {s.dataset!r}; choose one of {', '.join(DATASETS)}")
    if not isinstance(s.size, int) or s.size < 8:
        raise BtcxrError(f"--size {s.size}: expected a whole number of pixels, at least 8")
    if s.bits not in (8, 16):
        raise BtcxrError(f"--bits {s.bits}: expected 8 or 16")
    s.on_error = check_on_error(s.on_error)
    if s.workers is not None and s.workers < 1:
        raise BtcxrError(f"--workers {s.workers}: expected at least 1")
    if not Path(s.root).is_dir():
        raise BtcxrError(f"--root {s.root}: not a directory")
    if s.dataset != "vindr" and (s.official_test or s.with_normals):
        raise BtcxrError("--official-test and --with-normals apply to vindr only")
    if s.dataset == "vindr" and s.reserve:
        raise BtcxrError("--reserve applies to nih and folder; VinDr's test part is held out by the split")
    s.ratios = splitting.parse_ratios(s.ratios)
    _apply_protocol(s)


def _apply_protocol(s: PrepareSettings) -> None:
    """Fill fusion and iou_thr from the VinDr protocol; refuse options the paper's protocol fixes."""
    protocol = check_protocol(s.protocol)
    if s.dataset != "vindr":
        if s.protocol != "btcxr" or s.meta_csv:
            raise BtcxrError("--protocol and --meta-csv apply to vindr only")
        return
    if s.protocol == "paper":
        fixed = [(s.fusion not in (None, protocol.fusion), f"--fusion {s.fusion}"),
                 (s.iou_thr not in (None, protocol.iou_thr), f"--iou-thr {s.iou_thr}"),
                 (s.skip_box_thr != 0, f"--skip-box-thr {s.skip_box_thr}"),
                 (s.label_set != "kaggle", f"--label-set {s.label_set}"),
                 (tuple(s.ratios) != splitting.DEFAULT_VINDR_RATIOS, "--ratios"),
                 (s.with_normals, "--with-normals"), (s.official_test, "--official-test")]
        given = [flag for clash, flag in fixed if clash]
        if given:
            raise BtcxrError(f"--protocol paper fixes the fusion (wbf-pooled, IoU 0.5), the 14 Kaggle classes, the "
                             f"normals (dropped) and the split (the paper's lists); remove {', '.join(given)}")
    s.fusion = protocol.fusion if s.fusion is None else s.fusion
    s.iou_thr = protocol.iou_thr if s.iou_thr is None else s.iou_thr


def _check_compatible(cache: Path, s: PrepareSettings) -> None:
    """Refuse to mix images of different settings in one cache (a rerun must match the first run)."""
    old = read_settings(cache)
    if not old:
        if has_content(cache) and not (cache / IMAGES_DIR).exists():
            raise BtcxrError(f"--out {cache}: folder is not empty and holds no cache; choose an empty folder")
        return
    diff = [f"{k}={old.get(k)!r} (now {getattr(s, k)!r})" for k in IMAGE_SETTINGS if old.get(k) != getattr(s, k)]
    # Finished images are reused by image id: ids of another dataset copy (a folder's relative paths,
    # NIH file names) would silently keep the old copy's pixels.
    root = str(Path(s.root).resolve())
    if old.get("root") is not None and old["root"] != root:
        diff.append(f"root={old['root']!r} (now {root!r})")
    if diff:
        raise BtcxrError(f"--out {cache}: this cache was prepared with {', '.join(diff)}; use another --out "
                         "folder (or delete this one) to prepare with other settings")


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("btcxr", "numpy", "pandas", "pillow", "pydicom", "ensemble-boxes", "iterative-stratification"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _settings_record(s: PrepareSettings, status: str) -> dict[str, Any]:
    record = asdict(s)
    record["root"] = str(Path(s.root).resolve())
    record["ratios"] = list(s.ratios)
    for key in ("out", *(k for k, only in _DATASET_FIELDS.items() if s.dataset not in only)):
        record.pop(key)
    record["status"] = status
    record["versions"] = _versions()
    return record


def _plan(s: PrepareSettings, cache: Path) -> _Plan:
    return {"nih": _plan_nih, "vindr": _plan_vindr, "folder": _plan_folder}[s.dataset](s, cache)


def _write_manifest(cache: Path, manifest: pd.DataFrame) -> None:
    manifest = manifest.sort_values("image_id", kind="stable")[MANIFEST_COLUMNS]
    write_csv(cache / MANIFEST, manifest)
    # Label-fraction orderings saved by the datasets belong to the previous manifest's labels.
    for stale in (cache / splitting.SPLITS_DIR).glob("order_*.csv"):
        stale.unlink(missing_ok=True)


def _read_reserve(path: str | None) -> set[str]:
    if not path:
        return set()
    p = Path(path)
    if not p.is_file():
        raise BtcxrError(f"--reserve {path}: file not found (expected image names, one a line)")
    lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    return {ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")}


# ----------------------------------------------------------------------------------------------- NIH
def _plan_nih(s: PrepareSettings, cache: Path) -> _Plan:
    from btcxr.data.nih import load_nih

    source = load_nih(s.root, require_images=not s.allow_missing_images)
    index = source.index
    reserve = _read_reserve(s.reserve)
    unknown = reserve - set(index["image_id"])
    if unknown:
        log.warning("--reserve: %d of %d names are not NIH images of %s (e.g. %s); ignored", len(unknown),
                    len(reserve), s.root, sorted(unknown)[0])
    reserve &= set(index["image_id"])
    name = splitting.nih_split_name(s.seed, s.val_fraction, reserve)
    split = splitting.load_or_make_split(
        cache, name, index["image_id"],
        lambda: splitting.nih_split(index, val_fraction=s.val_fraction, seed=s.seed, reserve=reserve))
    for image_id in index["image_id"]:
        check_image_id(image_id, "NIH Data_Entry")

    def finish(cache: Path, done: pd.DataFrame) -> dict[str, Any]:
        meta = index[["image_id", "patient_id", "labels"]].merge(split, on="image_id")
        manifest = done.merge(meta, on="image_id", how="inner", validate="one_to_one")
        manifest["patient_id"] = manifest["patient_id"].astype(str)
        _write_manifest(cache, manifest)
        if source.bboxes is not None:  # NIH's 984 boxes, kept in the original frame for localisation studies
            from btcxr.data.vindr import check_boxes_inside

            boxes = source.bboxes[source.bboxes["image_id"].isin(manifest["image_id"])]
            check_boxes_inside(boxes, manifest, f"BBox_List_2017.csv under {s.root}")
            write_csv(cache / NIH_BOXES, boxes)
        pretrain = ["train", "val"] + (["test", "reserved"] if s.include_test_in_pretrain else [])
        return {"images": len(manifest), "split_file": name, "pretrain_splits": pretrain,
                "parts": manifest["split"].value_counts().to_dict()}

    return _Plan(tasks=index[["image_id", "path"]], finish=finish)


# ----------------------------------------------------------------------------------------------- VinDr
def _plan_vindr(s: PrepareSettings, cache: Path) -> _Plan:
    from btcxr.data.fusion import fuse_readers, parse_fusion
    from btcxr.data.vindr import class_names, load_vindr

    classes = class_names(s.label_set)[:-1]
    spec = parse_fusion(s.fusion)
    load = partial(load_vindr, s.root, label_set=s.label_set, on_duplicate=s.on_error,
                   allow_missing_images=s.allow_missing_images, meta_csv=s.meta_csv)
    train = load("train")
    train_source = _vindr_annotation_file(train, "train")
    if s.protocol == "paper" and train.layout != "kaggle":
        log.warning("--protocol paper on the PhysioNet layout: the paper's boxes come from the Kaggle train.csv; "
                    "WBF follows the row order of the file, so another file's order can give other boxes")
    # Fusion is invariant to scaling each axis, so fusing before decoding (no sizes yet) gives the
    # image-level labels the split and the --no-normals selection need; the boxes written to
    # annotations.csv are fused again after decoding, with the sizes (checked, clipped).
    pre = fuse_readers(train.annotations, spec, s.iou_thr, s.skip_box_thr, label_set=s.label_set)
    test = None
    if s.official_test:
        if train.layout != "physionet":
            raise BtcxrError(f"--official-test: {s.root} is the Kaggle layout, whose test images carry no "
                             "annotations; the official test needs the PhysioNet layout (annotations_test.csv)")
        test = load("test")
    # The official test holds one consensus reading per image: its boxes are kept as they are.
    pre_test = (fuse_readers(test.annotations, "union", label_set=s.label_set) if test is not None else None)

    def candidates(fused: pd.DataFrame) -> list[str]:
        ids = pd.unique(fused["image_id"])
        if s.with_normals:
            return list(ids)
        return list(pd.unique(fused.loc[fused["class_name"] != NO_FINDING, "image_id"]))

    ids = candidates(pre) + (candidates(pre_test) if pre_test is not None else [])
    listed: dict[str, str] = {}  # the paper's listed images without a file -> their part
    if s.protocol == "paper":
        name = PAPER_SPLIT_FILE
        lists, listed = _paper_lists_present(s, train)
        make_split = partial(paper_split, ids, lists)
    else:
        name = splitting.vindr_split_name(s.seed, s.ratios, s.with_normals, s.official_test)
        make_split = partial(splitting.vindr_split, pre, ratios=s.ratios, seed=s.seed, with_normals=s.with_normals,
                             official_test=pre_test, classes=classes)
    split = splitting.load_or_make_split(cache, name, ids, make_split)
    missing = [_missing_row(i, f"in the paper's {listed[i]} split but" if i in listed else f"annotated in {train_source}",
                            train.root / "train") for i in train.missing_images]
    if test is not None:
        missing += [_missing_row(i, f"annotated in {_vindr_annotation_file(test, 'test')}", test.root / "test")
                    for i in test.missing_images]
    paths = pd.concat([train.images] + ([test.images] if test is not None else []))
    tasks = split[["image_id"]].merge(paths, on="image_id", how="left", validate="one_to_one")
    for image_id in tasks["image_id"]:
        check_image_id(image_id, train_source)
    if not s.with_normals:
        log.info("--no-normals: %d of %d training images have a finding and are prepared",
                 len(candidates(pre)), pre["image_id"].nunique())

    def finish(cache: Path, done: pd.DataFrame) -> dict[str, Any]:
        from btcxr.data.vindr import check_boxes_inside

        sizes = done[["image_id", "orig_width", "orig_height"]]
        readings = [(train, train_source, spec, s.skip_box_thr)]
        if test is not None:
            readings.append((test, _vindr_annotation_file(test, "test"), "union", 0.0))
        fused_parts, reader_parts = [], []
        for source, source_file, how, skip_thr in readings:
            ann = source.annotations[source.annotations["image_id"].isin(done["image_id"])]
            check_boxes_inside(ann, sizes, source_file, _resized_hint(source))
            fused_parts.append(fuse_readers(ann, how, s.iou_thr, skip_thr, sizes=sizes, label_set=s.label_set))
            reader_parts.append(ann[ann["x_min"].notna()])
        fused = pd.concat(fused_parts, ignore_index=True)
        # An image the readers annotated but the fusion's reader did not read has no row: left out.
        manifest = done.merge(split, on="image_id").merge(_labels_of(fused), on="image_id")
        manifest["patient_id"] = ""
        annotations = fused[fused["image_id"].isin(manifest["image_id"])][ANNOTATION_COLUMNS]
        annotations = annotations.sort_values(["image_id", "class_id", "x_min", "y_min"], kind="stable")
        _write_manifest(cache, manifest)
        write_csv(cache / ANNOTATIONS, annotations)
        readers = pd.concat(reader_parts, ignore_index=True)
        readers = readers[readers["image_id"].isin(manifest["image_id"])][READER_COLUMNS]
        write_csv(cache / READERS, readers.sort_values(["image_id", "rad_id", "class_id"], kind="stable"))
        from btcxr.data.coco import write_coco

        for part in splitting.PART_NAMES:
            rows = manifest[manifest["split"] == part].sort_values("image_id", kind="stable")
            write_coco(cache / f"coco_{part}.json", rows, annotations, classes,
                       description=f"VinDr-CXR {part} part, cache {cache.name}, longest side {s.size} px")
        boxes = int(annotations["x_min"].notna().sum())
        return {"images": len(manifest), "split_file": name, "pretrain_splits": ["train", "val"],
                "parts": manifest["split"].value_counts().to_dict(), "boxes": boxes,
                "classes": list(classes), "ground_truth": _ground_truth_text(s),
                "meta_csv_used": str(train.meta_csv) if train.meta_csv else None}

    dropped = train.dropped_rows + (test.dropped_rows if test is not None else [])
    columns = ["image_id", "path", *(["orig_width", "orig_height"] if "orig_width" in tasks.columns else [])]
    return _Plan(tasks=tasks[columns], finish=finish, dropped_rows=dropped, missing=missing)


def _resized_hint(source) -> str:
    """What to say when boxes leave PNG/JPEG images: they were probably resized without a size file."""
    copies = ~source.images["path"].str.lower().str.endswith(DICOM_SUFFIXES)
    if not copies.any() or source.meta_csv is not None:
        return ""
    return ("; these are PNG/JPEG copies: if they were resized, give their original sizes with --meta-csv "
            "train_meta.csv (image_id,dim0,dim1)")


def _paper_lists_present(s: PrepareSettings, train) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The paper's val/test lists restricted to the images present, and the listed ids without a file with
    their part (an error unless --allow-missing-images). A listed id train.csv does not hold is an error."""
    lists = paper_lists()
    annotated = set(train.annotations["image_id"]) | set(train.missing_images)
    have = set(train.images["image_id"])
    unknown = [i for ids in lists.values() for i in ids if i not in annotated]
    if unknown:
        raise BtcxrError(f"{_vindr_annotation_file(train, 'train')}: {len(unknown)} image(s) of the paper's val/test "
                         f"split have no rows (e.g. {unknown[0]}); the paper's protocol needs the full VinDr-CXR "
                         "train.csv")
    absent = {part: [i for i in ids if i not in have] for part, ids in lists.items()}
    n_absent = sum(len(v) for v in absent.values())
    if n_absent and not s.allow_missing_images:
        first = next(i for ids in absent.values() for i in ids)
        raise BtcxrError(f"{Path(s.root) / 'train'}: {n_absent} image(s) of the paper's val/test split have no "
                         f"image file (e.g. {first}); pass --allow-missing-images to leave them out (counted and "
                         "listed in errors.csv)")
    if n_absent:
        log.warning("--protocol paper: %d image(s) of the paper's split have no file and are left out: %s",
                    n_absent, ", ".join(f"{len(v)} of {part}" for part, v in absent.items()))
    present = {part: [i for i in ids if i in have] for part, ids in lists.items()}
    return present, {i: part for part, ids in absent.items() for i in ids}


def _missing_row(image_id: str, what: str, folder: Path) -> dict[str, str]:
    return {"image_id": image_id, "path": str(folder / image_id),
            "reason": f"{what} with no image file; left out (--allow-missing-images)"}


def _ground_truth_text(s: PrepareSettings) -> str:
    """One line for prepare.json and the report: which protocol made the boxes and the split."""
    if s.protocol == "paper":
        return ("the paper's protocol: readers pooled into one WBF list in train.csv row order (wbf-pooled), IoU 0.5, "
                "normals dropped, the paper's val (659) and test (660) images")
    split = "the official test images as test" if s.official_test else f"split {'/'.join(f'{r:g}' for r in s.ratios)}"
    return (f"btcxr's protocol: fusion {s.fusion}, IoU {s.iou_thr:g}, skip_box_thr {s.skip_box_thr:g}, "
            f"{'normals kept' if s.with_normals else 'normals dropped'}, {split} (seed {s.seed})")


def _vindr_annotation_file(source, split: str) -> str:
    """The file a VinDr table came from, for error messages."""
    root = Path(source.root)
    return str(root / "train.csv") if source.layout == "kaggle" else str(root / "annotations" /
                                                                         f"annotations_{split}.csv")


def _labels_of(fused: pd.DataFrame) -> pd.DataFrame:
    """image_id, labels: the fused class names of each image, pipe-joined in class_id order."""
    ordered = fused.sort_values("class_id", kind="stable").drop_duplicates(["image_id", "class_id"])
    labels = ordered.groupby("image_id", sort=False)["class_name"].agg("|".join)
    return labels.rename("labels").reset_index()


# ----------------------------------------------------------------------------------------------- folder
def list_folder(root: str | Path, exclude: Path | None = None) -> pd.DataFrame:
    """image_id, path of every radiograph below root (png/jpg/jpeg/dcm/dicom, recursive, hidden files
    and folders skipped). image_id = relative path without extension, separators replaced by '__'."""
    root = Path(root).resolve()
    exclude = exclude.resolve() if exclude is not None else None
    rows: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d) != exclude)
        for name in sorted(filenames):
            stem, suffix = os.path.splitext(name)
            if name.startswith(".") or suffix.lower() not in FOLDER_SUFFIXES:
                continue
            rel = (here / name).relative_to(root)
            image_id = "__".join([*rel.parent.parts, stem])
            check_image_id(image_id, str(here / name))
            if image_id in rows:
                raise BtcxrError(f"{root}: {rows[image_id]} and {here / name} would get the same image id "
                                 f"{image_id!r}; rename one of them")
            rows[image_id] = str(here / name)
    if not rows:
        raise BtcxrError(f"{root}: no radiographs found (looked for {', '.join(FOLDER_SUFFIXES)}, recursively)")
    return pd.DataFrame({"image_id": list(rows), "path": list(rows.values())})


def _plan_folder(s: PrepareSettings, cache: Path) -> _Plan:
    images = list_folder(s.root, exclude=cache)
    reserve = _read_reserve(s.reserve)
    # A reserved name may be the image id or the file's relative path.
    rel = [os.path.relpath(p, Path(s.root).resolve()) for p in images["path"]]
    reserved = images["image_id"].isin(reserve) | pd.Series(rel).isin(reserve)
    if reserve and not reserved.any():
        log.warning("--reserve: none of the %d names matches an image below %s", len(reserve), s.root)

    def finish(cache: Path, done: pd.DataFrame) -> dict[str, Any]:
        manifest = done.copy()
        manifest["split"] = np.where(manifest["image_id"].isin(images.loc[reserved, "image_id"]),
                                     "reserved", "train")
        manifest["patient_id"] = ""
        manifest["labels"] = ""
        _write_manifest(cache, manifest)
        return {"images": len(manifest), "pretrain_splits": ["train"],
                "parts": manifest["split"].value_counts().to_dict()}

    return _Plan(tasks=images, finish=finish)
