"""`btcxr prepare`: cache contents, resumability, errors, privacy, COCO export, on tiny synthetic datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_cache import (
    FAKE_PATIENT_ID,
    FAKE_PATIENT_NAME,
    gradient_image,
    make_nih,
    make_vindr_kaggle,
    make_vindr_physionet,
    write_dicom,
)
from PIL import Image

from btcxr.cli import main as cli_main
from btcxr.data import cache as cache_mod
from btcxr.data.cache import PrepareSettings, list_folder, prepare
from btcxr.data.cache_format import MANIFEST_COLUMNS, read_manifest
from btcxr.data.classes import VINDR_CLASSES
from btcxr.errors import BtcxrError


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sources")
    out = {"nih": base / "nih", "vindr": base / "vindr", "physionet": base / "physionet"}
    make_nih(out["nih"], n=12)
    make_vindr_kaggle(out["vindr"], n=12)
    make_vindr_physionet(out["physionet"], n_train=12, n_test=6)
    return out


def settings(dataset: str, root: Path, out: Path, **kw) -> PrepareSettings:
    kw.setdefault("size", 64)
    kw.setdefault("workers", 1)
    return PrepareSettings(dataset=dataset, root=str(root), out=str(out), **kw)


# ----------------------------------------------------------------------------------------------- NIH
def test_nih_cache_images_manifest_and_splits(roots, tmp_path):
    report = prepare(settings("nih", roots["nih"], tmp_path / "c", workers=2))
    assert (report.images, report.prepared, report.reused, report.skipped) == (12, 12, 0, 0)
    raw = pd.read_csv(tmp_path / "c" / "manifest.csv", dtype=str, keep_default_na=False)
    assert list(raw.columns) == MANIFEST_COLUMNS
    manifest = read_manifest(tmp_path / "c")
    entry = pd.read_csv(roots["nih"] / "Data_Entry_2017_v2020.csv").set_index("Image Index")
    test_list = set((roots["nih"] / "test_list.txt").read_text().split())
    for row in manifest.itertuples():
        cached = Image.open(tmp_path / "c" / row.file)
        assert cached.mode == "L"
        # longest side = size, aspect kept, scale back to the original frame
        w, h = row.orig_width, row.orig_height
        assert (w, h) == (96, 80) and row.scale == pytest.approx(64 / 96)
        assert cached.size == (64, round(80 * 64 / 96))
        # pixels: an independent Lanczos resize of the original PNG
        original = Image.open(roots["nih"] / "images_001" / "images" / row.image_id)
        expected = np.asarray(original.resize(cached.size, Image.Resampling.LANCZOS))
        assert np.abs(np.asarray(cached).astype(int) - expected).max() <= 1
        assert row.labels == entry.loc[row.image_id, "Finding Labels"]
        assert row.patient_id == str(entry.loc[row.image_id, "Patient ID"])
        assert (row.split == "test") == (row.image_id in test_list)
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1
    assert set(manifest["split"]) == {"train", "val", "test"}
    record = json.loads((tmp_path / "c" / "prepare.json").read_text())
    assert record["status"] == "complete" and record["counts"]["images"] == 12
    assert record["pretrain_splits"] == ["train", "val"]
    assert (tmp_path / "c" / record["split_file"]).is_file()
    assert "fusion" not in record  # VinDr settings are not recorded for NIH


def test_nih_reserve_and_include_test(roots, tmp_path):
    reserve = tmp_path / "reserve.txt"
    reserve.write_text("# kept for the CAM study\n00000001_000.png\nnot_an_nih_image.png\n")
    prepare(settings("nih", roots["nih"], tmp_path / "c", reserve=str(reserve), include_test_in_pretrain=True))
    manifest = read_manifest(tmp_path / "c").set_index("image_id")
    assert manifest.loc["00000001_000.png", "split"] == "reserved"
    record = json.loads((tmp_path / "c" / "prepare.json").read_text())
    assert record["pretrain_splits"] == ["train", "val", "test", "reserved"]
    assert "reserve" in record["split_file"]


# ----------------------------------------------------------------------------------------------- resume
def test_killed_prepare_resumes_without_redecoding(roots, tmp_path, monkeypatch):
    real = cache_mod.read_image
    calls = []

    def dies_after_five(path, **kw):
        if len(calls) == 5:
            raise KeyboardInterrupt  # what a kill looks like from inside
        calls.append(path)
        return real(path, **kw)

    monkeypatch.setattr(cache_mod, "read_image", dies_after_five)
    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        prepare(settings("nih", roots["nih"], out))
    assert not (out / "manifest.csv").exists()
    assert json.loads((out / "prepare.json").read_text())["status"] == "running"
    finished = sorted(p.name for p in (out / "images").iterdir())
    assert len(finished) == 5
    for name in finished:  # every file in the cache is a whole PNG
        Image.open(out / "images" / name).load()
    (out / "images" / ".00000009_999.png.tmp4242").write_bytes(b"\x89PNG half")  # a kill mid-write
    (out / "journal.csv").open("a").write("00000006_011.png,images/00000006_0")  # a kill mid-line

    calls.clear()
    monkeypatch.setattr(cache_mod, "read_image", lambda path, **kw: calls.append(path) or real(path, **kw))
    with pytest.raises(BtcxrError, match="size=64"):
        prepare(settings("nih", roots["nih"], out, size=32))  # other pixels: refused, nothing decoded
    assert calls == []
    report = prepare(settings("nih", roots["nih"], out))
    assert (report.prepared, report.reused, len(calls)) == (7, 5, 7)
    assert not any(p.name.startswith(".") for p in (out / "images").iterdir())
    clean = tmp_path / "clean"
    prepare(settings("nih", roots["nih"], clean))
    pd.testing.assert_frame_equal(read_manifest(out), read_manifest(clean))
    calls.clear()
    assert prepare(settings("nih", roots["nih"], out)).reused == 12 and calls == []


# ----------------------------------------------------------------------------------------------- errors
def test_bad_file_stops_or_is_skipped(roots, tmp_path):
    root = tmp_path / "nih"
    shutil.copytree(roots["nih"], root)
    bad = root / "images_001" / "images" / "00000003_002.png"
    bad.write_bytes(b"this is not a png")
    for workers in (1, 2):  # in-process and through the pool
        with pytest.raises(BtcxrError, match="cannot read image .*00000003_002.png"):
            prepare(settings("nih", root, tmp_path / "c", workers=workers))
    report = prepare(settings("nih", root, tmp_path / "c", on_error="skip"))
    assert report.skipped == 1 and report.images == 11
    errors = pd.read_csv(tmp_path / "c" / "errors.csv")
    assert errors["path"].tolist() == [str(bad)] and errors["reason"].str.contains("recognised|corrupt").all()
    assert "00000003_002.png" not in set(read_manifest(tmp_path / "c")["image_id"])
    assert json.loads((tmp_path / "c" / "prepare.json").read_text())["counts"]["skipped"] == 1


def test_malformed_csv_and_outside_box_are_reported(roots, tmp_path):
    root = tmp_path / "vindr"
    shutil.copytree(roots["vindr"], root)
    table = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    broken = table.copy()
    broken.loc[4, "class_id"] = "fourteen"
    broken.to_csv(root / "train.csv", index=False)
    with pytest.raises(BtcxrError, match=r"train\.csv, line 6, field 'class_id'"):
        prepare(settings("vindr", root, tmp_path / "c1"))
    outside = table.copy()
    row = outside.index[outside["x_max"] != ""][0]
    outside.loc[row, "x_max"] = "5000"
    outside.to_csv(root / "train.csv", index=False)
    image_id = outside.loc[row, "image_id"]
    with pytest.raises(BtcxrError, match=rf"train\.csv.*{image_id}.*5000.*outside"):
        prepare(settings("vindr", root, tmp_path / "c2", workers=2))


def test_cli_prepare_returns_codes(roots, tmp_path, capsys):
    assert cli_main(["-q", "prepare", "nih", "--root", str(roots["nih"]), "--out", str(tmp_path / "c"),
                     "--size", "48", "--workers", "2"]) == 0
    assert len(read_manifest(tmp_path / "c")) == 12
    assert cli_main(["-q", "prepare", "vindr", "--root", str(roots["nih"]), "--out", str(tmp_path / "d"),
                     "--size", "48"]) == 2  # not a VinDr copy: BtcxrError, printed without traceback
    assert "no VinDr-CXR copy found" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- VinDr
def test_vindr_cache_annotations_coco_and_privacy(roots, tmp_path):
    from pycocotools.coco import COCO

    out = tmp_path / "c"
    report = prepare(settings("vindr", roots["vindr"], out, workers=2))
    table = pd.read_csv(roots["vindr"] / "train.csv")
    abnormal = set(table.loc[table["class_id"] != 14, "image_id"])
    assert report.prepared == len(abnormal) == 8  # --no-normals (default): normals never decoded
    manifest = read_manifest(out)
    assert set(manifest["image_id"]) == abnormal and set(manifest["patient_id"]) == {""}
    assert manifest["split"].value_counts().to_dict() == {"train": 6, "val": 1, "test": 1}  # 70/15/15 of 8
    ann = pd.read_csv(out / "annotations.csv")
    assert list(ann.columns) == ["image_id", "class_id", "class_name", "x_min", "y_min", "x_max", "y_max", "score"]
    # Two readers drew each finding with 1 px jitter, one drew nothing: WBF keeps one box at score 2/3.
    raw = table[table["class_id"] != 14].groupby(["image_id", "class_id"])
    assert len(ann) == raw.ngroups and np.allclose(ann["score"], 2 / 3)
    merged = ann.merge(raw[["x_min", "x_max"]].mean().reset_index(), on=["image_id", "class_id"])
    assert np.allclose(merged["x_min_x"], merged["x_min_y"], atol=1e-3)
    for label in manifest.itertuples():
        assert label.labels == "|".join(ann.loc[ann["image_id"] == label.image_id, "class_name"].unique())

    scale = manifest.set_index("image_id")["scale"]
    for part in ("train", "val", "test"):
        coco = COCO(str(out / f"coco_{part}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == VINDR_CLASSES
        assert coco.getCatIds() == list(range(1, 15))
        images = coco.loadImgs(coco.getImgIds())
        assert {i["image_name"] for i in images} == set(manifest.loc[manifest["split"] == part, "image_id"])
        for img in images:
            assert Image.open(out / img["file_name"]).size == (img["width"], img["height"])
            got = sorted((a["category_id"] - 1, *a["bbox"]) for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])))
            ref = ann[ann["image_id"] == img["image_name"]]
            s = scale[img["image_name"]]
            want = sorted((c, x0 * s, y0 * s, (x1 - x0) * s, (y1 - y0) * s) for c, x0, y0, x1, y1 in
                          ref[["class_id", "x_min", "y_min", "x_max", "y_max"]].itertuples(index=False))
            assert np.allclose(np.array(got), np.array(want))
            for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
                assert a["iscrowd"] == 0 and a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])

    # No patient tag reaches the cache, in any file.
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert FAKE_PATIENT_NAME.encode() not in data and FAKE_PATIENT_ID.encode() not in data, path
            assert b"Zyxwvut" not in data and b"19010203" not in data

    # Same settings: the split file is reused and nothing decoded; another seed: a new split, no decoding.
    split_files = sorted(p.name for p in (out / "splits").iterdir())
    again = prepare(settings("vindr", roots["vindr"], out))
    assert (again.prepared, again.reused) == (0, 8)
    reseeded = prepare(settings("vindr", roots["vindr"], out, seed=3))
    assert reseeded.prepared == 0
    assert sorted(p.name for p in (out / "splits").iterdir()) == sorted(
        [*split_files, "vindr_seed3_70-15-15_nonormals.csv"])
    # With normals: only the normals still need decoding.
    with_normals = prepare(settings("vindr", roots["vindr"], out, with_normals=True))
    assert (with_normals.prepared, with_normals.images) == (4, 12)
    negatives = read_manifest(out).query("labels == 'No finding'")
    assert len(negatives) == 4
    assert pd.read_csv(out / "annotations.csv").query("class_id == 14")["x_min"].isna().sum() == 4


def test_vindr_physionet_official_test_16_bit(roots, tmp_path):
    out = tmp_path / "c"
    prepare(settings("vindr", roots["physionet"], out, official_test=True, with_normals=True, bits=16,
                     ratios="80,20,0"))
    manifest = read_manifest(out)
    test_ids = set(pd.read_csv(roots["physionet"] / "annotations" / "annotations_test.csv")["image_id"])
    assert set(manifest.loc[manifest["split"] == "test", "image_id"]) == test_ids
    assert manifest.loc[manifest["split"] != "test", "split"].value_counts().to_dict() == {"train": 10, "val": 2}
    png = Image.open(out / manifest["file"].iloc[0])
    assert png.mode.startswith("I;16") and np.asarray(png).dtype == np.uint16 and np.asarray(png).max() > 255
    with pytest.raises(BtcxrError, match="Kaggle layout"):
        prepare(settings("vindr", roots["vindr"], tmp_path / "k", official_test=True))


# ----------------------------------------------------------------------------------------------- folder
def test_folder_tree(tmp_path):
    root = tmp_path / "export"
    (root / "a" / "b").mkdir(parents=True)
    Image.fromarray(gradient_image(40, 30, 0)).save(root / "a" / "b" / "x.png")
    Image.fromarray(gradient_image(30, 40, 1)).convert("RGB").save(root / "a" / "y.jpg")
    write_dicom(root / "z.dcm", gradient_image(50, 50, 2, np.uint16))
    (root / "notes.txt").write_text("not an image")
    out = root / "cache"  # a cache inside the tree it prepares must not index itself
    report = prepare(settings("folder", root, out, size=32))
    manifest = read_manifest(out).set_index("image_id")
    assert sorted(manifest.index) == ["a__b__x", "a__y", "z"] and report.images == 3
    assert set(manifest["split"]) == {"train"} and set(manifest["labels"]) == {""}
    assert manifest.loc["a__y", ["orig_width", "orig_height"]].tolist() == [30, 40]
    assert len(list_folder(root, exclude=out)) == 3 and prepare(settings("folder", root, out, size=32)).prepared == 0
    with pytest.raises(BtcxrError, match="not empty and holds no cache"):
        prepare(settings("folder", root, root / "a", size=32))
    Image.fromarray(gradient_image(40, 30, 0)).save(root / "a__b__x.png")
    with pytest.raises(BtcxrError, match="same image id 'a__b__x'"):
        list_folder(root)


def test_cache_of_another_root_is_refused_not_reused(tmp_path):
    # Two exports with the same relative names: their image ids collide, so resuming the first cache
    # from the second root would keep the first export's pixels under the second one's names.
    first, second = tmp_path / "jan", tmp_path / "feb"
    for root, seed in ((first, 0), (second, 1)):
        root.mkdir()
        Image.fromarray(gradient_image(40, 30, seed)).save(root / "x.png")
    out = tmp_path / "cache"
    assert prepare(settings("folder", first, out, size=32)).prepared == 1
    with pytest.raises(BtcxrError, match="root=.*jan.*now .*feb"):
        prepare(settings("folder", second, out, size=32))
    reused = prepare(settings("folder", tmp_path / "." / "jan", out, size=32))  # same folder, other spelling
    assert (reused.prepared, reused.reused) == (0, 1)


# ----------------------------------------------------------------------------------------------- synth -> prepare
def test_synth_layouts_prepare_end_to_end(tmp_path):
    """H1's phantom datasets in the three official layouts go through prepare and the datasets."""
    import pydicom
    from pycocotools.coco import COCO

    from btcxr.data.datasets import NihClassification, UnlabeledImages, VindrDetection
    from btcxr.data.synthetic import generate

    generate(tmp_path / "synth", "all", n=20, size=96, seed=0, workers=1, normal_fraction=0.4,
             contact_sheet=False)
    caches = {}
    for layout, dataset, extra in (("nih", "nih", {}), ("vindr-kaggle", "vindr", {}),
                                   ("vindr-physionet", "vindr", {"official_test": True, "with_normals": True})):
        caches[layout] = tmp_path / f"cache-{layout}"
        report = prepare(settings(dataset, tmp_path / "synth" / layout, caches[layout], workers=2, **extra))
        assert report.skipped == 0 and report.images == len(read_manifest(caches[layout]))

    nih_entry = pd.read_csv(tmp_path / "synth" / "nih" / "Data_Entry_2017_v2020.csv")
    manifest = read_manifest(caches["nih"])
    assert len(manifest) == len(nih_entry) == 20  # RGBA and 16-bit PNGs of the synth set included
    test_list = set((tmp_path / "synth" / "nih" / "test_list.txt").read_text().split())
    assert set(manifest.loc[manifest["split"] == "test", "image_id"]) == test_list
    assert not set(UnlabeledImages(caches["nih"]).image_ids) & test_list
    assert len(NihClassification(caches["nih"], "train")) == (manifest["split"] == "train").sum()

    physionet = read_manifest(caches["vindr-physionet"])
    official_test = {p.stem for p in (tmp_path / "synth" / "vindr-physionet" / "test").iterdir()}
    assert set(physionet.loc[physionet["split"] == "test", "image_id"]) == official_test
    for layout in ("vindr-kaggle", "vindr-physionet"):
        cache = caches[layout]
        ann = pd.read_csv(cache / "annotations.csv")
        boxes = ann[ann["class_id"] != 14]
        coco_boxes = sum(len(COCO(str(cache / f"coco_{p}.json")).getAnnIds()) for p in ("train", "val", "test"))
        assert coco_boxes == len(boxes) > 0
        data = VindrDetection(cache, "train", include_negatives=True)
        assert sum(len(data[k][1]["boxes"]) for k in range(len(data))) == len(
            boxes[boxes["image_id"].isin(data.image_ids)])
        # The synth DICOMs carry (fake) patient tags: none of them may reach the cache.
        source = next((tmp_path / "synth" / layout / "train").iterdir())
        tags = pydicom.dcmread(source)
        secrets = [str(tags.PatientName).encode(), str(tags.PatientID).encode(), str(tags.PatientBirthDate).encode()]
        for path in cache.rglob("*"):
            if path.is_file():
                data_bytes = path.read_bytes()
                assert not any(secret in data_bytes for secret in secrets), path


