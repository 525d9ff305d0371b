"""Chest anatomy of one phantom patient, drawn as an attenuation map in a rotated patient frame.

The patient frame: ``u`` runs across the image (negative on the image's left = the patient's right, as
in a PA radiograph), ``v`` runs down; one unit is the half-width of the thorax. Every structure is a
closed-form function of (u, v), evaluated on a pixel grid once, with numpy broadcasting; rotation,
position and size of the patient are only the mapping from pixels to (u, v). Findings (findings.py)
use the same frame, so what they draw sits where it occurs anatomically.

Attenuation units: 1.0 is the soft tissue of the full chest depth; lungs remove about 0.7 (air), bone
adds 0.2-0.35. acquisition.py turns the map into a radiograph (bright = attenuating).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

SIDES = ("R", "L")  # patient's right lung lies on the image's left
SIDE_SIGN = {"R": -1.0, "L": 1.0}


@dataclass(frozen=True)
class Patient:
    """Everything random about one patient's body and position, drawn by :func:`draw_patient`."""

    view: str  # "PA" or "AP"
    sex: str  # "M" or "F"
    cx: float  # thorax centre, fraction of image width
    cy: float  # thorax centre, fraction of image height
    scale: float  # thorax half-width, fraction of image width
    stretch: float  # vertical over horizontal scale of the body
    angle: float  # in-plane rotation, radians
    mm_per_unit: float  # real size of one unit (thorax half-width), for nodule vs mass
    body: float  # soft-tissue amount (habitus)
    body_width: float  # torso half-width
    lung_width: float  # lateral lung border at its widest
    apex: float  # top of the lungs
    dome: tuple[float, float]  # top of the right and left hemidiaphragm
    angle_cp: tuple[float, float]  # costophrenic angles (lowest lateral lung points)
    heart_extent: float  # horizontal half-extent of the heart shadow
    heart_centre: tuple[float, float]
    heart_height: float  # short semi-axis of the heart ellipse
    heart_tilt: float  # angle of its long axis, pointing to the apex (down, to the image right)
    knob: tuple[float, float, float]  # aortic knob u, v, radius
    mediastinum: float  # half-width of the upper mediastinum
    rib_start: float
    rib_spacing: tuple[float, float]  # spacing of the top and the bottom posterior ribs
    rib_curve: float
    clavicle: tuple[float, float]  # sternal-end level and slope
    scapula: float  # medial border of the scapulae
    gastric_bubble: float  # size, 0 when absent
    breast: float  # breast shadow strength, 0 for men
    vessel_seed: int
    extra: dict = field(default_factory=dict)

    @property
    def thorax_width(self) -> float:
        """Inner width of the thorax at its widest (the cardiothoracic ratio's denominator)."""
        return 2.0 * self.lung_width

    @property
    def ctr(self) -> float:
        """Cardiothoracic ratio: heart width over thorax width."""
        return self.heart_extent / self.lung_width


