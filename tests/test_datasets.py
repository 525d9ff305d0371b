"""Torch datasets over a prepared cache: what each item holds, checked against the cache files."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fixtures_cache import make_nih, make_vindr_kaggle
from PIL import Image

from btcxr.data.cache import PrepareSettings, prepare
from btcxr.data.cache_format import read_manifest
from btcxr.data.classes import NIH_LABELS
from btcxr.data.datasets import NihClassification, UnlabeledImages, VindrDetection
from btcxr.data.splits import label_fraction_ids
from btcxr.errors import BtcxrError


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("caches")
    make_nih(base / "nih", n=20, patients=10, n_test_patients=3)
    make_vindr_kaggle(base / "vindr", n=15)
    out = {"nih": base / "c_nih", "vindr": base / "c_vindr", "vindr16": base / "c_vindr16"}
    prepare(PrepareSettings("nih", str(base / "nih"), str(out["nih"]), size=48, workers=1))
    prepare(PrepareSettings("vindr", str(base / "vindr"), str(out["vindr"]), size=64, workers=1, with_normals=True))
    prepare(PrepareSettings("vindr", str(base / "vindr"), str(out["vindr16"]), size=32, bits=16, workers=1))
    return out


def test_unlabeled_images_default_excludes_test(caches):
    manifest = read_manifest(caches["nih"])
    data = UnlabeledImages(caches["nih"])
    assert set(data.image_ids) == set(manifest.loc[manifest["split"].isin(["train", "val"]), "image_id"])
    assert not set(data.image_ids) & set(manifest.loc[manifest["split"] == "test", "image_id"])
    image = data[0]
    expected = np.asarray(Image.open(caches["nih"] / manifest.set_index("image_id").loc[data.image_ids[0], "file"]))
    assert image.dtype == torch.uint8 and image.shape == (1, *expected.shape)
    assert torch.equal(image[0], torch.from_numpy(expected.copy()))
    pairs = UnlabeledImages(caches["nih"], splits=("train",), transform=lambda x: (x.flip(-1), x))
    first, second = pairs[0]
    assert torch.equal(first, second.flip(-1))
    assert len(UnlabeledImages(caches["nih"], splits=["train", "val", "test"])) == len(manifest)


def test_nih_classification_targets_and_fractions(caches):
    manifest = read_manifest(caches["nih"]).set_index("image_id")
    data = NihClassification(caches["nih"], "train")
    assert len(data) == (manifest["split"] == "train").sum()
    for k in range(len(data)):
        _, target = data[k]
        names = manifest.loc[data.image_ids[k], "labels"].split("|")
        expected = torch.tensor([1.0 if name in names else 0.0 for name in NIH_LABELS])
        assert target.dtype == torch.float32 and torch.equal(target, expected)
    n = len(data)
    small = NihClassification(caches["nih"], "train", fraction=0.1, seed=0)
    half = NihClassification(caches["nih"], "train", fraction=0.5, seed=0)
    assert len(small) == math.ceil(0.1 * n) and len(half) == math.ceil(0.5 * n)
    assert set(small.image_ids) <= set(half.image_ids)
    assert small.image_ids == label_fraction_ids(caches["nih"], 0.1, seed=0)
    assert (caches["nih"] / "splits" / "order_train_seed0.csv").is_file()  # saved, then reused
    assert small.image_ids == label_fraction_ids(read_manifest(caches["nih"]), 0.1, seed=0)
    test = NihClassification(caches["nih"], "test")
    assert set(test.image_ids) == set(manifest.index[manifest["split"] == "test"])
    with pytest.raises(BtcxrError, match="split 'dev' holds no images"):
        NihClassification(caches["nih"], "dev")
    with pytest.raises(BtcxrError, match="needs a cache prepared from nih"):
        NihClassification(caches["vindr"], "train")


def test_vindr_detection_targets(caches):
    cache = caches["vindr"]
    manifest = read_manifest(cache).set_index("image_id")
    ann = pd.read_csv(cache / "annotations.csv")
    data = VindrDetection(cache, "train")
    train = manifest.index[manifest["split"] == "train"]
    positives = set(ann.loc[ann["class_id"] != 14, "image_id"]) & set(train)
    assert set(data.image_ids) == positives
    for k in range(len(data)):
        image, target = data[k]
        row = manifest.loc[target["image_id"]]
        png = np.asarray(Image.open(cache / row["file"]))
        assert image.dtype == torch.float32 and image.shape == (1, *png.shape)
        assert torch.allclose(image[0], torch.from_numpy(png.astype(np.float32) / 255))
        ref = ann[ann["image_id"] == target["image_id"]]
        expected = ref[["x_min", "y_min", "x_max", "y_max"]].to_numpy() * row["scale"]
        assert np.allclose(target["boxes"].numpy(), expected, atol=1e-4)
        assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == ref["class_id"].tolist()
        assert target["orig_size"] == (row["orig_height"], row["orig_width"])
        assert target["scale"] == pytest.approx(row["scale"])
    assert data.aspect_ratios() == pytest.approx(
        [manifest.loc[i, "orig_width"] / manifest.loc[i, "orig_height"] for i in data.image_ids])

    with_neg = VindrDetection(cache, "train", include_negatives=True)
    negatives = set(with_neg.image_ids) - positives
    assert negatives and negatives == set(train) - positives
    _, target = with_neg[with_neg.image_ids.index(sorted(negatives)[0])]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)

    flipped = VindrDetection(cache, "train", transform=lambda im, t: (im.flip(-1), {**t, "flipped": True}))
    image, target = flipped[0]
    assert target["flipped"] and torch.equal(image, data[0][0].flip(-1))


def test_vindr_detection_16_bit_and_fraction(caches):
    data = VindrDetection(caches["vindr16"], "train")
    image, _ = data[0]
    png = np.asarray(Image.open(caches["vindr16"] / data.rows["file"].iloc[0]))
    assert png.dtype == np.uint16
    assert torch.allclose(image[0], torch.from_numpy(png.astype(np.float32) / 65535))
    assert len(VindrDetection(caches["vindr16"], "train", fraction=0.01)) == 1
    unlabeled = UnlabeledImages(caches["vindr16"])
    assert unlabeled[0].dtype == torch.uint16


def test_missing_cache_files_are_clear_errors(caches, tmp_path):
    with pytest.raises(BtcxrError, match="manifest.csv is missing"):
        UnlabeledImages(tmp_path)
    with pytest.raises(BtcxrError, match="annotations.csv is missing"):
        no_ann = tmp_path / "c"
        shutil.copytree(caches["vindr"], no_ann)
        (no_ann / "annotations.csv").unlink()
        VindrDetection(no_ann, "train")


def test_damaged_annotations_csv_is_a_clear_error(tmp_path):
    from btcxr.data.cache_format import read_annotations
    from btcxr.errors import BtcxrError

    (tmp_path / "annotations.csv").write_bytes(b"image_id,class_id\n\"unterminated,1\n")
    with pytest.raises(BtcxrError, match="annotations.csv: cannot parse the annotations"):
        read_annotations(tmp_path)
