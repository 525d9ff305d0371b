"""Settings of detection fine-tuning (Faster R-CNN + FPN on VinDr-CXR), one dataclass per YAML section.

The defaults are the paper's recipe (method.md, Stage 2): ResNet-50 + FPN at 640 px, stem and layer1 frozen,
frozen batch norm, SGD lr 0.005 momentum 0.9 weight decay 1e-4, 500 warm-up iterations from 0.001x then a
cosine to 1e-4, 50 epochs of batch 32, best epoch by validation AP50.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from btcxr.backbones import ARCHS
from btcxr.engine.runtime import AMP_MODES

SIZES_HINT = (224, 640, 1024)  # the settings we document; any size >= 64 works
NORMS = ("auto", "frozen", "bn")


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
    # "frozen": FrozenBatchNorm2d (the paper; statistics of the init kept), "bn": ordinary batch norm
    # (SyncBatchNorm under DDP), "auto": frozen for pretrained inits, bn for "random" (torchvision's rule:
    # frozen statistics of a random init would be an identity, i.e. no normalisation at all).
    norm: str = "auto"
    size: int = 640  # longest image side fed to the network (aspect kept, padded to a multiple of 32)
    # The paper's widths; smaller ones only make tiny CPU demos and tests fast.
    fpn_channels: int = 256
    box_head_dim: int = 1024  # width of the two shared fully connected layers (TwoMLPHead)
    rpn_batch_size_per_image: int = 256  # anchors sampled per image for the RPN loss
    box_batch_size_per_image: int = 512  # proposals sampled per image for the box-head loss
    box_score_thresh: float = 0.05  # detections kept at inference (COCO evaluation uses everything above)
    box_detections_per_img: int = 100  # COCO's maxDets

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.trainable_layers is not None and not 0 <= self.trainable_layers <= 5:
            raise ValueError(f"model.trainable_layers must be 0..5 or null, got {self.trainable_layers}")
        if self.norm not in NORMS:
            raise ValueError(f"model.norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.size < 64:
            raise ValueError(f"model.size must be at least 64, got {self.size}")
        if self.fpn_channels < 8 or self.box_head_dim < 8:
            raise ValueError("model.fpn_channels and model.box_head_dim must be at least 8")


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
    clip_grad: float | None = None  # max gradient norm (None: no clipping, as the paper)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("optim.epochs and optim.batch_size must be at least 1")
        if self.lr <= 0 or self.final_lr < 0 or self.warmup_iters < 0:
            raise ValueError("optim.lr must be > 0, optim.final_lr and optim.warmup_iters >= 0")


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
