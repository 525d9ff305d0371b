"""Ablation-CAM (Desai and Ramaswamy, WACV 2020) for every detected box at once, batched.

weight_k = (y - y_k) / y, where y is a box's target score (targets.FasterRCNNBoxTarget) and y_k the same
score with channel k of the target layer's activations A set to zero; heatmap = ReLU(sum_k weight_k A_k),
upsampled to the image and normalised to [0, 1].

Two things make this faster than pytorch-grad-cam's AblationCAM while computing the same numbers:
- the layers before the target layer run once per image, not once per ablated copy (forward.SplitDetector);
- one ablated forward pass serves every box of the image: all boxes' scores are read off the same outputs,
  where pytorch-grad-cam needs a separate run of all ablations for each box.

`ratio` is pytorch-grad-cam's `ratio_channels_to_ablate`, with its exact selection rule (we call its
AblationLayer.activations_to_be_ablated): channels are ranked by how much of their activation falls inside
the EigenCAM mask (first principal component > 1 % of its range); the int(C * ratio) best *and* the
int(C * ratio) worst channels are ablated, so ratio 0.5 ablates every channel and ratio r < 0.5 ablates
2 * int(C * r). Channels not ablated get weight 0. Above 0.5 the two lists overlap; pytorch-grad-cam then
mis-assigns the scores of the channels after a duplicate, we ablate each selected channel once.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from pytorch_grad_cam.ablation_layer import AblationLayer
from torch import nn

from btcxr.errors import BtcxrError
from btcxr.explain.base import DEFAULT_LAYER, DetectorCAM, scale_heatmaps
from btcxr.explain.forward import SplitDetector
from btcxr.explain.targets import FasterRCNNBoxTarget, target_scores

log = logging.getLogger(__name__)

# "exact": every ablated copy re-runs everything after the target layer (RPN and all proposals included),
# as pytorch-grad-cam does. "box": only what the explained boxes' scores depend on, with the unablated
# proposals (box_local.py); 3-9x faster, but it does not follow the RPN, and benchmarks/explain.py measured
# median r 0.62-0.90 against "exact" on our trained detectors, hence not the default (docs/explain.md).
# Cuts other than a ResNet stage or FPN level 0-3 run "exact".
MODES = ("box", "exact")
DEFAULT_MODE = "exact"


def channels_to_ablate(activation: torch.Tensor, ratio: float) -> np.ndarray:
    """Sorted channel indices pytorch-grad-cam's AblationCAM ablates for `activation` (C, h, w)."""
    if not 0 < ratio <= 1:
        raise BtcxrError(f"--ratio must be in (0, 1], got {ratio}")
    if ratio == 1.0:
        return np.arange(activation.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):  # all-zero channels score NaN there too
        chosen = AblationLayer().activations_to_be_ablated(activation.detach().cpu().numpy(), ratio)
    return np.unique(chosen)


class AblationCAM(DetectorCAM):
    """Batched Ablation-CAM of a torchvision Faster R-CNN, one heatmap per detected box."""

    def __init__(self, model: nn.Module, layer: str = DEFAULT_LAYER, ratio: float = 1.0,
                 batch_size: int = 32, mode: str = DEFAULT_MODE) -> None:
        super().__init__(model, layer)
        if mode not in MODES:
            raise BtcxrError(f"--ablation-mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0 < ratio <= 1:
            raise BtcxrError(f"--ratio must be in (0, 1], got {ratio}")
        if batch_size < 1:
            raise BtcxrError(f"--batch-size must be at least 1, got {batch_size}")
        self.ratio = ratio
        self.batch_size = batch_size
        self.mode = mode
        self._split: SplitDetector | None = None
        self._output: dict[str, torch.Tensor] | None = None
        self._image: torch.Tensor | None = None

    def detect(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The detector's output on `image`; keeps the activations the ablations of this image start from."""
        self._split = SplitDetector(self.model, self.layer)
        self._output = self._split.first_pass(image.to(self.device))
        self._image = image
        return self._output

    def weights(self, targets: list[FasterRCNNBoxTarget]) -> torch.Tensor:
        """(n_targets, C) Ablation-CAM weights (y - y_k) / y on the image given to the last `detect`.
        Channels outside the ratio's selection keep y_k = y, hence weight 0."""
        split = self._split
        activation = split.activation
        channels = channels_to_ablate(activation, self.ratio)
        heads = None
        if self.mode == "box" and split.supports_box_local:
            heads = split.candidate_heads(targets)  # y and every y_k from the same (candidate) heads
            original = target_scores(targets, heads(split.features, 1))[0].float().cpu()
        else:
            original = target_scores(targets, [self._output])[0].float().cpu()  # (n,)
        ablated = original[None, :].repeat(split.num_channels, 1)  # skipped channels keep y: weight 0
        for start in range(0, len(channels), self.batch_size):
            batch = channels[start:start + self.batch_size]
            outputs = split.ablated_outputs(batch.tolist(), heads)
            ablated[torch.as_tensor(batch)] = target_scores(targets, outputs).float().cpu()
            log.debug("ablated channels %d-%d of %d", start, start + len(batch), len(channels))
        safe = torch.where(original == 0, torch.ones_like(original), original)
        weights = (original[None, :] - ablated) / safe[None, :]
        return torch.where(original[None, :] == 0, torch.zeros_like(weights), weights).T

    def heatmaps(self, image: torch.Tensor, targets: list[FasterRCNNBoxTarget]) -> np.ndarray:
        if self._image is not image:  # explain() detects first; a direct call may not have
            self.detect(image)
        weights = self.weights(targets)
        activation = self._split.activation.float().cpu()
        cams = torch.einsum("nc,chw->nhw", weights, activation)
        padded, valid = self.input_frame(image)
        return scale_heatmaps(cams, padded, valid, tuple(image.shape[-2:]))
