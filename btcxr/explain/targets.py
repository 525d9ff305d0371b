"""CAM targets for a Faster R-CNN box: small callables on the detector's output, as in pytorch-grad-cam.

pytorch-grad-cam's FasterRCNNBoxScoreTarget scores a box by the detection with the highest IoU among *all*
detections, and gives 0 when that one has another class. torchvision emits one box per class and proposal,
so the closest detection is often a sibling of another class lying on top of the right one; we look for the
best match among the detections of the box's own class. Otherwise the value is the same:
IoU + score of that detection when the IoU exceeds the threshold (0.5), else 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import box_iou


class FasterRCNNBoxTarget:
    """Score of one detected box in a detector output: IoU + score of the same-class detection that
    overlaps it most, if that IoU > iou_threshold, else 0. `label` is the model's label (class_id + 1)."""

    def __init__(self, label: int, box: Sequence[float] | torch.Tensor, iou_threshold: float = 0.5) -> None:
        self.label = int(label)
        self.box = torch.as_tensor(box, dtype=torch.float32).reshape(4)
        self.iou_threshold = float(iou_threshold)

    def __call__(self, output: dict[str, torch.Tensor]) -> torch.Tensor:
        return target_scores([self], [output])[0, 0]

    def __repr__(self) -> str:
        return f"FasterRCNNBoxTarget(label={self.label}, box={self.box.tolist()})"


def target_scores(targets: Sequence[FasterRCNNBoxTarget], outputs: Sequence[dict[str, torch.Tensor]]
                  ) -> torch.Tensor:
    """(len(outputs), len(targets)) values of every target on every output, differentiable in the scores."""
    if not outputs:
        return torch.zeros(0, len(targets))
    device = outputs[0]["boxes"].device
    dtype = outputs[0]["boxes"].dtype
    boxes = torch.stack([t.box for t in targets]).to(device=device, dtype=dtype) if targets else None
    labels = torch.tensor([t.label for t in targets], device=device)
    thresholds = torch.tensor([t.iou_threshold for t in targets], device=device, dtype=dtype)
    rows = []
    for output in outputs:
        if boxes is None or len(output["boxes"]) == 0:
            rows.append(torch.zeros(len(targets), device=device, dtype=dtype))
            continue
        iou = box_iou(boxes, output["boxes"].to(dtype))
        same_class = labels[:, None] == output["labels"][None, :]
        iou = torch.where(same_class, iou, torch.full_like(iou, -1.0))
        best_iou, best = iou.max(dim=1)
        value = best_iou + output["scores"][best].to(dtype)
        rows.append(torch.where(best_iou > thresholds, value, torch.zeros_like(value)))
    return torch.stack(rows)
