"""Every knob of Barlow Twins pre-training, as dataclasses read by `btcxr.config.load_config`.

The defaults are the paper's recipe (docs/paper.md, Stage 1); `configs/pretrain/*.yaml` only spell out what a
setting changes or what a reader should see at a glance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from btcxr.backbones import ARCHS
from btcxr.engine.runtime import AMP_MODES
from btcxr.errors import BtcxrError

POLICIES = ("paper", "radiograph")
# barlow_twins: the method; supervised: the same backbone trained with the NIH labels of the cache (BCE over
# the 15 labels), the benchmark's positive control; vicreg, simclr, byol: the other self-supervised methods,
# their losses, heads and momentum updates from lightly (the `btcxr[methods]` extra). All write the same
# backbone.pth.
LIGHTLY_METHODS = ("vicreg", "simclr", "byol")
METHODS = ("barlow_twins", "supervised", *LIGHTLY_METHODS)


@dataclass
class ModelConfig:
    arch: str = "resnet50"
    # "imagenet" (torchvision weights enum, or `weights_file`), "random", or a path to a checkpoint /
    # backbone.pth / original Barlow Twins resnet50.pth / torchvision state dict.
    init: str = "imagenet"
    weights_file: str | None = None  # ImageNet weights on an offline machine (CLI --init-weights)
    imagenet_weights: str | None = None  # torchvision enum member; default IMAGENET1K_V2 for resnet50
    projector: list[int] = field(default_factory=lambda: [8192, 8192, 8192])
    size: int = 224  # the input size: side of the square views

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.size <= 0:
            raise ValueError(f"model.size must be positive, got {self.size}")
        if not self.projector or any(int(w) <= 0 for w in self.projector):
            raise ValueError(f"model.projector must list positive widths, got {self.projector!r}")


@dataclass
class OptimConfig:
    epochs: int = 800
    batch_size: int = 768  # global: split evenly over the ranks
    # Learning rates per 256 images; the run uses lr x batch_size / 256 (Barlow Twins recipe).
    lr_weights: float = 0.2
    lr_biases: float = 0.0048
    weight_decay: float = 1e-6
    momentum: float = 0.9
    eta: float = 0.001  # LARS trust coefficient
    warmup_epochs: float = 10.0
    final_lr_ratio: float = 0.001  # cosine ends at this fraction of the peak

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0:
            raise ValueError("optim.epochs and optim.batch_size must be positive")


@dataclass
class RadiographViewsConfig:
    """Radiograph-aware views: no hue/saturation, crops that keep anatomy, small rotations, contrast and
    gamma, a little blur and noise."""
    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.8, 1.25])
    flip_p: float = 0.5
    rotation_deg: float = 10.0
    jitter_p: float = 0.8
    brightness: float = 0.3
    contrast: float = 0.3
    gamma: list[float] = field(default_factory=lambda: [0.7, 1.4])
    gamma_p: float = 0.5
    blur_p: list[float] = field(default_factory=lambda: [0.5, 0.1])  # view 1, view 2
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 1.5])
    noise_p: float = 0.2
    noise_std: float = 0.02  # fraction of the full intensity range


@dataclass
class ViewsConfig:
    policy: str = "paper"  # paper | radiograph
    # Run the augmentations batched on the training device; the loader then only resizes and centre-crops
    # every image to `load_size` (default: model.size) and ships uint8 tensors.
    on_gpu: bool = False
    load_size: int | None = None
    radiograph: RadiographViewsConfig = field(default_factory=RadiographViewsConfig)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"views.policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")


@dataclass
class DataConfig:
    cache: str = ""  # a prepared cache (btcxr prepare); required
    # Manifest splits to pre-train on. null: the splits prepare recorded as safe for pre-training (train and
    # val): the NIH official test list stays out (the paper used all 112,120 images, which leaked into its
    # classification test).
    splits: list[str] | None = None
    workers: int = 8
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int = 4


@dataclass
class VICRegConfig:
    """VICReg (Bardes, Ponce and LeCun, ICLR 2022): the three coefficients of its ResNet-50 recipe."""
    sim_coeff: float = 25.0  # lambda: invariance (mean squared distance of the two views' embeddings)
    std_coeff: float = 25.0  # mu: variance (hinge on each dimension's std, at 1)
    cov_coeff: float = 1.0   # nu: covariance (off-diagonal covariances squared, over the dimension)


@dataclass
class SimCLRConfig:
    """SimCLR (Chen et al., ICML 2020): the NT-Xent temperature of its ImageNet runs."""
    temperature: float = 0.1


@dataclass
class BYOLConfig:
    """BYOL (Grill et al., NeurIPS 2020): the target network's momentum goes from momentum_base to 1 on a
    cosine over the run; the predictor is Linear-BN-ReLU-Linear back to the projector's output width."""
    momentum_base: float = 0.996
    predictor_hidden: int = 4096