def draw_patient(rng: np.random.Generator, view: str = "PA", sex: str = "M") -> Patient:
    """Draw a normal patient: size, position, rotation, inspiration and the shape of every organ."""
    ap = view == "AP"
    insp = rng.uniform(0.85, 1.1) - (0.08 if ap else 0.0)  # supine AP films are shallower
    lung_width = rng.uniform(0.9, 0.97)
    dome_r = 0.3 + 0.25 * (insp - 0.85) / 0.25 + rng.normal(0, 0.02)
    dome_l = dome_r + rng.uniform(0.03, 0.09)  # the left dome sits lower than the right
    cp = dome_r + rng.uniform(0.22, 0.32)
    ctr = rng.uniform(0.38, 0.47) * (1.1 if ap else 1.0)  # AP magnifies the heart
    heart_height = rng.uniform(0.28, 0.33)  # short axis of the heart ellipse
    tilt = rng.uniform(0.45, 0.7)
    right_border = -rng.uniform(0.22, 0.3)
    extent = ctr * lung_width
    return Patient(
        view=view,
        sex=sex,
        cx=0.5 + rng.normal(0, 0.02),
        cy=0.5 + rng.normal(0, 0.025) + (0.02 if ap else 0.0),
        scale=rng.uniform(0.29, 0.34),
        stretch=rng.uniform(1.0, 1.1),
        angle=np.deg2rad(rng.uniform(-4.0, 4.0)),
        mm_per_unit=rng.uniform(135.0, 165.0),
        body=rng.uniform(0.85, 1.1),
        body_width=rng.uniform(1.15, 1.3),
        lung_width=lung_width,
        apex=-rng.uniform(1.0, 1.08),
        dome=(dome_r, dome_l),
        angle_cp=(cp, cp + rng.uniform(0.0, 0.05)),
        heart_extent=extent,
        heart_centre=(right_border + extent, dome_l + 0.1 - _heart_half_height(extent, heart_height, tilt)),
        heart_height=heart_height,
        heart_tilt=tilt,
        knob=(rng.uniform(0.11, 0.15), rng.uniform(-0.5, -0.4), rng.uniform(0.06, 0.075)),
        mediastinum=rng.uniform(0.1, 0.13),
        rib_start=-rng.uniform(1.17, 1.25),
        rib_spacing=(rng.uniform(0.1, 0.12), rng.uniform(0.15, 0.18) * (0.9 if ap else 1.0)),
        rib_curve=rng.uniform(0.65, 0.85) * (0.8 if ap else 1.0),
        clavicle=(rng.uniform(-0.9, -0.82) - (0.1 if ap else 0.0), rng.uniform(0.15, 0.26) * (0.6 if ap else 1.0)),
        scapula=rng.uniform(0.6, 0.72) if ap else rng.uniform(0.92, 1.02),
        gastric_bubble=rng.uniform(0.06, 0.12) if rng.random() < 0.7 else 0.0,
        breast=rng.uniform(0.04, 0.08) if sex == "F" else 0.0,
        vessel_seed=int(rng.integers(2**31)),
    )


def reposition(p: Patient, rng: np.random.Generator) -> Patient:
    """The same patient positioned anew (a follow-up film): centre, size in the image and rotation."""
    return replace(
        p,
        cx=0.5 + rng.normal(0, 0.02),
        cy=0.5 + rng.normal(0, 0.025) + (0.02 if p.view == "AP" else 0.0),
        scale=float(np.clip(p.scale * rng.uniform(0.95, 1.05), 0.28, 0.35)),
        angle=float(np.deg2rad(rng.uniform(-4.0, 4.0))),
    )


def _heart_half_height(extent: float, short: float, tilt: float) -> float:
    """Vertical half-extent of the heart ellipse whose horizontal half-extent is `extent`."""
    c, s = np.cos(tilt), np.sin(tilt)
    long = np.sqrt(max(extent**2 - (short * s) ** 2, (0.8 * short * c) ** 2)) / c
    return float(np.sqrt((long * s) ** 2 + (short * c) ** 2))


def with_heart_ctr(patient: Patient, ctr: float) -> Patient:
    """The same patient with a heart of another cardiothoracic ratio (its right border stays put)."""
    right_border = patient.heart_centre[0] - patient.heart_extent
    extent = ctr * patient.lung_width
    bottom = patient.heart_centre[1] + _heart_half_height(patient.heart_extent, patient.heart_height, patient.heart_tilt)
    centre_v = bottom - _heart_half_height(extent, patient.heart_height, patient.heart_tilt)
    return replace(patient, heart_extent=extent, heart_centre=(right_border + extent, centre_v))


# ---- closed-form landmarks, valid for scalars and arrays ----------------------------------------------


def lateral_border(p: Patient, v):
    """Lateral lung border (distance from the midline) at height v: narrow at the apex, widest at the base."""
    return p.lung_width * (1.0 - 0.55 * np.exp(-(((v - p.apex) / 0.5) ** 2)))


def medial_border(p: Patient, v):
    """Mediastinal border of the lungs, wider below the aortic arch where the hila are."""
    return p.mediastinum - 0.02 + 0.06 * np.clip((v + 0.5) / 0.6, 0.0, 1.0)


def lung_top(p: Patient, a):
    """Upper border of a lung (rounded apex) as a function of the distance a from the midline."""
    return p.apex + 1.3 * (a - 0.38) ** 2


def dome_level(p: Patient, side: str, a):
    """Hemidiaphragm at distance a from the midline: highest mid-clavicular, dipping into the angle."""
    i = SIDES.index(side)
    top, cp = p.dome[i], p.angle_cp[i]
    lateral = (cp - top) / (p.lung_width - 0.42) ** 2.2
    return top + lateral * np.maximum(a - 0.42, 0.0) ** 2.2 + 0.5 * np.maximum(0.42 - a, 0.0) ** 2


