"""Torch datasets over a prepared cache (see btcxr.data.cache_format and `btcxr prepare`).

Images are decoded with PIL from the cache's single-channel PNGs in __getitem__; nothing is held in
memory beyond the manifest. What each dataset hands to its transform:

- UnlabeledImages: uint8 (8-bit cache) or uint16 (16-bit cache) tensor (1, H, W); transform(image)
  returns whatever the view policy makes (e.g. a pair of views).
- NihClassification: the same integer tensor, transform(image); plus a float32 target (15,) in
  classes.NIH_LABELS order.
- VindrDetection: float32 tensor (1, H, W) in [0, 1] and a target dict (boxes in cache pixels, labels =
  VinDr class_id); transform(image, target) -> (image, target).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from btcxr.data.cache_format import read_annotations, read_manifest, read_settings
from btcxr.data.classes import NO_FINDING, VINDR_CLASSES
from btcxr.data.splits import label_fraction_ids
from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)

BOX_COLUMNS = ["x_min", "y_min", "x_max", "y_max"]
# Parts that are evaluation material: pre-training sees them only when prepare was told so.
EVALUATION_SPLITS = ("test", "reserved")


def load_cache_image(path: str | Path) -> torch.Tensor:
    """A cached PNG as a (1, H, W) uint8 or uint16 tensor."""
    try:
        with Image.open(path) as im:
            pixels = np.array(im)  # a copy: writable, as torch.from_numpy wants
    except (OSError, SyntaxError, ValueError) as exc:
        raise BtcxrError(f"cannot read cached image {path}: {exc}; rerun `btcxr prepare` to rewrite it") from exc
    if pixels.ndim != 2:
        raise BtcxrError(f"cached image {path} has shape {pixels.shape}; expected one channel")
    if pixels.dtype == np.int32:  # PIL's "I" mode for some 16-bit PNGs
        pixels = pixels.astype(np.uint16)
    return torch.from_numpy(pixels)[None]


def to_unit_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 / uint16 tensor -> float32 in [0, 1]."""
    top = 65535.0 if image.dtype == torch.uint16 else 255.0
    return image.to(torch.float32) / top


def _select_split(manifest: pd.DataFrame, split: str, cache: Path) -> pd.DataFrame:
    part = manifest[manifest["split"] == split]
    if part.empty:
        present = sorted(set(manifest["split"]) - {""})
        raise BtcxrError(f"{cache}: split {split!r} holds no images (splits in this cache: "
                         f"{', '.join(present) or 'none'})")
    return part


def _check_dataset(cache: Path, expected: str, what: str) -> dict[str, Any]:
    settings = read_settings(cache)
    found = settings.get("dataset")
    if found is not None and found != expected:
        raise BtcxrError(f"{cache}: {what} needs a cache prepared from {expected}, this one holds {found} "
                         f"(`btcxr prepare {expected} ...`)")
    return settings


class _CacheDataset(Dataset):
    """Shared part: the cache folder and, per item, its manifest row."""

    def __init__(self, cache: str | Path, rows: pd.DataFrame) -> None:
        self.cache = Path(cache)
        self.rows = rows.reset_index(drop=True)
        self.image_ids: list[str] = self.rows["image_id"].tolist()
        self._files = [str(self.cache / f) for f in self.rows["file"]]

    def __len__(self) -> int:
        return len(self._files)

    def load(self, index: int) -> torch.Tensor:
        """The cached image of item `index`, (1, H, W) uint8/uint16."""
        return load_cache_image(self._files[index])


class UnlabeledImages(_CacheDataset):
    """Images of a cache for self-supervised pre-training.

    splits: the parts to use; None takes those prepare recorded as safe for pre-training
    (prepare.json "pretrain_splits": train and val; test and reserved images only with
    --include-test-in-pretrain). Item: transform(image) with image a uint8/uint16 tensor (1, H, W).
    """

    def __init__(self, cache: str | Path, splits: Sequence[str] | None = None,
                 transform: Callable[[torch.Tensor], Any] | None = None) -> None:
        cache = Path(cache)
        manifest = read_manifest(cache)
        allowed = read_settings(cache).get("pretrain_splits", ["train", "val"])
        if splits is None:
            splits = allowed
        elif isinstance(splits, str):
            splits = [splits]
        leaking = [s for s in splits if s in EVALUATION_SPLITS and s not in allowed]
        if leaking:
            log.warning("pre-training on the %s split(s) of %s: these images are meant for evaluation",
                        ", ".join(leaking), cache)
        rows = manifest[manifest["split"].isin(list(splits))]
        if rows.empty:
            raise BtcxrError(f"{cache}: no images in split(s) {', '.join(splits)} (splits in this cache: "
                             f"{', '.join(sorted(set(manifest['split']) - {''})) or 'none'})")
        super().__init__(cache, rows)
        self.splits = list(splits)
        self.transform = transform

    def __getitem__(self, index: int) -> Any:
        image = self.load(index)
        return self.transform(image) if self.transform is not None else image


