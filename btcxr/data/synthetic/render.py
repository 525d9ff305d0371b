"""One synthetic case: a patient, the findings asked for, an exposure -> image, boxes and landmarks.

Three independent random streams (anatomy, findings, acquisition) come from one SeedSequence, so the
same case rendered without its findings differs only where the findings were drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from btcxr.data.classes import VINDR_CLASS_ID
from btcxr.data.synthetic.acquisition import Exposure, draw_exposure, expose
from btcxr.data.synthetic.findings import DRAWERS, MODIFIERS, DrawnFinding, pleural_effusion, pneumothorax
from btcxr.data.synthetic.phantom import SIDES, Anatomy, Patient, build_anatomy, draw_patient, reposition

Box = tuple[float, float, float, float]


@dataclass
class Finding:
    """A drawn finding in output pixels (x_min, y_min, x_max, y_max; max edges exclusive)."""

    class_id: int
    class_name: str
    box: Box
    conspicuity: float
    size_mm: float | None = None
    side: str | None = None


@dataclass
class Case:
    """A rendered radiograph (float32 in [0, 1], bright = dense) with what was drawn on it."""

    image: np.ndarray
    findings: list[Finding]
    landmarks: dict[str, Box]  # lungs, apices, heart, knob: where readers put their false positives
    patient: Patient
    exposure: Exposure
    drawn: list[DrawnFinding]  # the render-resolution masks, for tests and debugging
    render_shape: tuple[int, int]


def render_shape(shape: tuple[int, int], render_max: int) -> tuple[int, int]:
    """Resolution the anatomy is drawn at: the output's, capped at `render_max` on the long side."""
    h, w = shape
    f = min(1.0, render_max / max(h, w))
    return max(int(round(h * f)), 16), max(int(round(w * f)), 16)


def _bbox(mask: np.ndarray) -> Box | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def _landmarks(anat: Anatomy) -> dict[str, Box]:
    out: dict[str, Box] = {}
    for side in SIDES:
        lung = _bbox(anat.lung_mask[side] > 0.5)
        if lung:
            out[f"lung_{side}"] = lung
            x0, y0, x1, y1 = lung
            out[f"apex_{side}"] = (x0, y0, x1, y0 + 0.3 * (y1 - y0))
            out[f"base_{side}"] = (x0, y0 + 0.65 * (y1 - y0), x1, y1)
    heart = _bbox(anat.heart > 0.5)
    if heart:
        out["heart"] = heart
    return out


def render_case(
    seed: np.random.SeedSequence,
    shape: tuple[int, int],
    classes: list[str],
    view: str = "PA",
    sex: str = "M",
    render_max: int = 384,
    patient_seed: np.random.SeedSequence | None = None,
) -> Case:
    """Render one radiograph of `shape` (rows, cols) with the named VinDr findings drawn on it.

    Classes that cannot be drawn are ignored; a class may yield several boxes (e.g. ILD in both lungs).
    The anatomy is drawn at most `render_max` pixels on the long side and upsampled (noise is not).
    With `patient_seed`, the body comes from that seed (the same patient on every follow-up film) and
    only the positioning from `seed`.
    """
    # children by key, not seed.spawn(): spawn() counts its calls, so a second render would differ
    rng_anat, rng_find, rng_acq = (
        np.random.default_rng(np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, k))) for k in range(3))
    if patient_seed is None:
        patient = draw_patient(rng_anat, view=view, sex=sex)
    else:
        patient = reposition(draw_patient(np.random.default_rng(patient_seed), view=view, sex=sex), rng_anat)
    wanted = [c for c in VINDR_CLASS_ID if c in classes]  # a fixed order keeps the streams reproducible
    for name in wanted:
        if name in MODIFIERS:
            patient = MODIFIERS[name][0](patient, rng_find)
    rshape = render_shape(shape, render_max)
    anat = build_anatomy(patient, rshape)
    drawn: list[DrawnFinding] = []
    for name in wanted:
        if name in MODIFIERS:
            found = MODIFIERS[name][1](anat)
            drawn += [found] if found else []
    fluid_side = SIDES[int(rng_find.integers(2))]  # effusion and pneumothorax go to opposite sides
    for name, drawer in DRAWERS.items():
        if name == "Pleural effusion" and name in wanted:
            drawn += pleural_effusion(anat, rng_find, side=fluid_side)
        elif name == "Pneumothorax" and name in wanted:
            drawn += pneumothorax(anat, rng_find, side=SIDES[1 - SIDES.index(fluid_side)])
        elif name in wanted:
            drawn += drawer(anat, rng_find)
    exposure = draw_exposure(rng_acq)
    image = expose(anat.attenuation, exposure, shape, rng_acq)
    sy, sx = shape[0] / rshape[0], shape[1] / rshape[1]

    def scale(b: Box) -> Box:
        return b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy

    findings = [Finding(d.class_id, d.class_name, scale(d.box), d.conspicuity, d.size_mm, d.side) for d in drawn]
    landmarks = {k: scale(b) for k, b in _landmarks(anat).items()}
    return Case(image, findings, landmarks, patient, exposure, drawn, rshape)
