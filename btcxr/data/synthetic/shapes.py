"""Procedural shapes of K classes for the self-supervision sanity benchmark (`benchmarks/ssl_sanity.py`).

Each picture holds one shape (disc, square, triangle, cross, ring, ...) at a random position, scale and
rotation, brighter than its surroundings by a random contrast, on a background of a random gradient, noise and a
few small blobs. The class is what survives every pre-training view (crop, flip, rotation,
brightness, contrast, gamma, blur, noise), so a method that learns invariance to the views must learn it;
the nuisance variables (position, size, polarity, background) are what random features see. Written by hand:
no maintained package draws such a set, and it must be a pure function of (seed, index) to be the same on
every machine.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("disc", "square", "triangle", "cross", "ring", "bar")
SUPERSAMPLE = 2  # anti-aliased edges: drawn at twice the size, averaged down


def shape_label(index: int, classes: int) -> int:
    """Class of picture `index`: round robin, so every class has the same number of pictures."""
    return index % classes


def render_shape(seed: int, index: int, size: int, classes: int = len(SHAPES)) -> np.ndarray:
    """Picture `index` of the set `seed`: (size, size) uint8, its class `shape_label(index, classes)`."""
    if not 2 <= classes <= len(SHAPES):
        raise ValueError(f"classes must be between 2 and {len(SHAPES)}, got {classes}")
    rng = np.random.default_rng([seed, 0x53484150, index])  # "SHAP": a stream of its own
    n = size * SUPERSAMPLE
    yy, xx = (np.mgrid[0:n, 0:n].astype(np.float64) + 0.5) / n
    image = _background(rng, xx, yy)
    for _ in range(int(rng.integers(0, 3))):  # small blobs: clutter that every class shares
        cx, cy, r = rng.uniform(0.05, 0.95), rng.uniform(0.05, 0.95), rng.uniform(0.015, 0.04)
        image += rng.uniform(-0.25, 0.25) * (((xx - cx) ** 2 + (yy - cy) ** 2) < r * r)
    radius = rng.uniform(0.18, 0.35)
    cx, cy = rng.uniform(radius, 1 - radius), rng.uniform(radius, 1 - radius)
    angle = rng.uniform(0, 2 * np.pi)
    u = (np.cos(angle) * (xx - cx) + np.sin(angle) * (yy - cy)) / radius
    v = (-np.sin(angle) * (xx - cx) + np.cos(angle) * (yy - cy)) / radius
    inside = _inside(SHAPES[shape_label(index, classes)], u, v)
    # One polarity: the views change brightness and contrast but never invert them, so a method that
    # learns what the views leave unchanged cannot learn to ignore polarity (measured: docs/pretrain.md).
    contrast = rng.uniform(0.25, 0.5)
    image += contrast * inside
    image += rng.normal(0, 0.02, image.shape)
    image = image.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))
    return np.clip(image * 255, 0, 255).round().astype(np.uint8)


def _background(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """A gradient at a random angle. No texture: a background pattern that both views of a picture share
    (waves of a random frequency and angle) identifies the picture better than its shape does, and a
    method that matches views learns that shortcut instead (measured: see docs/pretrain.md)."""
    level, slope, angle = rng.uniform(0.3, 0.7), rng.uniform(0, 0.3), rng.uniform(0, 2 * np.pi)
    return level + slope * (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5))


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mask of the shape in its own frame (unit radius, centred, rotated)."""
    r = np.hypot(u, v)
    if shape == "disc":
        return r <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.75
    if shape == "triangle":  # equilateral, circumradius 1
        return (v >= -0.5) & (np.sqrt(3) * u + v <= 1) & (-np.sqrt(3) * u + v <= 1)
    if shape == "cross":
        return ((np.abs(u) <= 0.28) & (np.abs(v) <= 1)) | ((np.abs(v) <= 0.28) & (np.abs(u) <= 1))
    if shape == "ring":
        return (r <= 1.0) & (r >= 0.6)
    if shape == "bar":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.3)
    raise ValueError(f"unknown shape {shape!r}")
