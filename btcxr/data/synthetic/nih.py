"""NIH ChestX-ray14 layout: PNGs (images/ or Kaggle's images_001/images/ ...), Data_Entry_2017_v2020.csv,
the 2017 Data_Entry_2017.csv (trailing comma, ``058Y`` ages), BBox_List_2017.csv, train_val_list.txt and
test_list.txt (split by patient).

Labels are NIH's vocabulary, mapped from the drawn VinDr findings. NIH has no label for aortic
enlargement, calcification or "other lesion": an image with only those is "No Finding", label noise
the real set has too.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from btcxr.data.classes import NIH_LABELS, NIH_NO_FINDING
from btcxr.data.synthetic.contact_sheet import Thumbnail, thumbnail
from btcxr.data.synthetic.plan import NihImage
from btcxr.data.synthetic.render import Box, Finding, render_case
from btcxr.engine.io import atomic_output, write_text

log = logging.getLogger(__name__)

DATA_ENTRY_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
                     "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]
BBOX_HEADER = ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]", "", "", ""]
BBOX_LABELS = {"Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
               "Pneumothorax"}
# VinDr class -> NIH label (None: NIH has no such label). Nodule/Mass and Consolidation are decided per finding.
NIH_NAME = {
    "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Pleural effusion": "Effusion",
    "Infiltration": "Infiltration", "Lung Opacity": "Infiltration", "ILD": "Fibrosis",
    "Pulmonary fibrosis": "Fibrosis", "Pleural thickening": "Pleural_Thickening", "Pneumothorax": "Pneumothorax",
    "Aortic enlargement": None, "Calcification": None, "Other lesion": None,
}


def nih_label(f: Finding, rng: np.random.Generator) -> str | None:
    """NIH's name for a drawn finding: Nodule below 3 cm, Mass above; consolidation is sometimes reported
    as pneumonia."""
    if f.class_name == "Nodule/Mass":
        return "Mass" if (f.size_mm or 0.0) >= 30.0 else "Nodule"
    if f.class_name == "Consolidation":
        return "Pneumonia" if rng.random() < 0.3 else "Consolidation"
    return NIH_NAME[f.class_name]


@dataclass(frozen=True)
class NihJob:
    plan: NihImage
    seed: int
    path: str  # where the PNG goes
    size: int
    render_max: int
    want_thumbnail: bool


@dataclass
class NihResult:
    index: int
    findings: list[Finding]
    thumb: Thumbnail | None


def png_image(image: np.ndarray, mode: str) -> Image.Image:
    """The phantom as a PNG image of NIH's modes: 8-bit gray, RGBA (gray in RGB, opaque) or 16-bit gray."""
    if mode == "I;16":
        return Image.fromarray(np.rint(image * 65535.0).astype(np.uint16))
    gray = np.rint(image * 255.0).astype(np.uint8)
    if mode == "RGBA":
        return Image.fromarray(np.dstack([gray, gray, gray, np.full_like(gray, 255)]))
    return Image.fromarray(gray)


def render_nih(job: NihJob) -> NihResult:
    """Render one planned image and write its PNG (worker side)."""
    p = job.plan
    case = render_case(np.random.SeedSequence(job.seed, spawn_key=(1, 1, p.index)), (job.size, job.size), p.classes,
                       view=p.view, sex=p.sex, render_max=job.render_max,
                       patient_seed=np.random.SeedSequence(job.seed, spawn_key=(1, 2, p.patient_id)))
    path = Path(job.path)
    with atomic_output(path) as handle:
        png_image(case.image, p.png_mode).save(handle, format="PNG", compress_level=1)
    thumb = None
    if job.want_thumbnail:
        thumb = thumbnail(case.image, f"{p.file_name} {p.view} {p.png_mode}",
                          [(f.class_id, f.class_name, f.box) for f in case.findings])
    return NihResult(p.index, case.findings, thumb)


