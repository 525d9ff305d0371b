"""A contact sheet: a grid of generated images with their boxes and class names, for a person to look at."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from btcxr.data.synthetic.render import Box
from btcxr.engine.io import atomic_output

# one colour per VinDr class id (tab20-like), so the same finding looks the same on every sheet
_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120), (152, 223, 138),
            (255, 152, 150), (197, 176, 213), (200, 200, 200)]


@dataclass
class Thumbnail:
    """A small copy of one generated image with its boxes, scaled to the thumbnail."""

    image: np.ndarray  # uint8, grayscale
    title: str
    boxes: list[tuple[int, str, Box]]  # class id, label, box in thumbnail pixels


def thumbnail(image: np.ndarray, title: str, boxes: list[tuple[int, str, Box]], size: int = 320) -> Thumbnail:
    """Shrink a float [0, 1] image to fit `size` pixels and scale its boxes with it."""
    h, w = image.shape
    f = min(size / h, size / w, 1.0)
    th, tw = max(int(round(h * f)), 1), max(int(round(w * f)), 1)
    small = Image.fromarray(np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)).resize((tw, th), Image.BILINEAR)
    scaled = [(c, label, (b[0] * tw / w, b[1] * th / h, b[2] * tw / w, b[3] * th / h)) for c, label, b in boxes]
    return Thumbnail(np.asarray(small), title, scaled)


def write_contact_sheet(path: Path, thumbs: list[Thumbnail], columns: int = 4, cell: int = 320) -> Path:
    """Lay the thumbnails out in a grid, draw each box in its class colour with the class name."""
    rows = max((len(thumbs) + columns - 1) // columns, 1)
    sheet = Image.new("RGB", (columns * cell, rows * (cell + 18)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, t in enumerate(thumbs):
        ox, oy = (i % columns) * cell, (i // columns) * (cell + 18)
        h, w = t.image.shape
        px, py = ox + (cell - w) // 2, oy + 18 + (cell - h) // 2
        sheet.paste(Image.fromarray(t.image).convert("RGB"), (px, py))
        draw.text((ox + 3, oy + 3), t.title[:48], fill=(255, 255, 255), font=font)
        for class_id, label, (x0, y0, x1, y1) in t.boxes:
            colour = _COLOURS[class_id % len(_COLOURS)]
            draw.rectangle((px + x0, py + y0, px + x1 - 1, py + y1 - 1), outline=colour, width=2)
            draw.text((px + x0 + 2, py + max(y0 - 11, 0)), label, fill=colour, font=font)
    with atomic_output(path) as handle:
        sheet.save(handle, format="PNG")
    return path
