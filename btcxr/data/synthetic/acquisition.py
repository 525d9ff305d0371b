"""From attenuation to a radiograph: exposure, detector response, blur, noise, collimation, markers.

Only the global settings of an exposure change the image here, never anything computed from the image
itself (no percentile windowing), so a finding changes the pixels where it is drawn and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

# 5 x 7 glyphs of the burned-in side markers (drawn by hand so no font file is needed).
_GLYPHS = {
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
}


@dataclass(frozen=True)
class Exposure:
    """Acquisition settings of one radiograph, drawn by :func:`draw_exposure`."""

    k: float  # effective attenuation coefficient: under/over exposure
    gamma: float  # detector / processing curve
    noise: float  # quantum noise at a dark pixel (fraction of full scale)
    blur: float  # focal spot + detector blur, in pixels of a 512-px image
    collimation: tuple[float, float, float, float]  # top, bottom, left, right border widths (fractions)
    collimation_level: float  # brightness of the shuttered border
    marker: tuple[str, float, float, float] | None  # letter, x, y (fractions), size (fraction of width)


def draw_exposure(rng: np.random.Generator) -> Exposure:
    """Random exposure: dose, processing gamma, noise, blur, shutters and an L/R marker."""
    borders = tuple(float(rng.uniform(0.01, 0.07)) if rng.random() < 0.35 else 0.0 for _ in range(4))
    marker = None
    if rng.random() < 0.8:
        letter = "L" if rng.random() < 0.7 else "R"
        x = rng.uniform(0.04, 0.16) if rng.random() < 0.5 else rng.uniform(0.8, 0.92)
        marker = (letter, float(x), float(rng.uniform(0.04, 0.2)), float(rng.uniform(0.03, 0.05)))
    return Exposure(
        k=float(rng.uniform(1.0, 1.5)),
        gamma=float(rng.uniform(1.1, 1.5)),
        noise=float(rng.uniform(0.006, 0.025)),
        blur=float(rng.uniform(0.5, 1.4)),
        collimation=borders,  # type: ignore[arg-type]
        collimation_level=float(rng.uniform(0.8, 1.0)),
        marker=marker,
    )


def detector_response(attenuation: np.ndarray, e: Exposure) -> np.ndarray:
    """Transmitted dose -> display value in [0, 1], bright where attenuation is high (MONOCHROME2)."""
    ref = 1.0 - float(np.exp(-e.k * 1.6))  # a Python float keeps the arrays float32
    img = (1.0 - np.exp(-e.k * np.maximum(attenuation, 0.0))) / ref
    return np.clip(img, 0.0, 1.0) ** e.gamma


def _resize(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float image (PIL's 'F' mode: fast and deterministic)."""
    if img.shape == shape:
        return img
    out = Image.fromarray(img.astype(np.float32)).resize((shape[1], shape[0]), Image.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def expose(attenuation: np.ndarray, e: Exposure, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Radiograph of `shape` pixels, float32 in [0, 1], from an attenuation map of any resolution.

    Smooth parts are computed at the attenuation map's resolution and upsampled; the noise is drawn at the
    output resolution so it keeps its grain.
    """
    h, w = shape
    img = detector_response(attenuation, e)
    sigma = e.blur * attenuation.shape[1] / 512.0
    if sigma > 0.3:
        img = ndimage.gaussian_filter(img, sigma, truncate=3.0)
    img = _resize(img.astype(np.float32), shape)
    noise = rng.standard_normal(shape, dtype=np.float32)
    # quantum noise: dark (high-dose) regions are noisier; grain scales like the pixel pitch
    grain = e.noise * float(np.sqrt(512.0 / max(w, 64)))
    img = img + (grain - 0.65 * grain * img) * noise
    top, bottom, left, right = e.collimation
    level = e.collimation_level
    for frac, sl in (
        (top, (slice(0, int(top * h)), slice(None))),
        (bottom, (slice(h - int(bottom * h), h), slice(None))),
        (left, (slice(None), slice(0, int(left * w)))),
        (right, (slice(None), slice(w - int(right * w), w))),
    ):
        if frac > 0:
            img[sl] = level + 0.3 * grain * noise[sl]
    if e.marker is not None:
        _burn_marker(img, e.marker)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _burn_marker(img: np.ndarray, marker: tuple[str, float, float, float]) -> None:
    """A lead side marker: a bright letter on a slightly darker square, as burned into many films."""
    letter, fx, fy, fsize = marker
    h, w = img.shape
    cell = max(int(round(fsize * w / 7)), 1)
    glyph = np.array([[c == "1" for c in row] for row in _GLYPHS[letter]], dtype=np.float32)
    big = np.kron(glyph, np.ones((cell, cell), dtype=np.float32))
    gh, gw = big.shape
    y0, x0 = int(fy * h), int(fx * w)
    y1, x1 = min(y0 + gh + 2 * cell, h), min(x0 + gw + 2 * cell, w)
    if y1 - y0 < 3 * cell or x1 - x0 < 3 * cell:
        return
    patch = img[y0:y1, x0:x1]
    patch[...] = 0.15 + 0.1 * patch
    g = big[: y1 - y0 - cell, : x1 - x0 - cell]
    sub = patch[cell : cell + g.shape[0], cell : cell + g.shape[1]]
    sub[...] = np.where(g > 0, 0.97, sub)
