"""Splits and label fractions, on the real VinDr train.csv and NIH Data_Entry labels."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from btcxr.data import splits
from btcxr.data.classes import VINDR_CLASSES
from btcxr.errors import BtcxrError


@pytest.fixture(scope="module")
def vindr_fused(vindr_real) -> pd.DataFrame:
    """The real Kaggle train.csv (conftest), readers fused by WBF (iou 0.4), as prepare does."""
    from btcxr.data.fusion import fuse_readers

    return fuse_readers(vindr_real, "wbf", 0.4)


@pytest.fixture(scope="module")
def vindr_labels(vindr_fused) -> pd.DataFrame:
    return splits.vindr_multihot(vindr_fused)


@pytest.fixture(scope="module")
def vindr_parts(vindr_fused) -> pd.DataFrame:
    return splits.vindr_split(vindr_fused, ratios=(70, 15, 15), seed=0, with_normals=False)


def _share_deviation(labels: pd.DataFrame, assignment: np.ndarray) -> float:
    """Mean over parts and classes of |class share in the part - class share overall|."""
    overall = labels.mean()
    return float(np.mean([(labels[assignment == p].mean() - overall).abs().mean() for p in np.unique(assignment)]))


def test_vindr_split_sizes_disjoint_and_paper_counts(vindr_labels, vindr_parts):
    abnormal = vindr_labels[~vindr_labels["normal"]]
    assert len(abnormal) == 4394  # the paper's abnormal images: 4,394 of the 15,000 have a finding
    assert vindr_parts["image_id"].is_unique
    assert set(vindr_parts["image_id"]) == set(abnormal.index)
    counts = vindr_parts["split"].value_counts()
    for part, ratio in zip(("train", "val", "test"), (0.70, 0.15, 0.15)):
        assert abs(counts[part] - ratio * 4394) < 1  # within rounding
    assert counts.sum() == 4394


def test_vindr_split_is_stratified_better_than_random(vindr_labels, vindr_parts):
    labels = vindr_labels.loc[vindr_parts["image_id"], VINDR_CLASSES].astype(float)
    ours = _share_deviation(labels, vindr_parts["split"].to_numpy())
    rng = np.random.default_rng(0)
    randoms = [_share_deviation(labels, rng.permutation(vindr_parts["split"].to_numpy())) for _ in range(5)]
    assert ours < min(randoms) / 3, (ours, randoms)
    # Every class's share in every part within 1.5 points of its overall share (rare classes included).
    overall = labels.mean()
    for part in ("train", "val", "test"):
        share = labels[vindr_parts["split"].to_numpy() == part].mean()
        assert (share - overall).abs().max() < 0.015, part


def test_vindr_split_with_normals_keeps_and_spreads_them(vindr_fused, vindr_labels):
    parts = splits.vindr_split(vindr_fused, seed=0, with_normals=True)
    assert len(parts) == 15000
    normal = vindr_labels.loc[parts["image_id"], "normal"].to_numpy()
    for part in ("train", "val", "test"):
        assert abs(normal[parts["split"].to_numpy() == part].mean() - 10606 / 15000) < 0.005


def test_vindr_split_deterministic_and_seeded(vindr_fused, vindr_parts):
    again = splits.vindr_split(vindr_fused.sample(frac=1.0, random_state=3), ratios=(70, 15, 15), seed=0)
    pd.testing.assert_frame_equal(again, vindr_parts)  # row order of the input does not matter
    other = splits.vindr_split(vindr_fused, ratios=(70, 15, 15), seed=1)
    assert (other.set_index("image_id")["split"] != vindr_parts.set_index("image_id")["split"]).mean() > 0.2


def test_vindr_split_official_test_takes_the_test_part():
    train = pd.DataFrame({"image_id": [f"a{i}" for i in range(20)], "class_id": [i % 3 for i in range(20)],
                          "class_name": [VINDR_CLASSES[i % 3] for i in range(20)]})
    test = pd.DataFrame({"image_id": ["t1", "t2"], "class_id": [0, 14], "class_name": ["Aortic enlargement",
                                                                                        "No finding"]})
    parts = splits.vindr_split(train, ratios=(70, 15, 15), seed=0, official_test=test).set_index("image_id")
    assert parts.loc["t1", "split"] == "test" and "t2" not in parts.index  # normals dropped by default
    train_parts = parts.drop(index="t1")["split"].value_counts()
    assert train_parts.to_dict() == {"train": round(20 * 70 / 85), "val": 20 - round(20 * 70 / 85)}


def test_parse_ratios_and_names():
    assert splits.parse_ratios("70,15,15") == pytest.approx((0.7, 0.15, 0.15))
    assert splits.parse_ratios("0.8,0.2,0") == pytest.approx((0.8, 0.2, 0.0))
    for bad in ("70,30", "a,b,c", "-1,50,51", "0,50,50"):
        with pytest.raises(BtcxrError, match="--ratios"):
            splits.parse_ratios(bad)
    assert splits.vindr_split_name(0, (70, 15, 15), False, False) == "splits/vindr_seed0_70-15-15_nonormals.csv"
    assert splits.vindr_split_name(2, (80, 10, 10), True, True) == "splits/vindr-officialtest_seed2_80-10-10_normals.csv"


def test_exact_sizes_sum_and_rounding():
    for n in (1, 7, 100, 4394):
        sizes = splits.exact_sizes(n, (0.7, 0.15, 0.15))
        assert sizes.sum() == n
        assert np.all(np.abs(sizes - np.array([0.7, 0.15, 0.15]) * n) < 1)


# ----------------------------------------------------------------------------------------------- NIH
@pytest.fixture(scope="module")
def nih_index(nih_real) -> pd.DataFrame:
    """Real Data_Entry labels and patients (conftest); official lists stand-in: patients with id % 4 == 0
    are test (the real lists do not ship with torchxrayvision; they are patient-level too)."""
    entry = nih_real.copy()
    entry["official_split"] = np.where(entry["patient_id"] % 4 == 0, "test", "train_val")
    return entry


def test_nih_split_patient_level_and_reserved(nih_index):
    reserve = set(nih_index["image_id"].iloc[[5, 50, 500]])
    first = splits.nih_split(nih_index, val_fraction=0.1, seed=0, reserve=reserve)
    parts = first.merge(nih_index, on="image_id")
    assert set(parts.loc[parts["image_id"].isin(reserve), "split"]) == {"reserved"}
    assert (parts.loc[~parts["image_id"].isin(reserve), "split"] == "test").sum() == (
        (nih_index["official_split"] == "test") & ~nih_index["image_id"].isin(reserve)).sum()
    main = parts[parts["split"] != "reserved"]
    per_patient = main.groupby("patient_id")["split"].nunique()
    assert per_patient.max() == 1  # no patient in two parts
    train_val_patients = main.loc[main["split"].isin(["train", "val"]), "patient_id"].nunique()
    val_patients = main.loc[main["split"] == "val", "patient_id"].nunique()
    assert val_patients == math.ceil(0.1 * train_val_patients)  # GroupShuffleSplit rounds the share up
    again = splits.nih_split(nih_index, val_fraction=0.1, seed=0, reserve=reserve)
    other = splits.nih_split(nih_index, val_fraction=0.1, seed=1, reserve=reserve)
    assert again.equals(first)
    assert (other["split"] != again["split"]).sum() > 1000


def test_nih_split_needs_official_lists(nih_index):
    index = nih_index.head(10).assign(official_split="")
    with pytest.raises(BtcxrError, match="train_val_list.txt nor test_list.txt"):
        splits.nih_split(index)


# ----------------------------------------------------------------------------------------------- fractions
def test_label_fractions_nested_sized_seeded_and_stratified(vindr_labels, vindr_parts):
    train_ids = vindr_parts.loc[vindr_parts["split"] == "train", "image_id"]
    lab = vindr_labels.loc[train_ids, VINDR_CLASSES]
    manifest = pd.DataFrame({"image_id": train_ids.to_numpy(), "split": "train",
                             "labels": ["|".join(np.array(VINDR_CLASSES)[row]) for row in lab.to_numpy()]})
    n = len(manifest)
    previous: set[str] = set()
    for f in splits.FRACTIONS:
        ids = splits.label_fraction_ids(manifest, f, seed=0)
        assert len(ids) == max(1, math.ceil(f * n)) and len(set(ids)) == len(ids)
        assert previous <= set(ids)  # nested
        previous = set(ids)
    assert previous == set(train_ids)
    assert splits.label_fraction_ids(manifest.sample(frac=1, random_state=1), 0.1, seed=0) == \
        splits.label_fraction_ids(manifest, 0.1, seed=0)
    assert set(splits.label_fraction_ids(manifest, 0.1, seed=1)) != set(splits.label_fraction_ids(manifest, 0.1, 0))
    assert len(splits.label_fraction_ids(manifest.head(10), 0.01, seed=0)) == 1  # at least one image
    # The 10 % subset keeps class shares: better than random 10 % subsets.
    sub = lab.loc[splits.label_fraction_ids(manifest, 0.1, seed=0)].astype(float)
    dev = (sub.mean() - lab.mean()).abs().mean()
    rng = np.random.default_rng(0)
    random_devs = [(lab.iloc[rng.permutation(n)[: len(sub)]].astype(float).mean() - lab.mean()).abs().mean()
                   for _ in range(5)]
    assert dev < min(random_devs) / 2, (dev, random_devs)
    with pytest.raises(BtcxrError, match="label fraction"):
        splits.label_fraction_ids(manifest, 0.0, seed=0)


def test_saved_split_is_reused_and_checked(tmp_path):
    calls = []

    def make():
        calls.append(1)
        return pd.DataFrame({"image_id": ["a", "b"], "split": ["train", "val"]})

    first = splits.load_or_make_split(tmp_path, "splits/x.csv", ["a", "b"], make)
    again = splits.load_or_make_split(tmp_path, "splits/x.csv", ["b", "a"], make)
    assert len(calls) == 1 and first.equals(again)
    assert (tmp_path / "splits" / "x.csv").read_text() == "image_id,split\na,train\nb,val\n"
    with pytest.raises(BtcxrError, match="made for other images"):
        splits.load_or_make_split(tmp_path, "splits/x.csv", ["a", "c"], make)
