"""`btcxr synth`: every layout written small and read back, compared with the real annotation files."""

from __future__ import annotations

import gzip
import importlib.util
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from btcxr.cli import main
from btcxr.data.classes import NIH_LABELS, VINDR_CLASS_ID, VINDR_GLOBAL_LABELS, VINDR_LOCAL_LABELS
from btcxr.data.synthetic import generate
from btcxr.data.synthetic.plan import VINDR_PREVALENCE, plan_vindr
from btcxr.data.synthetic.render import render_case

N, SIZE, SEED = 12, 128, 5
READER_IDS = {f"R{i}" for i in range(1, 18)}
REAL = Path(importlib.util.find_spec("torchxrayvision").submodule_search_locations[0]) / "data"


def real_header(name: str) -> str:
    with gzip.open(REAL / name, "rt") as f:
        return f.readline().rstrip("\n")


def header(path: Path) -> str:
    with path.open() as f:
        return f.readline().rstrip("\n")


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(root, "all", n=N, size=SIZE, seed=SEED, workers=1)
    return root


# ---- headers and value formats, against the real files ---------------------------------------------------


def test_headers_equal_the_real_files(out):
    assert header(out / "nih/Data_Entry_2017_v2020.csv") == real_header("Data_Entry_2017_v2020.csv.gz")
    assert header(out / "nih/BBox_List_2017.csv") == real_header("BBox_List_2017.csv.gz")
    assert header(out / "vindr-kaggle/train.csv") == real_header("vinbigdata-train.csv.gz")
    # the 2017 release: the same names plus a trailing comma (an unnamed empty column)
    assert header(out / "nih/Data_Entry_2017.csv") == real_header("Data_Entry_2017_v2020.csv.gz") + ","
    for ours, real in [("nih/Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz"),
                       ("nih/BBox_List_2017.csv", "BBox_List_2017.csv.gz"),
                       ("vindr-kaggle/train.csv", "vinbigdata-train.csv.gz")]:
        assert list(pd.read_csv(out / ours).columns) == list(pd.read_csv(REAL / real, nrows=5).columns)


def test_nih_value_formats_match_the_real_files(out):
    real = pd.read_csv(REAL / "Data_Entry_2017_v2020.csv.gz", dtype=str)
    ours = pd.read_csv(out / "nih/Data_Entry_2017_v2020.csv", dtype=str)
    name = re.compile(r"^\d{8}_\d{3}\.png$")
    assert real["Image Index"].str.match(name).all() and ours["Image Index"].str.match(name).all()
    for col in ["Follow-up #", "Patient ID", "Patient Age", "OriginalImage[Width", "Height]"]:
        assert ours[col].str.fullmatch(r"\d+").all(), col
    # pixel spacings are written exactly as the real file writes them (float noise included)
    assert set(ours["OriginalImagePixelSpacing[x"]) <= set(real["OriginalImagePixelSpacing[x"])
    assert set(ours["View Position"]) <= {"AP", "PA"} and set(ours["Patient Gender"]) <= {"M", "F"}
    labels = {lab for cell in ours["Finding Labels"] for lab in cell.split("|")}
    assert labels <= set(NIH_LABELS)
    old = pd.read_csv(out / "nih/Data_Entry_2017.csv", dtype=str)
    assert old.columns[-1].startswith("Unnamed") and old.iloc[:, -1].isna().all()
    assert old["Patient Age"].str.fullmatch(r"\d{3}Y").all()
    assert (old["Patient Age"].str[:3].astype(int) == ours["Patient Age"].astype(int)).all()

    real_box = pd.read_csv(REAL / "BBox_List_2017.csv.gz", dtype=str)
    box = pd.read_csv(out / "nih/BBox_List_2017.csv", dtype=str)
    number = r"\d+(\.\d{1,15})?"
    for df in (real_box, box):
        assert df[["Bbox [x", "y", "w", "h]"]].stack().str.fullmatch(number).all()
        assert df.iloc[:, 6:].isna().all().all()  # the three unnamed columns are empty
    assert set(box["Finding Label"]) <= set(real_box["Finding Label"])  # "Infiltrate", not "Infiltration"
    lines = (out / "nih/BBox_List_2017.csv").read_text().splitlines()[1:]
    assert all(line.count(",") == 5 for line in lines)  # rows have six fields, as in the real file


