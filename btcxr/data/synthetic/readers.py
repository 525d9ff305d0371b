"""Seventeen simulated radiologists (R1..R17) who box the drawn findings, each in their own way.

Every reader has a share of the work (the real VinDr train.csv's, so R8, R9 and R10 read most images),
a rate of missing findings (more often when faint), of adding a finding that is not there, of naming a
finding by a neighbouring class, box jitter and a habit of drawing loose boxes. Their personalities are
fixed (a table drawn once from a constant seed), not re-drawn per dataset, so R3 is always R3. A reader
who reports nothing writes "No finding", as in the real file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from btcxr.data.classes import NO_FINDING, VINDR_CLASS_ID
from btcxr.data.synthetic.render import Box, Finding

# Images read per radiologist in the real Kaggle train.csv (45,000 readings of 15,000 images).
WORKLOAD = {
    "R1": 1995, "R2": 3119, "R3": 2285, "R4": 1513, "R5": 2783, "R6": 2041, "R7": 1733, "R8": 6582,
    "R9": 6125, "R10": 6467, "R11": 1526, "R12": 1671, "R13": 1629, "R14": 1440, "R15": 1639,
    "R16": 1676, "R17": 776,
}
# Classes readers confuse with each other.
NEIGHBOURS = {
    "Lung Opacity": ["Consolidation", "Infiltration"],
    "Consolidation": ["Lung Opacity", "Infiltration"],
    "Infiltration": ["Lung Opacity", "Consolidation"],
    "ILD": ["Pulmonary fibrosis"],
    "Pulmonary fibrosis": ["ILD", "Pleural thickening"],
    "Pleural thickening": ["Pulmonary fibrosis"],
    "Calcification": ["Nodule/Mass"],
    "Nodule/Mass": ["Other lesion", "Calcification"],
    "Atelectasis": ["Lung Opacity"],
}
# Findings readers add where there is none, and the landmark they put them on.
FALSE_FINDINGS = [
    ("Pleural thickening", "apex"),
    ("Pulmonary fibrosis", "apex"),
    ("Nodule/Mass", "lung"),
    ("Lung Opacity", "base"),
    ("Other lesion", "lung"),
    ("Aortic enlargement", "knob"),
]
FALSE_WEIGHTS = np.array([0.3, 0.2, 0.2, 0.1, 0.1, 0.1])


@dataclass(frozen=True)
class Reader:
    """One simulated radiologist's habits."""

    rad_id: str
    share: float  # probability weight of being picked for an image
    miss: float  # base probability of missing a finding (scaled up for faint ones)
    add: float  # probability of reporting a finding that is not there, per image
    jitter: float  # standard deviation of each box edge, as a fraction of the box size
    margin: float  # habitual extra margin around boxes, as a fraction of the box size
    relabel: float  # probability of naming a finding by a neighbouring class
    double: float  # probability of also labelling a finding with a neighbouring class


def _make_readers() -> list[Reader]:
    rng = np.random.default_rng(17)  # constant: the readers' personalities are part of the simulator
    total = sum(WORKLOAD.values())
    readers = []
    for rad_id, work in WORKLOAD.items():
        senior = work > 5000  # the three who read every abnormal image of the real set
        readers.append(Reader(
            rad_id=rad_id,
            share=work / total,
            miss=float(rng.uniform(0.08, 0.18) if senior else rng.uniform(0.15, 0.4)),
            add=float(rng.uniform(0.02, 0.06) if senior else rng.uniform(0.02, 0.12)),
            jitter=float(rng.uniform(0.03, 0.07) if senior else rng.uniform(0.05, 0.14)),
            margin=float(rng.uniform(-0.02, 0.08)),
            relabel=float(rng.uniform(0.03, 0.1) if senior else rng.uniform(0.05, 0.2)),
            double=float(rng.uniform(0.05, 0.25)),
        ))
    return readers


READERS: list[Reader] = _make_readers()
READER_BY_ID = {r.rad_id: r for r in READERS}


