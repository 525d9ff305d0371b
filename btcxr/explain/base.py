"""What every detector CAM shares: target-layer names, box selection, heatmap scaling, the method interface.

The detector is torchvision's Faster R-CNN (btcxr.detect.model.build_detector): `model.transform`, then
`model.backbone` = `body` (the ResNet, an IntermediateLayerGetter) + `fpn`, then `model.rpn` and
`model.roi_heads`. A CAM explains one detected box at a time: its target is the score of the detection of
the same class that matches the box best (targets.FasterRCNNBoxTarget), as in pytorch-grad-cam.

Heatmaps come back in the frame of the image given to `explain` (the model input, before padding), one per
box, ReLU'd and min-max normalised to [0, 1] as pytorch-grad-cam's `scale_cam_image` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from btcxr.data.classes import VINDR_CLASSES
from btcxr.errors import BtcxrError
from btcxr.explain.targets import FasterRCNNBoxTarget

BODY_LAYERS = ("layer1", "layer2", "layer3", "layer4")
FPN_LEVELS = ("0", "1", "2", "3", "pool")
LAYER_NAMES = (*BODY_LAYERS, *(f"fpn.{level}" for level in FPN_LEVELS), "fpn")
DEFAULT_LAYER = "layer3"  # the paper's choice: backbone.body.layer3


@dataclass(frozen=True)
class TargetLayer:
    """Where a CAM looks: a ResNet stage, an FPN level (or all of them), or any other module of the model.

    kind "body": `backbone.body.<stage>`; "fpn": FPN output `level` ("0".."3", "pool"; None = all five
    levels, concatenated as pytorch-grad-cam's fasterrcnn_reshape_transform does); "module": any other
    module path whose output is a tensor.
    """

    name: str
    kind: str
    stage: str | None = None
    level: str | None = None
    module_path: str | None = None


def resolve_layer(model: nn.Module, name: str) -> TargetLayer:
    """Map a user's layer name to a TargetLayer; an unknown name raises BtcxrError listing valid ones."""
    key = name.strip()
    for prefix in ("backbone.body.", "body."):
        if key.startswith(prefix) and key[len(prefix):] in BODY_LAYERS:
            key = key[len(prefix):]
    if key.startswith("backbone.fpn.layer_blocks.") and key.rsplit(".", 1)[1] in FPN_LEVELS[:4]:
        key = "fpn." + key.rsplit(".", 1)[1]
    if key == "backbone":
        key = "fpn"
    if key in BODY_LAYERS:
        return TargetLayer(name=key, kind="body", stage=key, module_path=f"backbone.body.{key}")
    if key == "fpn":
        return TargetLayer(name=key, kind="fpn", level=None, module_path="backbone")
    if key.startswith("fpn.") and key[4:] in FPN_LEVELS:
        level = key[4:]
        path = f"backbone.fpn.layer_blocks.{level}" if level != "pool" else None
        return TargetLayer(name=key, kind="fpn", level=level, module_path=path)
    modules = dict(model.named_modules())
    if key and key in modules:
        return TargetLayer(name=key, kind="module", module_path=key)
    raise BtcxrError(
        f"unknown target layer {name!r}; valid names: {', '.join(LAYER_NAMES)}, or a module path of the "
        "detector such as backbone.body.layer3.5 or backbone.body.layer4.0.conv2 (see model.named_modules())")


def get_module(model: nn.Module, path: str) -> nn.Module:
    return dict(model.named_modules())[path]


@dataclass
class Explanation:
    """The boxes explained in one image and their heatmaps, in the frame of the image given to the CAM.

    boxes (n, 4) x_min, y_min, x_max, y_max; class_id (n,) VinDr ids 0..13; scores (n,);
    heatmaps (n, H, W) float32 in [0, 1].
    """

    boxes: np.ndarray
    class_id: np.ndarray
    scores: np.ndarray
    heatmaps: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def class_names(self) -> list[str]:
        return [VINDR_CLASSES[int(c)] for c in self.class_id]


def select_boxes(output: dict[str, torch.Tensor], score_thr: float, top_k: int) -> torch.Tensor:
    """Indices of the detections to explain: score >= score_thr, the top_k highest first."""
    scores = output["scores"]
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[scores[order] >= score_thr]
    return order[:top_k]


def box_targets(output: dict[str, torch.Tensor], keep: torch.Tensor, iou_threshold: float = 0.5
                ) -> list[FasterRCNNBoxTarget]:
    """One target per kept detection: its own box and (model) label."""
    boxes = output["boxes"][keep].detach().cpu()
    labels = output["labels"][keep].detach().cpu()
    return [FasterRCNNBoxTarget(int(label), box, iou_threshold) for box, label in zip(boxes, labels)]


def scale_heatmaps(cams: torch.Tensor, padded_hw: tuple[int, int], valid_hw: tuple[int, int],
                   out_hw: tuple[int, int]) -> np.ndarray:
    """(n, h, w) raw CAMs at a layer's resolution -> (n, H, W) float32 heatmaps in [0, 1].

    ReLU, bilinear upsampling to the padded network input, crop of the padding, resize to the image, then
    min-max normalisation per heatmap (pytorch-grad-cam's scale_cam_image: (x - min) / (max + 1e-7)).
    pytorch-grad-cam stretches the padded map over the image instead of cropping; the two agree whenever
    the input needs no padding (sides that are multiples of 32).
    """
    if cams.numel() == 0:
        return np.zeros((cams.shape[0], *out_hw), dtype=np.float32)
    maps = torch.relu(cams.detach().float())[:, None]
    maps = F.interpolate(maps, size=tuple(padded_hw), mode="bilinear", align_corners=False)
    maps = maps[..., : valid_hw[0], : valid_hw[1]]
    if tuple(valid_hw) != tuple(out_hw):
        maps = F.interpolate(maps, size=tuple(out_hw), mode="bilinear", align_corners=False)
    maps = maps[:, 0]
    flat = maps.reshape(len(maps), -1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    flat = flat / (1e-7 + flat.max(dim=1, keepdim=True).values)
    return flat.reshape(maps.shape).cpu().numpy().astype(np.float32)


class DetectorCAM:
    """Base class of the CAM methods: detect, pick the boxes, one heatmap per box.

    Subclasses implement `detect` (one plain forward pass, which may keep what the method needs later) and
    `heatmaps` (one (H, W) map per target).
    """

    def __init__(self, model: nn.Module, layer: str = DEFAULT_LAYER) -> None:
        self.model = model.eval()
        self.layer = resolve_layer(model, layer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def detect(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return self.model([image.to(self.device)])[0]

    def heatmaps(self, image: torch.Tensor, targets: list[FasterRCNNBoxTarget]) -> np.ndarray:
        raise NotImplementedError

    def explain(self, image: torch.Tensor, score_thr: float = 0.3, top_k: int = 10) -> Explanation:
        """Detect in `image` (float (1|3, H, W) in [0, 1], already at the model's size) and explain each box
        with score >= score_thr (the top_k best)."""
        output = self.detect(image)
        keep = select_boxes(output, score_thr, top_k)
        targets = box_targets(output, keep)
        height, width = image.shape[-2:]
        maps = (self.heatmaps(image, targets) if targets
                else np.zeros((0, height, width), dtype=np.float32))
        return Explanation(
            boxes=output["boxes"][keep].detach().cpu().numpy().astype(np.float64).reshape(-1, 4),
            class_id=(output["labels"][keep].cpu().numpy() - 1).astype(np.int64),
            scores=output["scores"][keep].detach().cpu().numpy().astype(np.float64),
            heatmaps=maps,
        )

    def input_frame(self, image: torch.Tensor) -> tuple[tuple[int, int], tuple[int, int]]:
        """(padded, valid) (h, w) of the network input the model's transform makes of `image`."""
        with torch.no_grad():
            images, _ = self.model.transform([image.to(self.device)])
        return tuple(images.tensors.shape[-2:]), tuple(images.image_sizes[0])
