"""Reading PNG/JPEG/DICOM radiographs and resizing them: numbers against formulas written out here."""

from __future__ import annotations

import dataclasses
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage

from btcxr.data.images import ImageReadError, Radiograph, read_image, resize_longest
from btcxr.errors import BtcxrError

SECRET_NAME = "Doe^Secretname"
SECRET_ID = "PID-7734-SECRET"


def gray_pattern(h: int = 37, w: int = 53) -> np.ndarray:
    """A non-square 8-bit pattern that uses the whole range."""
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 7 + y * 13) % 256).astype(np.uint8)


def make_dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12,
               **attrs) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.PatientName = SECRET_NAME
    ds.PatientID = SECRET_ID
    ds.PatientBirthDate = "19510203"
    ds.StudyDate = "20200101"
    ds.set_pixel_data(stored, photometric, bits_stored)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def minmax(values: np.ndarray, top: int) -> np.ndarray:
    v = values.astype(np.float64)
    return np.rint((v - v.min()) / (v.max() - v.min()) * top)


# ---------------------------------------------------------------------------------------------- PNG


def test_png_modes_decode_to_the_same_gray(tmp_path):
    g = gray_pattern()
    rng = np.random.default_rng(0)
    alpha = rng.integers(0, 256, g.shape, dtype=np.uint8)
    variants = {
        "L": Image.fromarray(g, "L"),
        "LA": Image.fromarray(np.dstack([g, alpha]), "LA"),
        "RGB": Image.fromarray(np.dstack([g, g, g]), "RGB"),
        "RGBA": Image.fromarray(np.dstack([g, g, g, alpha]), "RGBA"),
    }
    for mode, im in variants.items():
        path = tmp_path / f"{mode}.png"
        im.save(path)
        assert Image.open(path).mode == mode
        rg = read_image(path)
        assert isinstance(rg, Radiograph)
        assert rg.pixels.dtype == np.uint8 and rg.pixels.ndim == 2, mode
        assert (rg.orig_width, rg.orig_height) == (53, 37)
        np.testing.assert_array_equal(rg.pixels, g, err_msg=mode)
        # 8 -> 16 bits: v * 257 maps 0..255 onto 0..65535
        np.testing.assert_array_equal(read_image(path, bits=16).pixels, g.astype(np.uint32) * 257, err_msg=mode)


