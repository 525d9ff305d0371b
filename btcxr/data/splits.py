"""Train/val/test splits and nested label fractions, saved in the cache and reused.

- NIH: the official patient-level lists; a seeded patient-level validation part carved from train_val.
- VinDr: a multi-label stratified train/val/test split of the 15,000 training images (iterative
  stratification, Sechidis et al. 2011, from the `iterative-stratification` package), optionally with the
  official PhysioNet test images as the test part.
- Label fractions: one seeded, stratified ordering of a part; fraction f takes its first ceil(f * n) ids,
  so 1 % lies inside 5 % inside 10 % ... and a label-efficiency curve compares like with like.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from btcxr.data.cache_format import read_manifest
from btcxr.data.classes import NO_FINDING, VINDR_CLASSES
from btcxr.engine.io import write_csv
from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)

SPLITS_DIR = "splits"
# The fractions of a label-efficiency curve; each is a whole number of strata of the saved ordering.
FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.10, 0.25, 0.50, 1.0)
DEFAULT_VINDR_RATIOS: tuple[float, float, float] = (0.70, 0.15, 0.15)
PART_NAMES = ("train", "val", "test")


# ----------------------------------------------------------------------------------------------- helpers
def parse_ratios(text: str | Sequence[float]) -> tuple[float, float, float]:
    """'70,15,15' (percent or fractions) -> (0.7, 0.15, 0.15); train and val must be > 0, test may be 0."""
    if isinstance(text, str):
        try:
            values = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
        except ValueError as exc:
            raise BtcxrError(f"--ratios {text!r}: expected three numbers like 70,15,15") from exc
    else:
        values = [float(v) for v in text]
    if len(values) != 3 or any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise BtcxrError(f"--ratios {text!r}: expected three non-negative numbers train,val,test like 70,15,15")
    total = sum(values)
    ratios = tuple(v / total for v in values)
    if ratios[0] <= 0 or ratios[1] <= 0:
        raise BtcxrError(f"--ratios {text!r}: the train and val parts must be larger than 0")
    return ratios  # type: ignore[return-value]


def ratios_tag(ratios: Sequence[float]) -> str:
    """(0.7, 0.15, 0.15) -> '70-15-15' (used in split file names)."""
    return "-".join(f"{100 * r:g}" for r in ratios)


def exact_sizes(n: int, ratios: Sequence[float]) -> np.ndarray:
    """Part sizes that sum to n, each within rounding of ratio * n (largest remainder)."""
    r = np.asarray(ratios, dtype=float)
    r = r / r.sum()
    raw = r * n
    sizes = np.floor(raw).astype(int)
    order = np.argsort(-(raw - sizes), kind="stable")
    sizes[order[: n - sizes.sum()]] += 1
    return sizes


def _rebalance(folds: np.ndarray, y: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Move samples between folds until each fold has exactly targets[k] samples.

    iterstrat's greedy pass keeps label counts but misses the requested part sizes by a few percent
    (3,096 instead of 3,076 train images on VinDr's abnormal images), so we move, one at a time, the sample
    whose move from the fullest to the emptiest fold raises the chi-square distance between the per-label
    counts and their desired values least (rare labels weigh more; no label is drained by repeated moves).
    """
    folds = folds.copy()
    k, n_labels = len(targets), y.shape[1]
    totals = y.sum(axis=0).astype(float)
    desired = np.outer(targets / max(targets.sum(), 1), totals)
    inv = 1.0 / np.maximum(desired, 0.5)
    counts = np.zeros((k, n_labels))
    np.add.at(counts, folds, y.astype(float))
    sizes = np.bincount(folds, minlength=k)
    yf = y.astype(float)
    while True:
        excess = sizes - targets
        src, dst = int(np.argmax(excess)), int(np.argmin(excess))
        if excess[src] <= 0:
            return folds
        cand = np.flatnonzero(folds == src)
        # (c - 1 - d)^2 - (c - d)^2 = 1 - 2 (c - d); (c + 1 - d)^2 - (c - d)^2 = 1 + 2 (c - d)
        gain_src = (1 - 2 * (counts[src] - desired[src])) * inv[src]
        gain_dst = (1 + 2 * (counts[dst] - desired[dst])) * inv[dst]
        cost = yf[cand] @ (gain_src + gain_dst)
        pick = cand[int(np.argmin(cost))]
        folds[pick] = dst
        counts[src] -= yf[pick]
        counts[dst] += yf[pick]
        sizes[src] -= 1
        sizes[dst] += 1


