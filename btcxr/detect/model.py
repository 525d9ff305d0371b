"""Faster R-CNN + FPN over a ResNet from any init the toolkit supports (docs/paper.md, Stage 2).

torchvision's detector, assembled as `torchvision.models.detection.fasterrcnn_resnet50_fpn` assembles it,
but around our backbone (`btcxr.backbones.build_resnet`: ImageNet, random, backbone.pth, Barlow Twins
checkpoints): FPN with 256 channels on layer1..4 plus a max-pool level (5 levels), one anchor size per level
(32..512 px, ratios 0.5/1/2 -- the paper's MMDetection anchors, scale 8 x strides 4..64, are the same boxes),
MultiScaleRoIAlign 7x7, TwoMLPHead, 15 outputs (background + 14 findings). Every sampler, threshold,
proposal count and box-coder weight is a ModelConfig field; `configs/finetune/paper_*.yaml` set the
authors' values. Three of their MMDetection behaviours that torchvision has no argument for are small
subclasses here: frozen-statistics batch norm with trainable affine weights, the RPN's minimum IoU for a
ground truth's best anchors, and RoIAlign with aligned=True; plus their anchor grid and initialisation.

Labels: VinDr class_id 0..13 outside the model, class_id + 1 inside it (0 is torchvision's background).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes, resize_keypoints
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d
from torchvision.ops.poolers import initLevelMapper

from btcxr.backbones import backbone_state_dict, build_resnet
from btcxr.data.classes import VINDR_CLASSES
from btcxr.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from btcxr.detect.config import ModelConfig
from btcxr.engine.checkpoint import library_versions, load_checkpoint
from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)

NUM_OUTPUTS = len(VINDR_CLASSES) + 1  # background + 14 findings ("No finding" is not a detection class)
# Stages trained for each `trainable_layers`, top first (torchvision's _resnet_fpn_extractor rule).
_STAGES = ["layer4", "layer3", "layer2", "layer1", "conv1"]
CHECKPOINT_KIND = "btcxr-detector"
ANCHOR_STRIDES = (4, 8, 16, 32, 64)  # FPN levels "0".."3" (layer1..4) and "pool"
ROI_LEVELS = ("0", "1", "2", "3")  # the levels RoIs are pooled from (strides 4..32)


class GrayscaleRCNNTransform(GeneralizedRCNNTransform):
    """torchvision's detector input transform for single-channel radiographs.

    Gray images are expanded to 3 channels (a view) right before the ImageNet normalisation, so the
    network stays a plain 3-channel torchvision model that external weights fit. An image whose longest
    side already equals the size setting is not resampled (min_size = max_size = size makes torchvision's
    own resize an identity there, at the cost of an interpolation).

    TorchScript cannot compile `super()` calls, so both methods are written out in full: `normalize` is
    torchvision's arithmetic, `resize` torchvision's for boxes-only targets (no masks), in double precision
    when scripted too, so that the scripted model (`btcxr export`) gives the eager model's boxes bitwise at
    any input size (tests/test_export.py).
    """

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if not image.is_floating_point():
            raise TypeError(f"Expected input images to be of floating type (in range [0, 1]), "
                            f"but found type {image.dtype} instead")
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]) / std[:, None, None]

    def resize(self, image: torch.Tensor,
               target: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        h, w = image.shape[-2:]
        if max(h, w) == self.max_size or (self.training and self._skip_resize):
            return image, target
        size = self.torch_choice(self.min_size) if self.training else self.min_size[-1]
        # torchvision's _resize_image_and_masks for boxes-only targets, with the factor in Python floats
        # (doubles) under TorchScript too: torchvision's scripted path computes it in float32, which can make
        # the image a pixel smaller than in eager mode (50 px -> 127 instead of 128 px at size 128).
        scale = min(float(size) / min(h, w), float(self.max_size) / max(h, w))
        image = nn.functional.interpolate(image[None], size=None, scale_factor=scale, mode="bilinear",
                                          recompute_scale_factor=True, align_corners=False)[0]
        if target is None:
            return image, target
        target["boxes"] = resize_boxes(target["boxes"], [h, w], list(image.shape[-2:]))
        if "keypoints" in target:
            target["keypoints"] = resize_keypoints(target["keypoints"], [h, w], list(image.shape[-2:]))
        return image, target


class FrozenStatsBatchNorm2d(FrozenBatchNorm2d):
    """Batch norm that always normalises with the statistics of the init and never updates them, with a
    trainable affine weight and bias: MMDetection's norm_cfg=dict(type='BN', requires_grad=True) with
    norm_eval=True, the paper's detector backbone.

    Built on torchvision's FrozenBatchNorm2d (same state-dict keys as BatchNorm2d) rather than on
    BatchNorm2d kept in eval mode: it has no training mode at all, so neither model.train() nor
    SyncBatchNorm.convert_sync_batchnorm (which converts every _BatchNorm) can make it use batch statistics.
    Whether weight and bias train is their requires_grad (frozen stages switch it off).
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__(num_features, eps)
        weight, bias = self.weight, self.bias
        del self.weight, self.bias  # FrozenBatchNorm2d's buffers become parameters
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)


