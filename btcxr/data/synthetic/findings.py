"""Findings drawn where they occur anatomically, each returning the pixels it changed.

Every drawer edits the attenuation map of an :class:`~btcxr.data.synthetic.phantom.Anatomy` in place,
inside a window around the finding, and returns :class:`DrawnFinding` records whose box is the
bounding box of the mask of what was drawn (render pixels). Class ids are VinDr's
(btcxr.data.classes.VINDR_CLASS_ID). Opacities fill the lung's air with soft tissue (so they are as
bright as the heart at most), lucencies remove tissue; amplitudes are chosen so a detector can see them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from btcxr.data.classes import VINDR_CLASS_ID
from btcxr.data.synthetic.phantom import (
    SIDE_SIGN,
    SIDES,
    Anatomy,
    Patient,
    heart_field,
    knob_field,
    lateral_border,
    lung_distance,
    lung_top,
    smooth_field,
    smooth_step,
    with_heart_ctr,
)


@dataclass
class DrawnFinding:
    """One drawn finding: class, box (x_min, y_min, x_max, y_max in render pixels) and its mask."""

    class_id: int
    box: tuple[float, float, float, float]
    mask: np.ndarray  # bool, over `window`
    window: tuple[slice, slice]
    conspicuity: float  # 0..1, how easy it is to see (readers miss faint findings more often)
    size_mm: float | None = None  # real diameter, for findings whose name depends on size
    side: str | None = None

    @property
    def class_name(self) -> str:
        return next(name for name, i in VINDR_CLASS_ID.items() if i == self.class_id)


def _from_mask(class_id: int, mask: np.ndarray, window: tuple[slice, slice], conspicuity: float,
               **extra) -> DrawnFinding | None:
    """Wrap a drawn mask; None when nothing of it landed on the image."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    y0, x0 = window[0].start, window[1].start
    box = (float(x0 + cols[0]), float(y0 + rows[0]), float(x0 + cols[-1] + 1), float(y0 + rows[-1] + 1))
    return DrawnFinding(class_id, box, mask, window, float(np.clip(conspicuity, 0.05, 1.0)), **extra)


def _zone_v(p: Patient, side: str, t: float) -> float:
    """Height at fraction t of a lung, 0 at the apex and 1 at the costophrenic angle."""
    return p.apex + t * (p.angle_cp[SIDES.index(side)] - p.apex)


def _lung_point(p: Patient, rng: np.random.Generator, side: str, zone: tuple[float, float],
                margin: float = 0.04) -> tuple[float, float]:
    """A random point inside one aerated lung (away from heart and knob), in a height zone."""
    s = SIDE_SIGN[side]
    for _ in range(200):
        v = _zone_v(p, side, rng.uniform(*zone))
        u = s * rng.uniform(0.1, p.lung_width)
        if lung_distance(p, side, u, v) > margin and heart_field(p, u, v) < -0.15 and knob_field(p, u, v) < -0.3:
            return float(u), float(v)
    return float(s * 0.6), float(_zone_v(p, side, 0.5))  # a safe fallback: mid-lung


def _side(rng: np.random.Generator) -> str:
    return SIDES[int(rng.integers(2))]


def _edge(anat: Anatomy) -> float:
    """About one pixel, in patient units: the soft edge every drawn shape gets."""
    return max(anat.units(1.0), 0.003)


def _air(anat: Anatomy, window, side: str | None = None) -> np.ndarray:
    """The air a window of lung holds (what an opacity can fill), limited to one side if given."""
    air = anat.lung_air[window]
    if side is not None:
        air = air * (anat.lung_mask[side][window] > 0.02)
    return air


# ---- anatomy-changing findings: drawn by changing the patient before the anatomy is built --------------


def enlarge_heart(p: Patient, rng: np.random.Generator) -> Patient:
    """Cardiomegaly: a cardiothoracic ratio above one half."""
    return with_heart_ctr(p, float(rng.uniform(0.54, 0.68)))


def enlarge_aorta(p: Patient, rng: np.random.Generator) -> Patient:
    """Aortic enlargement: a bigger, more prominent aortic knob."""
    u, v, r = p.knob
    grow = float(rng.uniform(1.45, 1.9))
    return replace(p, knob=(u + 0.4 * r * (grow - 1.0), v - 0.2 * r * (grow - 1.0), r * grow))


