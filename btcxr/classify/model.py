"""A ResNet backbone with one linear layer over the 15 NIH labels, frozen (linear probe) or trained."""

from __future__ import annotations

import torch
from torch import nn

from btcxr.backbones import FEATURE_DIM, build_resnet
from btcxr.data.classes import NIH_LABELS
from btcxr.data.imagenet import gray_to_imagenet


class ProbeModel(nn.Module):
    """Gray images in [0, 1] (B, 1, H, W) -> logits (B, 15).

    The gray channel is copied to three and normalised with ImageNet statistics here, on the model's
    device, so the backbone stays a plain 3-channel torchvision ResNet. With frozen=True the backbone has
    no trainable parameters and stays in eval mode even under .train(): its batch-norm running statistics
    never move, which is what a linear evaluation means.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_labels: int = len(NIH_LABELS),
                 frozen: bool = True):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_labels)
        # As the Barlow Twins evaluation script: small normal weights, zero bias.
        nn.init.normal_(self.head.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.head.bias)
        self.frozen = frozen
        if frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> ProbeModel:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features of gray images in [0, 1]."""
        x = gray_to_imagenet(images)
        if self.frozen:
            with torch.no_grad():
                return self.backbone(x)
        return self.backbone(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def build_probe_model(arch: str, backbone: str, frozen: bool, init_weights: str | None = None,
                      imagenet_weights: str | None = None) -> ProbeModel:
    """backbone: "imagenet", "random" or a path (our backbone.pth, a pre-training checkpoint, any
    torchvision ResNet state dict); init_weights: the ImageNet weights file on offline machines."""
    net = build_resnet(arch, init=backbone, weights_file=init_weights, imagenet_weights=imagenet_weights)
    return ProbeModel(net, FEATURE_DIM[arch], frozen=frozen)