def lung_distance(p: Patient, side: str, u, v):
    """Signed distance-like value, positive inside the lung field of one side (heart not removed)."""
    a = SIDE_SIGN[side] * u
    return np.minimum(
        np.minimum(a - medial_border(p, v), lateral_border(p, v) - a),
        np.minimum(0.7 * (v - lung_top(p, a)), 0.7 * (dome_level(p, side, a) - v)),
    )


def heart_field(p: Patient, u, v):
    """1 at the centre of the heart, 0 on its border, negative outside (a tilted ellipse)."""
    c, s = float(np.cos(p.heart_tilt)), float(np.sin(p.heart_tilt))
    ry = p.heart_height
    # horizontal half-extent of a tilted ellipse: sqrt(rx^2 cos^2 + ry^2 sin^2) = heart_extent
    rx = float(np.sqrt(max(p.heart_extent**2 - (ry * s) ** 2, (0.8 * ry * c) ** 2))) / c
    du, dv = u - p.heart_centre[0], v - p.heart_centre[1]
    x, y = du * c + dv * s, -du * s + dv * c
    ellipse = 1.0 - (x / rx) ** 2 - (y / ry) ** 2
    # below its widest points the heart rests on the diaphragm: straight down from each border
    drop = (rx * rx - ry * ry) * s * c / p.heart_extent  # height of the widest points below/above the centre
    rests = np.where(du > 0, dv > drop, dv > -drop)
    return np.where(rests, np.maximum(ellipse, 1.0 - (du / p.heart_extent) ** 2), ellipse)


def knob_field(p: Patient, u, v):
    """1 at the centre of the aortic knob, 0 on its border."""
    ku, kv, kr = p.knob
    return 1.0 - ((u - ku) ** 2 + (v - kv) ** 2) / kr**2


