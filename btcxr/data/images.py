"""Reading radiographs (PNG, JPEG, DICOM) into one grayscale array, and aspect-keeping resizing.

Conventions of every array this module returns: 2-D, grayscale, 0 = black, air dark (MONOCHROME1
DICOMs are inverted), dtype uint8 (``bits=8``) or uint16 (``bits=16``). The original width and height
travel with the pixels because every box coordinate of the datasets is in that frame.

Intensity mapping, per source:

* 8-bit PNG/JPEG (L, LA, RGB, RGBA, P, 1): kept as stored (``bits=16`` expands v -> v * 257, so 255 -> 65535).
  Colour drops alpha; when R == G == B everywhere one channel is kept, otherwise PIL's ITU-R 601-2
  luminance (``convert("L")``) is used.
* 16/32-bit PNG (I;16, I;16B, I): min-max stretched to the output range (the values a 12-bit image
  stores in a 16-bit container would otherwise come out almost black), the same rule for both ``bits``.
* DICOM: pixel array -> modality LUT (RescaleSlope/Intercept or LUT) -> VOI LUT, else the first
  WindowCenter/WindowWidth, mapped over the VOI output range; without a VOI the modality values are
  min-max stretched -> MONOCHROME1 inverted -> scaled to the output dtype.
* A constant image (max == min) becomes all zeros.

Patient data: DICOMs are parsed with ``specific_tags`` limited to pixel-module tags, so patient names,
ids and dates are never even read into memory, let alone returned or logged.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)

# 50 megapixels: larger than any chest radiograph (VinDr tops out near 3,100 x 3,400 = 10.5 MP), far
# below what makes a decoder allocate gigabytes.
DEFAULT_MAX_PIXELS = 50_000_000

DICOM_SUFFIXES = (".dcm", ".dicom")

# The only DICOM attributes we parse: what decoding and display need. Nothing that names a patient.
_PIXEL_TAGS = [
    "SpecificCharacterSet",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "PixelData",
]


class ImageReadError(BtcxrError):
    """An image file that cannot be read; the message names the path and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True, eq=False)
class Radiograph:
    """A decoded radiograph: grayscale pixels and the size of the original image (boxes live in it)."""

    pixels: np.ndarray
    orig_width: int
    orig_height: int