class MinIoUMatcher(Matcher):
    """torchvision's Matcher with low-quality matches that need an IoU of at least `min_pos_iou`
    (MMDetection's MaxIoUAssigner min_pos_iou): a ground-truth box whose best anchors overlap it less gives
    them no positive label. torchvision's own rule (min_pos_iou 0) makes them positive at any IoU, which
    at 224 px includes every finding smaller than about 18 px (IoU < 0.3 with the 32 px anchors)."""

    def __init__(self, high_threshold: float, low_threshold: float, min_pos_iou: float):
        super().__init__(high_threshold, low_threshold, allow_low_quality_matches=True)
        self.min_pos_iou = min_pos_iou

    def set_low_quality_matches_(self, matches: torch.Tensor, all_matches: torch.Tensor,
                                 match_quality_matrix: torch.Tensor) -> None:
        best = match_quality_matrix.max(dim=1, keepdim=True).values
        _, preds = torch.where((match_quality_matrix == best) & (best >= self.min_pos_iou))
        matches[preds] = all_matches[preds]


class ExactAnchorGenerator(AnchorGenerator):
    """MMDetection 2.x anchors: base anchors not rounded to whole pixels, and level i laid on its true
    stride (ANCHOR_STRIDES). torchvision rounds them and takes each level's stride as padded image size //
    feature size, which for the max-pool level is 56 px at 224 px (7 -> 4 cells) instead of 64.

    Anchors are float32 whatever the autocast dtype: torchvision makes them in the dtype of the feature
    maps, which under bf16 autocast puts coordinates between 512 and 1024 px on a 4-px grid."""

    def __init__(self, sizes: tuple[tuple[int, ...], ...], aspect_ratios: tuple[tuple[float, ...], ...],
                 strides: tuple[int, ...] = ANCHOR_STRIDES):
        super().__init__(sizes, aspect_ratios)
        self.strides = tuple(strides)

    def generate_anchors(self, scales: list[int], aspect_ratios: list[float], dtype: torch.dtype = torch.float32,
                         device: torch.device = torch.device("cpu")) -> torch.Tensor:
        scales_t = torch.as_tensor(scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=dtype, device=device))
        ws = (scales_t[None, :] / h_ratios[:, None]).view(-1)
        hs = (scales_t[None, :] * h_ratios[:, None]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        device = feature_maps[0].device
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(torch.float32, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors for _ in image_list.image_sizes]


class LevelRoIAlign(MultiScaleRoIAlign):
    """MultiScaleRoIAlign over ROI_LEVELS with a choice of RoIAlign: `aligned=True` samples at
    (x * scale - 0.5), the half-pixel-corrected RoIAlign of MMDetection 2.x (mmcv's default), which
    torchvision's MultiScaleRoIAlign does not expose. Each RoI goes to the level torchvision's LevelMapper
    picks, floor(log2(sqrt(area) / 56)) clamped to 0..3 -- MMDetection's finest_scale=56 rule."""

    def __init__(self, sampling_ratio: int, aligned: bool, output_size: int = 7):
        super().__init__(featmap_names=list(ROI_LEVELS), output_size=output_size, sampling_ratio=sampling_ratio)
        self.aligned = aligned
        self.level_strides = list(ANCHOR_STRIDES[:len(ROI_LEVELS)])  # attributes, not globals: TorchScript

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        mapper = initLevelMapper(2, 2 + len(self.featmap_names) - 1, canonical_scale=self.canonical_scale,
                                 canonical_level=self.canonical_level)
        levels = mapper(boxes)
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        first = x[self.featmap_names[0]]
        result = first.new_zeros((rois.shape[0], first.shape[1], self.output_size[0], self.output_size[1]))
        for level, name in enumerate(self.featmap_names):
            idx = torch.where(levels == level)[0]
            pooled = roi_align(x[name], rois[idx], self.output_size, spatial_scale=1.0 / self.level_strides[level],
                               sampling_ratio=self.sampling_ratio, aligned=self.aligned)
            result[idx] = pooled.to(result.dtype)
        return result


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """Fill the automatic choices: trainable layers 3 / `pretrained_norm` for pretrained inits, 5 / BN for
    random."""
    pretrained = cfg.init != "random"
    trainable = cfg.trainable_layers if cfg.trainable_layers is not None else (3 if pretrained else 5)
    norm = cfg.norm if cfg.norm != "auto" else (cfg.pretrained_norm if pretrained else "bn")
    return dataclasses.replace(cfg, trainable_layers=trainable, norm=norm)


def build_detector(cfg: ModelConfig) -> FasterRCNN:
    """Faster R-CNN + FPN with the backbone weights of `cfg.init` (see ModelConfig)."""
    cfg = resolve_model_config(cfg)
    resnet = build_resnet(cfg.arch, cfg.init, cfg.weights_file, cfg.imagenet_weights)
    if cfg.norm in ("frozen", "frozen_stats"):
        norm_layer = FrozenStatsBatchNorm2d if cfg.norm == "frozen_stats" else FrozenBatchNorm2d
        resnet = _with_frozen_batchnorm(resnet, cfg.arch, norm_layer)
    _freeze_stages(resnet, cfg.trainable_layers)
    in_stage2 = resnet.inplanes // 8  # 64 for resnet18/34, 256 for resnet50 (torchvision's rule)
    backbone = BackboneWithFPN(
        resnet,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[in_stage2 * 2**i for i in range(4)],
        out_channels=cfg.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    roi_pool = _roi_pool(cfg)
    box_head = TwoMLPHead(cfg.fpn_channels * roi_pool.output_size[0] ** 2, cfg.box_head_dim)
    model = FasterRCNN(
        backbone,
        num_classes=None,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(cfg.box_head_dim, NUM_OUTPUTS),
        min_size=cfg.size,
        max_size=cfg.size,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        rpn_anchor_generator=_anchor_generator(cfg),
        box_roi_pool=roi_pool,
        **_detector_arguments(cfg),
    )
    # min_size = max_size = size: the longest side becomes `size` whatever the aspect; pad to 32.
    model.transform = GrayscaleRCNNTransform(cfg.size, cfg.size, list(IMAGENET_MEAN), list(IMAGENET_STD),
                                             size_divisible=32)
    # FasterRCNN takes no argument for these two: the RPN box coder is built with weights (1, 1, 1, 1).
    model.rpn.box_coder = BoxCoder(tuple(cfg.rpn_box_weights))
    if cfg.rpn_min_pos_iou > 0:
        model.rpn.proposal_matcher = MinIoUMatcher(cfg.rpn_fg_iou_thresh, cfg.rpn_bg_iou_thresh, cfg.rpn_min_pos_iou)
    if cfg.head_init == "mmdet":
        _mmdet_init(model)
    # torchvision's BoxCoder decodes in the dtype of the regression outputs: under bf16 autocast anchors,
    # proposals, training targets and the final boxes would be bf16, i.e. rounded to 2-4 px at 640 px.
    model.rpn.head.register_forward_hook(_rpn_outputs_to_fp32)
    model.roi_heads.box_predictor.register_forward_hook(_predictor_outputs_to_fp32)
    return model


def _detector_arguments(cfg: ModelConfig) -> dict[str, Any]:
    """The RPN and box-head settings FasterRCNN takes as arguments."""
    names = ("rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train",
             "rpn_post_nms_top_n_test", "rpn_nms_thresh", "rpn_fg_iou_thresh", "rpn_bg_iou_thresh",
             "rpn_batch_size_per_image", "rpn_positive_fraction", "box_score_thresh", "box_nms_thresh",
             "box_detections_per_img", "box_fg_iou_thresh", "box_bg_iou_thresh", "box_batch_size_per_image",
             "box_positive_fraction")
    return {name: getattr(cfg, name) for name in names} | {"bbox_reg_weights": tuple(cfg.box_reg_weights)}


def _roi_pool(cfg: ModelConfig) -> MultiScaleRoIAlign:
    if cfg.roi_aligned:
        return LevelRoIAlign(cfg.roi_sampling_ratio, aligned=True)
    return MultiScaleRoIAlign(featmap_names=list(ROI_LEVELS), output_size=7, sampling_ratio=cfg.roi_sampling_ratio)


def _anchor_generator(cfg: ModelConfig) -> AnchorGenerator:
    sizes = tuple((int(s),) for s in cfg.anchor_sizes)
    ratios = (tuple(float(r) for r in cfg.anchor_ratios),) * len(sizes)
    return ExactAnchorGenerator(sizes, ratios) if cfg.anchor_grid == "exact" else AnchorGenerator(sizes, ratios)


def _mmdet_init(model: FasterRCNN) -> None:
    """MMDetection's initialisation of what the backbone does not hold (FPN: Xavier uniform; shared FCs:
    Xavier uniform; classifier N(0, 0.01); box regressor N(0, 0.001); biases 0). The RPN head is already
    N(0, 0.01) in both libraries."""
    layers = [m for m in model.backbone.fpn.modules() if isinstance(m, nn.Conv2d)]
    layers += [model.roi_heads.box_head.fc6, model.roi_heads.box_head.fc7]
    for layer in layers:
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    predictor = model.roi_heads.box_predictor
    for layer, std in ((predictor.cls_score, 0.01), (predictor.bbox_pred, 0.001)):
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)


# Forward hooks: floating outputs back to float32 under autocast (a no-op in float32). One per module, each
# typed with its module's forward signature, so that torch.jit.script compiles them with the model.
def _rpn_outputs_to_fp32(module, inputs: tuple[list[torch.Tensor]],
                         output: tuple[list[torch.Tensor], list[torch.Tensor]]
                         ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """RPNHead: (objectness logits per level, box deltas per level)."""
    return [_fp32(o) for o in output[0]], [_fp32(o) for o in output[1]]


def _predictor_outputs_to_fp32(module, inputs: tuple[torch.Tensor],
                               output: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """FastRCNNPredictor: (class logits, box deltas)."""
    return _fp32(output[0]), _fp32(output[1])


def _fp32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.is_floating_point() else tensor


def _with_frozen_batchnorm(resnet: nn.Module, arch: str, norm_layer: type[nn.Module] = FrozenBatchNorm2d) -> nn.Module:
    """The same ResNet rebuilt with FrozenBatchNorm2d (torchvision's detection norm layer) or
    FrozenStatsBatchNorm2d, weights and statistics copied."""
    frozen = getattr(torchvision.models, arch)(weights=None, norm_layer=norm_layer)
    frozen.fc = nn.Identity()
    # FrozenBatchNorm2d drops num_batches_tracked on load; nothing else may differ.
    result = frozen.load_state_dict(backbone_state_dict(resnet), strict=False)
    if result.missing_keys or [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]:
        raise RuntimeError(f"frozen-BN copy of {arch} does not match: {result}")
    return frozen


def _freeze_stages(resnet: nn.Module, trainable_layers: int) -> None:
    train = _STAGES[:trainable_layers] + (["bn1"] if trainable_layers == 5 else [])
    for name, param in resnet.named_parameters():
        if not any(name.startswith(stage) for stage in train):
            param.requires_grad_(False)


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> tuple[FasterRCNN, dict[str, Any]]:
    """Rebuild a fine-tuned detector from `best.pt` / `last.pt` without downloading anything.

    Returns (model in eval mode on `device`, meta): meta holds the checkpoint's entries other than the
    weights and optimizer state (config, detector settings, epoch, val metrics, versions, ...).
    """
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != CHECKPOINT_KIND or "detector" not in ckpt or "model" not in ckpt:
        raise BtcxrError(f"{path} is not a detector checkpoint written by `btcxr finetune` "
                         f"(found entries: {', '.join(sorted(map(str, ckpt))[:8])})")
    try:
        cfg = ModelConfig(**ckpt["detector"])
    except (TypeError, ValueError) as exc:
        raise BtcxrError(f"{path}: detector settings cannot be read by this btcxr version ({exc})") from exc
    # The trained weights replace everything: build without any init download.
    model = build_detector(dataclasses.replace(cfg, init="random", weights_file=None))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise BtcxrError(f"{path}: weights do not fit the detector its settings describe: "
                         f"{str(exc).splitlines()[0]}") from exc
    model.to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scaler", "rng")}
    return model, meta


def detector_settings(cfg: ModelConfig) -> dict[str, Any]:
    """What a checkpoint stores to rebuild the model: the resolved model config as a plain dict."""
    return dataclasses.asdict(resolve_model_config(cfg))


def detector_checkpoint(model: nn.Module, cfg: ModelConfig, **extra: Any) -> dict[str, Any]:
    """The checkpoint dict `load_detector` reads: weights, detector settings, versions, plus `extra`
    (config, epoch, step, metrics, optimizer, ...)."""
    return {"kind": CHECKPOINT_KIND, "model": model.state_dict(), "detector": detector_settings(cfg),
            "classes": list(VINDR_CLASSES), "versions": library_versions()} | extra
