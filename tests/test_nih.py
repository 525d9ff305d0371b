"""NIH ChestX-ray14 readers: the real v2020 index and box list at full size, the 2017 variant, layouts."""

from __future__ import annotations

import csv
import gzip
import logging

import numpy as np
import pandas as pd
import pytest

from btcxr.data.classes import NIH_LABELS
from btcxr.data.nih import labels_multihot, load_nih, read_bbox_list, read_data_entry, read_split_list
from btcxr.errors import BtcxrError

# The published counts of the v2020 file (images whose labels contain each label)
REAL_LABEL_COUNTS = {
    "No Finding": 60_361, "Infiltration": 19_894, "Effusion": 13_317, "Atelectasis": 11_559, "Nodule": 6_331,
    "Mass": 5_782, "Pneumothorax": 5_302, "Consolidation": 4_667, "Pleural_Thickening": 3_385,
    "Cardiomegaly": 2_776, "Emphysema": 2_516, "Edema": 2_303, "Fibrosis": 1_686, "Pneumonia": 1_431, "Hernia": 227,
}


def test_real_v2020_index(nih_real, nih_data_entry_csv):
    df = nih_real
    assert list(df.columns) == ["image_id", "labels", "follow_up", "patient_id", "age", "sex", "view",
                                "orig_width", "orig_height", "spacing_x", "spacing_y"]
    assert len(df) == 112_120 and df["image_id"].is_unique
    assert df["patient_id"].nunique() == 30_805
    counts = df["labels"].str.split("|").explode().value_counts().to_dict()
    assert counts == REAL_LABEL_COUNTS
    multihot = labels_multihot(df["labels"])
    assert multihot.shape == (112_120, 15) and multihot.dtype == np.float32
    assert dict(zip(NIH_LABELS, multihot.sum(axis=0).astype(int).tolist())) == REAL_LABEL_COUNTS
    # Row 2 of the file, written out: 00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143
    row = df.iloc[1]
    assert row["image_id"] == "00000001_001.png" and row["labels"] == "Cardiomegaly|Emphysema"
    assert [row[c] for c in ("follow_up", "patient_id", "age", "sex", "view", "orig_width", "orig_height")] == [
        1, 1, 58, "M", "PA", 2894, 2729]
    assert row["spacing_x"] == pytest.approx(0.143)
    np.testing.assert_array_equal(multihot[1], [float(n in ("Cardiomegaly", "Emphysema")) for n in NIH_LABELS])


def test_real_bbox_list(real_data_dir):
    path = real_data_dir / "BBox_List_2017.csv.gz"
    boxes = read_bbox_list(path)
    assert len(boxes) == 984 and boxes["image_id"].nunique() == 880
    assert boxes["class_name"].nunique() == 8
    assert "Infiltrate" not in set(boxes["class_name"]) and int((boxes["class_name"] == "Infiltration").sum()) == 123
    with gzip.open(path, "rt") as fh:
        raw = list(csv.reader(fh))[1:]
    x, y, w, h = (np.array([float(r[i]) for r in raw]) for i in (2, 3, 4, 5))
    np.testing.assert_allclose(boxes[["x_min", "y_min", "x_max", "y_max"]].to_numpy(),
                               np.stack([x, y, x + w, y + h], axis=1), rtol=0, atol=1e-9)


def _real_lines(path, n):
    with gzip.open(path, "rt") as fh:
        return [next(fh).rstrip("\n") for _ in range(n + 1)]


def test_2017_variant_parses_to_the_same_values(tmp_path, nih_data_entry_csv):
    lines = _real_lines(nih_data_entry_csv, 25)
    old = [lines[0] + ","]
    for line in lines[1:]:
        parts = line.split(",")
        parts[4] = f"{int(parts[4]):03d}Y"  # Patient Age as in the 2017 file
        old.append(",".join(parts) + ",")
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join(old) + "\n")
    (tmp_path / "v2020.csv").write_text("\n".join(lines) + "\n")
    assert "058Y" in (tmp_path / "Data_Entry_2017.csv").read_text()
    pd.testing.assert_frame_equal(read_data_entry(tmp_path / "Data_Entry_2017.csv"),
                                  read_data_entry(tmp_path / "v2020.csv"))
    # Rows without the trailing comma under the trailing-comma header parse too.
    (tmp_path / "mixed.csv").write_text("\n".join([old[0], *lines[1:]]) + "\n")
    assert len(read_data_entry(tmp_path / "mixed.csv")) == 25


BAD_ENTRY = {
    # name: (column index, new value, field named in the message, message part)
    "unknown label": (1, "Cardiomegaly|Fracture", "Finding Labels", "unknown label 'Fracture'"),
    "No Finding with a finding": (1, "No Finding|Mass", "Finding Labels", "combined with findings"),
    "repeated label": (1, "Mass|Mass", "Finding Labels", "repeated"),
    "bad age": (4, "old", "Patient Age", "expected an age"),
    "bad sex": (5, "X", "Patient Gender", "expected M or F"),
    "bad view": (6, "LL", "View Position", "expected PA or AP"),
    "fractional patient id": (3, "1.5", "Patient ID", "not a whole number"),
    "zero width": (7, "0", "OriginalImage[Width", "must be > 0"),
    "text spacing": (10, "n/a", "y]", "not a number"),
    "duplicate image": (0, "00000001_000.png", "Image Index", "image listed twice"),
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRY))
def test_bad_data_entry_rows_name_file_line_and_field(tmp_path, nih_data_entry_csv, case):
    col, value, field, message = BAD_ENTRY[case]
    lines = _real_lines(nih_data_entry_csv, 8)
    parts = lines[6].split(",")
    parts[col] = value
    lines[6] = ",".join(parts)
    path = tmp_path / "Data_Entry_bad.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BtcxrError) as err:
        read_data_entry(path)
    msg = str(err.value)
    assert "Data_Entry_bad.csv" in msg and "line 7" in msg and f"'{field}'" in msg and message in msg, msg