def test_colour_png_becomes_itu601_luminance_and_alpha_is_ignored(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.png")
    # Alpha 0 everywhere: a composite would be black; we drop alpha instead.
    Image.fromarray(np.dstack([rgb, np.zeros((20, 30), np.uint8)]), "RGBA").save(tmp_path / "ca.png")
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    expected = r * 299 / 1000 + g * 587 / 1000 + b * 114 / 1000  # ITU-R 601-2 luma (PIL's convert("L"))
    for name in ("c.png", "ca.png"):
        got = read_image(tmp_path / name).pixels.astype(np.float64)
        assert np.abs(got - expected).max() <= 1.0, name


def test_16bit_png_is_min_max_stretched(tmp_path):
    rng = np.random.default_rng(2)
    raw = rng.integers(1000, 4001, (25, 40)).astype(np.uint16)  # 12-bit data in a 16-bit container
    raw[0, 0], raw[0, 1] = 1000, 4000
    Image.fromarray(raw).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode == "I;16"
    r8 = read_image(tmp_path / "i16.png", bits=8)
    r16 = read_image(tmp_path / "i16.png", bits=16)
    assert r8.pixels.dtype == np.uint8 and r16.pixels.dtype == np.uint16
    np.testing.assert_array_equal(r8.pixels, minmax(raw, 255))
    np.testing.assert_array_equal(r16.pixels, minmax(raw, 65535))
    assert (r8.orig_width, r8.orig_height) == (40, 25)


def test_jpeg_gray_and_colour(tmp_path):
    g = np.repeat(np.linspace(0, 255, 64).astype(np.uint8)[None, :], 48, axis=0)
    Image.fromarray(g).save(tmp_path / "g.jpg", quality=95)
    Image.fromarray(np.dstack([g, g, g])).save(tmp_path / "c.jpeg", quality=95)
    for name in ("g.jpg", "c.jpeg"):
        rg = read_image(tmp_path / name)
        assert rg.pixels.shape == (48, 64) and rg.pixels.dtype == np.uint8
        assert np.abs(rg.pixels.astype(int) - g.astype(int)).mean() < 2.0, name  # JPEG is lossy


# -------------------------------------------------------------------------------------------- DICOM


def test_dicom_monochrome1_and_2_with_the_same_content_decode_equal(tmp_path):
    rng = np.random.default_rng(3)
    v = rng.integers(0, 4096, (30, 45)).astype(np.uint16)
    m2 = read_image(make_dicom(tmp_path / "m2.dcm", v, "MONOCHROME2"))
    m1 = read_image(make_dicom(tmp_path / "m1.dcm", (4095 - v).astype(np.uint16), "MONOCHROME1"))
    np.testing.assert_array_equal(m1.pixels, m2.pixels)
    # BitsStored 12, no window: the values used are stretched min-max; air (low values) stays dark.
    np.testing.assert_array_equal(m2.pixels, minmax(v, 255))
    assert (m2.orig_width, m2.orig_height) == (45, 30)
    np.testing.assert_array_equal(read_image(tmp_path / "m2.dcm", bits=16).pixels, minmax(v, 65535))


def test_dicom_rescale_and_window_follow_ps3_3(tmp_path):
    rng = np.random.default_rng(4)
    v = rng.integers(0, 4096, (32, 32)).astype(np.uint16)
    slope, intercept, center, width = 2.0, -1024.0, 1500.0, 3000.0
    path = make_dicom(tmp_path / "w.dcm", v, bits_stored=12, RescaleSlope=slope, RescaleIntercept=intercept,
                      WindowCenter=center, WindowWidth=width)
    # PS3.3 C.11.2.1.2.1 (LINEAR), written out: c' = c - 0.5, w' = w - 1.
    x = v * slope + intercept
    c, w = center - 0.5, width - 1
    unit = np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 1.0, (x - c) / w + 0.5))
    got = read_image(path).pixels.astype(np.float64)
    assert np.abs(got - unit * 255).max() <= 0.5 + 1e-9
    assert 0 < np.mean(got == 0) < 1 and 0 < np.mean(got == 255) < 1  # the window really clips both ends

    # MONOCHROME1 with the same window semantics inverts the result.
    path1 = make_dicom(tmp_path / "w1.dcm", v, "MONOCHROME1", 12, RescaleSlope=slope, RescaleIntercept=intercept,
                       WindowCenter=center, WindowWidth=width)
    np.testing.assert_array_equal(read_image(path1).pixels.astype(int), 255 - read_image(path).pixels.astype(int))


def test_dicom_voi_lut_sequence_is_applied(tmp_path):
    rng = np.random.default_rng(6)
    v = rng.integers(0, 4096, (24, 36)).astype(np.uint16)
    lut = np.rint(np.sqrt(np.arange(4096) / 4095) * 3000 + 500).astype(np.uint16)  # a gamma-like curve
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = lut.astype("<u2").tobytes()
    path = make_dicom(tmp_path / "lut.dcm", v, VOILUTSequence=pydicom.Sequence([item]),
                      WindowCenter=10.0, WindowWidth=20.0)  # the LUT wins over the window
    expected = np.rint((lut[v].astype(np.float64) - 500) / 3000 * 255)
    np.testing.assert_array_equal(read_image(path).pixels, expected)


def test_dicom_rle_lossless_equals_uncompressed(tmp_path):
    rng = np.random.default_rng(5)
    v = rng.integers(0, 4096, (40, 24)).astype(np.uint16)
    plain = read_image(make_dicom(tmp_path / "plain.dcm", v))
    ds = pydicom.dcmread(tmp_path / "plain.dcm")
    ds.compress(RLELossless, v)
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "rle.dcm").file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(read_image(tmp_path / "rle.dcm").pixels, plain.pixels)


