"""ImageNet normalisation of gray radiographs: the one place every stage takes it from.

Backbones are plain 3-channel torchvision ResNets with ImageNet statistics; a radiograph is one gray
channel in [0, 1] (or uint8), copied to three and normalised with the ImageNet mean and std.
"""

from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def gray_to_imagenet(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) gray, uint8 or float in [0, 1] (3-channel input passes through the same normalisation)
    -> float (B, 3, H, W) normalised with the ImageNet statistics, on x's device."""
    x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std
