"""Pictures of the heatmaps: one PNG per detected box, and a grid per image comparing models (columns).

The grid is the paper's figure: for each finding (a row) the radiograph with the finding's box, then one
column per model with the heatmap of that model's detection of the finding. Rows are the ground-truth boxes
when they are known, else the findings any model detected (same class and IoU > 0.5 count as one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib import patches
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend
from torchvision.ops import box_iou

from btcxr.data.classes import VINDR_CLASSES
from btcxr.engine.io import save_figure
from btcxr.explain.base import Explanation

HEAT_CMAP = "jet"
HEAT_ALPHA = 0.45
DET_COLOR = "#ffffff"
GT_COLOR = "#39ff14"


@dataclass(frozen=True)
class Finding:
    """A row of the grid: a box (ground truth or detected) and its class."""

    box: np.ndarray
    class_id: int
    ground_truth: bool


def heatmap_png(heatmap: np.ndarray) -> bytes:
    """One heatmap in [0, 1] as an RGB PNG in HEAT_CMAP, at its own resolution: the overlay the case browser
    (btcxr browse) blends over the radiograph with an opacity slider (a browser cannot recolour pixels of
    a page opened from file://, so the colours are made here)."""
    import io

    from matplotlib import colormaps
    from PIL import Image

    rgb = colormaps[HEAT_CMAP](np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, 1.0))[..., :3]
    buffer = io.BytesIO()
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _draw_box(ax, box: Sequence[float], color: str, dashed: bool = False, text: str | None = None,
              below: bool = False) -> None:
    """A box outline; its caption goes above the top edge (detections) or under the bottom one (ground
    truth, so that the two captions of a matched pair do not overlap), inside the box at the image's edge."""
    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=1.6,
                                   linestyle="--" if dashed else "-"))
    if text:
        height = abs(ax.get_ylim()[0] - ax.get_ylim()[1])
        margin = 0.07 * height  # about one caption line
        if below:
            y, va = (y1 + 2, "top") if y1 + margin < height else (y1 - 2, "bottom")
        else:
            y, va = (y0 - 2, "bottom") if y0 > margin else (y0 + 2, "top")
        ax.text(max(x0, 0.0), y, text, color="black", fontsize=7, va=va, clip_on=True,
                bbox={"facecolor": color, "alpha": 0.85, "pad": 1.2, "edgecolor": "none"})


def _colorbar(fig, axes) -> None:
    """The heatmap scale, opaque (the overlay's own colours are blended with the radiograph)."""
    fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), HEAT_CMAP), ax=axes, fraction=0.046, pad=0.02,
                 label="heat (normalised)")


def _show(ax, image: np.ndarray, heatmap: np.ndarray | None = None) -> None:
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="bilinear")
    if heatmap is not None:
        ax.imshow(heatmap, cmap=HEAT_CMAP, vmin=0.0, vmax=1.0, alpha=HEAT_ALPHA, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])


def _panel_size(image: np.ndarray, height: float = 4.2) -> tuple[float, float]:
    h, w = image.shape[:2]
    return height * w / h, height


def box_figure(image: np.ndarray, heatmap: np.ndarray, box: Sequence[float], class_name: str, score: float,
               path: str | Path, *, model_label: str = "", method: str = "ablation", layer: str = "layer3",
               gt_boxes: Sequence[Sequence[float]] = (), gt_names: Sequence[str] = ()) -> Path:
    """Write one box's picture: the radiograph with the box (and ground truth, dashed green) next to the
    heatmap over the radiograph."""
    panel_w, panel_h = _panel_size(image)
    fig = Figure(figsize=(2 * panel_w + 0.9, panel_h + 0.7), dpi=120, layout="constrained")
    axes = fig.subplots(1, 2)
    _show(axes[0], image)
    _show(axes[1], image, heatmap)
    names = list(gt_names) + [""] * (len(gt_boxes) - len(gt_names))
    for gt, name in _merge_captions(gt_boxes, names):
        _draw_box(axes[0], gt, GT_COLOR, dashed=True, text=name or None, below=True)
    for gt in gt_boxes:
        _draw_box(axes[1], gt, GT_COLOR, dashed=True)
    _draw_box(axes[0], box, DET_COLOR, text=f"{class_name} {score:.2f}")
    _draw_box(axes[1], box, DET_COLOR)
    axes[0].set_title("radiograph" + (" (ground truth dashed green)" if len(gt_boxes) else ""), fontsize=9)
    axes[1].set_title(f"{method} heatmap at {layer}", fontsize=9)
    _colorbar(fig, axes[1])
    prefix = f"{model_label}: " if model_label else ""
    fig.suptitle(f"{prefix}{class_name}, score {score:.2f}", fontsize=11)
    return _save(fig, path)