def test_dicom_found_by_preamble_without_suffix(tmp_path):
    v = gray_pattern().astype(np.uint16) * 16
    make_dicom(tmp_path / "noext.dcm", v)
    (tmp_path / "noext.dcm").rename(tmp_path / "image_without_suffix")
    np.testing.assert_array_equal(read_image(tmp_path / "image_without_suffix").pixels, minmax(v, 255))


def test_missing_decoder_names_the_transfer_syntax(tmp_path, monkeypatch):
    from pydicom.uid import JPEG2000Lossless

    path = make_dicom(tmp_path / "j2k.dcm", gray_pattern().astype(np.uint16))
    ds = pydicom.dcmread(path)
    ds.compress(JPEG2000Lossless, ds.pixel_array)
    ds.save_as(path, enforce_file_format=True)

    class NoDecoder:
        is_available = False
        missing_dependencies = ["pylibjpeg-openjpeg", "gdcm"]

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: NoDecoder())
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    msg = str(err.value)
    assert str(path) in msg and "JPEG 2000" in msg and JPEG2000Lossless in msg and "pylibjpeg" in msg


def test_unknown_transfer_syntax_is_refused(tmp_path):
    from pydicom.encaps import encapsulate

    path = make_dicom(tmp_path / "mpeg.dcm", gray_pattern().astype(np.uint16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML  # video: no image decoder exists
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="MPEG2") as err:
        read_image(path)
    assert str(path) in str(err.value)


# ------------------------------------------------------------------------------ refusals and damage


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (8-bit gray) with one tiny IDAT: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
                     + chunk(b"IEND", b""))
    return path


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    # 8000 x 7000 = 56 MP: under PIL's own limit, over ours (50 MP).
    with pytest.raises(ImageReadError, match="exceeds the limit") as err:
        read_image(_png_header_only(tmp_path / "big.png", 8000, 7000))
    assert "big.png" in str(err.value)
    # 40000 x 40000: PIL's own DecompressionBombError, converted.
    with pytest.raises(ImageReadError) as err:
        read_image(_png_header_only(tmp_path / "huge.png", 40000, 40000), max_pixels=10**10)
    assert "huge.png" in str(err.value) and "bomb" in str(err.value)
    # The caller's limit applies to real images too.
    Image.fromarray(gray_pattern(100, 100)).save(tmp_path / "ok.png")
    with pytest.raises(ImageReadError, match="10,000 pixels exceeds the limit of 5,000"):
        read_image(tmp_path / "ok.png", max_pixels=5000)
    # DICOM: Rows x Columns is checked from the header; the 16 bytes of pixel data are never decoded.
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 20000, 20000, 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME2"
    ds.PixelData = b"\x00" * 16
    ds.save_as(tmp_path / "bomb.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match="400,000,000 pixels exceeds"):
        read_image(tmp_path / "bomb.dcm")


def test_truncated_corrupt_and_missing_files(tmp_path):
    Image.fromarray(gray_pattern(200, 300)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    make_dicom(tmp_path / "t.dcm", np.zeros((64, 64), np.uint16) + 7)
    data = (tmp_path / "t.dcm").read_bytes()
    (tmp_path / "t.dcm").write_bytes(data[: len(data) - 3000])
    (tmp_path / "notes.png").write_text("this is not an image\n")
    (tmp_path / "notes.dcm").write_text("this is not a DICOM file either\n")
    for name in ("t.png", "t.dcm", "notes.png", "notes.dcm", "does_not_exist.png"):
        with pytest.raises(ImageReadError) as err:
            read_image(tmp_path / name)
        assert str(tmp_path / name) in str(err.value), name
        assert isinstance(err.value, BtcxrError)


def test_damaged_rle_that_makes_the_rust_decoder_panic_is_a_read_error(tmp_path):
    # pylibjpeg-rle panics (pyo3 PanicException, a BaseException) when a segment decodes to more bytes
    # than the frame holds; it must come back as an ImageReadError, not escape as a traceback.
    import struct

    from pydicom.encaps import encapsulate

    v = (np.arange(40 * 24).reshape(40, 24) % 4096).astype(np.uint16)
    ds = pydicom.dcmread(make_dicom(tmp_path / "plain.dcm", v))
    ds.compress(RLELossless, v)
    segment = bytes([129, 7]) * 20  # replicate runs of 128 bytes: 2,560 bytes for a 960-byte segment
    header = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13))
    ds.PixelData = encapsulate([header + segment + segment])
    ds.save_as(tmp_path / "rle_bad.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match="corrupt or truncated pixel data") as err:
        read_image(tmp_path / "rle_bad.dcm")
    assert str(tmp_path / "rle_bad.dcm") in str(err.value)


def test_truncated_compressed_dicom_says_truncated_and_warns_nothing(tmp_path):
    v = (np.arange(40 * 24).reshape(40, 24) % 4096).astype(np.uint16)
    ds = pydicom.dcmread(make_dicom(tmp_path / "plain.dcm", v))
    ds.compress(RLELossless, v)
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    data = (tmp_path / "rle.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 200])  # inside the encapsulated pixel data
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom's warning must not reach the user's terminal
        with pytest.raises(ImageReadError, match="no Pixel Data .*truncated or corrupt") as err:
            read_image(tmp_path / "cut.dcm")
    assert str(tmp_path / "cut.dcm") in str(err.value)


def test_patient_tags_never_leave_the_reader(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    v = gray_pattern().astype(np.uint16)
    path = make_dicom(tmp_path / "p.dcm", v, WindowCenter=100.0, WindowWidth=200.0)
    assert SECRET_NAME in str(pydicom.dcmread(path).PatientName)  # the file really holds them
    rg = read_image(path)
    assert [f.name for f in dataclasses.fields(rg)] == ["pixels", "orig_width", "orig_height"]
    # A damaged file: the error message must not quote patient tags either.
    data = path.read_bytes()
    (tmp_path / "bad.dcm").write_bytes(data[: len(data) - 500])
    with pytest.raises(ImageReadError) as err:
        read_image(tmp_path / "bad.dcm")
    for secret in ("Secretname", SECRET_ID, "19510203", "20200101"):
        assert secret not in caplog.text and secret not in str(err.value)


# ------------------------------------------------------------------------------------------- resize


def test_resize_longest_sizes_and_scale():
    img = np.zeros((200, 300), np.uint8)
    out, scale = resize_longest(img, 100)
    assert out.shape == (67, 100) and scale == pytest.approx(1 / 3)  # 200/3 = 66.7 rounds to 67
    out, scale = resize_longest(np.zeros((50, 40), np.uint16), 100)  # upscaled, same rule
    assert out.shape == (100, 80) and out.dtype == np.uint16 and scale == 2.0
    out, scale = resize_longest(img, 300)
    assert out.shape == (200, 300) and scale == 1.0


def test_resize_is_antialiased_and_16bit_matches_8bit():
    checker = ((np.indices((400, 400)).sum(axis=0) % 2) * 255).astype(np.uint8)  # 1-px checkerboard
    small, _ = resize_longest(checker, 50)
    # Nearest-neighbour sampling would give pure black/white; an antialiased resize gives mid gray.
    assert abs(float(small[5:-5, 5:-5].mean()) - 127.5) < 2 and float(small[5:-5, 5:-5].std()) < 2
    ramp = np.repeat(np.linspace(0, 255, 320).astype(np.uint8)[None, :], 240, axis=0)
    r8, s8 = resize_longest(ramp, 128)
    r16, s16 = resize_longest(ramp.astype(np.uint16) * 257, 128)
    assert s8 == s16 and r16.dtype == np.uint16
    assert np.abs(r16.astype(np.float64) / 257 - r8).max() <= 1.0
    const, _ = resize_longest(np.full((90, 70), 40000, np.uint16), 33)
    assert (const == 40000).all()