def heart_finding(anat: Anatomy) -> DrawnFinding | None:
    """Cardiomegaly's box: the heart shadow down to the diaphragm."""
    p = anat.patient
    h = heart_field(p, anat.u, anat.v)
    floor = np.where(anat.u < 0, np.float32(p.dome[0]), np.float32(p.dome[1])) + 0.1
    mask = (h > 0) & (anat.v < floor)
    return _from_mask(VINDR_CLASS_ID["Cardiomegaly"], mask, (slice(0, mask.shape[0]), slice(0, mask.shape[1])),
                      conspicuity=(p.ctr - 0.5) / 0.1)


def knob_finding(anat: Anatomy) -> DrawnFinding | None:
    """Aortic enlargement's box: the aortic knob."""
    p = anat.patient
    u, v, r = p.knob
    w = anat.window(u - r, u + r, v - r, v + r)
    mask = knob_field(p, anat.u[w], anat.v[w]) > 0
    return _from_mask(VINDR_CLASS_ID["Aortic enlargement"], mask, w, conspicuity=(r - 0.09) / 0.04)


# ---- findings drawn on the built anatomy -----------------------------------------------------------------


def nodule_or_mass(anat: Anatomy, rng: np.random.Generator, mass: bool | None = None) -> list[DrawnFinding]:
    """A round, slightly lobulated opacity in a lung; masses are 3 cm or more across, nodules less."""
    p = anat.patient
    mass = bool(rng.random() < 0.4) if mass is None else mass
    diameter_mm = rng.uniform(32.0, 55.0) if mass else rng.uniform(8.0, 26.0)
    r = max(diameter_mm / 2.0 / p.mm_per_unit, anat.units(2.5))
    side = _side(rng)
    u, v = _lung_point(p, rng, side, (0.1, 0.85), margin=0.5 * r)
    w = anat.window(u - 1.3 * r, u + 1.3 * r, v - 1.3 * r, v + 1.3 * r)
    du, dv = anat.u[w] - u, anat.v[w] - v
    theta = np.arctan2(dv, du)
    lobes = 1.0 + (0.1 if mass else 0.05) * np.sin(3 * theta + rng.uniform(0, 6.3)) + 0.05 * np.sin(
        5 * theta + rng.uniform(0, 6.3))
    q = np.sqrt(du * du + dv * dv) / (r * lobes)
    amp = rng.uniform(0.3, 0.42) if mass else rng.uniform(0.22, 0.34)
    shape = np.sqrt(np.clip(1.0 - q * q, 0.0, 1.0)) * smooth_step((1.0 - q) * r / _edge(anat))
    anat.attenuation[w] += amp * shape
    found = _from_mask(VINDR_CLASS_ID["Nodule/Mass"], shape > 0.02, w, conspicuity=0.4 + diameter_mm / 40.0,
                       size_mm=float(diameter_mm), side=side)
    return [found] if found else []


_PATCH = {  # kind: (zone, extent, blobs, blob size, threshold, softness, fill)
    "Consolidation": ((0.4, 0.9), (0.15, 0.3), 7, (0.06, 0.1), 0.5, 0.3, (0.7, 0.9)),
    "Lung Opacity": ((0.2, 0.9), (0.15, 0.3), 5, (0.07, 0.12), 0.35, 0.6, (0.35, 0.5)),
    "Infiltration": ((0.3, 0.9), (0.1, 0.2), 10, (0.03, 0.05), 0.35, 0.5, (0.45, 0.65)),
    "Atelectasis": ((0.55, 0.92), (0.0, 0.0), 0, (0.0, 0.0), 0.0, 0.0, (0.75, 0.9)),
}


