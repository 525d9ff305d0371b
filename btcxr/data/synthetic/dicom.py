"""Synthetic radiographs as DICOM files that vary the way VinDr-CXR's do.

Photometric interpretation (MONOCHROME1 / MONOCHROME2), bits stored (12 / 14 / 16 in 16 allocated),
rescale slope and intercept, window centre and width, transfer syntax (explicit / implicit VR little
endian, RLE Lossless, JPEG 2000 Lossless), SOP class (DX / CR). The stored values are chosen so that the
standard display chain gives the phantom back:

    stored -> modality LUT (slope, intercept) -> linear window (centre, width) -> invert if MONOCHROME1

The patient tags are obviously fake (``SYNTHETIC^PATIENT^0007``, ``SYNTH-0007``) so later stages can
prove they never copy them. UIDs and dates come from the seed, never from the clock.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

TRANSFER_SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "j2k": JPEG2000Lossless,
}
# (slope, intercept) pairs seen in CR/DX headers
RESCALES = [(1.0, 0.0), (1.0, -1024.0), (0.5, 0.0), (2.0, -2048.0)]


@dataclass(frozen=True)
class DicomStyle:
    """How one image is stored: the per-file choices real archives differ in."""

    photometric: str  # "MONOCHROME1" or "MONOCHROME2"
    bits_stored: int  # 12, 14 or 16 (16 allocated)
    transfer_syntax: str  # key of TRANSFER_SYNTAXES
    slope: float
    intercept: float
    modality: str  # "DX" or "CR"
    low: int  # stored value of the darkest phantom value (brightest for MONOCHROME1: inverted)
    high: int  # stored value of the brightest phantom value


@dataclass(frozen=True)
class PatientTags:
    """Fake identity of the patient of one image, numbered so every image's tags differ."""

    number: int
    sex: str
    age: int
    study_date: dt.date

    @property
    def name(self) -> str:
        return f"SYNTHETIC^PATIENT^{self.number:04d}"

    @property
    def patient_id(self) -> str:
        return f"SYNTH-{self.number:04d}"

    @property
    def birth_date(self) -> str:
        # obviously fake: January 1st of the year that gives the age
        return f"{self.study_date.year - self.age:04d}0101"


def draw_style(rng: np.random.Generator, photometric: str, bits_stored: int, transfer_syntax: str,
               rescale: tuple[float, float]) -> DicomStyle:
    """A storage style with a random stored-value range inside the bit depth."""
    top = 2**bits_stored - 1
    low = int(rng.uniform(0.0, 0.08) * top)
    high = int(rng.uniform(0.85, 1.0) * top)
    slope, intercept = rescale
    return DicomStyle(photometric, bits_stored, transfer_syntax, slope, intercept,
                      "CR" if rng.random() < 0.3 else "DX", low, high)


def stored_values(image: np.ndarray, style: DicomStyle) -> np.ndarray:
    """Phantom in [0, 1] (bright = dense) -> stored uint16 pixel values of this style."""
    p = image if style.photometric == "MONOCHROME2" else 1.0 - image
    return np.rint(style.low + p * (style.high - style.low)).astype(np.uint16)


def window(style: DicomStyle) -> tuple[float, float]:
    """Window centre and width mapping the stored range [low, high] onto the full display range.

    DICOM's linear VOI function sends c - 0.5 - (w - 1) / 2 to black and c - 0.5 + (w - 1) / 2 to white.
    """
    x_low = style.low * style.slope + style.intercept
    x_high = style.high * style.slope + style.intercept
    return (x_low + x_high) / 2.0 + 0.5, x_high - x_low + 1.0


def _uid(seed: int, image_id: str, what: str) -> str:
    return generate_uid(entropy_srcs=["btcxr-synth", str(seed), image_id, what])


def build_dataset(image: np.ndarray, style: DicomStyle, tags: PatientTags, image_id: str, seed: int,
                  pixel_spacing_mm: float) -> Dataset:
    """A complete DX/CR dataset (file meta included) holding the phantom in the given style."""
    sop_class = DigitalXRayImageStorageForPresentation if style.modality == "DX" else ComputedRadiographyImageStorage
    sop_instance = _uid(seed, image_id, "sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    date = tags.study_date.strftime("%Y%m%d")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "100000"
    ds.AccessionNumber = ""
    ds.Modality = style.modality
    ds.Manufacturer = "BTCXR SYNTHETIC PHANTOM"
    ds.ReferringPhysicianName = ""
    ds.PatientName = tags.name
    ds.PatientID = tags.patient_id
    ds.PatientBirthDate = tags.birth_date
    ds.PatientSex = tags.sex
    ds.PatientAge = f"{tags.age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.StudyInstanceUID = _uid(seed, image_id, "study")
    ds.SeriesInstanceUID = _uid(seed, image_id, "series")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    if style.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PresentationLUTShape = "IDENTITY" if style.photometric == "MONOCHROME2" else "INVERSE"
    spacing = f"{pixel_spacing_mm:.3f}"
    ds.PixelSpacing = [spacing, spacing]
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = style.photometric
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated = 16
    ds.BitsStored = style.bits_stored
    ds.HighBit = style.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = f"{style.intercept:g}"
    ds.RescaleSlope = f"{style.slope:g}"
    ds.RescaleType = "US"
    centre, width = window(style)
    ds.WindowCenter = f"{centre:g}"
    ds.WindowWidth = f"{width:g}"
    ds.VOILUTFunction = "LINEAR"
    arr = stored_values(image, style)
    ds.PixelData = arr.tobytes()
    syntax = TRANSFER_SYNTAXES[style.transfer_syntax]
    if syntax.is_compressed:
        plugin = "pylibjpeg" if syntax == JPEG2000Lossless else ""
        ds.compress(syntax, arr, encoding_plugin=plugin, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file (preamble, file meta) in its transfer syntax."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
