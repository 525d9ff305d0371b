"""Detection transforms on (image, target) pairs, as torchvision's references/detection presets.

Images stay single-channel floats in [0, 1] here; the detector itself expands gray to 3 channels and applies
the ImageNet mean/std (btcxr.detect.model.GrayscaleRCNNTransform), so training, evaluation, prediction and
Ablation-CAM all feed the network the same way.

Target boxes are `x_min, y_min, x_max, y_max` in the pixels of the image they travel with. Boxes scale by
one factor, the ratio of the longest sides (the cache's convention: cache px = original px * scale, exact on
the longest side; the short side of a resized image is rounded to whole pixels, < 0.5 px off). Resizing
keeps `target["orig_size"]` (h, w of the original radiograph) untouched, so `to_original_frame` maps
model-frame boxes back with max(orig) / max(input), the inverse of cache scale times the resize factor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from btcxr.data.images import longest_side_shape

Target = dict[str, Any]


class Compose:
    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target


class ResizeLongest:
    """Resize so the longest side is `size` px, keeping the aspect ratio; boxes scale by size / longest.

    Antialiased bilinear (a cache prepared at the model's size passes through unchanged, so the usual
    pipeline never resamples twice).
    """

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        image = to_float(image)
        h, w = image.shape[-2:]
        new_w, new_h, _ = longest_side_shape(w, h, self.size)  # the cache's rounding
        if (new_h, new_w) == (h, w):
            return image, target
        image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False,
                              antialias=True)[0]
        target = dict(target)
        if "boxes" in target:
            target["boxes"] = target["boxes"] * (self.size / max(h, w))
        if "scale" in target:  # original px -> input px
            target["scale"] = float(target["scale"]) * self.size / max(h, w)
        return image, target


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if self.p > 0 and torch.rand(1).item() < self.p:
            image = image.flip(-1)
            target = dict(target)
            if "boxes" in target:
                width = image.shape[-1]
                boxes = target["boxes"].clone()
                boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
                target["boxes"] = boxes
        return image, target


def to_float(image: torch.Tensor) -> torch.Tensor:
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    if image.dtype in (getattr(torch, "uint16", torch.uint8), torch.int32):  # 16-bit caches (int32 via PIL 'I')
        return image.float() / 65535.0
    return image.float()


def train_transform(size: int, hflip: float = 0.5) -> Compose:
    return Compose([ResizeLongest(size), RandomHorizontalFlip(hflip)])


def eval_transform(size: int) -> Compose:
    return Compose([ResizeLongest(size)])


def to_original_frame(boxes: torch.Tensor, input_hw: Sequence[int], orig_hw: Sequence[int]) -> torch.Tensor:
    """Boxes in the pixels of an (h, w) model input -> pixels of the (H, W) original image."""
    return boxes * (max(float(orig_hw[0]), float(orig_hw[1])) / max(float(input_hw[0]), float(input_hw[1])))

