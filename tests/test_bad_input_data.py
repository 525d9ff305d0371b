"""Bad input data: damaged DICOM headers, damaged image bytes, duplicated or empty tables, unusable --out
folders. Every case must end in a BtcxrError (ImageReadError for images) that names the file, or in a sane
result; never in a bare ValueError/TypeError/IndexError/OSError traceback."""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_cache import gradient_image, make_nih, make_vindr_kaggle, write_dicom
from PIL import Image
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from btcxr.cli import main as cli_main
from btcxr.data.cache import PrepareSettings, prepare
from btcxr.data.images import ImageReadError, read_image
from btcxr.engine.lock import LOCK
from btcxr.errors import BtcxrError

ROWS, COLS = 12, 16


# ============================================================================================ DICOM headers
def _base_dataset(voi_lut: bool = False) -> Dataset:
    """A small valid 12-bit DICOM with rescale and window (or a VOI LUT sequence instead of the window)."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Modality = "DX"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = "1"
    ds.Rows, ds.Columns = ROWS, COLS
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = "1"
    ds.RescaleIntercept = "0"
    if voi_lut:
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 16]
        lut = np.arange(0, 4096 * 16, 16, dtype="<u2").tobytes()
        item[Tag("LUTData")] = DataElement(Tag("LUTData"), "OW", lut)
        ds.VOILUTSequence = Sequence([item])
    else:
        ds.WindowCenter = "2048"
        ds.WindowWidth = "4096"
    pixels = Tag("PixelData")  # VR given: pydicom cannot choose it from a damaged BitsAllocated
    ds[pixels] = DataElement(pixels, "OW", gradient_image(COLS, ROWS, 0, np.uint16).tobytes())
    return ds


_US = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel")
_DS = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth")


def _bad_element(keyword: str, kind: str):
    """(VR, value) of a damaged element; VR chosen so pydicom writes it as given."""
    if keyword in _US:
        return {"empty": ("US", None), "non_numeric": ("LO", "abc"), "negative": ("SS", -5),
                "huge": ("UL", 4_000_000_000), "multi_valued": ("US", [ROWS, ROWS])}[kind]
    if keyword == "NumberOfFrames":
        return {"empty": ("IS", None), "non_numeric": ("LO", "two"), "negative": ("LO", "-3"),
                "huge": ("LO", "99999999999"), "multi_valued": ("LO", ["1", "2"])}[kind]
    if keyword in _DS:
        return {"empty": ("DS", None), "non_numeric": ("LO", "abc"), "negative": ("DS", "-5"),
                "huge": ("LO", "1e308"), "multi_valued": ("LO", ["abc", "1"])}[kind]
    if keyword == "PhotometricInterpretation":
        return {"empty": ("CS", None), "non_numeric": ("LO", "NOT A MODE"), "negative": ("LO", "-1"),
                "huge": ("LT", "MONOCHROME2" * 500), "multi_valued": ("CS", ["MONOCHROME2", "MONOCHROME1"])}[kind]
    raise AssertionError(keyword)


def _bad_voi_lut(ds: Dataset, kind: str) -> None:
    item = ds.VOILUTSequence[0]
    descriptor = Tag("LUTDescriptor")
    if kind == "empty":
        ds.VOILUTSequence = Sequence([Dataset()])  # an item without descriptor or data
    elif kind == "non_numeric":
        item[descriptor] = DataElement(descriptor, "LO", ["abc", "0", "16"])
    elif kind == "negative":
        item[descriptor] = DataElement(descriptor, "IS", ["-4096", "0", "16"])
    elif kind == "huge":
        item[descriptor] = DataElement(descriptor, "UL", [4_000_000_000, 4_000_000_000, 4_000_000_000])
    elif kind == "multi_valued":
        item[descriptor] = DataElement(descriptor, "US", [4096, 0, 16, 4096, 0, 16])
    elif kind == "short_data":
        item[Tag("LUTData")] = DataElement(Tag("LUTData"), "OW", b"\x00\x01\x02\x03")


def _write(ds: Dataset, path: Path) -> Path:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue())
    return path


def assert_sane_or_read_error(path: Path) -> None:
    """The contract of read_image for untrusted files: a sane radiograph or an ImageReadError naming it."""
    try:
        radiograph = read_image(path)
    except ImageReadError as exc:
        assert str(path) in str(exc)
        return
    pixels = radiograph.pixels
    assert pixels.ndim == 2 and pixels.dtype == np.uint8 and pixels.size > 0
    assert pixels.shape == (radiograph.orig_height, radiograph.orig_width)


ELEMENTS = ["Rows", "Columns", "NumberOfFrames", "BitsAllocated", "BitsStored", "PixelRepresentation",
            "SamplesPerPixel", "PhotometricInterpretation", *_DS]
KINDS = ["empty", "non_numeric", "negative", "huge", "multi_valued"]


def test_base_dicoms_are_valid(tmp_path):
    for voi in (False, True):
        radiograph = read_image(_write(_base_dataset(voi), tmp_path / f"ok{voi}.dcm"))
        assert radiograph.pixels.shape == (ROWS, COLS) and radiograph.pixels.max() > 0


def _damaged_dicom(element: str, kind: str, path: Path) -> Path:
    """A valid DICOM with one element set to a damaged value of the given kind."""
    ds = _base_dataset()
    vr, value = _bad_element(element, kind)
    tag = Tag(element)
    ds[tag] = DataElement(tag, vr, value)
    return _write(ds, path)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("element", ELEMENTS)
def test_damaged_dicom_element_is_a_read_error_or_sane(tmp_path, element, kind):
    path = _damaged_dicom(element, kind, tmp_path / "bad.dcm")
    assert_sane_or_read_error(path)


@pytest.mark.parametrize("element,kind", [(e, k) for e in ("Rows", "Columns", "NumberOfFrames") for k in KINDS
                                          if (e, k) != ("NumberOfFrames", "empty")])  # empty: one frame
def test_damaged_size_element_is_named(tmp_path, element, kind):
    """The size elements can never give a sane image when damaged: the error names file and element."""
    path = _damaged_dicom(element, kind, tmp_path / "bad.dcm")
    with pytest.raises(ImageReadError, match=rf"bad\.dcm.*{element}"):
        read_image(path)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's, about the damaged values written on purpose
@pytest.mark.parametrize("kind", [*KINDS, "short_data"])
def test_damaged_voi_lut_sequence_is_a_read_error_or_sane(tmp_path, kind):
    ds = _base_dataset(voi_lut=True)
    _bad_voi_lut(ds, kind)
    assert_sane_or_read_error(_write(ds, tmp_path / "bad.dcm"))


# ============================================================================================ damaged bytes
def _valid_bytes(fmt: str) -> bytes:
    g = gradient_image(40, 32, 7)
    if fmt == "dicom":
        return _dicom_bytes()
    buf = io.BytesIO()
    Image.fromarray(g).save(buf, format={"png": "PNG", "jpeg": "JPEG"}[fmt])
    return buf.getvalue()


def _dicom_bytes() -> bytes:
    buf = io.BytesIO()
    _base_dataset().save_as(buf, enforce_file_format=True)
    return buf.getvalue()


SUFFIX = {"dicom": ".dcm", "png": ".png", "jpeg": ".jpg"}


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("fmt", ["dicom", "png", "jpeg"])
def test_flipped_bytes_are_a_read_error_or_sane(tmp_path, fmt, seed):
    data = bytearray(_valid_bytes(fmt))
    rng = np.random.default_rng(seed)
    # Headers are where parsers trip: half the seeds damage the first 400 bytes only.
    span = min(len(data), 400) if seed % 2 == 0 else len(data)
    for pos in rng.integers(0, span, size=1 + seed % 4):
        data[pos] ^= int(rng.integers(1, 256))
    path = tmp_path / f"flipped{SUFFIX[fmt]}"
    path.write_bytes(bytes(data))
    assert_sane_or_read_error(path)


@pytest.mark.parametrize("fraction", [0.0, 0.02, 0.1, 0.3, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("fmt", ["dicom", "png", "jpeg"])
def test_truncated_file_is_a_read_error_or_sane(tmp_path, fmt, fraction):
    data = _valid_bytes(fmt)
    path = tmp_path / f"cut{SUFFIX[fmt]}"
    path.write_bytes(data[: int(len(data) * fraction)])
    assert_sane_or_read_error(path)


# ============================================================================================ prepare folder
def _folder_with_bad_dicom(root: Path) -> Path:
    root.mkdir(parents=True)
    for k in range(3):
        Image.fromarray(gradient_image(40, 30, k)).save(root / f"good{k}.png")
    write_dicom(root / "good3.dcm", gradient_image(36, 28, 3, np.uint16))
    ds = _base_dataset()
    ds[Tag("Rows")] = DataElement(Tag("Rows"), "LO", "abc")  # the non-numeric Rows of the bug report
    return _write(ds, root / "bad_rows.dcm")


@pytest.mark.parametrize("workers", [1, 2], ids=["in_process", "pool"])
def test_prepare_folder_skips_a_dicom_with_non_numeric_rows(tmp_path, workers):
    bad = _folder_with_bad_dicom(tmp_path / "export")
    out = tmp_path / "cache"
    report = prepare(PrepareSettings(dataset="folder", root=str(bad.parent), out=str(out), size=32,
                                     workers=workers, on_error="skip"))
    assert (report.images, report.skipped) == (4, 1)
    errors = pd.read_csv(out / "errors.csv")
    assert errors["path"].tolist() == [str(bad)] and "Rows" in errors["reason"].iloc[0]
    manifest = pd.read_csv(out / "manifest.csv")
    assert sorted(manifest["image_id"]) == ["good0", "good1", "good2", "good3"]


def test_prepare_folder_stops_on_a_dicom_with_non_numeric_rows(tmp_path, capsys):
    bad = _folder_with_bad_dicom(tmp_path / "export")
    rc = cli_main(["-q", "prepare", "folder", "--root", str(bad.parent), "--out", str(tmp_path / "cache"),
                   "--size", "32", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and str(bad) in err and "Rows" in err and "Traceback" not in err


# ============================================================================================ --on-error words
@pytest.mark.parametrize("command", ["prepare", "predict"])
def test_on_error_takes_the_same_words_everywhere(command):
    from btcxr.cli import build_parser
    from btcxr.errors import ON_ERROR

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    action = next(a for a in sub._actions if a.dest == "on_error")
    assert action.default == ON_ERROR[0] == "stop"
    assert action.metavar == "{stop,skip}" and "skip" in action.help


@pytest.mark.parametrize("word,expected", [("stop", "stop"), ("skip", "skip"), ("raise", "stop")],
                         ids=["stop", "skip", "deprecated_raise"])
def test_on_error_words_and_alias(word, expected):
    from btcxr.errors import check_on_error

    assert check_on_error(word) == expected


def test_unknown_on_error_word_is_an_error(tmp_path, capsys):
    root = tmp_path / "export"
    root.mkdir()
    Image.fromarray(gradient_image(40, 30, 0)).save(root / "x.png")
    rc = cli_main(["-q", "prepare", "folder", "--root", str(root), "--out", str(tmp_path / "c"), "--size", "32",
                   "--on-error", "ignore"])
    assert rc == 2 and "--on-error ignore: expected stop or skip" in capsys.readouterr().err


# ============================================================================================ damaged cache
@pytest.fixture
def nih_cache(tmp_path):
    root = tmp_path / "nih"
    make_nih(root, n=6)
    out = tmp_path / "cache"
    prepare(PrepareSettings(dataset="nih", root=str(root), out=str(out), size=40, workers=1))
    return root, out


def _rerun(root: Path, out: Path):
    return prepare(PrepareSettings(dataset="nih", root=str(root), out=str(out), size=40, workers=1))


@pytest.mark.parametrize("damage", ["truncated", "emptied", "bytes_flipped", "deleted"])
def test_damaged_cached_png_is_prepared_again_not_reused(nih_cache, damage):
    root, out = nih_cache
    png = sorted((out / "images").iterdir())[2]
    good = png.read_bytes()
    if damage == "truncated":
        png.write_bytes(good[: len(good) // 2])
    elif damage == "emptied":
        png.write_bytes(b"")
    elif damage == "bytes_flipped":  # same size, other content
        png.write_bytes(good[:60] + bytes(b ^ 0xFF for b in good[60:70]) + good[70:])
    else:
        png.unlink()
    report = _rerun(root, out)
    assert (report.reused, report.prepared) == (5, 1)
    assert png.read_bytes() == good


@pytest.mark.parametrize("cut", ["inside_scale", "inside_crc", "inside_width", "after_file_name"])
def test_journal_line_cut_by_a_kill_is_not_trusted(nih_cache, cut):
    root, out = nih_cache
    journal = out / "journal.csv"
    lines = journal.read_text().splitlines()
    header, last = lines[0], lines[-1]
    fields = last.split(",")
    position = {"inside_scale": 6, "inside_crc": 8, "inside_width": 4, "after_file_name": 1}[cut]
    cut_line = ",".join(fields[:position] + [fields[position][: max(1, len(fields[position]) // 2)]])
    if cut == "inside_scale":  # cut so that the rest still parses as numbers: 0.666... -> 0.6
        cut_line += "," + ",".join(fields[position + 1:])
    journal.write_text("\n".join([header, *lines[1:-1], cut_line]))  # no newline: the append was killed
    manifest_before = (out / "manifest.csv").read_bytes()
    report = _rerun(root, out)
    assert (report.reused, report.prepared) == (5, 1)
    assert (out / "manifest.csv").read_bytes() == manifest_before


def test_journal_line_with_a_wrong_number_is_not_trusted(nih_cache):
    """A whole line whose scale disagrees with the sizes (a shortened number) is dropped, not used."""
    root, out = nih_cache
    journal = out / "journal.csv"
    lines = journal.read_text().splitlines()
    fields = lines[-1].split(",")
    fields[6] = fields[6][:4]  # 40 / 96 = 0.41666.. -> 0.41
    journal.write_text("\n".join([*lines[:-1], ",".join(fields)]) + "\n")
    manifest_before = (out / "manifest.csv").read_bytes()
    report = _rerun(root, out)
    assert report.prepared == 1 and (out / "manifest.csv").read_bytes() == manifest_before


# ============================================================================================ VinDr tables
@pytest.fixture
def vindr_root(tmp_path):
    root = tmp_path / "vindr"
    make_vindr_kaggle(root, n=6)
    return root


def _duplicate(root: Path, how: str) -> list[int]:
    """Damage train.csv; return the file lines (header = 1) that repeat earlier ones."""
    text = (root / "train.csv").read_text()
    header, *rows = text.splitlines()
    box_row = next(k for k, r in enumerate(rows) if ",14," not in r)
    if how == "one_row_twice":
        rows.insert(box_row + 1, rows[box_row])
        repeated = [box_row + 3]
    elif how == "whole_file_twice":
        repeated = list(range(len(rows) + 2, 2 * len(rows) + 2))
        rows = rows + rows
    elif how == "file_and_header_twice":
        repeated = list(range(len(rows) + 2, 2 * len(rows) + 3))
        rows = rows + [header] + rows
    (root / "train.csv").write_text("\n".join([header, *rows]) + "\n")
    return repeated


@pytest.mark.parametrize("how", ["one_row_twice", "whole_file_twice", "file_and_header_twice"])
def test_repeated_vindr_rows_stop_with_the_lines(vindr_root, tmp_path, how, capsys):
    repeated = _duplicate(vindr_root, how)
    rc = cli_main(["-q", "prepare", "vindr", "--root", str(vindr_root), "--out", str(tmp_path / "c"),
                   "--size", "32", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "train.csv" in err and f"line {repeated[0]} repeats" in err
    assert f"{len(repeated)} row(s) repeat" in err
    assert not (tmp_path / "c" / "manifest.csv").exists()


@pytest.mark.parametrize("how", ["one_row_twice", "whole_file_twice", "file_and_header_twice"])
def test_repeated_vindr_rows_are_dropped_and_listed_with_skip(vindr_root, tmp_path, how):
    clean = prepare(PrepareSettings(dataset="vindr", root=str(vindr_root), out=str(tmp_path / "clean"), size=32,
                                    workers=1))
    repeated = _duplicate(vindr_root, how)
    report = prepare(PrepareSettings(dataset="vindr", root=str(vindr_root), out=str(tmp_path / "c"), size=32,
                                     workers=1, on_error="skip"))
    assert report.dropped_rows == len(repeated) and report.images == clean.images
    errors = pd.read_csv(tmp_path / "c" / "errors.csv")
    assert len(errors) == len(repeated) and errors["reason"].str.contains("repeats").all()
    assert errors["reason"].iloc[0].startswith(f"line {repeated[0]} repeats")
    # The fused boxes are those of the file without the repeats.
    assert (tmp_path / "c" / "annotations.csv").read_bytes() == (tmp_path / "clean" / "annotations.csv").read_bytes()


@pytest.mark.parametrize("layout", ["kaggle_train_csv", "physionet_annotations"])
def test_header_only_vindr_table_is_an_error(tmp_path, layout, capsys):
    from fixtures_cache import make_vindr_physionet

    root = tmp_path / "vindr"
    if layout == "kaggle_train_csv":
        make_vindr_kaggle(root, n=3)
        table = root / "train.csv"
    else:
        make_vindr_physionet(root, n_train=3, n_test=2)
        table = root / "annotations" / "annotations_train.csv"
    table.write_text(table.read_text().splitlines()[0] + "\n")
    rc = cli_main(["-q", "prepare", "vindr", "--root", str(root), "--out", str(tmp_path / "c"), "--size", "32"])
    err = capsys.readouterr().err
    assert rc == 2 and str(table) in err and "no rows" in err


def test_header_only_nih_data_entry_is_an_error(tmp_path):
    from btcxr.data.nih import read_data_entry

    root = tmp_path / "nih"
    make_nih(root, n=4)
    entry = root / "Data_Entry_2017_v2020.csv"
    entry.write_text(entry.read_text().splitlines()[0] + "\n")
    with pytest.raises(BtcxrError, match="Data_Entry_2017_v2020.csv: no rows"):
        read_data_entry(entry)


@pytest.mark.parametrize("split_list", ["train_val_list.txt", "test_list.txt"])
def test_nih_split_list_naming_an_unindexed_image(tmp_path, split_list, caplog):
    from btcxr.data.nih import load_nih

    root = tmp_path / "nih"
    make_nih(root, n=6)
    listed = root / split_list
    lines = listed.read_text().splitlines()
    listed.write_text("\n".join([*lines, "99999999_000.png"]) + "\n")
    with pytest.raises(BtcxrError, match=rf"{split_list}, line {len(lines) + 1}.*99999999_000.png"):
        load_nih(root)
    source = load_nih(root, require_images=False)  # --allow-missing-images: left out, counted in the log
    assert len(source.index) == 6 and "1 listed name(s) are not indexed images" in caplog.text


# ============================================================================================ unusable --out
def _out_cases(tmp_path: Path, case: str) -> Path:
    if case == "existing_file":
        out = tmp_path / "taken"
        out.write_text("a file, not a folder")
        return out
    if case == "file_as_parent":
        (tmp_path / "taken").write_text("a file")
        return tmp_path / "taken" / "out"
    out = tmp_path / "readonly"
    out.mkdir()
    out.chmod(0o500)
    probe = out / "probe"
    try:
        probe.write_text("x")
    except PermissionError:
        return out
    probe.unlink()
    out.chmod(0o700)
    pytest.skip("running as root: a 0o500 folder is writable all the same")


def _command(command: str, root: Path, out: Path) -> list[str]:
    if command == "prepare":
        return ["prepare", "folder", "--root", str(root), "--out", str(out), "--size", "32", "--workers", "1"]
    if command == "synth":
        return ["synth", "--out", str(out), "--layout", "nih", "--n", "2", "--size", "32", "--render-max", "64",
                "--workers", "1", "--no-contact-sheet"]
    if command == "evaluate":
        return ["evaluate", "--pred", str(root / "predictions.csv"), "--gt", str(root / "train.csv"), "--out",
                str(out), "--bootstrap", "0"]
    return ["predict", "--checkpoint", str(root / "best.pt"), str(root), "--out", str(out), "--workers", "0",
            "--no-overlays", "--device", "cpu"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """What each command reads: a few PNGs, a VinDr train.csv with predictions, a tiny detector."""
    import torch

    from btcxr.detect.config import ModelConfig
    from btcxr.detect.model import build_detector, detector_checkpoint
    from btcxr.detect.predictions import write_predictions
    from btcxr.engine.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("inputs")
    for k in range(2):
        Image.fromarray(gradient_image(40, 30, k)).save(root / f"x{k}.png")
    vindr = root / "vindr"
    table = make_vindr_kaggle(vindr, n=4)
    shutil.copy(vindr / "train.csv", root / "train.csv")
    boxes = table[table["class_id"] != 14].copy()
    pred = boxes[["image_id", "class_id", "class_name", "x_min", "y_min", "x_max", "y_max"]].copy()
    pred[["x_min", "y_min", "x_max", "y_max"]] = pred[["x_min", "y_min", "x_max", "y_max"]].astype(float)
    pred["score"] = 0.9
    write_predictions(pred, root / "predictions.csv")
    shutil.rmtree(vindr)  # predict searches the folder: only the PNGs
    torch.manual_seed(0)
    cfg = ModelConfig(arch="resnet18", init="random", size=64, fpn_channels=8, box_head_dim=16)
    save_checkpoint(root / "best.pt", detector_checkpoint(build_detector(cfg), cfg, epoch=1))
    return root


COMMANDS = ["prepare", "synth", "evaluate", "predict"]


@pytest.mark.parametrize("case", ["existing_file", "file_as_parent", "read_only_folder"])
@pytest.mark.parametrize("command", COMMANDS)
def test_unusable_out_folder_is_a_clear_error(inputs, tmp_path, command, case, capsys):
    out = _out_cases(tmp_path, case)
    rc = cli_main(["-q", *_command(command, inputs, out)])
    err = capsys.readouterr().err
    assert rc == 2 and str(out) in err and "Traceback" not in err


@pytest.mark.parametrize("command", COMMANDS)
def test_full_disk_is_a_clear_error(inputs, tmp_path, command, capsys, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)  # where a full disk shows itself on an atomic write
    out = tmp_path / "out"
    rc = cli_main(["-q", *_command(command, inputs, out)])
    err = capsys.readouterr().err
    assert rc == 2 and "No space left on device (is the disk full?)" in err and str(out) in err
    assert "Traceback" not in err
    leftovers = [p for p in out.rglob("*") if p.is_file() and p.name.startswith(".") and p.name != LOCK]
    assert leftovers == []  # no temporary file is left behind (the folder's lock file is not one)


def test_full_disk_while_writing_cached_pngs_names_the_png(tmp_path, capsys, monkeypatch):
    root = tmp_path / "export"
    root.mkdir()
    Image.fromarray(gradient_image(40, 30, 0)).save(root / "x.png")
    real_replace = os.replace

    def images_full(src, dst):  # cached PNGs are not fsync'd: the disk fills up on the way to their rename
        if "/images/" in str(dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", images_full)
    rc = cli_main(["-q", "prepare", "folder", "--root", str(root), "--out", str(tmp_path / "c"), "--size", "32",
                   "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and f"cannot write {tmp_path / 'c' / 'images' / 'x.png'}" in err