def patchy_opacity(anat: Anatomy, rng: np.random.Generator, kind: str) -> list[DrawnFinding]:
    """Consolidation (dense, air bronchograms), lung opacity (hazy) or infiltration (patchy, mottled).

    The outline is a sum of random blobs plus a rough random field, so margins are irregular; the fill
    replaces part of the lung's air, so the opacity is never brighter than soft tissue.
    """
    p = anat.patient
    zone, extent, blobs, size, threshold, softness, fill = _PATCH[kind]
    side = _side(rng)
    u, v = _lung_point(p, rng, side, zone, margin=0.05)
    reach = extent[1] + 2.5 * size[1]
    w = anat.window(u - reach, u + reach, v - reach, v + reach)
    uu, vv = anat.u[w], anat.v[w]
    field = np.zeros_like(uu)
    radius = rng.uniform(*extent)
    for _ in range(blobs):
        cu, cv = u + rng.normal(0, radius / 2), v + rng.normal(0, radius / 2)
        s = rng.uniform(*size)
        field += np.exp(-((uu - cu) ** 2 + (vv - cv) ** 2) / (s * s))
    cells = max(int(2 * reach / 0.04), 2)
    rough = 1.0 + 0.35 * smooth_field(rng, uu.shape, (cells, cells))  # irregular margins, none far away
    cover = smooth_step((field * rough - threshold) / softness) * (anat.lung_mask[side][w] > 0.3)
    density = rng.uniform(*fill)
    inside = 1.0 + 0.25 * smooth_field(rng, uu.shape, (cells, cells)) if kind != "Consolidation" else 1.0
    delta = density * cover * inside * _air(anat, w, side)
    if kind == "Consolidation":
        # air bronchograms: the zero lines of a smooth random field stay dark inside the opacity
        lines = np.exp(-((smooth_field(rng, uu.shape, (3, 3)) / 0.1) ** 2))
        delta *= 1.0 - 0.55 * lines * cover
    anat.attenuation[w] += delta
    found = _from_mask(VINDR_CLASS_ID[kind], cover > 0.1, w, conspicuity=density * 1.5, side=side)
    return [found] if found else []


def atelectasis(anat: Anatomy, rng: np.random.Generator) -> list[DrawnFinding]:
    """Plate-like (discoid) atelectasis: a thin dense band, roughly horizontal, in a lower zone."""
    p = anat.patient
    side = _side(rng)
    u, v = _lung_point(p, rng, side, _PATCH["Atelectasis"][0], margin=0.08)
    length, thick = rng.uniform(0.12, 0.24), max(rng.uniform(0.018, 0.035), anat.units(1.5))
    angle = rng.uniform(-0.35, 0.2) * SIDE_SIGN[side]
    w = anat.window(u - length, u + length, v - length, v + length)
    du, dv = anat.u[w] - u, anat.v[w] - v
    x = du * np.cos(angle) + dv * np.sin(angle)
    y = -du * np.sin(angle) + dv * np.cos(angle)
    half = thick * np.sqrt(np.clip(1.0 - (x / length) ** 2, 0.0, 1.0))
    band = smooth_step((half - np.abs(y)) / _edge(anat)) * (anat.lung_mask[side][w] > 0.3)
    delta = rng.uniform(*_PATCH["Atelectasis"][-1]) * band * _air(anat, w, side)
    anat.attenuation[w] += delta
    found = _from_mask(VINDR_CLASS_ID["Atelectasis"], band > 0.1, w, conspicuity=thick / 0.03, side=side)
    return [found] if found else []


def reticular(anat: Anatomy, rng: np.random.Generator, kind: str) -> list[DrawnFinding]:
    """ILD (basal reticulation, usually both lungs) or pulmonary fibrosis (upper-zone coarse lines)."""
    p = anat.patient
    ild = kind == "ILD"
    sides = list(SIDES) if rng.random() < (0.75 if ild else 0.5) else [_side(rng)]
    out = []
    for side in sides:
        t0, t1 = (rng.uniform(0.45, 0.6), 1.0) if ild else (0.0, rng.uniform(0.4, 0.6))
        v0, v1 = _zone_v(p, side, t0), _zone_v(p, side, t1) + (0.2 if ild else 0.0)
        s = SIDE_SIGN[side]
        w = anat.window(min(0.0, s * 1.05), max(0.0, s * 1.05), v0 - 0.05, v1 + 0.05)
        uu, vv = anat.u[w], anat.v[w]
        if uu.size == 0:
            continue
        zone = smooth_step((vv - v0) / 0.06) * smooth_step((v1 - vv) / 0.06)
        cover = zone * (anat.lung_mask[side][w] > 0.3)
        # net of lines: the zero set of a smooth random field (fibrosis: stretched, so coarser streaks)
        span = (uu.max() - uu.min(), vv.max() - vv.min())
        cell = 0.035 if ild else 0.05
        cells = (max(int(span[1] / cell * (0.5 if not ild else 1.0)), 2), max(int(span[0] / cell), 2))
        net = np.exp(-((smooth_field(rng, uu.shape, cells) / 0.3) ** 2))
        density = rng.uniform(0.3, 0.45) if ild else rng.uniform(0.35, 0.5)
        delta = density * cover * (0.75 * net + 0.25) * _air(anat, w, side)
        anat.attenuation[w] += delta
        found = _from_mask(VINDR_CLASS_ID[kind], cover > 0.5, w, conspicuity=density * 1.8, side=side)
        if found:
            out.append(found)
    return out