@dataclass
class PretrainConfig:
    # The five run settings every training command has, in the same place (engine vocabulary).
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:1
    amp: str = "bf16"  # bf16 | fp16 | none (CUDA only; the loss itself is always fp32)
    log_every: int = 10  # steps between metrics rows
    tensorboard: bool = True
    name: str = "pretrain"
    method: str = "barlow_twins"  # barlow_twins | supervised | vicreg | simclr | byol
    lambd: float = 0.0051  # Barlow Twins: weight of the off-diagonal terms
    vicreg: VICRegConfig = field(default_factory=VICRegConfig)
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    byol: BYOLConfig = field(default_factory=BYOLConfig)
    channels_last: bool = True
    compile: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint_every_steps: int = 0  # 0: only at the end of each epoch
    # backbone_step<k>.pth at these steps (0: the init itself), for the probe curve against pre-training steps
    backbone_steps: list[int] = field(default_factory=list)
    corr_every_steps: int = 1000  # cross-correlation heatmap PNG; 0: only at the end
    collapse_std_threshold: float = 0.05  # warn when the normalised embedding spread drops below this
    # Monitors (pretrain/monitor.py) at step 0, every monitor_every steps and at the last step (0: off):
    # RankMe, embedding spread and (labelled caches) the k-NN probe on monitor_images val images, with
    # monitor_bank train images as the k-NN bank.
    monitor_every: int = 1000
    monitor_images: int = 512
    monitor_bank: int = 1024

    # Keys of older versions -> (where they live now, value conversion): run folders and configs written
    # before the one config vocabulary of every stage (optim.epochs, optim.batch_size, data.workers,
    # model.size) keep loading, with a warning naming the new key.
    MOVED: ClassVar[dict] = {"log_every_steps": ("log_every", None), "epochs": ("optim.epochs", None),
                             "batch_size": ("optim.batch_size", None), "data.num_workers": ("data.workers", None),
                             "views.size": ("model.size", None)}

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be at least 1, got {self.log_every}")
        if self.monitor_every < 0 or self.monitor_images < 2 or self.monitor_bank < 1:
            raise ValueError("monitor_every must be >= 0, monitor_images >= 2 and monitor_bank >= 1")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "supervised" and self.views.on_gpu:
            raise ValueError("method=supervised makes its views on the loader: set views.on_gpu=false")
        widths = [int(w) for w in self.model.projector]
        # lightly's heads: hidden layers of one width, then the output (BYOL: one hidden layer).
        if self.method in ("vicreg", "simclr") and (len(widths) < 2 or len(set(widths[:-1])) > 1):
            raise ValueError(f"method={self.method} needs model.projector = [hidden, ..., hidden, output] with "
                             f"at least two widths and one hidden width, got {widths}")
        if self.method == "byol" and len(widths) != 2:
            raise ValueError(f"method=byol needs model.projector = [hidden, output], got {widths}")
        if self.simclr.temperature <= 0 or not 0 <= self.byol.momentum_base <= 1 or self.byol.predictor_hidden < 1:
            raise ValueError("simclr.temperature must be positive, byol.momentum_base in [0, 1] and "
                             "byol.predictor_hidden positive")


def check_world(cfg: PretrainConfig, world_size: int) -> int:
    """Per-rank batch size; the global batch must split evenly over the ranks."""
    if cfg.optim.batch_size % world_size:
        raise BtcxrError(f"optim.batch_size {cfg.optim.batch_size} does not split over {world_size} ranks; "
                         f"use a multiple of {world_size}")
    return cfg.optim.batch_size // world_size
