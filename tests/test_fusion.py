"""Radiologist fusion against direct ensemble-boxes calls on real VinDr readers, and the No-finding rule."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from ensemble_boxes import nms, weighted_boxes_fusion

from btcxr.data.fusion import FUSED_COLUMNS, FusionSpec, fuse_readers, parse_fusion
from btcxr.errors import BtcxrError

BOX = ["x_min", "y_min", "x_max", "y_max"]


@pytest.fixture(scope="module")
def sample(vindr_real) -> pd.DataFrame:
    """All rows of 300 real images with at least one box (a deterministic pick), plus 50 all-negative images."""
    has_box = vindr_real.loc[vindr_real["class_id"] != 14, "image_id"].unique()
    negative = np.setdiff1d(vindr_real["image_id"].unique(), has_box)
    rng = np.random.default_rng(2024)
    chosen = set(rng.choice(np.sort(has_box), 300, replace=False)) | set(rng.choice(np.sort(negative), 50, replace=False))
    return vindr_real[vindr_real["image_id"].isin(chosen)].reset_index(drop=True)


def reference(ann: pd.DataFrame, method: str, iou_thr: float = 0.4) -> pd.DataFrame:
    """Direct ensemble-boxes calls, one per image and class, written out without btcxr's code.

    Every reader of the image is one model (empty list when it drew nothing of that class); readers in
    R1, R2, .. R17 order; each reader's boxes sorted by coordinates; coordinates divided by the image's
    largest box coordinate.
    """
    rows = []
    for image_id, img in ann.groupby("image_id", sort=False):
        rad = img["rad_id"].to_numpy(dtype=object)
        cls = img["class_id"].to_numpy()
        xyxy = img[BOX].to_numpy(dtype=np.float64)
        readers = sorted(set(rad), key=lambda r: int(r[1:]))
        if (cls == 14).all():
            continue
        scale = xyxy[cls != 14][:, 2:].max()
        for c in sorted(set(cls[cls != 14])):
            b_list, s_list, l_list = [], [], []
            for r in readers:
                mine = xyxy[(rad == r) & (cls == c)]
                mine = mine[np.lexsort(mine.T[::-1])] if len(mine) else mine.reshape(0, 4)  # by x_min, y_min, ..
                b_list.append(mine / scale)
                s_list.append(np.ones(len(mine)))
                l_list.append(np.full(len(mine), c))
            if method == "wbf":
                fb, fs, fl = weighted_boxes_fusion(b_list, s_list, l_list, iou_thr=iou_thr, skip_box_thr=0.0)
            else:
                fb, fs, fl = nms(b_list, s_list, l_list, iou_thr=iou_thr)
            for box, score, label in zip(fb, fs, fl):
                rows.append([image_id, int(label), *(np.asarray(box, dtype=np.float64) * scale), float(score)])
    return pd.DataFrame(rows, columns=["image_id", "class_id", *BOX, "score"])


def canonical(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["image_id", "class_id", *BOX, "score"]
    return df[cols].sort_values(cols).reset_index(drop=True)


@pytest.mark.parametrize("method", ["wbf", "nms"])
def test_matches_direct_ensemble_boxes_calls(sample, method):
    fused = fuse_readers(sample, method)
    assert list(fused.columns) == FUSED_COLUMNS
    got = canonical(fused[fused["class_id"] != 14])
    ref = canonical(reference(sample, method))
    assert len(got) == len(ref) > 300
    assert (got["image_id"].to_numpy() == ref["image_id"].to_numpy()).all()
    assert (got["class_id"].to_numpy() == ref["class_id"].to_numpy()).all()
    np.testing.assert_allclose(got[BOX].to_numpy(), ref[BOX].to_numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["score"].to_numpy(), ref["score"].to_numpy(), rtol=0, atol=1e-12)
    if method == "wbf":
        # Three readers per image: a fused box is backed by 1, 2 or 3 of them.
        assert set(np.round(got["score"] * 3, 6)) == {1.0, 2.0, 3.0}
        assert len(got) < int((sample["class_id"] != 14).sum())
    # Every image appears; negative ones exactly once, as "No finding".
    assert set(fused["image_id"]) == set(sample["image_id"])
    neg = fused[fused["class_id"] == 14]
    assert neg["image_id"].is_unique and len(neg) == 50
    assert neg[BOX].isna().all().all() and (neg["score"] == 1.0).all() and (neg["class_name"] == "No finding").all()


def test_result_does_not_depend_on_row_order(sample):
    shuffled = sample.sample(frac=1.0, random_state=7)
    a = canonical(fuse_readers(sample, "wbf").fillna(-1))
    b = canonical(fuse_readers(shuffled, "wbf").fillna(-1))
    pd.testing.assert_frame_equal(a, b)


def test_union_and_single_reader(sample, caplog):
    union = fuse_readers(sample, "union")
    boxes = sample[sample["class_id"] != 14]
    assert int((union["class_id"] != 14).sum()) == len(boxes)
    assert (union.loc[union["class_id"] != 14, "score"] == 1.0).all()
    pd.testing.assert_frame_equal(canonical(union[union["class_id"] != 14]),
                                  canonical(boxes.assign(score=1.0)), check_dtype=False)

    with caplog.at_level(logging.INFO, logger="btcxr"):
        r8 = fuse_readers(sample, "reader:R8")
    read_by_r8 = set(sample.loc[sample["rad_id"] == "R8", "image_id"])
    assert set(r8["image_id"]) == read_by_r8
    n_all = sample["image_id"].nunique()
    assert f"read {len(read_by_r8)} of {n_all} images; the other {n_all - len(read_by_r8)} are dropped" in caplog.text
    r8_boxes = sample[(sample["rad_id"] == "R8") & (sample["class_id"] != 14)]
    pd.testing.assert_frame_equal(canonical(r8[r8["class_id"] != 14]), canonical(r8_boxes.assign(score=1.0)),
                                  check_dtype=False)
    r8_negative = read_by_r8 - set(r8_boxes["image_id"])
    assert set(r8.loc[r8["class_id"] == 14, "image_id"]) == r8_negative
    with pytest.raises(BtcxrError, match="unknown reader 'R99'.*R1, R2, R3"):
        fuse_readers(sample, "reader:R99")


def _table(rows):
    return pd.DataFrame(rows, columns=["image_id", "rad_id", "class_id", *BOX])


def test_no_finding_rule_and_agreement_threshold():
    nan = np.nan
    ann = _table([
        # all negative
        ["neg", "R1", 14, nan, nan, nan, nan], ["neg", "R2", 14, nan, nan, nan, nan], ["neg", "R3", 14, nan, nan, nan, nan],
        # one reader drew a box
        ["one", "R1", 3, 100, 100, 500, 400], ["one", "R2", 14, nan, nan, nan, nan], ["one", "R3", 14, nan, nan, nan, nan],
        # two readers agree (IoU 0.8), one says nothing
        ["two", "R1", 0, 100, 100, 200, 200], ["two", "R2", 0, 110, 100, 210, 200], ["two", "R3", 14, nan, nan, nan, nan],
    ])
    fused = fuse_readers(ann, "wbf")
    assert fused["image_id"].tolist() == ["neg", "one", "two"]  # first-appearance order
    one = fused[fused["image_id"] == "one"].iloc[0]
    assert one["class_id"] == 3 and one["score"] == pytest.approx(1 / 3)
    assert [one[c] for c in BOX] == [100, 100, 500, 400]
    two = fused[fused["image_id"] == "two"].iloc[0]
    assert two["score"] == pytest.approx(2 / 3)
    assert [two[c] for c in BOX] == pytest.approx([105, 100, 205, 200])  # the mean of two equal-weight boxes
    neg = fused[fused["image_id"] == "neg"].iloc[0]
    assert neg["class_id"] == 14 and neg["class_name"] == "No finding" and np.isnan(neg["x_min"]) and neg["score"] == 1

    kept = fuse_readers(ann, "wbf", skip_box_thr=0.5)  # at least two of three readers
    assert kept.groupby("image_id")["class_id"].apply(list).to_dict() == {"neg": [14], "one": [14], "two": [0]}
    # NMS keeps one of the two agreeing boxes, unchanged.
    n = fuse_readers(ann, "nms")
    two_nms = n[n["image_id"] == "two"]
    assert len(two_nms) == 1 and two_nms[BOX].values.tolist()[0] in ([100, 100, 200, 200], [110, 100, 210, 200])
    assert int((fuse_readers(ann, "union")["image_id"] == "two").sum()) == 2
    # With sizes, a box up to 1 px outside is accepted and clipped, by every method.
    sizes = pd.DataFrame({"image_id": ["neg", "one", "two"], "orig_width": [600, 499.5, 300],
                          "orig_height": [600, 400, 300]})
    for method in ("wbf", "nms", "union", "reader:R1"):
        one = fuse_readers(ann, method, sizes=sizes)
        assert one.loc[one["image_id"] == "one", BOX].values.tolist() == [[100, 100, 499.5, 400]], method


def test_max_coordinate_and_size_normalisation_agree(sample):
    """WBF/NMS are invariant to scaling each axis: dividing by the width/height or by the largest coordinate."""
    boxes = sample[sample["class_id"] != 14]
    ext = boxes.groupby("image_id")[["x_max", "y_max"]].max()
    rng = np.random.default_rng(0)
    sizes = pd.DataFrame({"image_id": sample["image_id"].unique()})
    sizes = sizes.join(ext, on="image_id").fillna(1000.0)
    sizes["orig_width"] = np.ceil(sizes["x_max"] + rng.integers(0, 400, len(sizes))).astype(int)
    sizes["orig_height"] = np.ceil(sizes["y_max"] + rng.integers(0, 400, len(sizes))).astype(int)
    for method in ("wbf", "nms"):
        a = canonical(fuse_readers(sample, method).fillna(-1))
        b = canonical(fuse_readers(sample, method, sizes=sizes).fillna(-1))
        assert (a["class_id"].to_numpy() == b["class_id"].to_numpy()).all()
        np.testing.assert_allclose(a[BOX].to_numpy(), b[BOX].to_numpy(), rtol=0, atol=2e-3)  # WBF averages in float32
        np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), rtol=0, atol=1e-12)
    # A common scale of the coordinates scales the fused boxes.
    doubled = sample.assign(**{c: sample[c] * 2 for c in BOX})
    a = canonical(fuse_readers(sample, "wbf").fillna(-1))
    b = canonical(fuse_readers(doubled, "wbf").fillna(-1))
    pos = a["class_id"] != 14
    np.testing.assert_allclose(b.loc[pos, BOX].to_numpy(), 2 * a.loc[pos, BOX].to_numpy(), rtol=1e-6)
    # A box outside its image is refused when sizes are given.
    small = sizes.assign(orig_width=1)
    with pytest.raises(BtcxrError, match="lies outside"):
        fuse_readers(sample, "wbf", sizes=small)


def test_full_real_file_every_image_appears(vindr_real):
    fused = fuse_readers(vindr_real, "wbf")
    assert fused["image_id"].nunique() == 15_000
    negatives = fused[fused["class_id"] == 14]
    assert len(negatives) == 10_606 and negatives["image_id"].is_unique
    assert int((fused["class_id"] != 14).sum()) < 36_096
    assert (fused["class_id"] != 14).groupby(fused["image_id"]).any().sum() == 4_394


@pytest.mark.parametrize("text,expected", [("wbf", FusionSpec("wbf")), (" NMS ", FusionSpec("nms")),
                                           ("union", FusionSpec("union")), ("reader:R8", FusionSpec("reader", "R8"))])
def test_parse_fusion(text, expected):
    assert parse_fusion(text) == expected
    assert str(parse_fusion(text)) == str(expected)


@pytest.mark.parametrize("text", ["", "wbf2", "reader:", "reader", "soft-nms", "R8"])
def test_parse_fusion_rejects(text):
    with pytest.raises(BtcxrError, match="unknown fusion method"):
        parse_fusion(text)