def pleural_effusion(anat: Anatomy, rng: np.random.Generator, side: str | None = None) -> list[DrawnFinding]:
    """Fluid at a lung base: a meniscus rising laterally, blunting the costophrenic angle."""
    p = anat.patient
    side = side or _side(rng)
    i = SIDES.index(side)
    s = SIDE_SIGN[side]
    cp = p.angle_cp[i]
    height = rng.uniform(0.2, 0.55)
    top = cp - height
    w = anat.window(min(0.0, s * 1.05), max(0.0, s * 1.05), top - 0.05, cp + 0.05)
    uu, vv = anat.u[w], anat.v[w]
    a = s * uu
    surface = top + 0.6 * height * np.clip((p.lung_width - a) / p.lung_width, 0.0, 1.0) ** 1.5
    fill = smooth_step((vv - surface) / 0.05) * smooth_step(anat.lung_d[side][w] / (2 * _edge(anat)) + 0.5)
    delta = fill * _air(anat, w, side) + 0.04 * fill
    anat.attenuation[w] += delta
    found = _from_mask(VINDR_CLASS_ID["Pleural effusion"], fill > 0.3, w, conspicuity=height / 0.25, side=side)
    return [found] if found else []


def pneumothorax(anat: Anatomy, rng: np.random.Generator, side: str | None = None) -> list[DrawnFinding]:
    """Air between chest wall and a collapsed lung: lucent rim without vessels, a thin pleural line."""
    p = anat.patient
    side = side or _side(rng)
    s = SIDE_SIGN[side]
    depth = rng.uniform(0.07, 0.22)
    bottom = _zone_v(p, side, rng.uniform(0.55, 0.8))
    w = anat.window(min(0.0, s * 1.05), max(0.0, s * 1.05), p.apex - 0.05, bottom + 0.05)
    uu, vv = anat.u[w], anat.v[w]
    a = s * uu
    wall = np.minimum(lateral_border(p, vv) - a, 0.7 * (vv - lung_top(p, a)))
    t = np.clip((vv - p.apex) / (bottom - p.apex), 0.0, 1.0)
    reach = depth * (1.2 - 0.6 * t) * smooth_step((bottom - vv) / 0.08)
    inside = smooth_step(anat.lung_d[side][w] / (2 * _edge(anat)) + 0.5) * (anat.lung_mask[side][w] > 0.2)
    rim = smooth_step((reach - wall) / (2 * _edge(anat))) * inside
    line_w = max(0.007, anat.units(1.2))
    line = np.exp(-(((wall - reach) / line_w) ** 2)) * inside * (reach > 0.02)
    delta = -rim * (anat.vessels[w] + 0.1) + 0.15 * line * (1 - rim)
    anat.attenuation[w] += delta
    found = _from_mask(VINDR_CLASS_ID["Pneumothorax"], (rim > 0.3) | (line > 0.3), w, conspicuity=depth / 0.15,
                       side=side)
    return [found] if found else []


def pleural_thickening(anat: Anatomy, rng: np.random.Generator) -> list[DrawnFinding]:
    """A band of pleural soft tissue along the lateral chest wall or capping an apex."""
    p = anat.patient
    side = _side(rng)
    s = SIDE_SIGN[side]
    thick = max(rng.uniform(0.025, 0.05), anat.units(2.0))
    apical = rng.random() < 0.5
    if apical:
        v0, v1 = p.apex - 0.02, _zone_v(p, side, 0.25)
    else:
        t0 = rng.uniform(0.15, 0.55)
        v0, v1 = _zone_v(p, side, t0), _zone_v(p, side, t0 + rng.uniform(0.2, 0.4))
    w = anat.window(min(0.0, s * 1.05), max(0.0, s * 1.05), v0 - 0.03, v1 + 0.03)
    uu, vv = anat.u[w], anat.v[w]
    a = s * uu
    wall = 0.7 * (vv - lung_top(p, a)) if apical else lateral_border(p, vv) - a
    extent = smooth_step((vv - v0) / 0.03) * smooth_step((v1 - vv) / 0.03)
    band = smooth_step((thick - wall) / _edge(anat)) * extent * (anat.lung_d[side][w] > 0)
    delta = rng.uniform(0.7, 0.9) * band * _air(anat, w, side) + 0.03 * band
    anat.attenuation[w] += delta
    found = _from_mask(VINDR_CLASS_ID["Pleural thickening"], band > 0.3, w, conspicuity=thick / 0.04, side=side)
    return [found] if found else []