def read_image(path: str | Path, *, bits: int = 8, max_pixels: int = DEFAULT_MAX_PIXELS) -> Radiograph:
    """Read a PNG, JPEG or DICOM file into a grayscale :class:`Radiograph`.

    DICOM is recognised by the suffix ``.dcm``/``.dicom`` or by the ``DICM`` marker at byte 128.
    ``bits`` (8 or 16) picks the output dtype. Images with more than ``max_pixels`` pixels are refused
    from their header, before any decoding. Any failure raises :class:`ImageReadError` with the path.
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found" if not path.exists() else "not a regular file")
    if _is_dicom(path):
        return _read_dicom(path, bits, max_pixels)
    return _read_pil(path, bits, max_pixels)


def resize_longest(pixels: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resize so the longest side is ``size`` px, keeping the aspect ratio and the dtype.

    Returns ``(resized, scale)`` with ``scale = size / longest_side``: a coordinate in the original frame
    maps to ``coordinate * scale`` in the resized one (exact on the longest side; the other side is
    rounded to whole pixels, so its true factor differs from ``scale`` by less than 0.5 px / side).
    Images smaller than ``size`` are upscaled with the same rule, so every cached image has the same
    longest side. Lanczos resampling (PIL), which is antialiased when downscaling. uint16 goes through
    PIL's 32-bit float mode and is rounded and clipped back.
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale array, got shape {pixels.shape}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    height, width = pixels.shape
    longest = max(height, width)
    scale = size / longest
    if longest == size:
        return pixels.copy(), 1.0
    new_w = max(1, round(width * scale))
    new_h = max(1, round(height * scale))
    if pixels.dtype == np.uint8:
        out = Image.fromarray(pixels).resize((new_w, new_h), Image.Resampling.LANCZOS)
        return np.asarray(out).copy(), scale
    if pixels.dtype == np.uint16:
        out = Image.fromarray(pixels.astype(np.float32)).resize((new_w, new_h), Image.Resampling.LANCZOS)
        return np.clip(np.rint(np.asarray(out)), 0, 65535).astype(np.uint16), scale
    raise ValueError(f"expected uint8 or uint16 pixels, got {pixels.dtype}")


# ----------------------------------------------------------------------------------------------------
# PNG / JPEG


def _read_pil(path: Path, bits: int, max_pixels: int) -> Radiograph:
    try:
        with Image.open(path) as im:
            width, height = im.size
            # The header is parsed, nothing decoded yet: refuse bombs here.
            _check_size(path, width, height, max_pixels)
            im.load()
            pixels = _pil_to_gray(im, bits)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a PNG, JPEG or DICOM image (format not recognised)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"corrupt or truncated image ({exc})") from None
    return Radiograph(pixels=pixels, orig_width=width, orig_height=height)


def _pil_to_gray(im: Image.Image, bits: int) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16/32-bit grayscale: stretch the range actually used.
        return _stretch(np.asarray(im).astype(np.float64), bits)
    if mode in ("L", "1"):
        gray = np.asarray(im.convert("L"))
    elif mode == "LA":
        gray = np.asarray(im.getchannel("L"))
    else:
        # RGB, RGBA (alpha dropped, not composited), P, CMYK, YCbCr, ...
        rgb = np.asarray(im.convert("RGB"))
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            gray = rgb[..., 0]
        else:
            gray = np.asarray(im.convert("RGB").convert("L"))
    gray = np.ascontiguousarray(gray, dtype=np.uint8)
    return gray if bits == 8 else gray.astype(np.uint16) * np.uint16(257)


# ----------------------------------------------------------------------------------------------------
# DICOM


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise ImageReadError(path, f"cannot open ({exc.strerror or exc})") from None
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_dicom(path: Path, bits: int, max_pixels: int) -> Radiograph:
    import pydicom
    from pydicom.pixels import get_decoder

    # pydicom reports a truncated file as a warning (and then has no Pixel Data): keep it for the reason.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path, force=True, specific_tags=_PIXEL_TAGS)
        except Exception as exc:  # untrusted bytes: any parser failure means the same to the user
            raise ImageReadError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds:
        detail = f" (truncated or corrupt: {caught[0].message})" if caught else ""
        raise ImageReadError(path, f"DICOM file has no Pixel Data (7FE0,0010){detail}")
    for warning in caught:
        log.debug("%s: %s", path, warning.message)
    for keyword in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        if keyword not in ds:
            raise ImageReadError(path, f"DICOM file lacks {keyword}, needed to decode its pixels")
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    _check_size(path, cols, rows * frames, max_pixels)
    if frames != 1:
        raise ImageReadError(path, f"multi-frame DICOM ({frames} frames); a radiograph has one")

    tsuid = _transfer_syntax(ds)
    try:
        decoder = get_decoder(tsuid)
    except NotImplementedError:
        raise ImageReadError(
            path, f"no pixel decoder exists for transfer syntax {_ts_name(tsuid)} ({tsuid})"
        ) from None
    if not decoder.is_available:
        missing = ", ".join(decoder.missing_dependencies)
        raise ImageReadError(
            path,
            f"no decoder installed for transfer syntax {_ts_name(tsuid)} ({tsuid}); install pylibjpeg with its "
            f"libjpeg/openjpeg/rle plugins or python-gdcm (missing: {missing})",
        )
    try:
        arr = ds.pixel_array
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        # Decoders raise many types, all meaning the same to the user; the Rust plugins (pylibjpeg-rle)
        # raise pyo3's PanicException on damaged data, which derives from BaseException, not Exception.
        raise ImageReadError(path, f"corrupt or truncated pixel data ({type(exc).__name__}: {exc})") from None

    try:
        pixels = _dicom_to_gray(ds, arr, bits)
    except Exception as exc:  # pydicom's LUT/window checks, attributes of the wrong type or missing
        raise ImageReadError(path, f"invalid pixel module ({exc})") from None
    return Radiograph(pixels=pixels, orig_width=cols, orig_height=rows)


def _transfer_syntax(ds) -> str:
    import pydicom.uid

    meta = getattr(ds, "file_meta", None)
    tsuid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if tsuid is None:
        # A header-less (preamble-free) file: pydicom guessed the encoding while reading it.
        implicit, little = getattr(ds, "original_encoding", (True, True))
        tsuid = pydicom.uid.ImplicitVRLittleEndian if implicit else (
            pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian
        )
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = tsuid
    return str(tsuid)


def _ts_name(tsuid: str) -> str:
    import pydicom.uid

    return pydicom.uid.UID(tsuid).name


def _dicom_to_gray(ds, arr: np.ndarray, bits: int) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        # Colour DICOM (rare for radiographs): pydicom hands RGB; take PIL's luminance of it.
        rgb = arr if arr.dtype == np.uint8 else _stretch(arr.astype(np.float64), 8)
        gray = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))
        return gray if bits == 8 else gray.astype(np.uint16) * np.uint16(257)

    values = apply_modality_lut(arr, ds)
    if ds.get("VOILUTSequence"):
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        n_entries = int(descriptor[0]) or 65536
        first = int(descriptor[1])
        # A LUT is indexed by whole numbers: rescaled values are rounded to their nearest entry.
        index = values if np.issubdtype(values.dtype, np.integer) else np.rint(values).astype(np.int64)
        # Output range of the LUT: run it over its whole input domain.
        lut_out = apply_voi(np.arange(first, first + n_entries, dtype=np.int64), ds, index=0)
        lo, hi = float(lut_out.min()), float(lut_out.max())
        values = apply_voi(index, ds, index=0).astype(np.float64)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        # Output range of the window: what it maps -inf and +inf to (depends on rescale and bit depth).
        with np.errstate(over="ignore"):
            lo, hi = apply_windowing(np.array([-1e300, 1e300]), ds, index=0)
        values = apply_windowing(values.astype(np.float64), ds, index=0)
    else:
        lo, hi = float(values.min()), float(values.max())
    unit = _to_unit(values, float(lo), float(hi))
    if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1":
        unit = 1.0 - unit
    return _unit_to_dtype(unit, bits)


# ----------------------------------------------------------------------------------------------------
# helpers


def _check_size(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageReadError(path, f"image header gives an empty size {width} x {height}")
    if width * height > max_pixels:
        raise ImageReadError(
            path,
            f"refused: {width} x {height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(possible decompression bomb; raise max_pixels if the image is genuine)",
        )


def _to_unit(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(values.shape, dtype=np.float64)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def _stretch(values: np.ndarray, bits: int) -> np.ndarray:
    return _unit_to_dtype(_to_unit(values, float(values.min()), float(values.max())), bits)


def _unit_to_dtype(unit: np.ndarray, bits: int) -> np.ndarray:
    top = 255 if bits == 8 else 65535
    return np.rint(unit * top).astype(np.uint8 if bits == 8 else np.uint16)