def stratified_parts(y: np.ndarray, sizes: Sequence[int], seed: int) -> np.ndarray:
    """Assign each row of a multi-hot matrix y (N, L) to a part 0..K-1 with exactly sizes[k] rows each.

    Iterative stratification (iterstrat.ml_stratifiers.IterativeStratification, the algorithm behind its
    MultilabelStratifiedShuffleSplit/KFold) run once over all K parts, on a seeded permutation of the rows
    (its ties are broken in row order), then _rebalance to the exact sizes. Rows with no label are spread
    evenly, as the package does.
    """
    from iterstrat.ml_stratifiers import IterativeStratification

    sizes = np.asarray(sizes, dtype=int)
    n = y.shape[0]
    if sizes.sum() != n:
        raise ValueError(f"part sizes {sizes.tolist()} do not sum to {n}")
    if n == 0:
        return np.zeros(0, dtype=int)
    y = np.asarray(y, dtype=bool).reshape(n, -1)
    if y.shape[1] == 0:
        y = np.zeros((n, 1), dtype=bool)
    rng = np.random.RandomState(seed)
    perm = rng.permutation(n)
    folds_perm = IterativeStratification(labels=y[perm], r=sizes / n, random_state=rng)
    folds_perm = _rebalance(folds_perm, y[perm], sizes)
    folds = np.empty(n, dtype=int)
    folds[perm] = folds_perm
    return folds


# ----------------------------------------------------------------------------------------------- saved splits
def split_file_name(kind: str, seed: int, ratios: str, variant: str) -> str:
    """splits/<kind>_seed<seed>_<ratios>_<variant>.csv, relative to the cache."""
    return f"{SPLITS_DIR}/{kind}_seed{seed}_{ratios}_{variant}.csv"