def test_vindr_value_formats_match_the_real_train_csv(out):
    real = pd.read_csv(REAL / "vinbigdata-train.csv.gz", dtype=str, nrows=5000)
    ours = pd.read_csv(out / "vindr-kaggle/train.csv", dtype=str)
    coords = ["x_min", "y_min", "x_max", "y_max"]
    for df in (real, ours):
        assert df["image_id"].str.fullmatch(r"[0-9a-f]{32}").all()
        boxed = df[df.class_id != "14"]
        assert boxed[coords].stack().str.fullmatch(r"\d+\.0").all()  # whole pixels written as 691.0
        assert df[df.class_id == "14"][coords].isna().all().all()
        pairs = set(zip(df.class_name, df.class_id.astype(int)))
        assert all(VINDR_CLASS_ID[name] == cid for name, cid in pairs)


# ---- VinDr: readers, boxes, DICOMs ------------------------------------------------------------------------


def _dicoms(root: Path) -> dict[str, pydicom.Dataset]:
    return {p.stem: pydicom.dcmread(p) for p in sorted(root.glob("*/*.dicom"))}


def test_every_train_image_is_read_by_three_distinct_radiologists(out):
    df = pd.read_csv(out / "vindr-kaggle/train.csv")
    dicoms = _dicoms(out / "vindr-kaggle")
    train_ids = {p.stem for p in (out / "vindr-kaggle/train").glob("*.dicom")}
    assert set(df.image_id) == train_ids
    for image_id, rows in df.groupby("image_id"):
        assert rows.rad_id.nunique() == 3 and set(rows.rad_id) <= READER_IDS
        for _, reader_rows in rows.groupby("rad_id"):
            if (reader_rows.class_id == 14).any():  # "No finding" is one row, alone, without a box
                assert len(reader_rows) == 1 and reader_rows[["x_min", "y_min", "x_max", "y_max"]].isna().all(axis=None)
        ds = dicoms[image_id]
        boxes = rows[rows.class_id != 14]
        assert (boxes.x_min >= 0).all() and (boxes.y_min >= 0).all()
        assert (boxes.x_max <= ds.Columns).all() and (boxes.y_max <= ds.Rows).all()
        assert (boxes.x_max > boxes.x_min).all() and (boxes.y_max > boxes.y_min).all()
    submission = pd.read_csv(out / "vindr-kaggle/sample_submission.csv")
    assert list(submission.columns) == ["image_id", "PredictionString"]
    assert set(submission.image_id) == {p.stem for p in (out / "vindr-kaggle/test").glob("*.dicom")}
    assert (submission.PredictionString == "14 1 0 0 1 1").all()
    assert len(submission) == round(0.2 * N)


def test_dicoms_vary_like_real_archives_and_carry_fake_patients(out):
    dicoms = _dicoms(out / "vindr-kaggle")
    assert len(dicoms) == N
    seen = {k: {getattr(ds, k) for ds in dicoms.values()} for k in ["PhotometricInterpretation", "BitsStored"]}
    assert seen["PhotometricInterpretation"] == {"MONOCHROME1", "MONOCHROME2"}
    assert len(seen["BitsStored"]) >= 2 and {ds.BitsAllocated for ds in dicoms.values()} == {16}
    syntaxes = {ds.file_meta.TransferSyntaxUID for ds in dicoms.values()}
    assert any(uid.is_compressed for uid in syntaxes) and any(not uid.is_compressed for uid in syntaxes)
    assert len({(ds.Rows, ds.Columns) for ds in dicoms.values()}) >= N - 1
    assert all(SIZE * 0.84 <= ds.Rows <= SIZE * 1.31 for ds in dicoms.values())
    assert len({float(ds.RescaleIntercept) for ds in dicoms.values()}) >= 2
    for ds in dicoms.values():
        for tag in ["RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"]:
            assert tag in ds, tag
        assert str(ds.PatientName).startswith("SYNTHETIC^PATIENT^")
        assert re.fullmatch(r"SYNTH-\d{4}", ds.PatientID)
        assert ds.PatientID[-4:] == str(ds.PatientName)[-4:]
        assert re.fullmatch(r"\d{8}", ds.PatientBirthDate) and ds.PatientBirthDate.endswith("0101")
        assert ds.SOPClassUID in ("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1")
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
    assert len({ds.PatientID for ds in dicoms.values()}) == N
    # the PhysioNet layout holds the very same files
    for path in (out / "vindr-kaggle").glob("*/*.dicom"):
        assert path.read_bytes() == (out / "vindr-physionet" / path.parent.name / path.name).read_bytes()


