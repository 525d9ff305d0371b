"""What each synthetic image will be, decided up front in the main process (cheap and deterministic).

Which findings, which patient, which readers, which split, how it is stored. Rendering (in workers)
only executes the plan, so the files do not depend on the number of workers.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from btcxr.data.classes import VINDR_CLASSES
from btcxr.data.synthetic.dicom import RESCALES, DicomStyle, PatientTags, draw_style
from btcxr.data.synthetic.findings import DRAWABLE
from btcxr.errors import BtcxrError

# Share of abnormal VinDr images showing each class (any reader, real Kaggle train.csv, 4,394 images).
VINDR_PREVALENCE: dict[str, float] = {
    "Aortic enlargement": 0.698, "Cardiomegaly": 0.523, "Pleural thickening": 0.451,
    "Pulmonary fibrosis": 0.368, "Lung Opacity": 0.301, "Other lesion": 0.258, "Pleural effusion": 0.235,
    "Nodule/Mass": 0.188, "Infiltration": 0.140, "Calcification": 0.103, "ILD": 0.088,
    "Consolidation": 0.080, "Atelectasis": 0.042, "Pneumothorax": 0.022,
}
# The same for NIH (v2020 label counts over its 51,759 abnormal images), in drawable VinDr classes:
# Infiltration splits into Infiltration and Lung Opacity, Fibrosis into fibrosis and ILD.
NIH_PREVALENCE: dict[str, float] = {
    "Infiltration": 0.25, "Lung Opacity": 0.13, "Pleural effusion": 0.26, "Atelectasis": 0.22,
    "Nodule/Mass": 0.23, "Pneumothorax": 0.10, "Consolidation": 0.12, "Pleural thickening": 0.065,
    "Cardiomegaly": 0.054, "Pulmonary fibrosis": 0.02, "ILD": 0.013,
}


def check_prevalence(prevalence: dict[str, float]) -> dict[str, float]:
    """Validate a class -> probability mapping (names as in VinDr); unknown names are an error."""
    for name, p in prevalence.items():
        if name not in DRAWABLE:
            raise BtcxrError(f"prevalence: unknown class {name!r}; expected one of {', '.join(VINDR_CLASSES)}")
        if not 0.0 <= float(p) <= 1.0:
            raise BtcxrError(f"prevalence: probability of {name!r} is {p}, expected a number in [0, 1]")
    if not any(float(p) > 0 for p in prevalence.values()):
        raise BtcxrError("prevalence: every class has probability 0, abnormal images would have nothing to show")
    return {k: float(v) for k, v in prevalence.items()}


def draw_classes(rng: np.random.Generator, normal_fraction: float, prevalence: dict[str, float]) -> list[str]:
    """Findings of one image: none with probability `normal_fraction`, else each class independently
    with its prevalence (at least one, picked in proportion to the prevalences)."""
    if rng.random() < normal_fraction:
        return []
    names = list(prevalence)
    p = np.array([prevalence[n] for n in names])
    chosen = [n for n, pick in zip(names, rng.random(len(names)) < p) if pick]
    if not chosen:
        chosen = [names[int(rng.choice(len(names), p=p / p.sum()))]]
    return chosen


def balanced(rng: np.random.Generator, n: int, choices: list, weights: list[float]) -> list:
    """n draws with each choice's count as close to its weight as possible (every choice at least once
    when n allows), in random order: guarantees variety even in a dozen images."""
    w = np.array(weights, dtype=float) / sum(weights)
    counts = np.floor(w * n).astype(int)
    if n >= len(choices):
        counts = np.maximum(counts, 1)
    while counts.sum() > n:
        counts[int(np.argmax(counts))] -= 1
    while counts.sum() < n:
        counts[int(np.argmax(w * n - counts))] += 1
    out = [c for c, k in zip(choices, counts) for _ in range(k)]
    return [out[i] for i in rng.permutation(n)]


def split_counts(n: int, test_fraction: float) -> int:
    """Number of test items: the rounded fraction, but at least one of each side when n >= 2."""
    k = int(round(n * test_fraction))
    return min(max(k, 1 if n >= 2 and test_fraction > 0 else 0), n - 1 if n >= 2 else n)


@dataclass(frozen=True)
class VindrImage:
    """The plan of one VinDr-style image."""

    index: int
    image_id: str
    split: str  # "train" or "test"
    classes: list[str]
    shape: tuple[int, int]  # rows, columns of the DICOM
    sex: str
    style: DicomStyle
    tags: PatientTags
    pixel_spacing: float
    readers: list[str]  # three radiologists (train) or the one who wrote the consensus (test)


def plan_vindr(n: int, size: int, seed: int, normal_fraction: float, prevalence: dict[str, float],
               test_fraction: float = 0.2) -> list[VindrImage]:
    """Plan n VinDr images: 32-hex ids, an 80/20-style train/test split, varied DICOM storage."""
    from btcxr.data.synthetic.readers import pick_readers

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, 0)))
    n_test = split_counts(n, test_fraction)
    test = set(rng.permutation(n)[:n_test].tolist())
    photometric = balanced(rng, n, ["MONOCHROME2", "MONOCHROME1"], [0.65, 0.35])
    bits = balanced(rng, n, [12, 14, 16], [0.4, 0.35, 0.25])
    syntax = balanced(rng, n, ["explicit", "rle", "j2k", "implicit"], [0.55, 0.25, 0.1, 0.1])
    rescale = balanced(rng, n, RESCALES, [0.5, 0.25, 0.15, 0.1])
    base_date = dt.date(2018, 1, 1)
    plans = []
    for i in range(n):
        image_id = rng.bytes(16).hex()
        classes = draw_classes(rng, normal_fraction, prevalence)
        h = int(round(size * rng.uniform(0.85, 1.3)))
        w = int(round(h * rng.uniform(0.82, 1.12)))
        sex = "F" if rng.random() < 0.45 else "M"
        age = int(np.clip(rng.normal(48, 15), 18, 90))
        tags = PatientTags(i + 1, sex, age, base_date + dt.timedelta(days=int(rng.integers(0, 1000))))
        style = draw_style(rng, photometric[i], bits[i], syntax[i], rescale[i])
        split = "test" if i in test else "train"
        readers = pick_readers(rng, 3 if split == "train" else 1)
        plans.append(VindrImage(i, image_id, split, classes, (h, w), sex, style, tags,
                                float(rng.uniform(0.12, 0.18)), readers))
    return plans


# Common original sizes and pixel spacings in the real Data_Entry_2017_v2020.csv (written as found).
NIH_SIZES = [((2500, 2048), 0.33), ((2992, 2991), 0.2), ((3056, 2544), 0.14), ((2048, 2500), 0.08),
             ((2021, 2021), 0.04), ((2544, 3056), 0.02)]
NIH_SPACINGS = [("0.14300000000000002", "0.143", 0.36), ("0.168", "0.168", 0.32), ("0.139", "0.139", 0.18),
                ("0.171", "0.171", 0.09), ("0.19431099999999998", "0.194311", 0.05)]


def _weights(table: list[tuple], column: int) -> np.ndarray:
    w = np.array([row[column] for row in table], dtype=float)
    return w / w.sum()


@dataclass(frozen=True)
class NihImage:
    """The plan of one NIH-style image."""

    index: int
    file_name: str
    patient_id: int
    follow_up: int
    age: int
    sex: str
    view: str
    classes: list[str]
    png_mode: str  # "L", "RGBA" or "I;16"
    original_size: tuple[int, int]  # width, height
    spacing: tuple[str, str]  # as written in the v2020 and in the 2017 file
    split: str  # "train_val" or "test"


def plan_nih(n: int, seed: int, normal_fraction: float, prevalence: dict[str, float],
             test_fraction: float = 0.23) -> list[NihImage]:
    """Plan n NIH images: patients with several follow-ups, a patient-level split, a few odd PNG modes."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, 0)))
    per_patient: list[int] = []
    while sum(per_patient) < n:
        per_patient.append(int(min(rng.geometric(0.4), 12, n - sum(per_patient))))
    n_patients = len(per_patient)
    test_patients = set(rng.permutation(n_patients)[: split_counts(n_patients, test_fraction)].tolist())
    modes = balanced(rng, n, ["L", "RGBA", "I;16"], [0.94, 0.03, 0.03])
    plans = []
    for pid, count in enumerate(per_patient):
        sex = "F" if rng.random() < 0.44 else "M"
        age = int(np.clip(rng.normal(47, 16), 1, 94))
        for fu in range(count):
            i = len(plans)
            size = NIH_SIZES[int(rng.choice(len(NIH_SIZES), p=_weights(NIH_SIZES, 1)))][0]
            sp = NIH_SPACINGS[int(rng.choice(len(NIH_SPACINGS), p=_weights(NIH_SPACINGS, 2)))]
            plans.append(NihImage(
                index=i,
                file_name=f"{pid + 1:08d}_{fu:03d}.png",
                patient_id=pid + 1,
                follow_up=fu,
                age=min(age + fu // 3, 95),
                sex=sex,
                view="AP" if rng.random() < (0.3 if fu == 0 else 0.45) else "PA",
                classes=draw_classes(rng, normal_fraction, prevalence),
                png_mode=modes[i],
                original_size=size,
                spacing=(sp[0], sp[1]),
                split="test" if pid in test_patients else "train_val",
            ))
    return plans

