"""Faster R-CNN + FPN over a ResNet from any init the toolkit supports (method.md, Stage 2).

torchvision's detector, assembled as `torchvision.models.detection.fasterrcnn_resnet50_fpn` assembles it,
but around our backbone (`btcxr.backbones.build_resnet`: ImageNet, random, backbone.pth, Barlow Twins
checkpoints): FPN with 256 channels on layer1..4 plus a max-pool level (5 levels), torchvision's default
anchors (32..512 px, one size per level, ratios 0.5/1/2 -- the paper's MMDetection anchors are scale 8 x
strides 4..64, the same boxes), MultiScaleRoIAlign 7x7, TwoMLPHead, 15 outputs (background + 14 findings).

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
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from btcxr.backbones import backbone_state_dict, build_resnet
from btcxr.data.classes import VINDR_CLASSES
from btcxr.detect.config import ModelConfig
from btcxr.engine.checkpoint import library_versions, load_checkpoint
from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)

NUM_OUTPUTS = len(VINDR_CLASSES) + 1  # background + 14 findings ("No finding" is not a detection class)
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# Stages trained for each `trainable_layers`, top first (torchvision's _resnet_fpn_extractor rule).
_STAGES = ["layer4", "layer3", "layer2", "layer1", "conv1"]
CHECKPOINT_KIND = "btcxr-detector"


class GrayscaleRCNNTransform(GeneralizedRCNNTransform):
    """torchvision's detector input transform for single-channel radiographs.

    Gray images are expanded to 3 channels (a view) right before the ImageNet normalisation, so the
    network stays a plain 3-channel torchvision model that external weights fit. An image whose longest
    side already equals the size setting is not resampled (min_size = max_size = size makes torchvision's
    own resize an identity there, at the cost of an interpolation).
    """

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        return super().normalize(image)

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None):
        if max(image.shape[-2:]) == self.max_size:
            return image, target
        return super().resize(image, target)


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """Fill the automatic choices: trainable layers 3 / frozen BN for pretrained inits, 5 / BN for random."""
    pretrained = cfg.init != "random"
    trainable = cfg.trainable_layers if cfg.trainable_layers is not None else (3 if pretrained else 5)
    norm = cfg.norm if cfg.norm != "auto" else ("frozen" if pretrained else "bn")
    return dataclasses.replace(cfg, trainable_layers=trainable, norm=norm)


def build_detector(cfg: ModelConfig) -> FasterRCNN:
    """Faster R-CNN + FPN with the backbone weights of `cfg.init` (see ModelConfig)."""
    cfg = resolve_model_config(cfg)
    resnet = build_resnet(cfg.arch, cfg.init, cfg.weights_file, cfg.imagenet_weights)
    if cfg.norm == "frozen":
        resnet = _with_frozen_batchnorm(resnet, cfg.arch)
    _freeze_stages(resnet, cfg.trainable_layers)
    in_stage2 = resnet.inplanes // 8  # 64 for resnet18/34, 256 for resnet50 (torchvision's rule)
    backbone = BackboneWithFPN(
        resnet,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[in_stage2 * 2**i for i in range(4)],
        out_channels=cfg.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    resolution = 7  # MultiScaleRoIAlign output (FasterRCNN's default box_roi_pool)
    box_head = TwoMLPHead(cfg.fpn_channels * resolution**2, cfg.box_head_dim)
    model = FasterRCNN(
        backbone,
        num_classes=None,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(cfg.box_head_dim, NUM_OUTPUTS),
        min_size=cfg.size,
        max_size=cfg.size,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_score_thresh=cfg.box_score_thresh,
        box_detections_per_img=cfg.box_detections_per_img,
    )
    # min_size = max_size = size: the longest side becomes `size` whatever the aspect; pad to 32.
    model.transform = GrayscaleRCNNTransform(cfg.size, cfg.size, IMAGENET_MEAN, IMAGENET_STD, size_divisible=32)
    # torchvision's BoxCoder decodes in the dtype of the regression outputs: under bf16 autocast anchors,
    # proposals, training targets and the final boxes would be bf16, i.e. rounded to 2-4 px at 640 px.
    model.rpn.head.register_forward_hook(_outputs_to_fp32)
    model.roi_heads.box_predictor.register_forward_hook(_outputs_to_fp32)
    return model


def _outputs_to_fp32(module: nn.Module, inputs: Any, output: Any) -> Any:
    """Forward hook: floating outputs (tensors, or lists/tuples of them) back to float32 under autocast."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    return type(output)(_outputs_to_fp32(module, inputs, o) for o in output)


def _with_frozen_batchnorm(resnet: nn.Module, arch: str) -> nn.Module:
    """The same ResNet rebuilt with FrozenBatchNorm2d (torchvision's detection norm layer), weights copied."""
    frozen = getattr(torchvision.models, arch)(weights=None, norm_layer=FrozenBatchNorm2d)
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
