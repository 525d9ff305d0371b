"""Images and labels for the probe: the NIH splits of a cache and the train / eval transforms."""

from __future__ import annotations

import logging
from pathlib import Path

from torch.utils.data import Dataset
from torchvision.transforms import v2

from btcxr.classify.config import AugmentConfig, DataConfig
from btcxr.data.datasets import NihClassification, to_unit_float
from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)


def eval_transform(size: int) -> v2.Transform:
    """Shorter side to `size`, then the central square (caches keep the aspect ratio)."""
    return v2.Compose([v2.Lambda(to_unit_float), v2.Resize(size, antialias=True), v2.CenterCrop(size)])


def train_transform(size: int, augment: AugmentConfig) -> v2.Transform:
    """Random resized crop + horizontal flip (the Barlow Twins evaluation recipe); eval view when off."""
    if not augment.train:
        return eval_transform(size)
    return v2.Compose([
        v2.Lambda(to_unit_float),
        v2.RandomResizedCrop(size, scale=tuple(augment.crop_scale), antialias=True),
        v2.RandomHorizontalFlip(augment.flip),
    ])


def check_nih_cache(cache: str | Path) -> Path:
    """Fail early, naming the file, when `cache` holds no NIH image labels (e.g. a VinDr or unlabeled
    cache). NihClassification checks the rest: prepare.json's dataset and the label names."""
    from btcxr.data.cache_format import MANIFEST, read_manifest
    from btcxr.data.classes import NIH_LABELS

    if not str(cache):
        raise BtcxrError("no cache given: set data.cache=DIR (a cache written by `btcxr prepare nih`)")
    cache = Path(cache)
    manifest = read_manifest(cache)
    if not manifest["labels"].str.strip().ne("").any():
        raise BtcxrError(f"{cache / MANIFEST}: every labels field is empty; the probe needs an NIH cache "
                         f"with image labels (pipe-joined names from: {', '.join(NIH_LABELS)}), written by "
                         f"`btcxr prepare nih`")
    return cache


def nih_splits(data: DataConfig, augment: AugmentConfig, size: int, train_augment: bool = True) -> dict[str, Dataset]:
    """The train part (data.fraction of it, nested and seeded by data.fraction_seed), val and test, at size px.

    train_augment=False gives the training images their eval view (for feature caching).
    """
    cache = check_nih_cache(data.cache)
    train_tf = train_transform(size, augment) if train_augment else eval_transform(size)
    eval_tf = eval_transform(size)
    return {
        "train": NihClassification(cache, data.train_split, fraction=data.fraction, seed=data.fraction_seed,
                                   transform=train_tf),
        "val": NihClassification(cache, data.val_split, transform=eval_tf),
        "test": NihClassification(cache, data.test_split, transform=eval_tf),
    }