def test_stored_pixels_decode_to_the_phantom(out):
    """pixel_array -> modality LUT -> linear window -> invert MONOCHROME1 gives the rendered image back."""
    plans = plan_vindr(N, SIZE, SEED, 0.7, VINDR_PREVALENCE)
    for plan in plans:
        ds = pydicom.dcmread(out / "vindr-kaggle" / plan.split / f"{plan.image_id}.dicom")
        x = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
        c, w = float(ds.WindowCenter), float(ds.WindowWidth)
        y = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)  # DICOM PS3.3 C.11.2.1.2.1, linear
        if ds.PhotometricInterpretation == "MONOCHROME1":
            y = 1.0 - y
        case = render_case(np.random.SeedSequence(SEED, spawn_key=(2, 1, plan.index)), plan.shape, plan.classes,
                           view="PA", sex=plan.sex)
        assert np.abs(y - case.image).max() < 1.0 / (2 ** ds.BitsStored * 0.8) + 1e-6


def test_physionet_layout(out):
    ann = out / "vindr-physionet/annotations"
    boxes = pd.read_csv(ann / "annotations_train.csv")
    labels = pd.read_csv(ann / "image_labels_train.csv")
    assert list(boxes.columns) == ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
    assert list(labels.columns) == ["image_id", "rad_id", *VINDR_LOCAL_LABELS, *VINDR_GLOBAL_LABELS]
    assert len(VINDR_LOCAL_LABELS) == 22 and len(VINDR_GLOBAL_LABELS) == 6
    assert set(np.unique(labels.iloc[:, 2:].to_numpy())) <= {0, 1}
    kaggle = pd.read_csv(out / "vindr-kaggle/train.csv")
    assert len(boxes) == len(kaggle) and set(boxes.image_id) == set(kaggle.image_id)
    assert labels.groupby("image_id").rad_id.nunique().eq(3).all()
    for (image_id, rad_id), rows in boxes.groupby(["image_id", "rad_id"]):
        row = labels[(labels.image_id == image_id) & (labels.rad_id == rad_id)].iloc[0]
        names = set(rows.class_name) - {"No finding"}
        assert row["No finding"] == int(not names)
        assert all(row[name] == 1 for name in names)
        assert sum(row[VINDR_LOCAL_LABELS]) == len(names)
    test = pd.read_csv(ann / "annotations_test.csv")
    assert test.groupby("image_id").rad_id.nunique().eq(1).all()  # the consensus: one reader
    assert set(test.image_id) == {p.stem for p in (out / "vindr-physionet/test").glob("*.dicom")}
    assert set(pd.read_csv(ann / "image_labels_test.csv").image_id) == set(test.image_id)


# ---- boxes sit on what was drawn --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(c for c in VINDR_CLASS_ID if c != "No finding"))
def test_box_is_the_drawn_finding(name):
    seed = np.random.SeedSequence(11, spawn_key=(sorted(VINDR_CLASS_ID).index(name),))
    shape = (160, 144)
    with_it = render_case(seed, shape, [name])
    without = render_case(seed, shape, [])
    assert with_it.findings and all(f.class_name == name for f in with_it.findings)
    diff = np.abs(with_it.image - without.image)
    inside = np.zeros(shape, bool)
    for f, d in zip(with_it.findings, with_it.drawn):
        # drawn at full resolution here: the box is exactly the bounding box of the drawn mask
        rows, cols = np.nonzero(d.mask)
        y0, x0 = d.window[0].start, d.window[1].start
        assert f.box == (x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1, y0 + rows.max() + 1)
        x_0, y_0, x_1, y_1 = (int(v) for v in f.box)
        assert 0 <= x_0 < x_1 <= shape[1] and 0 <= y_0 < y_1 <= shape[0]
        inside[max(y_0 - 2, 0):y_1 + 2, max(x_0 - 2, 0):x_1 + 2] = True  # detector blur spreads ~2 px
        # visible: the finding changes its box by a few grey levels on average at least
        assert diff[y_0:y_1, x_0:x_1].mean() > 2.0 / 255, (name, diff[y_0:y_1, x_0:x_1].mean())
    assert diff[inside].sum() / diff.sum() > 0.97  # nothing else changed