class LabelledImages(UnlabeledImages):
    """The pre-training images of an NIH cache with their labels, for supervised pre-training (the
    benchmark's positive control). Item: (image, target float32 (15,)) in classes.NIH_LABELS order."""

    def __init__(self, cache: str | Path, splits: Sequence[str] | None = None) -> None:
        from btcxr.data.nih import labels_multihot

        _check_dataset(Path(cache), "nih", "supervised pre-training")
        super().__init__(cache, splits)
        if not self.rows["labels"].fillna("").astype(str).str.strip().ne("").any():
            raise BtcxrError(f"{Path(cache) / 'manifest.csv'}: every labels field is empty; supervised "
                             "pre-training needs an NIH cache with image labels (`btcxr prepare nih`)")
        try:
            self.targets = labels_multihot(self.rows["labels"])
        except BtcxrError as exc:
            raise BtcxrError(f"{Path(cache) / 'manifest.csv'}: {exc}") from exc

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        return self.load(index), torch.from_numpy(self.targets[index].copy())


class NihClassification(_CacheDataset):
    """NIH ChestX-ray14 multi-label classification over a cache's part.

    fraction < 1 takes the nested, seeded, stratified label fraction of the part
    (splits.label_fraction_ids). Item: (transform(image), target float32 (15,)) with image a uint8/uint16
    tensor (1, H, W) and target in classes.NIH_LABELS order.
    """

    def __init__(self, cache: str | Path, split: str, fraction: float = 1.0, seed: int = 0,
                 transform: Callable[[torch.Tensor], Any] | None = None) -> None:
        from btcxr.data.nih import labels_multihot

        cache = Path(cache)
        _check_dataset(cache, "nih", "NIH classification")
        manifest = read_manifest(cache)
        part = _select_split(manifest, split, cache)
        if fraction < 1:
            keep = label_fraction_ids(manifest, fraction, seed, split=split)
            part = part.set_index("image_id").loc[keep].reset_index()
        super().__init__(cache, part)
        try:
            self.targets = labels_multihot(self.rows["labels"])
        except BtcxrError as exc:
            raise BtcxrError(f"{cache / 'manifest.csv'}: {exc}") from exc
        self.split, self.fraction, self.seed = split, fraction, seed
        self.transform = transform

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        image = self.load(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.from_numpy(self.targets[index].copy())


class VindrDetection(_CacheDataset):
    """VinDr-CXR detection over a cache's part (torchvision detection conventions).

    Item: (image float32 (1, H, W) in [0, 1], target) with target = {"boxes": float32 (N, 4) x_min,
    y_min, x_max, y_max in cache pixels (original box * scale), "labels": int64 (N,) VinDr class_id
    (0..13), "image_id": str, "scale": float, "orig_size": (orig_height, orig_width)}. Images without a
    finding box (negatives) are left out unless include_negatives, then with boxes of shape (0, 4).
    fraction < 1: nested seeded label fraction of the part, taken among the images this dataset serves.
    transform(image, target) -> (image, target).
    """

    def __init__(self, cache: str | Path, split: str, fraction: float = 1.0, seed: int = 0,
                 include_negatives: bool = False,
                 transform: Callable[[torch.Tensor, dict], tuple[Any, dict]] | None = None) -> None:
        cache = Path(cache)
        settings = _check_dataset(cache, "vindr", "VinDr detection")
        manifest = read_manifest(cache)
        annotations = read_annotations(cache)
        part = _select_split(manifest, split, cache)
        boxes = annotations[annotations[BOX_COLUMNS].notna().all(axis=1)
                            & (annotations["class_name"] != NO_FINDING)]
        boxes = boxes[boxes["image_id"].isin(set(part["image_id"]))]
        with_boxes = set(boxes["image_id"])
        if not include_negatives:
            part = part[part["image_id"].isin(with_boxes)]
            if part.empty:
                raise BtcxrError(f"{cache}: split {split!r} has no image with a finding box")
        if fraction < 1:
            keep = label_fraction_ids(manifest, fraction, seed, split=split, among=part["image_id"])
            part = part.set_index("image_id").loc[keep].reset_index()
        super().__init__(cache, part)
        scale = dict(zip(self.rows["image_id"], self.rows["scale"]))
        grouped = {k: g for k, g in boxes.groupby("image_id", sort=False)}
        self._boxes: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        for image_id in self.image_ids:
            g = grouped.get(image_id)
            if g is None:
                self._boxes.append(np.zeros((0, 4), dtype=np.float32))
                self._labels.append(np.zeros(0, dtype=np.int64))
            else:
                self._boxes.append((g[BOX_COLUMNS].to_numpy(np.float64) * scale[image_id]).astype(np.float32))
                self._labels.append(g["class_id"].to_numpy(np.int64))
        self.classes: list[str] = list(settings.get("classes", VINDR_CLASSES))
        self.split, self.fraction, self.seed = split, fraction, seed
        self.include_negatives = include_negatives
        self.transform = transform

    def aspect_ratios(self) -> list[float]:
        """Width / height of each item (from the manifest, no decoding), for aspect-ratio grouped batches."""
        return (self.rows["orig_width"] / self.rows["orig_height"]).astype(float).tolist()

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        image = to_unit_float(self.load(index))
        row = self.rows.iloc[index]
        target = {
            "boxes": torch.from_numpy(self._boxes[index].copy()),
            "labels": torch.from_numpy(self._labels[index].copy()),
            "image_id": self.image_ids[index],
            "scale": float(row["scale"]),
            "orig_size": (int(row["orig_height"]), int(row["orig_width"])),
        }
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target