def calcification(anat: Anatomy, rng: np.random.Generator) -> list[DrawnFinding]:
    """Calcified granulomas: a few small, bone-dense dots close together in a lung."""
    p = anat.patient
    side = _side(rng)
    u, v = _lung_point(p, rng, side, (0.1, 0.8), margin=0.05)
    spread = rng.uniform(0.01, 0.04)
    w = anat.window(u - spread - 0.05, u + spread + 0.05, v - spread - 0.05, v + spread + 0.05)
    uu, vv = anat.u[w], anat.v[w]
    dots = np.zeros_like(uu)
    for _ in range(int(rng.integers(1, 5))):
        r = max(rng.uniform(0.008, 0.018), anat.units(1.5))
        cu, cv = u + rng.normal(0, spread), v + rng.normal(0, spread)
        q = np.sqrt((uu - cu) ** 2 + (vv - cv) ** 2) / r
        dots = np.maximum(dots, np.sqrt(np.clip(1.0 - q * q, 0.0, 1.0)) * smooth_step((1.0 - q) * r / _edge(anat)))
    anat.attenuation[w] += rng.uniform(0.5, 0.7) * dots
    found = _from_mask(VINDR_CLASS_ID["Calcification"], dots > 0.05, w, conspicuity=0.6, side=side)
    return [found] if found else []


def other_lesion(anat: Anatomy, rng: np.random.Generator) -> list[DrawnFinding]:
    """Another focal lesion: a dense oval on the lateral chest wall / a rib."""
    p = anat.patient
    side = _side(rng)
    s = SIDE_SIGN[side]
    v = _zone_v(p, side, rng.uniform(0.2, 0.75))
    u = s * (float(lateral_border(p, v)) + rng.uniform(-0.06, 0.04))
    ra, rb = rng.uniform(0.04, 0.07), max(rng.uniform(0.025, 0.04), anat.units(2.0))
    w = anat.window(u - ra, u + ra, v - ra, v + ra)
    du, dv = anat.u[w] - u, anat.v[w] - v
    angle = rng.uniform(-0.4, 0.4)
    x = du * np.cos(angle) + dv * np.sin(angle)
    y = -du * np.sin(angle) + dv * np.cos(angle)
    q = np.sqrt((x / ra) ** 2 + (y / rb) ** 2)
    shape = np.sqrt(np.clip(1.0 - q * q, 0.0, 1.0)) * smooth_step((1.0 - q) * rb / _edge(anat))
    anat.attenuation[w] += rng.uniform(0.3, 0.45) * shape
    found = _from_mask(VINDR_CLASS_ID["Other lesion"], shape > 0.02, w, conspicuity=0.6, side=side)
    return [found] if found else []


Drawer = Callable[[Anatomy, np.random.Generator], list[DrawnFinding]]

# Findings drawn on the built anatomy, in drawing order (fluid before air: they take different sides).
DRAWERS: dict[str, Drawer] = {
    "Pleural effusion": pleural_effusion,
    "Pneumothorax": pneumothorax,
    "Pleural thickening": pleural_thickening,
    "ILD": lambda a, r: reticular(a, r, "ILD"),
    "Pulmonary fibrosis": lambda a, r: reticular(a, r, "Pulmonary fibrosis"),
    "Consolidation": lambda a, r: patchy_opacity(a, r, "Consolidation"),
    "Lung Opacity": lambda a, r: patchy_opacity(a, r, "Lung Opacity"),
    "Infiltration": lambda a, r: patchy_opacity(a, r, "Infiltration"),
    "Atelectasis": atelectasis,
    "Nodule/Mass": nodule_or_mass,
    "Calcification": calcification,
    "Other lesion": other_lesion,
}
# Findings that change the patient before the anatomy is built, and how to box them afterwards.
MODIFIERS: dict[str, tuple[Callable[[Patient, np.random.Generator], Patient], Callable]] = {
    "Cardiomegaly": (enlarge_heart, heart_finding),
    "Aortic enlargement": (enlarge_aorta, knob_finding),
}
DRAWABLE = set(DRAWERS) | set(MODIFIERS)
