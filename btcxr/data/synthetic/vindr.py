"""VinDr-CXR layouts: Kaggle (train/, test/, train.csv, sample_submission.csv) and PhysioNet 1.0.0
(train/, test/, annotations/annotations_*.csv, annotations/image_labels_*.csv).

Both layouts hold the same DICOMs for the same seed (as the real ones hold the same images), written
from one rendering when both are asked for. Boxes are in the DICOM's own pixels.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from btcxr.data.classes import NO_FINDING, VINDR_GLOBAL_LABELS, VINDR_LOCAL_LABELS
from btcxr.data.synthetic.contact_sheet import Thumbnail, thumbnail
from btcxr.data.synthetic.dicom import build_dataset, dicom_bytes
from btcxr.data.synthetic.plan import VindrImage
from btcxr.data.synthetic.readers import READER_BY_ID, Annotation, consensus, read
from btcxr.data.synthetic.render import Box, Finding, render_case
from btcxr.engine.io import write_bytes, write_text

log = logging.getLogger(__name__)

KAGGLE_TRAIN_HEADER = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
SUBMISSION_HEADER = ["image_id", "PredictionString"]
PHYSIONET_ANNOTATION_HEADER = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
PHYSIONET_LABEL_HEADER = ["image_id", "rad_id", *VINDR_LOCAL_LABELS, *VINDR_GLOBAL_LABELS]


@dataclass(frozen=True)
class VindrJob:
    plan: VindrImage
    seed: int
    roots: tuple[str, ...]  # dataset roots to write the DICOM into
    render_max: int
    want_thumbnail: bool


@dataclass
class VindrResult:
    index: int
    findings: list[Finding]
    landmarks: dict[str, Box]
    thumb: Thumbnail | None


def render_vindr(job: VindrJob) -> VindrResult:
    """Render one planned image and write its DICOM into every requested layout (worker side)."""
    p = job.plan
    case = render_case(np.random.SeedSequence(job.seed, spawn_key=(2, 1, p.index)), p.shape, p.classes,
                       view="PA", sex=p.sex, render_max=job.render_max)
    data = dicom_bytes(build_dataset(case.image, p.style, p.tags, p.image_id, job.seed, p.pixel_spacing))
    for root in job.roots:
        write_bytes(Path(root) / p.split / f"{p.image_id}.dicom", data)
    thumb = None
    if job.want_thumbnail:
        title = f"{p.image_id[:8]} {p.split} {p.style.photometric[-1]} {p.style.bits_stored}b {p.style.transfer_syntax}"
        thumb = thumbnail(case.image, title, [(f.class_id, f.class_name, f.box) for f in case.findings])
    return VindrResult(p.index, case.findings, case.landmarks, thumb)


def reader_annotations(plan: VindrImage, result: VindrResult, seed: int) -> list[Annotation]:
    """What the image's readers reported: three independent reads (train) or the consensus (test)."""
    if plan.split == "test":
        return consensus(result.findings, plan.readers[0])
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, 2, plan.index)))
    rows: list[Annotation] = []
    for rad_id in plan.readers:
        rows += read(READER_BY_ID[rad_id], result.findings, result.landmarks, plan.shape, rng)
    return rows


def _pixel_box(box: Box, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """A box in whole DICOM pixels, inside the image (the real file's boxes are integers)."""
    h, w = shape
    x0, y0, x1, y1 = (float(np.clip(round(v), 0, m)) for v, m in zip(box, (w, h, w, h)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def _kaggle_coords(box: Box | None, shape: tuple[int, int]) -> list[str]:
    """'691.0' style, as pandas wrote the real train.csv; empty for No finding."""
    if box is None:
        return ["", "", "", ""]
    return [f"{v:.1f}" for v in _pixel_box(box, shape)]


def _physionet_coords(box: Box | None, shape: tuple[int, int]) -> list[str]:
    """Sub-pixel coordinates with two decimals, as the PhysioNet annotation files give them."""
    if box is None:
        return ["", "", "", ""]
    h, w = shape
    x0, y0, x1, y1 = (float(np.clip(v, 0, m)) for v, m in zip(box, (w, h, w, h)))
    return [f"{v:.2f}" for v in (x0, y0, x1, y1)]


def global_labels(rows: list[Annotation], findings: list[Finding]) -> dict[str, int]:
    """A reader's impression (the 6 global labels) from what they boxed and what was drawn."""
    names = {a.class_name for a in rows if a.class_name != NO_FINDING}
    masses = any(f.class_name == "Nodule/Mass" and (f.size_mm or 0) >= 30 for f in findings)
    out = dict.fromkeys(VINDR_GLOBAL_LABELS, 0)
    out["Lung tumor"] = int("Nodule/Mass" in names and masses)
    out["Pneumonia"] = int(bool(names & {"Consolidation", "Infiltration", "Lung Opacity"}))
    out["Tuberculosis"] = int({"Pulmonary fibrosis", "Calcification"} <= names)
    explained = out["Lung tumor"] or out["Pneumonia"] or out["Tuberculosis"]
    out["Other diseases"] = int(bool(names) and not explained)
    out["No finding"] = int(not names)
    return out


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    f = io.StringIO(newline="")
    w = csv.writer(f, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    write_text(path, f.getvalue())
    return path


def write_kaggle(root: Path, plans: list[VindrImage], annotations: list[list[Annotation]]) -> dict[str, Path]:
    """train.csv (three readers per train image) and sample_submission.csv (test images)."""
    train = []
    for plan, rows in zip(plans, annotations):
        if plan.split != "train":
            continue
        for a in rows:
            train.append([plan.image_id, a.class_name, a.class_id, a.rad_id, *_kaggle_coords(a.box, plan.shape)])
    submission = [[p.image_id, "14 1 0 0 1 1"] for p in plans if p.split == "test"]
    return {
        "train.csv": _write_csv(root / "train.csv", KAGGLE_TRAIN_HEADER, train),
        "sample_submission.csv": _write_csv(root / "sample_submission.csv", SUBMISSION_HEADER, submission),
    }


def write_physionet(root: Path, plans: list[VindrImage], annotations: list[list[Annotation]],
                    results: list[VindrResult]) -> dict[str, Path]:
    """annotations/annotations_{train,test}.csv and annotations/image_labels_{train,test}.csv."""
    written = {}
    for split in ("train", "test"):
        boxes, labels = [], []
        for plan, rows, result in zip(plans, annotations, results):
            if plan.split != split:
                continue
            for a in rows:
                boxes.append([plan.image_id, a.rad_id, a.class_name, *_physionet_coords(a.box, plan.shape)])
            for rad_id in dict.fromkeys(a.rad_id for a in rows):
                mine = [a for a in rows if a.rad_id == rad_id]
                names = {a.class_name for a in mine}
                local = [int(name in names) for name in VINDR_LOCAL_LABELS]
                glob = global_labels(mine, result.findings)
                labels.append([plan.image_id, rad_id, *local, *(glob[g] for g in VINDR_GLOBAL_LABELS)])
        ann = root / "annotations"
        written[f"annotations_{split}.csv"] = _write_csv(ann / f"annotations_{split}.csv", PHYSIONET_ANNOTATION_HEADER,
                                                         boxes)
        written[f"image_labels_{split}.csv"] = _write_csv(ann / f"image_labels_{split}.csv", PHYSIONET_LABEL_HEADER,
                                                          labels)
    return written
