"""`btcxr prepare vindr --protocol paper` against the paper's published ground truth, and VinDr held as
PNG/JPEG copies (original size, or resized with a train_meta.csv) against the same images as DICOMs.

The reference of the first test is independent of btcxr: the authors' own val/test COCO files
(tests/data/paper_vindr_boxes.csv.gz, see tests/data/README.md), and the real train.csv rows of those
images from the torchxrayvision wheel. Images are flat 16 x 16 PNGs with a train_meta.csv that gives their
real sizes, so the boxes go through the same resized-copy path that a user's PNG set does.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_cache import make_vindr_kaggle
from PIL import Image

from btcxr.data import cache as cache_mod
from btcxr.data.cache import PrepareSettings, prepare
from btcxr.data.cache_format import read_manifest
from btcxr.data.fusion import fuse_readers
from btcxr.data.images import read_image
from btcxr.data.protocol import paper_lists
from btcxr.data.vindr import read_kaggle_train_csv
from btcxr.errors import BtcxrError

PAPER_BOXES = Path(__file__).parent / "data" / "paper_vindr_boxes.csv.gz"
BOX = ["x_min", "y_min", "x_max", "y_max"]


def _real_rows(train_csv_gz: Path, keep: set[str]) -> list[str]:
    """The header and every row of the real train.csv whose image is in `keep`, verbatim, in file order."""
    with gzip.open(train_csv_gz, "rt", encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    return [lines[0], *(ln for ln in lines[1:] if ln.split(",", 1)[0] in keep)]


def _flat_copies(root: Path, sizes: dict[str, tuple[int, int]]) -> None:
    """train/<id>.png, 16 x 16 flat (a square resize, as Kaggle's resized sets), and train_meta.csv."""
    (root / "train").mkdir(parents=True)
    flat = Image.fromarray(np.full((16, 16), 90, np.uint8))
    for image_id in sizes:
        flat.save(root / "train" / f"{image_id}.png")
    meta = pd.DataFrame([(i, h, w) for i, (w, h) in sizes.items()], columns=["image_id", "dim0", "dim1"])
    meta.to_csv(root / "train_meta.csv", index=False)


@pytest.fixture(scope="module")
def paper_root(tmp_path_factory, vindr_train_csv, vindr_real) -> tuple[Path, pd.DataFrame, list[str]]:
    """The paper's 1,319 val/test images, 25 other images with a finding and 10 normal ones."""
    expected = pd.read_csv(PAPER_BOXES, dtype={"image_id": str})
    listed = set(expected["image_id"])
    real = vindr_real
    others = real[~real["image_id"].isin(listed)]
    finding = others["class_id"] != 14
    with_finding = set(others.loc[finding, "image_id"])
    extra = sorted(with_finding)[:25]
    normal = sorted(set(others["image_id"]) - with_finding)[:10]
    root = tmp_path_factory.mktemp("paper") / "vindr-png"
    root.mkdir()
    (root / "train.csv").write_text("\n".join(_real_rows(vindr_train_csv, listed | set(extra) | set(normal))) + "\n")
    sizes = {i: (int(w), int(h)) for i, w, h in expected.groupby("image_id")[["width", "height"]].first().itertuples()}
    # Images outside the paper's lists: any size that holds their boxes.
    for image_id in extra + normal:
        rows = real[real["image_id"] == image_id]
        sizes[image_id] = (int(np.nan_to_num(rows["x_max"].max(), nan=500)) + 7,
                           int(np.nan_to_num(rows["y_max"].max(), nan=600)) + 5)
    _flat_copies(root, sizes)
    return root, expected, extra


def _match_within(got: pd.DataFrame, want: pd.DataFrame, tol: float = 1.0) -> bool:
    """Same number of boxes per class, and each wanted box matched one-to-one by a box within tol px."""
    if len(got) != len(want):
        return False
    free = got[["class_id", *BOX]].to_numpy(float).tolist()
    for row in want[["class_id", *BOX]].to_numpy(float):
        hit = next((k for k, g in enumerate(free) if g[0] == row[0] and
                    max(abs(a - b) for a, b in zip(g[1:], row[1:])) <= tol), None)
        if hit is None:
            return False
        free.pop(hit)
    return True


def test_paper_protocol_gives_the_papers_boxes_and_split(paper_root, tmp_path, vindr_train_csv):
    root, expected, extra = paper_root
    report = prepare(PrepareSettings("vindr", str(root), str(tmp_path / "c"), size=32, workers=2, protocol="paper"))
    assert report.images == 1319 + len(extra) and report.skipped == 0
    manifest = read_manifest(tmp_path / "c")
    split = manifest.set_index("image_id")["split"]
    want_split = expected.groupby("image_id")["split"].first()
    assert (split.reindex(want_split.index) == want_split).all()  # every listed image in its paper part
    assert sorted(split[split == "train"].index) == sorted(extra)  # the rest with a finding; normals dropped
    sizes = expected.groupby("image_id")[["width", "height"]].first()
    got_sizes = manifest.set_index("image_id")[["orig_width", "orig_height"]].reindex(sizes.index)
    assert (got_sizes.to_numpy() == sizes.to_numpy()).all()  # the original frame, from train_meta.csv

    ann = pd.read_csv(tmp_path / "c" / "annotations.csv", dtype={"image_id": str})
    got = dict(tuple(ann.groupby("image_id")))
    bad = [i for i, want in expected.groupby("image_id") if not _match_within(got[i], want)]
    assert bad == [], f"{len(bad)} of 1319 images differ from the paper's boxes, e.g. {bad[:3]}"
    assert (ann["score"] == 1.0).all()

    record = json.loads((tmp_path / "c" / "prepare.json").read_text())
    assert (record["protocol"], record["fusion"], record["iou_thr"]) == ("paper", "wbf-pooled", 0.5)
    assert "paper's protocol" in record["ground_truth"] and record["split_file"] == "splits/vindr_paper.csv"

    # The control: our default fusion (per-reader WBF at 0.4) does not give the paper's boxes everywhere,
    # so the comparison above can fail.
    rows = read_kaggle_train_csv(root / "train.csv")
    ours = fuse_readers(rows[rows["image_id"].isin(expected["image_id"])], "wbf", 0.4)
    ours = dict(tuple(ours[ours["class_id"] != 14].groupby("image_id")))
    differ = sum(not _match_within(ours[i], want) for i, want in expected.groupby("image_id"))
    assert differ > 200  # 289 of 1319 on the real rows


def test_paper_lists_ship_with_the_package():
    lists = paper_lists()
    assert (len(lists["val"]), len(lists["test"])) == (659, 660)
    assert not set(lists["val"]) & set(lists["test"])
    expected = pd.read_csv(PAPER_BOXES, dtype={"image_id": str}).groupby("split")["image_id"].unique()
    assert set(lists["val"]) == set(expected["val"]) and set(lists["test"]) == set(expected["test"])


@pytest.fixture
def small_paper(tmp_path, vindr_train_csv, vindr_real, monkeypatch) -> Path:
    """Six real images with the paper's lists cut down to them (two val, two test, two train)."""
    lists = paper_lists()
    val, test = lists["val"][:2], lists["test"][:2]
    others = vindr_real
    others = others[(others["class_id"] != 14) & ~others["image_id"].isin(lists["val"] + lists["test"])]
    train = list(pd.unique(others["image_id"]))[:2]
    monkeypatch.setattr(cache_mod, "paper_lists", lambda: {"val": val, "test": test})
    root = tmp_path / "vindr"
    root.mkdir()
    (root / "train.csv").write_text("\n".join(_real_rows(vindr_train_csv, set(val + test + train))) + "\n")
    _flat_copies(root, dict.fromkeys(val + test + train, (3500, 3500)))
    return root


def test_paper_image_without_a_file_is_an_error_or_a_counted_skip(small_paper, tmp_path):
    gone = paper_lists()["val"][1]
    (small_paper / "train" / f"{gone}.png").unlink()
    with pytest.raises(BtcxrError, match=rf"have no image file \(e\.g\. {gone}\).*--allow-missing-images"):
        prepare(PrepareSettings("vindr", str(small_paper), str(tmp_path / "a"), size=32, workers=1, protocol="paper"))
    report = prepare(PrepareSettings("vindr", str(small_paper), str(tmp_path / "b"), size=32, workers=1,
                                     protocol="paper", allow_missing_images=True))
    assert report.images == 5
    assert read_manifest(tmp_path / "b")["split"].value_counts().to_dict() == {"train": 2, "test": 2, "val": 1}
    errors = pd.read_csv(tmp_path / "b" / "errors.csv")
    assert errors["image_id"].tolist() == [gone] and "paper's val split" in errors["reason"][0]
    assert json.loads((tmp_path / "b" / "prepare.json").read_text())["counts"]["missing_images"] == 1


def test_paper_list_image_absent_from_train_csv_is_an_error(small_paper, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "paper_lists", lambda: {"val": ["0" * 32], "test": []})
    with pytest.raises(BtcxrError, match=r"train.csv: 1 image\(s\) of the paper's val/test split have no rows"):
        prepare(PrepareSettings("vindr", str(small_paper), str(tmp_path / "c"), size=32, protocol="paper"))


@pytest.mark.parametrize("option", [{"fusion": "nms"}, {"iou_thr": 0.4}, {"with_normals": True},
                                    {"ratios": "80,10,10"}, {"label_set": "local"}, {"official_test": True}])
def test_paper_protocol_refuses_the_options_it_fixes(small_paper, tmp_path, option):
    with pytest.raises(BtcxrError, match="--protocol paper fixes"):
        prepare(PrepareSettings("vindr", str(small_paper), str(tmp_path / "c"), size=32, protocol="paper", **option))
    assert not (tmp_path / "c").exists()


def test_cli_protocol_paper(small_paper, tmp_path):
    from btcxr.cli import main

    assert main(["prepare", "vindr", "--root", str(small_paper), "--out", str(tmp_path / "c"), "--size", "32",
                 "--protocol", "paper", "--workers", "1"]) == 0
    assert read_manifest(tmp_path / "c")["split"].value_counts().to_dict() == {"train": 2, "val": 2, "test": 2}
    assert main(["prepare", "vindr", "--root", str(small_paper), "--out", str(tmp_path / "d"), "--size", "32",
                 "--protocol", "paper", "--fusion", "wbf"]) != 0


# ----------------------------------------------------------------------------------------- PNG / JPEG copies
@pytest.fixture(scope="module")
def dicom_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vindr") / "dicom"
    make_vindr_kaggle(root, n=12)
    return root


def _copy_as(dicom_root: Path, dest: Path, bits: int, resize=None, meta: bool = False) -> Path:
    """The DICOM root re-encoded: the decoded pixels as PNG (JPEG for every third image when resized)."""
    (dest / "train").mkdir(parents=True)
    shutil.copy(dicom_root / "train.csv", dest / "train.csv")
    rows = []
    for k, path in enumerate(sorted((dicom_root / "train").glob("*.dicom"))):
        radiograph = read_image(path, bits=bits)
        im = Image.fromarray(radiograph.pixels)
        suffix = ".png"
        if resize is not None:
            im = im.resize(resize(radiograph.orig_width, radiograph.orig_height), Image.Resampling.BILINEAR)
            suffix = ".jpg" if k % 3 == 0 and bits == 8 else ".png"
        im.save(dest / "train" / f"{path.stem}{suffix}")
        rows.append((path.stem, radiograph.orig_height, radiograph.orig_width))
    if meta:
        pd.DataFrame(rows, columns=["image_id", "dim0", "dim1"]).to_csv(dest / "train_meta.csv", index=False)
    return dest


def _cache_tables(cache: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return (read_manifest(cache), pd.read_csv(cache / "annotations.csv"), pd.read_csv(cache / "readers.csv"))


@pytest.mark.parametrize("bits", [8, 16])
def test_original_size_png_root_prepares_to_the_dicom_cache(dicom_root, tmp_path, bits):
    png_root = _copy_as(dicom_root, tmp_path / "png", bits)
    for root, out in ((dicom_root, "from_dicom"), (png_root, "from_png")):
        prepare(PrepareSettings("vindr", str(root), str(tmp_path / out), size=64, bits=bits, workers=1))
    for a, b in zip(_cache_tables(tmp_path / "from_dicom"), _cache_tables(tmp_path / "from_png")):
        pd.testing.assert_frame_equal(a, b)
    manifest = read_manifest(tmp_path / "from_dicom")
    assert len(manifest) == 8  # the 8 of 12 synthetic images with a finding
    for file in manifest["file"]:
        a = np.asarray(Image.open(tmp_path / "from_dicom" / file))
        b = np.asarray(Image.open(tmp_path / "from_png" / file))
        assert a.dtype == b.dtype and np.array_equal(a, b), file


@pytest.mark.parametrize("resize", [lambda w, h: (40, 40), lambda w, h: (w // 2, h // 2)],
                         ids=["square", "half"])
def test_resized_root_with_meta_gives_the_same_boxes_and_manifest(dicom_root, tmp_path, resize):
    copies = _copy_as(dicom_root, tmp_path / "small", 8, resize=resize, meta=True)
    assert any(p.suffix == ".jpg" for p in (copies / "train").iterdir())
    prepare(PrepareSettings("vindr", str(dicom_root), str(tmp_path / "from_dicom"), size=32, workers=1))
    prepare(PrepareSettings("vindr", str(copies), str(tmp_path / "from_copies"), size=32, workers=1))
    for a, b in zip(_cache_tables(tmp_path / "from_dicom"), _cache_tables(tmp_path / "from_copies")):
        pd.testing.assert_frame_equal(a, b)
    for file in read_manifest(tmp_path / "from_dicom")["file"]:  # same cache shape, pixels resampled
        a = np.asarray(Image.open(tmp_path / "from_dicom" / file))
        b = np.asarray(Image.open(tmp_path / "from_copies" / file))
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < 20


def test_resized_copies_without_or_with_wrong_sizes_are_errors_naming_the_file(dicom_root, tmp_path):
    copies = _copy_as(dicom_root, tmp_path / "small", 8, resize=lambda w, h: (40, 40), meta=True)
    meta = copies / "train_meta.csv"
    moved = tmp_path / "elsewhere_meta.csv"
    meta.rename(moved)
    # No sizes: the boxes (original pixels) leave the 40 px images.
    with pytest.raises(BtcxrError, match=r"lies outside the 40 x 40 image.*--meta-csv"):
        prepare(PrepareSettings("vindr", str(copies), str(tmp_path / "a"), size=32, workers=1))
    # The same file given by the flag works.
    prepare(PrepareSettings("vindr", str(copies), str(tmp_path / "b"), size=32, workers=1, meta_csv=str(moved)))
    # A size file that lacks an image.
    table = pd.read_csv(moved, dtype={"image_id": str})
    table.iloc[1:].to_csv(meta, index=False)
    with pytest.raises(BtcxrError, match=rf"{table['image_id'][0]}\.(png|jpg): not listed in .*train_meta.csv"):
        prepare(PrepareSettings("vindr", str(copies), str(tmp_path / "c"), size=32, workers=1))
    # A size smaller than the file: it does not belong to this image.
    table.assign(dim0=30, dim1=30).to_csv(meta, index=False)
    with pytest.raises(BtcxrError, match=r"larger than its original size 30 x 30"):
        prepare(PrepareSettings("vindr", str(copies), str(tmp_path / "d"), size=32, workers=1))
    # A size that disagrees with the boxes.
    table.assign(dim0=60, dim1=60).to_csv(meta, index=False)
    with pytest.raises(BtcxrError, match=r"lies outside the 60 x 60 image"):
        prepare(PrepareSettings("vindr", str(copies), str(tmp_path / "e"), size=32, workers=1))
    # Malformed size file: the line and field are named.
    meta.write_text("image_id,dim0,dim1\nabc,12x,40\n")
    with pytest.raises(BtcxrError, match=r"train_meta.csv, line 2, field 'dim0': not a number"):
        prepare(PrepareSettings("vindr", str(copies), str(tmp_path / "f"), size=32, workers=1))


def test_a_dicom_and_a_png_of_one_image_is_an_error(dicom_root, tmp_path):
    root = tmp_path / "both"
    shutil.copytree(dicom_root, root)
    one = sorted((root / "train").glob("*.dicom"))[0]
    Image.fromarray(read_image(one).pixels).save(one.with_suffix(".png"))
    with pytest.raises(BtcxrError, match=rf"two image files for image {one.stem}: .*\.dicom and .*\.png"):
        prepare(PrepareSettings("vindr", str(root), str(tmp_path / "c"), size=32, workers=1))


def test_an_annotated_image_without_a_file_is_an_error_or_a_counted_skip(dicom_root, tmp_path):
    root = tmp_path / "partial"
    shutil.copytree(dicom_root, root)
    ids = pd.read_csv(root / "train.csv", dtype=str)
    gone = ids.loc[ids["class_id"] != "14", "image_id"].iloc[0]
    (root / "train" / f"{gone}.dicom").unlink()
    with pytest.raises(BtcxrError, match=rf"1 of 12 annotated images have no image file \(e\.g\. {gone}\)"):
        prepare(PrepareSettings("vindr", str(root), str(tmp_path / "a"), size=32, workers=1))
    report = prepare(PrepareSettings("vindr", str(root), str(tmp_path / "b"), size=32, workers=1,
                                     allow_missing_images=True))
    assert report.images == 7 and gone not in set(read_manifest(tmp_path / "b")["image_id"])
    errors = pd.read_csv(tmp_path / "b" / "errors.csv", dtype=str)
    assert errors["image_id"].tolist() == [gone] and errors["path"][0] == str(root.resolve() / "train" / gone)
    assert "annotated in" in errors["reason"][0] and "train.csv" in errors["reason"][0]
