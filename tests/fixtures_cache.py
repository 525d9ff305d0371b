"""Tiny datasets in the official layouts, written here so the prepare/dataset tests need nothing else.

Images carry a known pattern (a bright rectangle on a gradient) so tests can check pixels after resizing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from btcxr.data.classes import VINDR_CLASSES

FAKE_PATIENT_NAME = "Zyxwvut^Fakepatient7731"
FAKE_PATIENT_ID = "FAKEPID-99887766"


def gradient_image(width: int, height: int, seed: int, dtype=np.uint8) -> np.ndarray:
    """A smooth gradient with a bright block: survives resizing recognisably."""
    top = 255 if dtype == np.uint8 else 4095
    yy, xx = np.mgrid[0:height, 0:width]
    img = (xx / max(width - 1, 1) * 0.5 + yy / max(height - 1, 1) * 0.3) * top
    rng = np.random.default_rng(seed)
    x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    img[y0:y0 + height // 4, x0:x0 + width // 4] = top
    return img.astype(dtype)


def write_dicom(path: Path, pixels: np.ndarray, *, monochrome1: bool = False) -> None:
    """An uncompressed single-frame DICOM (12-bit values in 16-bit words) with fake patient tags."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = FAKE_PATIENT_NAME
    ds.PatientID = FAKE_PATIENT_ID
    ds.PatientBirthDate = "19010203"
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def make_nih(root: Path, n: int = 12, size: tuple[int, int] = (96, 80), patients: int = 6,
             n_test_patients: int = 2) -> pd.DataFrame:
    """NIH layout (images_001/images/*.png, Data_Entry_2017_v2020.csv, split lists). Returns the entry table."""
    labels_cycle = ["No Finding", "Effusion", "Cardiomegaly|Effusion", "Atelectasis", "No Finding", "Mass|Nodule",
                    "Infiltration", "Hernia"]
    folder = root / "images_001" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        patient = 1 + i % patients
        image_id = f"{patient:08d}_{i:03d}.png"
        w, h = size
        Image.fromarray(gradient_image(w, h, i)).save(folder / image_id)
        rows.append({"Image Index": image_id, "Finding Labels": labels_cycle[i % len(labels_cycle)],
                     "Follow-up #": i, "Patient ID": patient, "Patient Age": 40 + i, "Patient Gender": "M",
                     "View Position": "PA", "OriginalImage[Width": w, "Height]": h,
                     "OriginalImagePixelSpacing[x": 0.143, "y]": 0.143})
    entry = pd.DataFrame(rows)
    entry.to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    test = entry["Patient ID"] > patients - n_test_patients
    (root / "train_val_list.txt").write_text("\n".join(entry.loc[~test, "Image Index"]) + "\n")
    (root / "test_list.txt").write_text("\n".join(entry.loc[test, "Image Index"]) + "\n")
    return entry


def vindr_readings(image_ids: list[str], sizes: dict[str, tuple[int, int]], seed: int = 0,
                   normal_every: int = 3) -> pd.DataFrame:
    """Kaggle train.csv rows: 3 readers an image; every normal_every-th image all "No finding"; others get
    boxes of 1-2 classes, drawn by 2 readers with small jitter (so WBF fuses them) and missed by one."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, image_id in enumerate(image_ids):
        readers = [f"R{r}" for r in rng.choice(np.arange(1, 18), 3, replace=False)]
        if k % normal_every == 0:
            rows += [{"image_id": image_id, "class_name": "No finding", "class_id": 14, "rad_id": r,
                      "x_min": "", "y_min": "", "x_max": "", "y_max": ""} for r in readers]
            continue
        w, h = sizes[image_id]
        classes = [k % 14, (3 * k + 1) % 14][: 1 + k % 2]
        for r_idx, r in enumerate(readers):
            if r_idx == 2:
                rows.append({"image_id": image_id, "class_name": "No finding", "class_id": 14, "rad_id": r,
                             "x_min": "", "y_min": "", "x_max": "", "y_max": ""})
                continue
            for c in classes:
                x0, y0 = 0.1 * w + c, 0.2 * h
                jitter = float(r_idx)
                rows.append({"image_id": image_id, "class_name": VINDR_CLASSES[c], "class_id": c, "rad_id": r,
                             "x_min": x0 + jitter, "y_min": y0 + jitter, "x_max": 0.6 * w + jitter,
                             "y_max": 0.7 * h - jitter})
    return pd.DataFrame(rows, columns=["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min",
                                       "x_max", "y_max"])


def make_vindr_kaggle(root: Path, n: int = 12, seed: int = 0) -> pd.DataFrame:
    """Kaggle layout: train/<id>.dicom and train.csv (plus an empty test/). Returns the train.csv rows."""
    ids = [f"{seed:02d}{k:030x}" for k in range(n)]
    sizes = {}
    for k, image_id in enumerate(ids):
        w, h = 120 + 8 * (k % 3), 150 - 6 * (k % 4)
        sizes[image_id] = (w, h)
        write_dicom(root / "train" / f"{image_id}.dicom", gradient_image(w, h, k, np.uint16),
                    monochrome1=(k % 5 == 4))
    table = vindr_readings(ids, sizes, seed)
    table.to_csv(root / "train.csv", index=False)
    (root / "test").mkdir(exist_ok=True)
    return table


def make_vindr_physionet(root: Path, n_train: int = 12, n_test: int = 6, seed: int = 1) -> dict[str, pd.DataFrame]:
    """PhysioNet 1.0.0 layout: train/, test/, annotations/annotations_{train,test}.csv (test: consensus,
    no rad_id). Returns both annotation tables."""
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        ids = [f"{split[:2]}{seed:02d}{k:028x}" for k in range(n)]
        sizes = {}
        for k, image_id in enumerate(ids):
            w, h = 110 + 4 * (k % 2), 130
            sizes[image_id] = (w, h)
            write_dicom(root / split / f"{image_id}.dicom", gradient_image(w, h, 100 + k, np.uint16))
        table = vindr_readings(ids, sizes, seed + (split == "test"))
        table = table.drop(columns=["class_id"])
        if split == "test":  # one consensus reading an image
            table = table.drop_duplicates(["image_id", "class_name", "rad_id"])
            first = table.groupby("image_id")["rad_id"].transform("first")
            table = table[table["rad_id"] == first].drop(columns=["rad_id"])
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        table.to_csv(root / "annotations" / f"annotations_{split}.csv", index=False)
        out[split] = table
    return out