def image_dir(plan: NihImage, n: int, kaggle_layout: bool) -> str:
    """images/ (NIH's download) or images_001/images/ .. images_012/images/ (the Kaggle copy)."""
    if not kaggle_layout:
        return "images"
    folders = min(12, max(n, 1))
    return f"images_{plan.index * folders // max(n, 1) + 1:03d}/images"


def labels_and_boxes(plans: list[NihImage], results: list[NihResult], seed: int
                     ) -> tuple[list[list[str]], list[list[tuple[str, Box]]]]:
    """Per image: its sorted NIH labels (or No Finding) and its (label, box) pairs for BBox_List."""
    labels, boxes = [], []
    for plan, result in zip(plans, results):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, 3, plan.index)))
        named = [(nih_label(f, rng), f) for f in result.findings]
        mine = sorted({name for name, _ in named if name})
        labels.append(mine or [NIH_NO_FINDING])
        boxed = []
        for name, f in named:
            if name in BBOX_LABELS:
                # one radiologist's box: a little off the drawn one
                x0, y0, x1, y1 = f.box
                j = rng.normal(0.0, 0.04, 4) * np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0])
                boxed.append((name, (x0 + j[0], y0 + j[1], x1 + j[2], y1 + j[3])))
        boxes.append(boxed)
    assert all(label in NIH_LABELS for ls in labels for label in ls)
    return labels, boxes


def _write(path: Path, header: list[str], rows: list[list], trailing_comma: bool = False) -> Path:
    f = io.StringIO(newline="")
    w = csv.writer(f, lineterminator=",\n" if trailing_comma else "\n")
    w.writerow(header)
    w.writerows(rows)
    write_text(path, f.getvalue())
    return path


def write_tables(root: Path, plans: list[NihImage], results: list[NihResult], seed: int, size: int
                 ) -> dict[str, Path]:
    """The CSVs and split lists, formatted as the real files are."""
    labels, boxes = labels_and_boxes(plans, results, seed)
    v2020, v2017, bbox = [], [], []
    for plan, names, boxed in zip(plans, labels, boxes):
        width, height = plan.original_size
        common = [plan.file_name, "|".join(names), plan.follow_up, plan.patient_id]
        v2020.append([*common, plan.age, plan.sex, plan.view, width, height, plan.spacing[0], plan.spacing[0]])
        v2017.append([*common, f"{plan.age:03d}Y", plan.sex, plan.view, width, height, plan.spacing[1], plan.spacing[1]])
        for name, (x0, y0, x1, y1) in boxed:
            x0, y0 = max(x0, 0.0), max(y0, 0.0)
            x1, y1 = min(x1, float(size)), min(y1, float(size))
            if x1 - x0 < 1 or y1 - y0 < 1:
                continue
            label = "Infiltrate" if name == "Infiltration" else name  # the box file's own spelling
            bbox.append([plan.file_name, label, *(f"{v:.15g}" for v in (x0, y0, x1 - x0, y1 - y0))])
    written = {
        "Data_Entry_2017_v2020.csv": _write(root / "Data_Entry_2017_v2020.csv", DATA_ENTRY_HEADER, v2020),
        # the 2017 release: one more, unnamed, empty column at the end of every line
        "Data_Entry_2017.csv": _write(root / "Data_Entry_2017.csv", DATA_ENTRY_HEADER, v2017, trailing_comma=True),
        "BBox_List_2017.csv": _write_bbox(root / "BBox_List_2017.csv", bbox),
    }
    for name, split in (("train_val_list.txt", "train_val"), ("test_list.txt", "test")):
        files = sorted(p.file_name for p in plans if p.split == split)
        write_text(root / name, "".join(f"{f}\n" for f in files))
        written[name] = root / name
    return written


def _write_bbox(path: Path, rows: list[list[str]]) -> Path:
    """Header with three trailing empty names, rows with the six fields only: as in the real file."""
    f = io.StringIO(newline="")
    f.write(",".join(BBOX_HEADER) + "\n")
    csv.writer(f, lineterminator="\n").writerows(rows)
    write_text(path, f.getvalue())
    return path
