"""Natural-image-like pictures for an offline stand-in of ImageNet pre-training (`btcxr synth --layout natural`).

A dead-leaves model with textures (Baradad et al., NeurIPS 2021, "Learning to See by Looking at Noise":
such images pre-train useful generic features): opaque shapes (discs, ellipses, rectangles) of power-law
distributed size, dropped one over the other, so the picture has occlusion, edges at every scale and
roughly the 1/f^2 power spectrum of natural photographs; each leaf has its own colour and a texture (flat,
a sinusoidal grating, or smooth noise), the background a colour gradient. Nothing like a radiograph:
colour, hard edges, no anatomy. Written by hand because no maintained package draws them; every image is a
pure function of (seed, index), so a layout is the same whatever the number of workers.

Layout written: ROOT/images/natural_<index>.png (RGB) and ROOT/natural.json (the settings), a folder that
`btcxr prepare folder` turns into a cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from btcxr.data.synthetic.parallel import run_jobs
from btcxr.engine.io import ensure_dir, write_bytes, write_json

SHAPES = ("disc", "ellipse", "rectangle")
MAX_LEAVES = 4000
# Leaf radii follow p(r) ~ r^-3 between these fractions of the image side (the scale-invariant choice).
R_MIN, R_MAX = 0.02, 0.5


@dataclass(frozen=True)
class NaturalJob:
    index: int
    seed: int
    size: int
    path: str


def render_natural(seed: int, index: int, size: int) -> np.ndarray:
    """One dead-leaves picture, (size, size, 3) uint8."""
    rng = np.random.default_rng([seed, 0x4E415455, index])  # "NATU": a stream apart from the phantoms'
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    image = top * (1 - t[..., None]) + bottom * t[..., None]
    covered = np.zeros((size, size), dtype=bool)
    for k in range(MAX_LEAVES):  # until (almost) every pixel belongs to a leaf
        if k % 64 == 0 and covered.mean() > 0.995:
            break
        _drop_leaf(image, covered, rng, xx, yy, size)
    noise = rng.normal(0, 2.0, image.shape)  # a little sensor noise
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _drop_leaf(image: np.ndarray, covered: np.ndarray, rng: np.random.Generator, xx: np.ndarray,
               yy: np.ndarray, size: int) -> None:
    """Paint one leaf *behind* everything painted so far (front-to-back drawing: only uncovered pixels)."""
    u = rng.random()
    radius = 1.0 / np.sqrt((1 - u) / R_MIN**2 + u / R_MAX**2)  # inverse CDF of r^-3 on [R_MIN, R_MAX]
    cx, cy = rng.uniform(-0.1, 1.1, 2)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    aspect, theta = rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
    half = radius * (1.5 if shape != "disc" else 1.0)
    x0, x1 = max(int((cx - half) * size), 0), min(int((cx + half) * size) + 1, size)
    y0, y1 = max(int((cy - half) * size), 0), min(int((cy + half) * size) + 1, size)
    if x0 >= x1 or y0 >= y1:
        return
    dx, dy = xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy
    c, s = np.cos(theta), np.sin(theta)
    a, b = dx * c + dy * s, -dx * s + dy * c
    if shape == "disc":
        inside = dx**2 + dy**2 <= radius**2
    elif shape == "ellipse":
        inside = (a / radius) ** 2 + (b / (radius * aspect)) ** 2 <= 1
    else:
        inside = (np.abs(a) <= radius) & (np.abs(b) <= radius * aspect)
    paint = inside & ~covered[y0:y1, x0:x1]
    if not paint.any():
        return
    colour = rng.uniform(0, 255, 3)
    texture = int(rng.integers(3))
    if texture == 0:  # flat
        values = np.broadcast_to(colour, (*paint.shape, 3))
    elif texture == 1:  # a grating of random frequency and orientation, in a second colour
        other = rng.uniform(0, 255, 3)
        freq, phase = rng.uniform(2, 40), rng.uniform(0, 2 * np.pi)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * freq * a + phase)
        values = colour * wave[..., None] + other * (1 - wave[..., None])
    else:  # smooth noise: a coarse random field, upsampled
        coarse = rng.normal(0, 30, (4, 4, 3))
        up = np.stack([np.asarray(Image.fromarray(coarse[..., k].astype(np.float32), mode="F").resize(
            (paint.shape[1], paint.shape[0]), Image.BILINEAR)) for k in range(3)], axis=-1)
        values = colour + up
    region = image[y0:y1, x0:x1]
    region[paint] = values[paint]
    covered[y0:y1, x0:x1] |= paint


def _write_one(job: NaturalJob) -> str:
    buffer = BytesIO()
    Image.fromarray(render_natural(job.seed, job.index, job.size), mode="RGB").save(buffer, format="PNG",
                                                                                   compress_level=1)
    write_bytes(job.path, buffer.getvalue(), durable=False)
    return job.path


def generate_natural(root: Path, n: int, size: int, seed: int, workers: int | None = None) -> dict:
    """Write `n` dead-leaves pictures of size x size under root/images; returns a summary."""
    images = ensure_dir(Path(root) / "images", "output folder")
    width = max(6, len(str(n - 1)))
    jobs = [NaturalJob(i, seed, size, str(images / f"natural_{i:0{width}d}.png")) for i in range(n)]
    run_jobs(_write_one, jobs, workers, "synth natural")
    settings = {"layout": "natural", "model": "dead leaves with textures (Baradad et al. 2021)", "n": n,
                "size": size, "seed": seed, "shapes": list(SHAPES), "radius": [R_MIN, R_MAX]}
    write_json(Path(root) / "natural.json", settings)
    return {"root": str(root), "images": n, "files": {"natural.json": str(Path(root) / "natural.json")}}
