"""VinDr-CXR readers: the real Kaggle train.csv at full size, PhysioNet files, layouts and bad input."""

from __future__ import annotations

import gzip
import logging
import re

import numpy as np
import pandas as pd
import pytest

from btcxr.data.classes import VINDR_GLOBAL_LABELS, VINDR_LOCAL_LABELS
from btcxr.data.vindr import (
    KAGGLE_COLUMNS,
    check_boxes_inside,
    class_names,
    load_vindr,
    read_kaggle_train_csv,
    read_physionet_annotations,
    read_physionet_image_labels,
)
from btcxr.errors import BtcxrError

# The published rows per class of the real Kaggle train.csv
REAL_CLASS_ROWS = {0: 7162, 1: 279, 2: 960, 3: 5427, 4: 556, 5: 1000, 6: 1247, 7: 2483, 8: 2580, 9: 2203,
                   10: 2476, 11: 4842, 12: 226, 13: 4655, 14: 31818}


def test_real_train_csv_counts(vindr_real):
    df = vindr_real
    assert list(df.columns) == ["image_id", "rad_id", "class_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
    assert len(df) == 67_914
    assert df["image_id"].nunique() == 15_000
    assert (df.groupby("image_id")["rad_id"].nunique() == 3).all()
    assert df["rad_id"].nunique() == 17
    assert set(df["rad_id"]) == {f"R{i}" for i in range(1, 18)}
    boxes = df[df["class_id"] != 14]
    assert len(boxes) == 36_096
    assert boxes[["x_min", "y_min", "x_max", "y_max"]].notna().all().all()
    assert df.loc[df["class_id"] == 14, ["x_min", "y_min", "x_max", "y_max"]].isna().all().all()
    images_with_box = boxes["image_id"].nunique()
    assert images_with_box == 4_394 and 15_000 - images_with_box == 10_606
    all_negative = df.groupby("image_id")["class_id"].apply(lambda s: (s == 14).all())
    assert int(all_negative.sum()) == 10_606
    assert df["class_id"].value_counts().sort_index().to_dict() == REAL_CLASS_ROWS
    names = class_names("kaggle")
    assert (df["class_name"] == np.asarray(names, dtype=object)[df["class_id"]]).all()
    assert df["class_id"].dtype == np.int64 and df["x_min"].dtype == np.float64


def test_real_train_csv_in_the_local_label_set(vindr_train_csv, vindr_real):
    local = read_kaggle_train_csv(vindr_train_csv, label_set="local")
    names = class_names("local")
    assert len(names) == 23 and names[-1] == "No finding"
    assert (local["class_name"] == vindr_real["class_name"]).all()
    assert (local["class_id"] == local["class_name"].map({n: i for i, n in enumerate(names)})).all()
    assert int((local["class_id"] == 22).sum()) == REAL_CLASS_ROWS[14]


# ----------------------------------------------------------------------------------- bad Kaggle rows


@pytest.fixture(scope="module")
def real_head(vindr_train_csv) -> list[str]:
    """The header and the first 40 lines of the real train.csv, as text."""
    with gzip.open(vindr_train_csv, "rt") as fh:
        return [next(fh).rstrip("\n") for _ in range(41)]


def _first_box_line(lines: list[str]) -> int:
    return next(i for i, line in enumerate(lines) if i > 0 and ",No finding," not in line)


def _edit(line: str, field: str, value: str) -> str:
    parts = line.split(",")
    parts[KAGGLE_COLUMNS.index(field)] = value
    return ",".join(parts)


BAD_CASES = {
    # name: (field, how the first box line is changed, expected message part)
    "x_max below x_min": ("x_max", lambda ln: _edit(ln, "x_max", "1.0"), "greater than x_min"),
    "y_max below y_min": ("y_max", lambda ln: _edit(ln, "y_max", "0.5"), "greater than y_min"),
    "negative coordinate": ("y_min", lambda ln: _edit(ln, "y_min", "-3"), ">= 0"),
    "empty coordinate on a box": ("x_min", lambda ln: _edit(ln, "x_min", ""), "missing"),
    "text coordinate": ("x_max", lambda ln: _edit(ln, "x_max", "abc"), "not a number"),
    "unknown class name": ("class_name", lambda ln: _edit(ln, "class_name", "Fracture"), "unknown class"),
    "unknown class id": ("class_id", lambda ln: _edit(ln, "class_id", "15"), "outside 0..14"),
    "id and name disagree": ("class_id", lambda ln: _edit(ln, "class_id", "12" if ",Pneumothorax," not in ln else "3"),
                             "does not match"),
    "empty reader": ("rad_id", lambda ln: _edit(ln, "rad_id", ""), "empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_kaggle_rows_name_file_line_and_field(tmp_path, real_head, case):
    field, change, message = BAD_CASES[case]
    lines = list(real_head)
    target = _first_box_line(lines)
    lines[target] = change(lines[target])
    path = tmp_path / "bad_train.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BtcxrError) as err:
        read_kaggle_train_csv(path)
    msg = str(err.value)
    assert "bad_train.csv" in msg and f"line {target + 1}" in msg and f"'{field}'" in msg and message in msg, msg


def test_missing_column_and_clean_subset(tmp_path, real_head):
    path = tmp_path / "no_rad.csv"
    pd.read_csv(pd.io.common.StringIO("\n".join(real_head))).drop(columns="rad_id").to_csv(path, index=False)
    with pytest.raises(BtcxrError, match=r"no_rad\.csv: missing column\(s\) 'rad_id'"):
        read_kaggle_train_csv(path)
    # The untouched lines parse, with blank lines skipped without shifting line numbers.
    path = tmp_path / "ok.csv"
    path.write_text("\n".join(real_head[:5]) + "\n\n" + "\n".join(real_head[5:]) + "\n")
    assert len(read_kaggle_train_csv(path)) == 40


# -------------------------------------------------------------------------------------------- PhysioNet


PHYSIO_ANN = """image_id,rad_id,class_name,x_min,y_min,x_max,y_max
img_a,R1,No finding,,,,
img_a,R2,No finding,,,,
img_a,R3,No finding,,,,
img_b,R1,Rib fracture,10,20,30,40
img_b,R2,Cardiomegaly,100,200,300,400
img_b,R2,Rib fracture,12,22,33,44
img_b,R3,No finding,,,,
"""


def test_physionet_annotations_kaggle_and_local_label_sets(tmp_path, caplog):
    path = tmp_path / "annotations_train.csv"
    path.write_text(PHYSIO_ANN)
    with caplog.at_level(logging.INFO, logger="btcxr"):
        kag = read_physionet_annotations(path, label_set="kaggle")
    assert "dropped 2 annotation rows" in caplog.text and "Rib fracture" in caplog.text
    # R1 on img_b drew only a rib fracture: in the Kaggle label set R1 found nothing there.
    b = kag[kag["image_id"] == "img_b"].sort_values(["rad_id", "class_id"])
    assert b[["rad_id", "class_id", "class_name"]].values.tolist() == [
        ["R1", 14, "No finding"], ["R2", 3, "Cardiomegaly"], ["R3", 14, "No finding"]]
    assert kag.groupby("image_id")["rad_id"].nunique().to_dict() == {"img_a": 3, "img_b": 3}

    loc = read_physionet_annotations(path, label_set="local")
    assert len(loc) == 7
    rib = loc[loc["class_name"] == "Rib fracture"]
    assert (rib["class_id"] == VINDR_LOCAL_LABELS.index("Rib fracture")).all()
    assert (loc.loc[loc["class_name"] == "No finding", "class_id"] == 22).all()
    assert loc.loc[loc["class_name"] == "Cardiomegaly", ["x_min", "y_min", "x_max", "y_max"]].values.tolist() == [
        [100.0, 200.0, 300.0, 400.0]]


def test_physionet_test_consensus_without_rad_id_and_bad_label(tmp_path):
    path = tmp_path / "annotations_test.csv"
    path.write_text("image_id,class_name,x_min,y_min,x_max,y_max\nimg_t,Nodule/Mass,1,2,3,4\nimg_u,No finding,,,,\n")
    ann = read_physionet_annotations(path)
    assert (ann["rad_id"] == "consensus").all() and ann["class_id"].tolist() == [8, 14]
    path.write_text("image_id,class_name,x_min,y_min,x_max,y_max\nimg_t,Nodule/Mass,1,2,3,4\nimg_u,COPD,1,2,3,4\n")
    with pytest.raises(BtcxrError, match=r"annotations_test\.csv, line 3, field 'class_name': unknown local label"):
        read_physionet_annotations(path)


def test_physionet_image_labels(tmp_path):
    labels = [*VINDR_LOCAL_LABELS, *VINDR_GLOBAL_LABELS]
    header = ["image_id", "rad_id", *[("Other disease" if n == "Other diseases" else n) for n in labels]]
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2, (4, len(labels)))
    rows = [",".join([f"img{i}", f"R{i + 1}", *map(str, v)]) for i, v in enumerate(values)]
    path = tmp_path / "image_labels_train.csv"
    path.write_text(",".join(header) + "\n" + "\n".join(rows) + "\n")
    df = read_physionet_image_labels(path)
    assert list(df.columns) == ["image_id", "rad_id", *labels]
    np.testing.assert_array_equal(df[labels].to_numpy(), values)
    rows[2] = rows[2].rsplit(",", 1)[0] + ",2"
    path.write_text(",".join(header) + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(BtcxrError, match=r"line 4, field 'No finding': label must be 0 or 1"):
        read_physionet_image_labels(path)


# ---------------------------------------------------------------------------------------------- layouts


def _touch_dicoms(folder, ids, suffix=".dicom"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        (folder / f"{i}{suffix}").write_bytes(b"")


def test_load_vindr_kaggle_layout(tmp_path, real_head, caplog):
    (tmp_path / "train.csv").write_text("\n".join(real_head) + "\n")
    ids = sorted({line.split(",")[0] for line in real_head[1:]})
    _touch_dicoms(tmp_path / "train", ids[:-1])
    _touch_dicoms(tmp_path / "test", ["t1", "t2"], suffix=".dcm")
    with pytest.raises(BtcxrError, match=rf"1 of {len(ids)} annotated images have no image file \(e.g. {ids[-1]}\)"):
        load_vindr(tmp_path)
    _touch_dicoms(tmp_path / "train", [ids[-1], "unannotated"])
    with caplog.at_level(logging.INFO, logger="btcxr"):
        src = load_vindr(tmp_path, "train")
    assert "1 image files have no annotation rows" in caplog.text
    assert src.layout == "kaggle" and len(src.annotations) == 40
    assert src.images["image_id"].tolist() == sorted([*ids, "unannotated"])
    assert all(p.endswith(".dicom") and p.startswith(str(tmp_path.resolve())) for p in src.images["path"])
    test = load_vindr(tmp_path, "test")
    assert test.annotations is None and test.images["image_id"].tolist() == ["t1", "t2"]


def test_load_vindr_physionet_layout_and_no_layout(tmp_path):
    with pytest.raises(BtcxrError) as err:
        load_vindr(tmp_path)
    assert "train.csv" in str(err.value) and "annotations" in str(err.value)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "annotations_train.csv").write_text(PHYSIO_ANN)
    _touch_dicoms(tmp_path / "train", ["img_a", "img_b"])
    src = load_vindr(tmp_path, "train", label_set="local")
    assert src.layout == "physionet" and len(src.annotations) == 7 and src.image_labels is None


def test_check_boxes_inside():
    ann = pd.DataFrame({"image_id": ["a", "a", "b"], "rad_id": ["R1", "R2", "R1"], "class_id": [3, 14, 0],
                        "class_name": ["Cardiomegaly", "No finding", "Aortic enlargement"],
                        "x_min": [10.0, np.nan, 5.0], "y_min": [10.0, np.nan, 5.0],
                        "x_max": [100.5, np.nan, 50.0], "y_max": [80.0, np.nan, 60.0]})
    sizes = pd.DataFrame({"image_id": ["a", "b"], "orig_width": [100, 60], "orig_height": [90, 58]})
    with pytest.raises(BtcxrError) as err:
        check_boxes_inside(ann, sizes, "train.csv")
    msg = str(err.value)  # image b's y_max 60 exceeds 58 + 1; image a's 100.5 is within the 1 px tolerance
    assert msg.startswith("train.csv: image b:") and re.search(r"\[5, 5, 50, 60\]", msg) and "60 x 58" in msg
    sizes.loc[1, "orig_height"] = 59
    check_boxes_inside(ann, sizes, "train.csv")
    with pytest.raises(BtcxrError, match="no image size known"):
        check_boxes_inside(ann, sizes.iloc[:1], "train.csv")
