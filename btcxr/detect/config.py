"""Settings of detection fine-tuning (Faster R-CNN + FPN on VinDr-CXR), one dataclass per YAML section.

The training defaults are the paper's recipe (docs/paper.md, Stage 2): ResNet-50 + FPN at 640 px, stem and
layer1 frozen, SGD lr 0.005 momentum 0.9 weight decay 1e-4, 500 warm-up iterations from 0.001x then a cosine
to 1e-4, 50 epochs of batch 32, best epoch by validation AP50. The detector's own defaults are torchvision's
(frozen batch norm, torchvision anchors, proposal counts and initialisation); `configs/finetune/paper_*.yaml`
set the authors' MMDetection values where they differ (docs/paper.md lists each one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from btcxr.backbones import ARCHS
from btcxr.engine.runtime import AMP_MODES

SIZES_HINT = (224, 640, 1024)  # the settings we document; any size >= 64 works
# frozen_stats: the paper's rule (MMDetection norm_eval=True): statistics frozen, affine trained where the
# stage trains. See ModelConfig.norm.
NORMS = ("auto", "frozen", "frozen_stats", "bn")
PRETRAINED_NORMS = ("frozen", "frozen_stats")
ANCHOR_GRIDS = ("torchvision", "exact")
HEAD_INITS = ("torchvision", "mmdet")
FPN_LEVELS = 5  # layer1..4 + the max-pool level: one anchor size per level


@dataclass
class DataConfig:
    cache: str = ""  # a VinDr cache written by `btcxr prepare vindr`
    fraction: float = 1.0  # share of the training part with labels (nested subsets, see btcxr.data.splits)
    fraction_seed: int = 0  # seed of the nested label subsets (kept apart from the run seed)
    include_negatives: bool = False  # also train on all-normal images (the paper dropped them)
    # Validate and test on all-normal images too (false: images with findings only, as the paper; keep it
    # fixed when comparing runs trained with and without negatives).
    eval_negatives: bool = False
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"  # scored once with the best checkpoint after training ("" to skip)
    workers: int = 4
    aspect_groups: int = 3  # aspect-ratio bins per side of 1 for grouped batches (0: no grouping)

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"data.fraction must be in (0, 1], got {self.fraction}")
        if self.workers < 0 or self.aspect_groups < 0:
            raise ValueError("data.workers and data.aspect_groups must be >= 0")


@dataclass
class ModelConfig:
    arch: str = "resnet50"
    # "imagenet", "random", or a file: our backbone.pth, a pre-training checkpoint, the original Barlow Twins
    # resnet50.pth / checkpoint.pth, a BarlowTwins-CXR checkpoint or a torchvision state dict.
    init: str = "imagenet"
    weights_file: str | None = None  # ImageNet weights from a local file (offline machines)
    imagenet_weights: str | None = "IMAGENET1K_V1"  # the paper's ImageNet baseline used V1 weights
    # Backbone stages trained, counted from the top (torchvision's rule): 3 = layer2..4 (stem and layer1
    # frozen, as the paper). None: 3 for pretrained inits, 5 (everything) for "random".
    trainable_layers: int | None = None
    # Batch norm of the backbone:
    #   "frozen": FrozenBatchNorm2d, statistics and affine weights of the init kept (torchvision's rule);
    #   "frozen_stats": statistics of the init kept, affine weight and bias trained in the trained stages
    #     (the paper's MMDetection rule: norm_cfg requires_grad=True, norm_eval=True);
    #   "bn": ordinary batch norm (SyncBatchNorm under CUDA DDP);
    #   "auto": `pretrained_norm` for pretrained inits, "bn" for "random" (frozen statistics of a random
    #     init would be an identity, i.e. no normalisation at all).
    norm: str = "auto"
    pretrained_norm: str = "frozen"  # what "auto" gives a pretrained init: frozen | frozen_stats
    size: int = 640  # longest image side fed to the network (aspect kept, padded to a multiple of 32)
    # The paper's widths; smaller ones only make tiny CPU demos and tests fast.
    fpn_channels: int = 256
    box_head_dim: int = 1024  # width of the two shared fully connected layers (TwoMLPHead)
    # "torchvision": torchvision's init of the FPN and box head; "mmdet": MMDetection's (Xavier-uniform FPN
    # convs and shared FCs, classifier N(0, 0.01), box regressor N(0, 0.001), biases 0).
    head_init: str = "torchvision"

    # Anchors: one size per FPN level (strides 4, 8, 16, 32, 64), every ratio (height / width) at each.
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    anchor_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    # "torchvision": base anchors rounded to whole pixels, each level's stride = padded image size // its
    # feature size (64 px only when the padded side is a multiple of 64); "exact": unrounded anchors on the
    # levels' true strides (MMDetection 2.x).
    anchor_grid: str = "torchvision"

    # Region proposal network (torchvision's defaults).
    rpn_fg_iou_thresh: float = 0.7  # anchors at or above: positive
    rpn_bg_iou_thresh: float = 0.3  # anchors below: negative (in between: ignored)
    # Every ground-truth box also makes its best anchors positive; they need at least this IoU (0:
    # torchvision's rule, any IoU; MMDetection's min_pos_iou).
    rpn_min_pos_iou: float = 0.0
    rpn_batch_size_per_image: int = 256  # anchors sampled per image for the RPN loss
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_top_n_train: int = 2000  # proposals per FPN level before NMS (MMDetection's nms_pre)
    rpn_post_nms_top_n_train: int = 2000  # proposals per image after NMS (MMDetection's max_per_img)
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_box_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])  # 1 / target_stds

    # RoI pooling: MultiScaleRoIAlign 7x7 on levels 0-3; sampling points per bin (0: adaptive, as
    # MMDetection); aligned: the half-pixel-corrected RoIAlign (MMDetection 2.x, Detectron2).
    roi_sampling_ratio: int = 2
    roi_aligned: bool = False

    # Box head (torchvision's defaults).
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512  # proposals sampled per image for the box-head loss
    box_positive_fraction: float = 0.25
    box_reg_weights: list[float] = field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])  # 1 / target_stds
    box_score_thresh: float = 0.05  # detections kept at inference (COCO evaluation uses everything above)
    box_nms_thresh: float = 0.5  # per-class NMS of the detections
    box_detections_per_img: int = 100  # COCO's maxDets

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.trainable_layers is not None and not 0 <= self.trainable_layers <= 5:
            raise ValueError(f"model.trainable_layers must be 0..5 or null, got {self.trainable_layers}")
        _one_of("norm", self.norm, NORMS)
        _one_of("pretrained_norm", self.pretrained_norm, PRETRAINED_NORMS)
        _one_of("head_init", self.head_init, HEAD_INITS)
        _one_of("anchor_grid", self.anchor_grid, ANCHOR_GRIDS)
        if self.size < 64:
            raise ValueError(f"model.size must be at least 64, got {self.size}")
        if self.fpn_channels < 8 or self.box_head_dim < 8:
            raise ValueError("model.fpn_channels and model.box_head_dim must be at least 8")
        self._check_detector_settings()

    def _check_detector_settings(self) -> None:
        if len(self.anchor_sizes) != FPN_LEVELS or any(s <= 0 for s in self.anchor_sizes):
            raise ValueError(f"model.anchor_sizes must list {FPN_LEVELS} positive sizes (one per FPN level), "
                             f"got {self.anchor_sizes}")
        if not self.anchor_ratios or any(r <= 0 for r in self.anchor_ratios):
            raise ValueError(f"model.anchor_ratios must list positive ratios, got {self.anchor_ratios}")
        for name in ("rpn_box_weights", "box_reg_weights"):
            weights = getattr(self, name)
            if len(weights) != 4 or any(w <= 0 for w in weights):
                raise ValueError(f"model.{name} must be 4 positive weights (x, y, w, h), got {weights}")
        for name in ("rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "rpn_min_pos_iou", "rpn_positive_fraction",
                     "rpn_nms_thresh", "box_fg_iou_thresh", "box_bg_iou_thresh", "box_positive_fraction",
                     "box_score_thresh", "box_nms_thresh"):
            _unit_interval(name, getattr(self, name))
        for prefix in ("rpn", "box"):
            fg, bg = getattr(self, f"{prefix}_fg_iou_thresh"), getattr(self, f"{prefix}_bg_iou_thresh")
            if bg > fg:
                raise ValueError(f"model.{prefix}_bg_iou_thresh ({bg}) must not exceed "
                                 f"model.{prefix}_fg_iou_thresh ({fg})")
        for name in ("rpn_batch_size_per_image", "box_batch_size_per_image", "rpn_pre_nms_top_n_train",
                     "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test",
                     "box_detections_per_img"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if self.roi_sampling_ratio < 0:
            raise ValueError(f"model.roi_sampling_ratio must be >= 0 (0: adaptive), got {self.roi_sampling_ratio}")


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"model.{name} must be one of {', '.join(allowed)}, got {value!r}")


def _unit_interval(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"model.{name} must be in [0, 1], got {value}")


@dataclass
class OptimConfig:
    epochs: int = 50
    batch_size: int = 32  # global batch, split evenly over the DDP ranks
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_factor: float = 0.001  # warm-up starts at lr * warmup_factor
    final_lr: float = 1e-4  # the cosine ends here at the last iteration
    # step: the cosine moves every iteration; epoch: once an epoch, as MMDetection's CosineAnnealing
    # (by_epoch=True) in the paper's detector, where it never quite reaches final_lr
    cosine_by: str = "step"
    clip_grad: float | None = None  # max gradient norm (None: no clipping, as the paper)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("optim.epochs and optim.batch_size must be at least 1")
        if self.lr <= 0 or self.final_lr < 0 or self.warmup_iters < 0:
            raise ValueError("optim.lr must be > 0, optim.final_lr and optim.warmup_iters >= 0")
        if self.cosine_by not in ("step", "epoch"):
            raise ValueError(f"optim.cosine_by must be step or epoch, got {self.cosine_by!r}")


@dataclass
class TrainConfig:
    hflip: float = 0.5  # horizontal flip probability
    eval_every: int = 1  # epochs between validation AP50 evaluations (the last epoch is always evaluated)

    def __post_init__(self) -> None:
        if not 0 <= self.hflip <= 1:
            raise ValueError(f"train.hflip must be in [0, 1], got {self.hflip}")
        if self.eval_every < 1:
            raise ValueError("train.eval_every must be at least 1")


@dataclass
class FinetuneConfig:
    # The five run settings every training command has, in the same place (engine vocabulary).
    seed: int = 0
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:1
    amp: str = "bf16"  # mixed precision on CUDA: bf16, fp16 (with a gradient scaler) or none; CPU runs fp32
    log_every: int = 20  # iterations between train metrics rows
    tensorboard: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # Keys of older versions -> (where they live now, value conversion).
    MOVED: ClassVar[dict] = {f"train.{key}": (key, None)
                             for key in ("seed", "device", "amp", "log_every", "tensorboard")}

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be at least 1, got {self.log_every}")
