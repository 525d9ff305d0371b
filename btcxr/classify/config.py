"""Settings of the NIH classification evaluation (linear probe or fine-tune), one dataclass per YAML section.

The defaults are the paper's recipe (docs/paper.md, Stage 1b): ResNet-50 at 224 px, 30 epochs, batch 64,
SGD momentum 0.9 with a cosine schedule, classifier lr 0.5, backbone lr 0 when frozen, weight decay 1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from btcxr.backbones import ARCHS
from btcxr.engine.runtime import AMP_MODES

MODES = ("freeze", "finetune")
SELECT_ON = ("val", "test")


@dataclass
class DataConfig:
    cache: str = ""  # an NIH cache written by `btcxr prepare nih`
    fraction: float = 1.0  # share of the training part with labels (1 %, 10 %, 100 % in the paper)
    fraction_seed: int = 0  # seed of the nested, stratified label subsets (kept apart from the run seed)
    workers: int = 4
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"data.fraction must be in (0, 1], got {self.fraction}")
        if self.workers < 0:
            raise ValueError(f"data.workers must be >= 0, got {self.workers}")


@dataclass
class ModelConfig:
    arch: str = "resnet50"
    # The backbone evaluated: "imagenet", "random", or a file (backbone.pth, a pre-training checkpoint, a
    # torchvision ResNet state dict). `btcxr probe --backbone X` sets it.
    init: str = "imagenet"
    weights_file: str | None = None  # ImageNet weights from a local file (offline machines; --init-weights)
    # torchvision weights name for init=imagenet; None: the paper's (IMAGENET1K_V2 for ResNet-50)
    imagenet_weights: str | None = None
    size: int = 224  # the input size: side of the square input

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.size < 16:
            raise ValueError(f"model.size must be at least 16, got {self.size}")
        if not self.init:
            raise ValueError("model.init must name an init: imagenet, random or a backbone file")


@dataclass
class ProbeOptions:
    mode: str = "freeze"  # "freeze": linear evaluation; "finetune": backbone trained too
    # freeze only: extract the features of every split once (no training augmentation), then train the
    # linear head on tensors. Much faster; with false, each epoch runs the frozen backbone on augmented
    # images.
    cache_features: bool = True
    # The split whose mean AUROC picks the epoch kept. "test" is what the authors' evaluate.py did (its only
    # evaluation split was its test part); it makes the test AUROC optimistic and is logged as a warning.
    select_on: str = "val"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"probe.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.select_on not in SELECT_ON:
            raise ValueError(f"probe.select_on must be one of {', '.join(SELECT_ON)}, got {self.select_on!r}")


@dataclass
class OptimConfig:
    epochs: int = 30
    batch_size: int = 64
    lr_head: float = 0.5  # the paper also used 0.3 and 0.1
    lr_backbone: float = 0.01  # finetune only; a frozen backbone has none
    momentum: float = 0.9
    weight_decay: float = 1e-6
    warmup_epochs: int = 0  # linear warm-up before the cosine (0 in the paper)
    # step: the cosine moves every step; epoch: once an epoch, as CosineAnnealingLR(T_max=epochs) stepped
    # after each epoch in the authors' evaluate.py
    cosine_by: str = "step"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("optim.epochs and optim.batch_size must be at least 1")
        if self.lr_head <= 0 or self.lr_backbone < 0:
            raise ValueError("optim.lr_head must be > 0 and optim.lr_backbone >= 0")
        if self.cosine_by not in ("step", "epoch"):
            raise ValueError(f"optim.cosine_by must be step or epoch, got {self.cosine_by!r}")


@dataclass
class AugmentConfig:
    # Training views as in the Barlow Twins evaluation script: RandomResizedCrop + horizontal flip.
    train: bool = True
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    flip: float = 0.5

    def __post_init__(self) -> None:
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"augment.crop_scale must be [min, max] with 0 < min <= max <= 1, "
                             f"got {self.crop_scale}")
        if not 0 <= self.flip <= 1:
            raise ValueError(f"augment.flip must be a probability, got {self.flip}")


@dataclass
class ProbeConfig:
    # The five run settings every training command has, in the same place (engine vocabulary).
    seed: int = 0  # head init, shuffling, augmentation
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1"
    amp: str = "bf16"  # mixed precision on CUDA: bf16 | fp16 | none (the CPU runs fp32)
    log_every: int = 10  # steps between train metrics rows
    tensorboard: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    probe: ProbeOptions = field(default_factory=ProbeOptions)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    # Keys of older versions -> (where they live now, value conversion): old run folders and configs keep
    # loading, with a warning naming the new key (model.size is every stage's input size).
    MOVED: ClassVar[dict] = {"optim.amp": ("amp", lambda on: "bf16" if on else "none"),
                             "data.input_size": ("model.size", None)}

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be at least 1, got {self.log_every}")