def test_normal_fraction_and_prevalence_are_respected():
    plans = plan_vindr(3000, 64, 1, 0.7, VINDR_PREVALENCE)
    normal = np.mean([not p.classes for p in plans])
    assert abs(normal - 0.7) < 0.03  # binomial sd 0.008
    abnormal = [p for p in plans if p.classes]
    share = np.mean(["Cardiomegaly" in p.classes for p in abnormal])
    assert abs(share - VINDR_PREVALENCE["Cardiomegaly"]) < 0.06
    only = plan_vindr(200, 64, 1, 0.0, {"Pneumothorax": 1.0})
    assert all(p.classes == ["Pneumothorax"] for p in only)


# ---- NIH --------------------------------------------------------------------------------------------------


def test_nih_split_is_by_patient_and_pngs_vary(out):
    nih = out / "nih"
    train = (nih / "train_val_list.txt").read_text().split()
    test = (nih / "test_list.txt").read_text().split()
    entries = pd.read_csv(nih / "Data_Entry_2017_v2020.csv")
    assert sorted(train + test) == sorted(entries["Image Index"])
    patients = entries.set_index("Image Index")["Patient ID"]
    assert not set(patients[train]) & set(patients[test])
    assert entries.groupby("Patient ID").size().max() > 1  # follow-ups
    for pid, rows in entries.groupby("Patient ID"):
        assert list(rows["Follow-up #"]) == list(range(len(rows)))
        assert all(name.startswith(f"{pid:08d}_") for name in rows["Image Index"])
    modes = {}
    for path in (nih / "images").glob("*.png"):
        with Image.open(path) as im:
            modes[path.name] = im.mode
            assert im.size == (SIZE, SIZE)
    assert set(modes) == set(entries["Image Index"])
    assert {"L", "RGBA", "I;16"} <= set(modes.values())


def test_nih_kaggle_layout_and_seeds(tmp_path, out):
    generate(tmp_path / "k", "nih", n=N, size=SIZE, seed=SEED, workers=2, nih_kaggle_layout=True)
    found = sorted((tmp_path / "k").glob("images_*/images/*.png"))
    assert len(found) == N and {p.parent.parent.name for p in found} >= {"images_001", "images_012"}
    # same seed, two processes, other layout on disk: the same bytes
    for path in found:
        assert path.read_bytes() == (out / "nih/images" / path.name).read_bytes()
    for name in ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "BBox_List_2017.csv", "test_list.txt"]:
        assert (tmp_path / "k" / name).read_bytes() == (out / "nih" / name).read_bytes()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path, out):
    generate(tmp_path / "same", "vindr-kaggle", n=N, size=SIZE, seed=SEED, workers=2)
    files = sorted(p.relative_to(out / "vindr-kaggle") for p in (out / "vindr-kaggle").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "same") for p in (tmp_path / "same").rglob("*") if p.is_file())
    for rel in files:
        assert (tmp_path / "same" / rel).read_bytes() == (out / "vindr-kaggle" / rel).read_bytes(), rel
    generate(tmp_path / "other", "vindr-kaggle", n=N, size=SIZE, seed=SEED + 1, workers=1, contact_sheet=False)
    ours = pd.read_csv(out / "vindr-kaggle/train.csv")
    theirs = pd.read_csv(tmp_path / "other/train.csv")
    assert not set(ours.image_id) & set(theirs.image_id)
    a = next((out / "vindr-kaggle/train").glob("*.dicom"))
    b = next((tmp_path / "other/train").glob("*.dicom"))
    assert pydicom.dcmread(a).SOPInstanceUID != pydicom.dcmread(b).SOPInstanceUID


def test_contact_sheets_are_written(out):
    for sheet in [out / "contact_sheet.png", out / "nih/contact_sheet.png", out / "vindr-kaggle/contact_sheet.png"]:
        with Image.open(sheet) as im:
            assert im.mode == "RGB" and im.size[0] == 4 * 320
            assert np.asarray(im).std() > 10  # images, not an empty canvas


def test_cli(tmp_path):
    assert main(["-q", "synth", "--out", str(tmp_path / "c"), "--layout", "nih", "--n", "2", "--size", "64",
                 "--workers", "1", "--no-contact-sheet", "--prevalence", "Cardiomegaly=1"]) == 0
    assert len(list((tmp_path / "c/images").glob("*.png"))) == 2
    assert main(["-q", "synth", "--out", str(tmp_path / "d"), "--n", "2", "--prevalence", "Foo=0.5"]) == 2
    assert main(["-q", "synth", "--out", str(tmp_path / "e"), "--n", "0"]) == 2