def _merge_captions(boxes: Sequence[Sequence[float]], names: Sequence[str]) -> list[tuple[np.ndarray, str]]:
    """One caption for boxes lying on top of each other (IoU > 0.8; radiologists often mark several
    findings with one region), so captions do not print over each other."""
    merged: list[tuple[np.ndarray, list[str]]] = []
    for box, name in zip(boxes, names):
        box = np.asarray(box, float)
        for kept, kept_names in merged:
            if _iou(kept, box) > 0.8:
                kept_names.append(name)
                break
        else:
            merged.append((box, [name]))
    return [(box, ", ".join(n for n in dict.fromkeys(names) if n)) for box, names in merged]


def findings(explanations: Sequence[Explanation], gt_boxes: np.ndarray | None, gt_class: np.ndarray | None,
             max_rows: int = 4) -> list[Finding]:
    """Rows of the comparison grid: the ground-truth boxes when known, else the detections of all models
    (highest score first), a detection overlapping a kept one of its class by IoU > 0.5 counting once."""
    if gt_boxes is not None and len(gt_boxes):
        return [Finding(np.asarray(b, float), int(c), True) for b, c in zip(gt_boxes, gt_class)][:max_rows]
    pool = [(s, b, c) for e in explanations for b, c, s in zip(e.boxes, e.class_id, e.scores)]
    pool.sort(key=lambda item: -item[0])
    kept: list[Finding] = []
    for _, box, cls in pool:
        if any(k.class_id == cls and _iou(k.box, box) > 0.5 for k in kept):
            continue
        kept.append(Finding(np.asarray(box, float), int(cls), False))
        if len(kept) == max_rows:
            break
    return kept


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(box_iou(torch.as_tensor(np.asarray(a, float)[None]), torch.as_tensor(np.asarray(b, float)[None]))[0, 0])


def best_match(explanation: Explanation, finding: Finding) -> tuple[int, float] | None:
    """Index and IoU of the model's detection of the finding's class that overlaps it most (IoU > 0)."""
    same = np.flatnonzero(explanation.class_id == finding.class_id)
    if not len(same):
        return None
    ious = box_iou(torch.as_tensor(finding.box[None], dtype=torch.float64),
                   torch.as_tensor(explanation.boxes[same], dtype=torch.float64))[0].numpy()
    k = int(np.argmax(ious))
    return (int(same[k]), float(ious[k])) if ious[k] > 0 else None


def grid_figure(image: np.ndarray, explanations: Sequence[Explanation], labels: Sequence[str],
                path: str | Path, *, gt_boxes: np.ndarray | None = None, gt_class: np.ndarray | None = None,
                title: str = "", max_rows: int = 4) -> Path | None:
    """Write the comparison grid of one image (rows: findings; columns: radiograph, then one per model).
    Returns None (nothing written) when there is no finding to show."""
    rows = findings(explanations, gt_boxes, gt_class, max_rows)
    if not rows:
        return None
    panel_w, panel_h = _panel_size(image, 3.2)
    n_cols = 1 + len(explanations)
    fig = Figure(figsize=(n_cols * panel_w + 0.8, len(rows) * (panel_h + 0.35) + 0.6), dpi=110,
                 layout="constrained")
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    shown = False
    for r, finding in enumerate(rows):
        name = VINDR_CLASSES[finding.class_id]
        ax = axes[r, 0]
        _show(ax, image)
        _draw_box(ax, finding.box, GT_COLOR if finding.ground_truth else DET_COLOR, dashed=finding.ground_truth)
        ax.set_ylabel(name, fontsize=9)
        if r == 0:
            ax.set_title("ground truth" if finding.ground_truth else "radiograph", fontsize=10)
        for c, (explanation, label) in enumerate(zip(explanations, labels), start=1):
            ax = axes[r, c]
            if r == 0:
                ax.set_title(label, fontsize=10, fontweight="bold")
            match = best_match(explanation, finding)
            if match is None:
                _show(ax, image)
                ax.text(0.5, 0.5, "not detected", transform=ax.transAxes, ha="center", va="center",
                        color="white", fontsize=10, bbox={"facecolor": "black", "alpha": 0.6})
                if finding.ground_truth:
                    _draw_box(ax, finding.box, GT_COLOR, dashed=True)
                continue
            k, iou = match
            _show(ax, image, explanation.heatmaps[k])
            shown = True
            if finding.ground_truth:
                _draw_box(ax, finding.box, GT_COLOR, dashed=True)
            _draw_box(ax, explanation.boxes[k], DET_COLOR, text=f"{explanation.scores[k]:.2f}, IoU {iou:.2f}")
    if shown:
        _colorbar(fig, axes.ravel().tolist())
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    save_figure(fig, path, bbox_inches="tight")
    return path
