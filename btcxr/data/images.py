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

    def __reduce__(self):  # crosses process boundaries (pool workers) intact
        return type(self), (self.path, self.reason)


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
    height, width = pixels.shape
    new_w, new_h, scale = longest_side_shape(width, height, size)
    if (new_w, new_h) == (width, height):
        return pixels.copy(), 1.0
    return resize_to(pixels, new_w, new_h), scale


def longest_side_shape(width: int, height: int, size: int) -> tuple[int, int, float]:
    """(new_width, new_height, scale) of an image of width x height whose longest side becomes ``size``."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    longest = max(height, width)
    if longest == size:
        return width, height, 1.0
    scale = size / longest
    return max(1, round(width * scale)), max(1, round(height * scale)), scale


def resize_to(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Lanczos resize of a 2-D uint8 or uint16 array to width x height (uint16 through float32)."""
    if pixels.dtype == np.uint8:
        out = Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS)
        return np.asarray(out).copy()
    if pixels.dtype == np.uint16:
        out = Image.fromarray(pixels.astype(np.float32)).resize((width, height), Image.Resampling.LANCZOS)
        return np.clip(np.rint(np.asarray(out)), 0, 65535).astype(np.uint16)
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
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # untrusted bytes: OSError, SyntaxError, ValueError, zlib.error, struct.error, ...
        raise ImageReadError(path, f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None
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
    header = _check_header(ds, path)
    rows, cols, frames = header.rows, header.cols, header.frames
    _check_size(path, cols, rows * frames, max_pixels)
    if frames != 1:
        raise ImageReadError(path, f"multi-frame DICOM ({frames} frames); a radiograph has one")

    try:
        tsuid = _transfer_syntax(ds)
    except Exception as exc:  # a damaged file meta
        raise ImageReadError(path, f"unreadable Transfer Syntax UID (0002,0010) ({type(exc).__name__}: {exc})") from None
    try:
        decoder = get_decoder(tsuid)
    except NotImplementedError:
        raise ImageReadError(
            path, f"no pixel decoder exists for transfer syntax {_ts_name(tsuid)} ({tsuid})"
        ) from None
    except Exception as exc:  # not even a UID
        raise ImageReadError(path, f"invalid Transfer Syntax UID {tsuid!r:.80} ({type(exc).__name__})") from None
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
    want = (rows, cols) if header.samples == 1 else (rows, cols, header.samples)
    if not isinstance(arr, np.ndarray) or arr.shape != want:
        raise ImageReadError(path, f"decoded pixel data has shape {getattr(arr, 'shape', None)}, the header "
                                   f"(Rows, Columns, SamplesPerPixel) says {want}")

    try:
        pixels = _dicom_to_gray(ds, arr, bits, header)
    except ImageReadError:
        raise
    except Exception as exc:  # pydicom's LUT/window checks, attributes of the wrong type or missing
        raise ImageReadError(path, f"invalid pixel module ({type(exc).__name__}: {exc})") from None
    return Radiograph(pixels=pixels, orig_width=cols, orig_height=rows)


# Values that no radiograph has and that decoders would turn into gigantic or meaningless arrays.
_BITS_ALLOCATED = (1, 8, 16, 32, 64)
_PHOTOMETRIC = {"MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "YBR_FULL": 3,
                "YBR_FULL_422": 3, "YBR_PARTIAL_420": 3, "YBR_ICT": 3, "YBR_RCT": 3}
_MAX_ABS_REAL = 1e15  # rescale and window values beyond this overflow the display chain


@dataclass(frozen=True)
class _Header:
    """The pixel-module values of a DICOM, checked: what decoding and display rely on."""

    rows: int
    cols: int
    frames: int
    samples: int
    photometric: str
    window: bool  # a usable WindowCenter/WindowWidth pair is present
    voi_lut: tuple[int, int] | None  # (entries, first mapped value) of the first VOI LUT, when present


def _raw_value(ds, path: Path, keyword: str, where: str = ""):
    """The value of an element; parsing a damaged element is a read error naming it."""
    try:
        return ds.get(keyword)
    except Exception as exc:
        raise ImageReadError(path, f"DICOM element {where}{keyword} cannot be parsed ({type(exc).__name__}: "
                                   f"{exc})") from None


def _is_multi(value) -> bool:
    from pydicom.multival import MultiValue

    return not isinstance(value, (str, bytes, bytearray)) and isinstance(value, (list, tuple, MultiValue))


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(path: Path, keyword: str, value, *, integer: bool) -> float:
    """One numeric value of an element (a str of IS/DS, or a number), finite; whole when `integer`."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = value.decode("ascii").strip(" \x00")
        except UnicodeDecodeError:
            raise ImageReadError(path, f"DICOM element {keyword} is not a number ({_show(value)})") from None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ImageReadError(path, f"DICOM element {keyword} is not a number ({_show(value)})") from None
    if not np.isfinite(number):
        raise ImageReadError(path, f"DICOM element {keyword} is not a finite number ({_show(value)})")
    if integer and number != int(number):
        raise ImageReadError(path, f"DICOM element {keyword} is not a whole number ({_show(value)})")
    return number


def _int_element(ds, path: Path, keyword: str, *, default: int | None = None, allowed=None,
                 lo: int | None = None, hi: int | None = None, where: str = "", empty_ok: bool = False) -> int | None:
    """A single-valued whole-number element, checked against `allowed` or lo..hi; `default` when absent
    (and when empty, if `empty_ok`)."""
    name = f"{where}{keyword}"
    if keyword not in ds:
        return default
    value = _raw_value(ds, path, keyword, where)
    if value is None or value == "" or value == b"":
        if empty_ok:
            return default
        raise ImageReadError(path, f"DICOM element {name} is empty")
    if _is_multi(value):
        raise ImageReadError(path, f"DICOM element {name} holds {len(value)} values ({_show(list(value))}); "
                                   "expected one")
    number = int(_number(path, name, value, integer=True))
    if allowed is not None and number not in allowed:
        raise ImageReadError(path, f"DICOM element {name} = {number} is invalid (expected one of "
                                   f"{', '.join(map(str, allowed))})")
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise ImageReadError(path, f"DICOM element {name} = {number} is outside {lo}..{hi}")
    return number


def _real_values(ds, path: Path, keyword: str, *, multi: bool) -> list[float] | None:
    """The numbers of a decimal element (None when absent or empty), finite and of plausible size."""
    if keyword not in ds:
        return None
    value = _raw_value(ds, path, keyword)
    if value is None or value == "" or value == b"":
        return None
    values = list(value) if _is_multi(value) else [value]
    if len(values) > 1 and not multi:
        raise ImageReadError(path, f"DICOM element {keyword} holds {len(values)} values ({_show(values)}); "
                                   "expected one")
    numbers = [_number(path, keyword, v, integer=False) for v in values]
    if any(abs(n) > _MAX_ABS_REAL for n in numbers):
        shown = _show(values if len(values) > 1 else values[0])
        raise ImageReadError(path, f"DICOM element {keyword} = {shown} is implausibly large")
    return numbers


def _check_header(ds, path: Path) -> _Header:
    """Every pixel-module value decoding and display use, checked, so that damage is reported by name."""
    for keyword in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        if keyword not in ds:
            raise ImageReadError(path, f"DICOM file lacks {keyword}, needed to decode its pixels")
    rows = _int_element(ds, path, "Rows", lo=1, hi=65535)
    cols = _int_element(ds, path, "Columns", lo=1, hi=65535)
    frames = _int_element(ds, path, "NumberOfFrames", default=1, lo=1, hi=2**31 - 1, empty_ok=True)
    allocated = _int_element(ds, path, "BitsAllocated", allowed=_BITS_ALLOCATED)
    _int_element(ds, path, "BitsStored", default=allocated, lo=1, hi=allocated)
    _int_element(ds, path, "HighBit", default=0, lo=0, hi=allocated - 1, empty_ok=True)
    _int_element(ds, path, "PixelRepresentation", default=0, allowed=(0, 1))
    samples = _int_element(ds, path, "SamplesPerPixel", default=1, allowed=(1, 3))
    _int_element(ds, path, "PlanarConfiguration", default=0, allowed=(0, 1), empty_ok=True)

    photometric = _raw_value(ds, path, "PhotometricInterpretation")
    if photometric is None or _is_multi(photometric) or not str(photometric).strip():
        what = f"holds {len(photometric)} values" if _is_multi(photometric) else "is empty"
        raise ImageReadError(path, f"DICOM element PhotometricInterpretation {what}; expected one of "
                                   f"{', '.join(_PHOTOMETRIC)}")
    photometric = str(photometric).strip().upper()
    if photometric not in _PHOTOMETRIC:
        raise ImageReadError(path, f"DICOM element PhotometricInterpretation {_show(photometric)} is unknown "
                                   f"(expected one of {', '.join(_PHOTOMETRIC)})")
    if _PHOTOMETRIC[photometric] != samples:
        raise ImageReadError(path, f"DICOM elements disagree: PhotometricInterpretation {photometric} with "
                                   f"SamplesPerPixel {samples}")

    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if keyword in ds and _real_values(ds, path, keyword, multi=False) is None:
            raise ImageReadError(path, f"DICOM element {keyword} is empty")
    slope = _real_values(ds, path, "RescaleSlope", multi=False)
    if slope is not None and slope[0] == 0:
        raise ImageReadError(path, "DICOM element RescaleSlope is 0 (every pixel would get the same value)")

    voi_lut = _check_voi_lut(ds, path)
    window = False
    if voi_lut is None:
        centre = _real_values(ds, path, "WindowCenter", multi=True)
        width = _real_values(ds, path, "WindowWidth", multi=True)
        if centre is not None and width is not None:
            if width[0] < 1:
                raise ImageReadError(path, f"DICOM element WindowWidth = {width[0]:g} is invalid (must be >= 1)")
            window = True
    return _Header(rows=rows, cols=cols, frames=frames, samples=samples, photometric=photometric, window=window,
                   voi_lut=voi_lut)


def _check_voi_lut(ds, path: Path) -> tuple[int, int] | None:
    """(entries, first value) of the first VOI LUT Sequence item, checked; None without a VOI LUT."""
    sequence = _raw_value(ds, path, "VOILUTSequence")
    if not sequence:
        return None
    where = "VOILUTSequence[0]."
    try:
        item = sequence[0]
        has = ("LUTDescriptor" in item, "LUTData" in item)
    except Exception as exc:
        raise ImageReadError(path, f"DICOM element VOILUTSequence cannot be parsed ({type(exc).__name__})") from None
    for keyword, present in zip(("LUTDescriptor", "LUTData"), has):
        if not present:
            raise ImageReadError(path, f"DICOM element {where}{keyword} is missing")
    descriptor = _raw_value(item, path, "LUTDescriptor", where)
    values = list(descriptor) if _is_multi(descriptor) else [descriptor]
    if len(values) != 3:
        raise ImageReadError(path, f"DICOM element {where}LUTDescriptor holds {len(values)} value(s) "
                                   f"({_show(values)}); expected 3 (entries, first value, bits)")
    entries, first, lut_bits = (int(_number(path, f"{where}LUTDescriptor", v, integer=True)) for v in values)
    if not 0 <= entries <= 65535:
        raise ImageReadError(path, f"DICOM element {where}LUTDescriptor gives {entries} entries (expected 0..65535)")
    if not -32768 <= first <= 65535:
        raise ImageReadError(path, f"DICOM element {where}LUTDescriptor gives a first value {first} outside "
                                   "-32768..65535")
    if not 1 <= lut_bits <= 16:
        raise ImageReadError(path, f"DICOM element {where}LUTDescriptor gives {lut_bits} bits (expected 8..16)")
    entries = entries or 65536
    data = _raw_value(item, path, "LUTData", where)
    n_data = len(data) // (2 if isinstance(data, (bytes, bytearray)) else 1) if data is not None else 0
    if n_data < entries:
        raise ImageReadError(path, f"DICOM element {where}LUTData holds {n_data} entries, its LUTDescriptor "
                                   f"says {entries}")
    return entries, first


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


def _dicom_to_gray(ds, arr: np.ndarray, bits: int, header: _Header) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

    if header.samples != 1:
        # Colour DICOM (rare for radiographs): pydicom hands RGB; take PIL's luminance of it.
        rgb = arr if arr.dtype == np.uint8 else _stretch(arr.astype(np.float64), 8)
        gray = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))
        return gray if bits == 8 else gray.astype(np.uint16) * np.uint16(257)

    values = apply_modality_lut(arr, ds)
    if header.voi_lut is not None:
        n_entries, first = header.voi_lut
        # A LUT is indexed by whole numbers: rescaled values are rounded to their nearest entry.
        index = values if np.issubdtype(values.dtype, np.integer) else np.rint(values).astype(np.int64)
        # Output range of the LUT: run it over its whole input domain.
        lut_out = apply_voi(np.arange(first, first + n_entries, dtype=np.int64), ds, index=0)
        lo, hi = float(lut_out.min()), float(lut_out.max())
        values = apply_voi(index, ds, index=0).astype(np.float64)
    elif header.window:
        # Output range of the window: what it maps -inf and +inf to (depends on rescale and bit depth).
        with np.errstate(over="ignore"):
            lo, hi = apply_windowing(np.array([-1e300, 1e300]), ds, index=0)
        values = apply_windowing(values.astype(np.float64), ds, index=0)
    else:
        lo, hi = float(values.min()), float(values.max())
    unit = _to_unit(values, float(lo), float(hi))
    if header.photometric == "MONOCHROME1":
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
    with np.errstate(invalid="ignore", over="ignore"):
        return np.nan_to_num(np.clip((values - lo) / (hi - lo), 0.0, 1.0), nan=0.0)


def _stretch(values: np.ndarray, bits: int) -> np.ndarray:
    return _unit_to_dtype(_to_unit(values, float(values.min()), float(values.max())), bits)


def _unit_to_dtype(unit: np.ndarray, bits: int) -> np.ndarray:
    top = 255 if bits == 8 else 65535
    return np.rint(unit * top).astype(np.uint8 if bits == 8 else np.uint16)