def load_or_make_split(cache: str | Path, name: str, image_ids: Iterable[str],
                       make: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """Reuse the split saved as CACHE/name when it covers exactly `image_ids`, else make and save it.

    A saved split made for another set of images (e.g. another fusion that changes which images are
    normal) is an error rather than silently replaced: results computed on it would no longer match.
    """
    path = Path(cache) / name
    wanted = set(image_ids)
    if path.exists():
        try:
            saved = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise BtcxrError(f"{path}: not a readable split file ({exc})") from exc
        if list(saved.columns) != ["image_id", "split"]:
            raise BtcxrError(f"{path}: expected columns image_id,split, found {','.join(saved.columns)}")
        if set(saved["image_id"]) != wanted:
            extra = len(set(saved["image_id"]) - wanted)
            missing = len(wanted - set(saved["image_id"]))
            raise BtcxrError(
                f"{path}: this saved split was made for other images ({missing} images missing, {extra} "
                f"unknown); delete it to make a new split, or choose another --seed")
        log.info("reusing the split saved in %s", path)
        return saved
    frame = make()
    write_csv(path, frame[["image_id", "split"]])
    log.info("saved the split in %s", path)
    return frame[["image_id", "split"]]


# ----------------------------------------------------------------------------------------------- NIH
def nih_split(index: pd.DataFrame, *, val_fraction: float = 0.1, seed: int = 0,
              reserve: Iterable[str] = ()) -> pd.DataFrame:
    """NIH parts: image_id, split in {"train", "val", "test", "reserved"}.

    index: columns image_id, patient_id, official_split ("train_val" or "test"). "test" is the official
    test list; "val" a seeded patient-level share (val_fraction of the patients) of train_val; "reserved"
    the images the user reserves for evaluation (excluded from pre-training and probe training).
    """
    from sklearn.model_selection import GroupShuffleSplit

    if not 0 < val_fraction < 1:
        raise BtcxrError(f"--val-fraction {val_fraction}: expected a number between 0 and 1")
    unknown = index.loc[~index["official_split"].isin(["train_val", "test"]), "image_id"]
    if len(unknown):
        raise BtcxrError(
            f"{len(unknown)} NIH images are in neither train_val_list.txt nor test_list.txt "
            f"(first: {unknown.iloc[0]}); the official patient-level lists are needed for the split: put both "
            "files below --root (or use `btcxr prepare folder` to prepare images for pre-training only)")
    frame = index[["image_id", "patient_id", "official_split"]].sort_values("image_id", kind="stable")
    frame = frame.reset_index(drop=True)
    split = np.where(frame["official_split"].eq("test"), "test", "train").astype(object)
    reserved = frame["image_id"].isin(set(reserve)).to_numpy()
    split[reserved] = "reserved"
    pool = np.flatnonzero(split == "train")
    if len(pool):
        groups = frame["patient_id"].to_numpy()[pool]
        if len(np.unique(groups)) < 2:
            raise BtcxrError("NIH train_val holds fewer than 2 patients: no patient-level val part possible")
        splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
        _, val_idx = next(splitter.split(pool, groups=groups))
        split[pool[val_idx]] = "val"
    return pd.DataFrame({"image_id": frame["image_id"], "split": split})


def nih_split_name(seed: int, val_fraction: float, reserve: Iterable[str]) -> str:
    """File name of an NIH split: the reserved list, when given, is part of its identity (a hash)."""
    reserve = sorted(set(reserve))
    variant = "official"
    if reserve:
        variant = "reserve" + hashlib.sha1("\n".join(reserve).encode()).hexdigest()[:8]
    return split_file_name("nih", seed, f"val{100 * val_fraction:g}", variant)


# ----------------------------------------------------------------------------------------------- VinDr
def vindr_multihot(fused: pd.DataFrame, image_ids: Sequence[str] | None = None,
                   classes: Sequence[str] = VINDR_CLASSES) -> pd.DataFrame:
    """Image-level labels of fused annotations: a bool frame (index image_id) with the class names
    (class_id order, "No finding" excluded) as columns plus "normal" (no finding box left). Images
    listed in image_ids but absent from `fused` count as normal."""
    ids = pd.Index(sorted(set(fused["image_id"]) if image_ids is None else image_ids), name="image_id")
    boxes = fused[fused["class_name"] != NO_FINDING]
    table = pd.crosstab(boxes["image_id"], boxes["class_id"].astype(int)).reindex(
        index=ids, columns=range(len(classes)), fill_value=0) > 0
    table.columns = list(classes)
    table["normal"] = ~table.any(axis=1)
    return table


def vindr_split(fused: pd.DataFrame, *, ratios: Sequence[float] = DEFAULT_VINDR_RATIOS, seed: int = 0,
                with_normals: bool = False, official_test: pd.DataFrame | None = None,
                classes: Sequence[str] = VINDR_CLASSES) -> pd.DataFrame:
    """VinDr parts: image_id, split in {"train", "val", "test"}.

    fused: fused annotations of the training images (every image appears; normal = only class 14).
    Without normals, all-normal images are left out (the paper's setting). With official_test (the fused
    consensus annotations of the 3,000 official test images), those form the test part and the training
    images are split train/val in the ratio of ratios[0]:ratios[1].
    """
    ratios = parse_ratios(ratios)
    labels = vindr_multihot(fused, classes=classes)
    if not with_normals:
        labels = labels[~labels["normal"]]
    # "normal" is a label column too, so normal images are spread like any class when kept.
    y = labels.to_numpy()
    parts = [0, 1] if official_test is not None else [0, 1, 2]
    sizes = exact_sizes(len(labels), [ratios[p] for p in parts])
    folds = stratified_parts(y, sizes, seed)
    out = pd.DataFrame({"image_id": labels.index.to_numpy(),
                        "split": np.asarray(PART_NAMES, dtype=object)[folds]})
    if official_test is not None:
        test = vindr_multihot(official_test, classes=classes)
        if not with_normals:
            test = test[~test["normal"]]
        overlap = set(test.index) & set(out["image_id"])
        if overlap:
            raise BtcxrError(f"{len(overlap)} images are both in the official test and the training set "
                             f"(first: {sorted(overlap)[0]})")
        out = pd.concat([out, pd.DataFrame({"image_id": test.index.to_numpy(), "split": "test"})])
    return out.sort_values("image_id", kind="stable").reset_index(drop=True)


def vindr_split_name(seed: int, ratios: Sequence[float], with_normals: bool, official_test: bool) -> str:
    kind = "vindr-officialtest" if official_test else "vindr"
    return split_file_name(kind, seed, ratios_tag(parse_ratios(ratios)),
                           "normals" if with_normals else "nonormals")


# ----------------------------------------------------------------------------------------------- fractions
def _labels_multihot(labels: pd.Series) -> np.ndarray:
    """Pipe-joined label names -> bool matrix over the names present (any vocabulary, empty allowed)."""
    from sklearn.preprocessing import MultiLabelBinarizer

    sets = [[name for name in text.split("|") if name] for text in labels.fillna("").astype(str)]
    binarizer = MultiLabelBinarizer()  # sorted class names; 20x faster than Series.str.get_dummies
    y = binarizer.fit_transform(sets)
    return np.asarray(y, dtype=bool).reshape(len(sets), len(binarizer.classes_))


def fraction_order(image_ids: Sequence[str], labels: pd.Series | np.ndarray | None, seed: int) -> list[str]:
    """One seeded ordering of image_ids whose prefixes of ceil(f * n) ids, f in FRACTIONS, are each
    stratified over the labels: the strata (1 %, the next 4 %, the next 5 %, ...) come from one iterative
    stratification with exact sizes, and each stratum is shuffled."""
    ids = np.asarray(image_ids, dtype=object)
    n = len(ids)
    if n == 0:
        return []
    if labels is None:
        y = np.zeros((n, 0), dtype=bool)
    elif isinstance(labels, pd.Series):
        y = _labels_multihot(labels.reset_index(drop=True))
    else:
        y = np.asarray(labels, dtype=bool).reshape(n, -1)
    # Sort first, so the order depends on the ids and labels, not on the row order it was given in.
    sort = np.argsort(ids, kind="stable")
    ids, y = ids[sort], y[sort]
    cum = sorted({max(1, math.ceil(f * n)) for f in FRACTIONS} | {n})
    sizes = np.diff([0, *cum])
    folds = stratified_parts(y, sizes, seed)
    rng = np.random.RandomState(seed + 1)
    order: list[str] = []
    for k in range(len(sizes)):
        members = ids[folds == k]
        order.extend(members[rng.permutation(len(members))].tolist())
    return order


def label_fraction_ids(cache_or_manifest: str | Path | pd.DataFrame, fraction: float, seed: int = 0,
                       split: str = "train", among: Iterable[str] | None = None) -> list[str]:
    """The first ceil(fraction * n) ids (at least 1) of the seeded stratified ordering of a part.

    cache_or_manifest: a cache directory or its manifest (columns image_id, split, labels).
    among: restrict to these ids before taking the fraction (e.g. VinDr images with boxes); the
    ordering is the part's, so the subsets stay nested.
    """
    if not 0 < fraction <= 1:
        raise BtcxrError(f"label fraction {fraction}: expected a number in (0, 1]")
    cache = None
    if isinstance(cache_or_manifest, pd.DataFrame):
        manifest = cache_or_manifest
    else:
        cache = Path(cache_or_manifest)
        manifest = read_manifest(cache)
    part = manifest[manifest["split"] == split]
    if part.empty:
        raise BtcxrError(f"split {split!r} holds no images (splits present: "
                         f"{', '.join(sorted(set(manifest['split']) - {''})) or 'none'})")
    labels = part["labels"] if "labels" in part else None
    order = None
    saved = cache / SPLITS_DIR / f"order_{split}_seed{seed}.csv" if cache is not None else None
    if saved is not None and saved.is_file():
        # Computing the ordering takes seconds on NIH's 78k images: reuse it while the part is the same.
        order = pd.read_csv(saved, dtype=str, keep_default_na=False)["image_id"].tolist()
        if len(order) != len(part) or set(order) != set(part["image_id"]):
            order = None
    if order is None:
        order = fraction_order(part["image_id"].tolist(), labels, seed)
        if saved is not None:
            try:
                write_csv(saved, pd.DataFrame({"image_id": order}))
            except OSError as exc:  # a read-only cache still works, just slower
                log.debug("cannot save the fraction order in %s: %s", saved, exc)
    if among is not None:
        keep = set(among)
        order = [i for i in order if i in keep]
    if fraction >= 1:
        return order
    return order[: max(1, math.ceil(fraction * len(order)))] if order else []
