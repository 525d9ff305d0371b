"""The CAM methods `btcxr explain --method` offers, behind one interface (base.DetectorCAM).

- ablation: our batched Ablation-CAM (ablation.py), the paper's method.
- gradcam / eigencam: pytorch-grad-cam's GradCAM and EigenCAM, called through its API. FPN levels are
  targeted as its Faster R-CNN tutorial does: the backbone (whose output is the dict of FPN levels) with a
  reshape transform (fasterrcnn_reshape_transform for all levels, a level picker for fpn.pool); single
  levels fpn.0..fpn.3 are the FPN's output convolutions. Grad-CAM needs a layer whose output is a tensor
  (the dict output of the whole backbone carries no gradient hook), so `fpn` and `fpn.pool` are
  EigenCAM/Ablation-CAM only. EigenCAM ignores the target: every box of an image gets the same map.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM as _PackageEigenCAM
from pytorch_grad_cam import GradCAM as _PackageGradCAM
from pytorch_grad_cam.utils.reshape_transforms import fasterrcnn_reshape_transform
from torch import nn

from btcxr.errors import BtcxrError
from btcxr.explain.ablation import DEFAULT_MODE, AblationCAM
from btcxr.explain.base import DEFAULT_LAYER, DetectorCAM, get_module, scale_heatmaps
from btcxr.explain.targets import FasterRCNNBoxTarget

METHODS = ("ablation", "gradcam", "eigencam")


def _on_padded_frame(package_class: type) -> type:
    """A pytorch-grad-cam class whose maps come out at the size of the padded network input (which the
    feature maps cover), instead of stretched over the unpadded image; we crop the padding ourselves."""

    class OnPaddedFrame(package_class):
        padded_hw: tuple[int, int] = (0, 0)

        def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple[int, int]:
            return self.padded_hw[1], self.padded_hw[0]

    OnPaddedFrame.__name__ = f"{package_class.__name__}OnPaddedFrame"
    return OnPaddedFrame


class _PackageCAM(DetectorCAM):
    package_class: type
    uses_targets = True

    def package_layer(self) -> tuple[nn.Module, Callable | None]:
        layer = self.layer
        if layer.kind == "fpn" and layer.level is None:
            return self.model.backbone, fasterrcnn_reshape_transform
        if layer.kind == "fpn" and layer.level == "pool":
            return self.model.backbone, lambda features: features["pool"]
        return get_module(self.model, layer.module_path), None

    def heatmaps(self, image: torch.Tensor, targets: list[FasterRCNNBoxTarget]) -> np.ndarray:
        module, reshape = self.package_layer()
        padded, valid = self.input_frame(image)
        batch = image.to(self.device)[None]
        cam = _on_padded_frame(self.package_class)(model=self.model, target_layers=[module],
                                                   reshape_transform=reshape)
        cam.padded_hw = padded
        cam.compute_input_gradient = self.uses_targets  # gradients reach frozen layers too
        try:
            if self.uses_targets:
                maps = np.concatenate([cam(input_tensor=batch, targets=[target]) for target in targets])
            else:
                maps = np.repeat(cam(input_tensor=batch, targets=targets[:1]), len(targets), axis=0)
        finally:
            cam.activations_and_grads.release()
        self.model.zero_grad(set_to_none=True)
        return scale_heatmaps(torch.from_numpy(maps), padded, valid, tuple(image.shape[-2:]))


class GradCAM(_PackageCAM):
    """pytorch-grad-cam's GradCAM: weights = spatial mean of the target's gradient."""

    package_class = _PackageGradCAM

    def __init__(self, model: nn.Module, layer: str = DEFAULT_LAYER) -> None:
        super().__init__(model, layer)
        if self.layer.kind == "fpn" and self.layer.level in (None, "pool"):
            raise BtcxrError(f"--method gradcam cannot use layer {self.layer.name!r} (the backbone's dict "
                             "output has no gradient); use fpn.0..fpn.3, a ResNet stage, or "
                             "--method ablation/eigencam")


class EigenCAM(_PackageCAM):
    """pytorch-grad-cam's EigenCAM: the first principal component of the activations (class-agnostic)."""

    package_class = _PackageEigenCAM
    uses_targets = False


def build_cam(method: str, model: nn.Module, layer: str = DEFAULT_LAYER, ratio: float = 0.5,
              batch_size: int = 32, ablation_mode: str = DEFAULT_MODE) -> DetectorCAM:
    """The CAM object for `--method` (ratio, batch_size and ablation_mode concern Ablation-CAM only)."""
    if method == "ablation":
        return AblationCAM(model, layer, ratio=ratio, batch_size=batch_size, mode=ablation_mode)
    if method == "gradcam":
        return GradCAM(model, layer)
    if method == "eigencam":
        return EigenCAM(model, layer)
    raise BtcxrError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