def test_nih_boxes_are_kept_in_the_original_frame_and_checked(tmp_path):
    from btcxr.data.synthetic import generate

    root = tmp_path / "nih"
    generate(root, "nih", n=30, size=128, seed=3, normal_fraction=0.0, contact_sheet=False, workers=1)
    raw = pd.read_csv(root / "BBox_List_2017.csv")
    prepare(PrepareSettings(dataset="nih", root=str(root), out=str(tmp_path / "c"), size=64, workers=1))
    boxes = pd.read_csv(tmp_path / "c" / "nih_boxes.csv")
    assert len(boxes) == len(raw) > 0
    x, y, w, h = raw.iloc[0][["Bbox [x", "y", "w", "h]"]]
    first = boxes[boxes["image_id"] == raw.iloc[0]["Image Index"]].iloc[0]
    assert (first["x_min"], first["y_min"], first["x_max"], first["y_max"]) == pytest.approx((x, y, x + w, y + h))

    raw.loc[0, "w"] = 10 * 128  # a box far outside its 128 px image
    raw.to_csv(root / "BBox_List_2017.csv", index=False)
    with pytest.raises(BtcxrError, match=r"BBox_List_2017.csv.*lies outside the 128 x 128 image"):
        prepare(PrepareSettings(dataset="nih", root=str(root), out=str(tmp_path / "c2"), size=64, workers=1))