@dataclass(frozen=True)
class Annotation:
    """One row of a reader's report: a boxed finding, or "No finding" with no box."""

    rad_id: str
    class_name: str
    box: Box | None

    @property
    def class_id(self) -> int:
        return VINDR_CLASS_ID[self.class_name]


def pick_readers(rng: np.random.Generator, k: int = 3) -> list[str]:
    """k distinct radiologists, weighted by their share of the work."""
    p = np.array([r.share for r in READERS])
    idx = rng.choice(len(READERS), size=k, replace=False, p=p / p.sum())
    return [READERS[i].rad_id for i in idx]


def _jitter_box(box: Box, reader: Reader, shape: tuple[int, int], rng: np.random.Generator) -> Box | None:
    h, w = shape
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    m = reader.margin
    dx = rng.normal(0.0, reader.jitter, 2) * bw
    dy = rng.normal(0.0, reader.jitter, 2) * bh
    nx0, nx1 = np.clip([x0 - m * bw + dx[0], x1 + m * bw + dx[1]], 0, w)
    ny0, ny1 = np.clip([y0 - m * bh + dy[0], y1 + m * bh + dy[1]], 0, h)
    if nx1 - nx0 < 2 or ny1 - ny0 < 2:
        return None
    return float(nx0), float(ny0), float(nx1), float(ny1)


def _false_box(kind: str, landmarks: dict[str, Box], shape: tuple[int, int], rng: np.random.Generator) -> Box | None:
    side = "R" if rng.random() < 0.5 else "L"
    if kind == "knob":
        heart = landmarks.get("heart")
        lung = landmarks.get("lung_L")
        if heart is None or lung is None:
            return None
        # above the heart, at the left mediastinal border
        cx = heart[0] + 0.6 * (heart[2] - heart[0])
        cy = lung[1] + 0.3 * (lung[3] - lung[1])
        s = 0.05 * shape[1]
        return cx - s, cy - s, cx + s, cy + s
    region = landmarks.get(f"{kind}_{side}")
    if region is None:
        return None
    x0, y0, x1, y1 = region
    fw, fh = rng.uniform(0.15, 0.5), rng.uniform(0.1, 0.4)
    bw, bh = fw * (x1 - x0), fh * (y1 - y0)
    bx = x0 + rng.uniform(0, 1 - fw) * (x1 - x0)
    by = y0 + rng.uniform(0, 1 - fh) * (y1 - y0)
    return bx, by, bx + bw, by + bh


def read(reader: Reader, findings: list[Finding], landmarks: dict[str, Box], shape: tuple[int, int],
         rng: np.random.Generator) -> list[Annotation]:
    """One reader's report on one image: jittered boxes of what they saw, or one "No finding" row."""
    rows: list[Annotation] = []
    for f in findings:
        if rng.random() < min(reader.miss * (1.6 - f.conspicuity), 0.9):
            continue
        name = f.class_name
        neighbours = NEIGHBOURS.get(name, [])
        if neighbours and rng.random() < reader.relabel:
            name = neighbours[int(rng.integers(len(neighbours)))]
        box = _jitter_box(f.box, reader, shape, rng)
        if box is None:
            continue
        rows.append(Annotation(reader.rad_id, name, box))
        if neighbours and rng.random() < reader.double:
            other = neighbours[int(rng.integers(len(neighbours)))]
            again = _jitter_box(f.box, reader, shape, rng)
            if again is not None and other != name:
                rows.append(Annotation(reader.rad_id, other, again))
    if rng.random() < reader.add:
        name, where = FALSE_FINDINGS[int(rng.choice(len(FALSE_FINDINGS), p=FALSE_WEIGHTS))]
        box = _false_box(where, landmarks, shape, rng)
        if box is not None:
            rows.append(Annotation(reader.rad_id, name, box))
    return rows or [Annotation(reader.rad_id, NO_FINDING, None)]


def consensus(findings: list[Finding], rad_id: str) -> list[Annotation]:
    """The test-set consensus: every drawn finding with its exact box (one row per box)."""
    rows = [Annotation(rad_id, f.class_name, f.box) for f in findings]
    return rows or [Annotation(rad_id, NO_FINDING, None)]