def smooth_step(x):
    """0 below 0, 1 above 1, a cubic in between (for wide fades)."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def ramp(x):
    """0 below 0, 1 above 1, linear in between (for edges about a pixel wide: cheaper than a cubic)."""
    return np.clip(x, 0.0, 1.0)


# ---- the pixel grid and the anatomy drawn on it ----------------------------------------------------------


@dataclass
class Anatomy:
    """The attenuation map of one patient on a pixel grid, with the layers findings need to edit it."""

    patient: Patient
    shape: tuple[int, int]
    px_per_unit: float  # pixels per unit horizontally
    u: np.ndarray
    v: np.ndarray
    attenuation: np.ndarray
    lung_d: dict[str, np.ndarray]  # signed distance to each lung field's border (positive inside)
    lung_mask: dict[str, np.ndarray]  # aerated lung per side, 0..1 (heart and aortic knob removed)
    lung_air: np.ndarray  # air removed by the lungs, before vessels
    vessels: np.ndarray  # vessel attenuation (already in `attenuation`)
    heart: np.ndarray  # heart mask, 0..1
    air_amount: float

    def to_pixels(self, u, v):
        """Patient frame -> pixel coordinates (x, y), inverse of the grid mapping."""
        p = self.patient
        h, w = self.shape
        c, s = np.cos(p.angle), np.sin(p.angle)
        k = self.px_per_unit
        x = p.cx * w + k * (u * c - v * p.stretch * s)
        y = p.cy * h + k * (u * s + v * p.stretch * c)
        return x, y

    def window(self, u0: float, u1: float, v0: float, v1: float, pad: int = 2) -> tuple[slice, slice]:
        """Pixel slices covering a box of the patient frame (rotation included)."""
        return _window(self.patient, self.shape, self.px_per_unit, (u0, u1), (v0, v1), pad)

    def units(self, pixels: float) -> float:
        """A length in pixels expressed in patient units."""
        return pixels / self.px_per_unit


def upsample(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float image to (rows, cols) (PIL's 'F' mode: fast and deterministic)."""
    if img.shape == tuple(shape):
        return img
    out = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32)).resize((shape[1], shape[0]), Image.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def patient_grid(p: Patient, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """(u, v) of every pixel centre, float32, and the number of pixels per unit."""
    h, w = shape
    k = p.scale * w
    c, s = np.cos(p.angle), np.sin(p.angle)
    dx = ((np.arange(w, dtype=np.float32) + 0.5) - p.cx * w)[None, :] / k
    dy = ((np.arange(h, dtype=np.float32) + 0.5) - p.cy * h)[:, None] / k
    u = dx * np.float32(c) + dy * np.float32(s)
    v = (-dx * np.float32(s) + dy * np.float32(c)) / np.float32(p.stretch)
    return u.astype(np.float32), v.astype(np.float32), k


def _bone_profile_table(n: int = 512) -> np.ndarray:
    x = (np.arange(n, dtype=np.float64) + 0.5) / n
    marrow = 0.55 * np.sqrt(np.sin(np.pi * x))
    cortex = 0.45 * (np.exp(-((x / 0.13) ** 2)) + np.exp(-(((1.0 - x) / 0.13) ** 2)))
    return np.concatenate([[0.0], marrow + cortex, [0.0]]).astype(np.float32)


_BONE = _bone_profile_table()


def _profile(x):
    """Cross-section of a tubular bone over x in [0, 1]: marrow plus bright cortical edges, 0 outside.

    Looked up in a table: it is evaluated for every pixel of every rib.
    """
    n = _BONE.size - 2
    idx = np.clip(x * n + 1.0, 0.0, n + 1.0).astype(np.int32)
    return _BONE[idx]


def _rib_index(q, start: float, spacing: tuple[float, float], n: int):
    """Continuous rib number at rib coordinate q (-1 outside the cage); spacing grows linearly downwards.

    Rib i starts at start + s0*i + (s1 - s0) / (2 (n - 1)) * i (i - 1): solved for i in closed form
    (cheaper than a table look-up over every pixel).
    """
    s0, s1 = spacing
    c = (s1 - s0) / (2.0 * (n - 1))
    b = s0 - c
    x = q - start
    if abs(c) < 1e-9:
        i = x / b
    else:
        i = (-b + np.sqrt(np.maximum(b * b + 4.0 * c * x, 0.0))) / (2.0 * c)
    return np.where((x >= 0) & (i < n), i, -1.0)


def _ribs(p: Patient, u, v, edge: float, side: str):
    """Posterior ribs (curving down laterally) and fainter anterior ribs (sloping down medially)."""
    n = 12
    a = SIDE_SIGN[side] * u
    lat = lateral_border(p, v) + 0.09
    extent = ramp((a - 0.06) / edge) * ramp((lat - a) / (2 * edge))
    k = _rib_index(v + 0.35 * a - p.rib_curve * a * a, p.rib_start, p.rib_spacing, n)
    thick = 0.4 + 0.12 * np.clip(a, 0.0, 1.0)  # ribs widen laterally
    posterior = np.where(k >= 0, _profile((k - np.floor(k)) / thick), 0.0)
    ka = _rib_index(v + 0.45 * a, p.rib_start + 0.25, p.rib_spacing, n)
    anterior = np.where((ka >= 0) & (v < 0.35), _profile((ka - np.floor(ka)) / 0.3), 0.0) * ramp((a - 0.28) / 0.1)
    return extent * (posterior + 0.35 * anterior)


def _clavicle(p: Patient, u, v, side: str):
    level, slope = p.clavicle
    a = SIDE_SIGN[side] * u
    centre = level - slope * a + 0.08 * (a - 0.5) ** 2
    thick = 0.095 - 0.03 * np.clip(a, 0.0, 1.0)
    x = (v - centre) / thick + 0.5
    return _profile(x) * ramp((a - 0.05) / 0.04) * ramp((1.08 - a) / 0.08)


def _scapula(p: Patient, u, v, side: str):
    a = SIDE_SIGN[side] * u
    medial = p.scapula + 0.18 * (v + 1.1)
    inside = ramp((a - medial) / 0.03) * ramp((-0.3 - v) / 0.12) * ramp((v + 1.2) / 0.05)
    return inside * ramp((1.2 - a) / 0.05)


def _spine(p: Patient, u, v):
    width = 0.075
    body = np.sqrt(np.clip(1.0 - (u / width) ** 2, 0.0, 1.0))
    discs = 1.0 - 0.3 * np.exp(-(((v / 0.125 - np.round(v / 0.125)) / 0.12) ** 2))
    pedicles = sum(np.exp(-(((u - sgn * 0.05) / 0.016) ** 2 + ((v / 0.125 - np.round(v / 0.125) - 0.35) / 0.18) ** 2))
                   for sgn in (-1.0, 1.0))
    return body * discs + 0.35 * pedicles


def _scapulae(p: Patient, u, v):
    out = np.zeros_like(u)
    for side in SIDES:
        a = SIDE_SIGN[side] * u
        medial = p.scapula + 0.18 * (v + 1.1)
        inside = ramp((a - medial) / 0.03) * ramp((-0.3 - v) / 0.12) * ramp((v + 1.2) / 0.05)
        out += inside * ramp((1.2 - a) / 0.05)
    return out


def _body(p: Patient, u, v):
    """Soft-tissue depth: torso, neck, shoulders and arms (0 in the air around the patient)."""
    au = np.abs(u)
    width = p.body_width * (1.0 - 0.12 * ((v - 0.45) / 1.5) ** 2)
    torso = np.sqrt(np.clip(1.0 - (u / width) ** 2, 0.0, 1.0))
    shoulder = -1.42 + 0.25 * np.sqrt(np.clip((au - 0.3) / 1.1, 0.0, 1.0))
    below_shoulder = ramp((v - shoulder) / 0.05)
    neck = np.sqrt(np.clip(1.0 - (u / 0.32) ** 2, 0.0, 1.0)) * 0.8
    arm_centre = p.body_width + 0.3 + 0.08 * np.clip(v + 1.0, 0.0, None)  # arms held away from the chest
    arm = 0.6 * np.sqrt(np.clip(1.0 - ((au - arm_centre) / 0.17) ** 2, 0.0, 1.0)) * ramp((v - shoulder) / 0.05)
    arm = arm * ramp((-0.2 - v) / 0.5)
    chest = np.maximum(torso * below_shoulder, neck)
    return np.maximum(chest, arm)


def _vessels(p: Patient, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Branching pulmonary vessels, radiating from each hilum and tapering towards the periphery.

    Each generation of branches is the zero set of a random field on a polar grid around the hilum,
    smooth along the radius and rough across it: its zero lines run outwards, meander, and meet or split
    the way vessel trees do. A pixel's distance to the nearest line is |n| / |dn/dtheta| times its radius.
    Drawn on a grid of half the resolution, inside each lung's bounding window, and upsampled by the caller.
    """
    u_all, v_all, k = patient_grid(p, shape)
    out = np.zeros(shape, dtype=np.float32)
    min_width = 0.8 / k  # keep the thinnest branches about a pixel wide
    # (nodes around the circle, nodes along the radius, first radius, last radius, width at the hilum)
    generations = [(28, 5, 0.0, 0.55, 0.02), (64, 8, 0.15, 0.8, 0.011), (130, 11, 0.3, 0.95, 0.006)]
    bend_all = 0.12 * smooth_field(rng, shape, (8, 8))  # vessels curve, they are not spokes
    for side in SIDES:
        s = SIDE_SIGN[side]
        rows, cols = _window(p, shape, k, (min(0.0, s * 1.05), max(0.0, s * 1.05)),
                             (p.apex - 0.05, max(p.angle_cp) + 0.05))
        u, v = u_all[rows, cols], v_all[rows, cols]
        d = lung_distance(p, side, u, v)
        mask = ramp(d / (3.0 / k) + 0.5)
        du, dv = s * (u - s * 0.2), v + 0.2
        r = np.sqrt(du * du + (1.15 * dv) ** 2)
        theta = np.arctan2(dv, du) + bend_all[rows, cols]
        layer = np.zeros_like(u)
        for n_theta, n_r, r0, r1, width in generations:
            grid = rng.standard_normal((n_r + 2, n_theta)).astype(np.float32)
            t = (theta + np.float32(np.pi)) * np.float32(n_theta / (2 * np.pi))
            t0 = t.astype(np.int32)
            ft = t - t0
            t0 %= n_theta
            t1 = (t0 + 1) % n_theta
            rr = np.minimum(r * np.float32(n_r / 1.4), n_r)
            r0i = rr.astype(np.int32)
            fr = rr - r0i
            flat = grid.ravel()
            base = r0i * n_theta
            g00, g01 = flat[base + t0], flat[base + t1]
            g10, g11 = flat[base + n_theta + t0], flat[base + n_theta + t1]
            lo = g00 + (g01 - g00) * ft
            n = lo + (g10 + (g11 - g10) * ft - lo) * fr
            slope = (g01 - g00) + ((g11 - g10) - (g01 - g00)) * fr
            # distance to the zero line, in units: |n| / |dn/dtheta| * r
            dist = np.abs(n) / (np.abs(slope) * np.float32(n_theta / (2 * np.pi)) + 1e-3) * r
            taper = np.clip(1.0 - r / (r1 + 0.2), 0.0, 1.0) ** 1.3
            w = np.maximum(width * (0.3 + taper), min_width)
            strength = smooth_step((r - r0) / 0.12) * taper
            np.maximum(layer, strength * np.exp(-((dist / w) ** 2)), out=layer)
        # hilar pulmonary arteries
        layer += 0.6 * np.exp(-((du - 0.02) ** 2 + ((dv - 0.05) / 1.6) ** 2) / 0.006)
        out[rows, cols] += layer * mask
    return out


def _window(p: Patient, shape: tuple[int, int], k: float, us: tuple[float, float], vs: tuple[float, float],
            pad: int = 2) -> tuple[slice, slice]:
    """Pixel slices covering a box of the patient frame (rotation included)."""
    h, w = shape
    c, s = np.cos(p.angle), np.sin(p.angle)
    uu = np.array([us[0], us[1], us[0], us[1]])
    vv = np.array([vs[0], vs[0], vs[1], vs[1]])
    x = p.cx * w + k * (uu * c - vv * p.stretch * s)
    y = p.cy * h + k * (uu * s + vv * p.stretch * c)
    x0, x1 = int(np.clip(np.floor(x.min()) - pad, 0, w)), int(np.clip(np.ceil(x.max()) + pad + 1, 0, w))
    y0, y1 = int(np.clip(np.floor(y.min()) - pad, 0, h)), int(np.clip(np.ceil(y.max()) + pad + 1, 0, h))
    return slice(y0, max(y1, y0)), slice(x0, max(x1, x0))


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Zero-mean, unit-variance-at-nodes random field over `cells` (rows, columns) cells, bilinear between."""
    h, w = shape
    nodes = rng.standard_normal((cells[0] + 2, cells[1] + 2)).astype(np.float32)
    ys = np.linspace(0.5, cells[0] + 0.5, h, dtype=np.float32)
    xs = np.linspace(0.5, cells[1] + 0.5, w, dtype=np.float32)
    y0, x0 = ys.astype(np.int32), xs.astype(np.int32)
    fy, fx = (ys - y0.astype(np.float32))[:, None], (xs - x0.astype(np.float32))[None, :]
    n00 = nodes[y0][:, x0]
    n01 = nodes[y0][:, x0 + 1]
    n10 = nodes[y0 + 1][:, x0]
    n11 = nodes[y0 + 1][:, x0 + 1]
    return (n00 * (1 - fx) + n01 * fx) * (1 - fy) + (n10 * (1 - fx) + n11 * fx) * fy


def build_anatomy(p: Patient, shape: tuple[int, int]) -> Anatomy:
    """Draw the patient on a grid of `shape` pixels: soft tissue, lungs, vessels, heart, bones.

    Structures of one side are evaluated inside that side's window only (half the work).
    """
    u, v, k = patient_grid(p, shape)
    edge = max(1.5 / k, 0.004)  # edge softness: about a pixel, so edges do not alias
    rng = np.random.default_rng(p.vessel_seed)
    low, high = p.apex - 0.05, max(p.angle_cp) + 0.05
    hw = _window(p, shape, k, (p.heart_centre[0] - 0.9, p.heart_centre[0] + 0.9), (low - 0.4, high + 0.5))
    heart = np.zeros_like(u)
    heart[hw] = ramp(heart_field(p, u[hw], v[hw]) / (6 * edge) + 0.5)
    kw = _window(p, shape, k, (p.knob[0] - p.knob[2], p.knob[0] + p.knob[2]),
                 (p.knob[1] - p.knob[2], p.knob[1] + p.knob[2]))
    knob = np.zeros_like(u)
    knob[kw] = ramp(knob_field(p, u[kw], v[kw]) / (6 * edge) + 0.5)
    lung_d = {side: np.full(shape, -1.0, dtype=np.float32) for side in SIDES}
    lung_mask = {side: np.zeros(shape, dtype=np.float32) for side in SIDES}
    air = np.zeros_like(u)
    bones = np.zeros_like(u)
    spw = _window(p, shape, k, (-0.12, 0.12), (-2.0, 2.2))
    bones[spw] = 0.16 * _spine(p, u[spw], v[spw])
    for side in SIDES:
        s = SIDE_SIGN[side]
        lw = _window(p, shape, k, (min(0.0, s * 1.05), max(0.0, s * 1.05)), (low, high))
        uu, vv = u[lw], v[lw]
        d = lung_distance(p, side, uu, vv)
        lung_d[side][lw] = d
        m = ramp(d / (2 * edge) + 0.5) * (1.0 - 0.88 * heart[lw]) * (1.0 - knob[lw])
        lung_mask[side][lw] = m
        # thicker lung (more air) away from the borders; retrocardiac lung keeps a little air
        air[lw] += m * (0.6 + 0.4 * np.sqrt(np.clip(d / 0.25, 0.0, 1.0)))
        bw = _window(p, shape, k, (min(0.0, s * 1.25), max(0.0, s * 1.25)), (-1.45, high + 0.45))
        bones[bw] += 0.18 * _ribs(p, u[bw], v[bw], edge, side)
        cw = _window(p, shape, k, (min(0.0, s * 1.1), max(0.0, s * 1.1)), (p.clavicle[0] - 0.35, p.clavicle[0] + 0.12))
        bones[cw] += 0.3 * _clavicle(p, u[cw], v[cw], side)
        sw = _window(p, shape, k, (s * (p.scapula - 0.05), s * 1.25), (-1.25, -0.25))
        bones[sw] += 0.1 * _scapula(p, u[sw], v[sw], side)
    body = _body(p, u, v)
    air_amount = 0.72
    lung_air = air_amount * air * (1.0 + 0.04 * smooth_field(rng, shape, (10, 10)))
    # vessels are drawn at half resolution (the costliest layer), then upsampled
    coarse = (max(shape[0] // 2, 8), max(shape[1] // 2, 8))
    vessels = 0.16 * upsample(_vessels(p, coarse, rng), shape) * (lung_mask["R"] + lung_mask["L"])
    tw = _window(p, shape, k, (-0.1, 0.1), (-1.7, -0.45))
    trachea = np.zeros_like(u)
    ut, vt = u[tw], v[tw]
    trachea[tw] = 0.22 * ramp((0.035 - np.abs(ut - 0.01 * (vt + 0.5))) / edge) * ramp((-0.5 - vt) / 0.05) * ramp(
        (vt + 1.6) / 0.1)
    # the heart's own density fades below the diaphragm, where the abdomen is as dense
    below = ramp((np.where(u < 0, np.float32(p.dome[0]), np.float32(p.dome[1])) + 0.12 - v) / 0.1)
    att = p.body * body - lung_air + vessels + bones * np.maximum(body, 0.3) - trachea + 0.05 * heart * below
    if p.gastric_bubble:
        gu = 0.45
        gv = float(dome_level(p, "L", gu)) + 0.05 + p.gastric_bubble * 0.6
        gw = _window(p, shape, k, (gu - 2 * p.gastric_bubble, gu + 2 * p.gastric_bubble),
                     (gv - 1.2 * p.gastric_bubble, gv + 1.2 * p.gastric_bubble))
        ug, vg = u[gw], v[gw]
        bubble = ((ug - gu) / (1.5 * p.gastric_bubble)) ** 2 + ((vg - gv) / p.gastric_bubble) ** 2
        att[gw] -= 0.15 * smooth_step((1.0 - bubble) / 0.3) * ramp((vg - gv + 0.2 * p.gastric_bubble) / edge)
    if p.breast:
        for side in SIDES:
            s = SIDE_SIGN[side]
            bw = _window(p, shape, k, (s * 0.1, s * 1.14), (0.22, 1.02))
            a = s * u[bw]
            e = ((a - 0.62) / 0.5) ** 2 + ((v[bw] - 0.62) / 0.38) ** 2
            att[bw] += p.breast * smooth_step((1.0 - e) / 0.25)
    return Anatomy(p, shape, k, u, v, att.astype(np.float32), lung_d, lung_mask, lung_air.astype(np.float32),
                   vessels.astype(np.float32), heart.astype(np.float32), air_amount)