def test_missing_column_bad_box_and_split_lists(tmp_path):
    (tmp_path / "entry.csv").write_text("Image Index,Finding Labels\na.png,Mass\n")
    with pytest.raises(BtcxrError, match=r"entry\.csv: missing column\(s\) 'Follow-up #'"):
        read_data_entry(tmp_path / "entry.csv")
    (tmp_path / "bbox.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Mass,1,2,3,4\n"
                                       "b.png,Infiltrate,1,2,0,4\n")
    with pytest.raises(BtcxrError, match=r"bbox\.csv, line 3, field 'w': must be > 0"):
        read_bbox_list(tmp_path / "bbox.csv")
    (tmp_path / "list.txt").write_text("a.png\nb.png\n\nc.png\n")
    assert read_split_list(tmp_path / "list.txt") == ["a.png", "b.png", "c.png"]
    (tmp_path / "list.txt").write_text("a.png\nb.png\na.png\n")
    with pytest.raises(BtcxrError, match=r"list\.txt, line 3, field 'image': a\.png already listed on line 1"):
        read_split_list(tmp_path / "list.txt")


def test_labels_multihot_rejects_unknown_labels():
    m = labels_multihot(pd.Series(["No Finding", "Hernia|Mass"]))
    assert m[0, NIH_LABELS.index("No Finding")] == 1 and m[0].sum() == 1
    assert m[1, NIH_LABELS.index("Hernia")] == 1 and m[1, NIH_LABELS.index("Mass")] == 1 and m[1].sum() == 2
    with pytest.raises(BtcxrError, match="unknown NIH label"):
        labels_multihot(pd.Series(["Mass|Tumour"]))


@pytest.fixture()
def nih_tree(tmp_path, nih_data_entry_csv):
    """12 real index rows; images split over the NIH and the Kaggle layouts; lists and boxes in a subfolder."""
    lines = _real_lines(nih_data_entry_csv, 12)
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    names = [line.split(",")[0] for line in lines[1:]]
    (tmp_path / "images").mkdir()
    (tmp_path / "images_002" / "images").mkdir(parents=True)
    for i, name in enumerate(names):
        folder = tmp_path / "images" if i < 6 else tmp_path / "images_002" / "images"
        (folder / name).write_bytes(b"")
    (tmp_path / "images" / "99999999_000.png").write_bytes(b"")  # not in the index
    (meta / "train_val_list.txt").write_text("\n".join(names[:9]) + "\n")
    (meta / "test_list.txt").write_text("\n".join(names[9:]) + "\n")
    (meta / "BBox_List_2017.csv").write_text(f"Image Index,Finding Label,Bbox [x,y,w,h],,,\n{names[0]},Infiltrate,"
                                             "10,20,30,40\n")
    return tmp_path, names


def test_load_nih_finds_everything(nih_tree, caplog):
    root, names = nih_tree
    with caplog.at_level(logging.INFO, logger="btcxr"):
        src = load_nih(root)
    assert "1 PNGs below the root are not in the index" in caplog.text
    idx = src.index
    assert idx["image_id"].tolist() == names
    expected = [str((root / "images" / n) if i < 6 else (root / "images_002" / "images" / n)) for i, n in
                enumerate(names)]
    assert idx["path"].tolist() == expected
    assert idx["official_split"].tolist() == ["train_val"] * 9 + ["test"] * 3
    assert src.bboxes[["image_id", "class_name", "x_max", "y_max"]].values.tolist() == [
        [names[0], "Infiltration", 40.0, 60.0]]


def test_load_nih_missing_images_and_lists(nih_tree, caplog):
    root, names = nih_tree
    (root / "images_002" / "images" / names[7]).unlink()
    (root / "images_002" / "images" / names[8]).unlink()
    with pytest.raises(BtcxrError) as err:
        load_nih(root)
    assert "2 of 12 images" in str(err.value) and names[7] in str(err.value) and names[8] in str(err.value)
    assert "--allow-missing-images" in str(err.value)  # the flag that drops them, by name
    with caplog.at_level(logging.WARNING, logger="btcxr"):
        src = load_nih(root, require_images=False)
    assert "2 of 12 listed images not found; dropped" in caplog.text
    assert len(src.index) == 10 and names[7] not in set(src.index["image_id"])
    (root / "meta" / "test_list.txt").unlink()
    assert (load_nih(root, require_images=False).index["official_split"] == "").all()
    (root / "meta" / "Data_Entry_2017_v2020.csv").unlink()
    with pytest.raises(BtcxrError, match="no Data_Entry_2017_v2020.csv or Data_Entry_2017.csv found"):
        load_nih(root)
