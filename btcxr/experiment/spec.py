"""Experiment files for `btcxr reproduce`: what to compare, and the grid of runs that compares it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from btcxr.config import load_config
from btcxr.engine.paths import safe_name
from btcxr.errors import BtcxrError, cut


@dataclass
class SyntheticData:
    n_vindr: int = 400
    n_nih: int = 400
    size: int = 512          # side of the generated radiographs (original frame)
    seed: int = 0
    normal_fraction: float = 0.7  # share of VinDr images without findings (VinDr: about 70 %)


@dataclass
class DataSection:
    synthetic: SyntheticData | None = None   # generate data instead of reading real datasets
    vindr_root: str | None = None            # raw datasets, prepared into <out>/cache on first use
    nih_root: str | None = None
    vindr_cache: str | None = None           # or caches prepared earlier with `btcxr prepare`
    nih_cache: str | None = None
    cache_size: int = 640                    # longest side of cached images
    vindr_protocol: str = "btcxr"            # VinDr ground truth and split: btcxr | paper (prepare --protocol)
    pretrain_size: int = 224                 # NIH cache for pre-training and the probe


@dataclass
class StageSection:
    config: str = ""                         # the stage YAML: a packaged name (pretrain/demo) or a path, relative to the experiment file
    overrides: list[str] = field(default_factory=list)


@dataclass
class PretrainSection(StageSection):
    backbone: str | None = None              # an existing backbone.pth: skip pre-training


@dataclass
class CrossDomainSection(StageSection):
    """The offline stand-in for ImageNet (imagenet_fallback: natural): Barlow Twins from random init on
    dead-leaves pictures (`btcxr synth --layout natural`). config: a pretrain YAML ("" = pretrain.config,
    with pretrain.overrides first, then these overrides)."""
    n: int = 2000            # pictures generated
    size: int = 128          # their side
    cache_size: int = 64     # the cache pre-training reads
    seed: int = 0


@dataclass
class LocalisationSection:
    enabled: bool = True
    max_images: int = 50
    layer: str = "layer3"
    ratio: float = 0.5       # grad-cam's ratio_channels_to_ablate (0.5 ablates every channel)
    ablation_mode: str = "exact"  # or "box": faster, approximate (docs/explain.md)
    score_thr: float = 0.3
    inits: list[str] = field(default_factory=lambda: ["imagenet", "btcxr"])


@dataclass
class ProbeSection(StageSection):
    enabled: bool = True
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    mode: str = "freeze"
    # The probe curve: a linear (frozen) probe at this label fraction, first seed, of every intermediate
    # backbone (pretrain backbone_steps) of every init pre-trained in the experiment. null: no curve.
    curve_fraction: float | None = None


@dataclass
class Experiment:
    name: str = "experiment"
    data: DataSection = field(default_factory=DataSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    # The positive control (init spec "supervised"): pretrain.config and overrides with method=supervised,
    # then these overrides; it starts where our pre-training starts.
    supervised: StageSection = field(default_factory=StageSection)
    # The other self-supervised methods (init specs "vicreg", "simclr", "byol", through lightly): each its own
    # config (default pretrain.config), with pretrain.overrides, then method=<spec>, then its overrides; each
    # starts where our pre-training starts and runs on the same NIH cache.
    vicreg: StageSection = field(default_factory=StageSection)
    simclr: StageSection = field(default_factory=StageSection)
    byol: StageSection = field(default_factory=StageSection)
    cross_domain: CrossDomainSection = field(default_factory=CrossDomainSection)
    finetune: StageSection = field(default_factory=StageSection)
    # init name -> "imagenet" | "random" | "btcxr" (our pre-training) | "vicreg" | "simclr" | "byol" (the
    # other methods, pre-trained on the same data) | "supervised" (the same backbone
    # pre-trained with the NIH labels: the benchmark's positive control) | a backbone file
    inits: dict[str, str] = field(default_factory=lambda: {"imagenet": "imagenet", "btcxr": "btcxr",
                                                           "random": "random"})
    baseline: str = "imagenet"
    # When ImageNet weights cannot be loaded: "random" (drop or replace the ImageNet init), or "natural"
    # (pre-train the cross-domain stand-in and use it wherever ImageNet weights would be).
    imagenet_fallback: str | None = None
    imagenet_weights_file: str | None = None
    # Fine-tuning rules, a factor of the grid: "paper" (stem and layer1 frozen with frozen batch norm for a
    # pre-trained init, everything trainable for random: torchvision's rule) and "all" (every layer and
    # batch norm trainable for every init). all_rule_fractions: the fractions the "all" rule runs at
    # (null: every fraction).
    rules: list[str] = field(default_factory=lambda: ["paper"])
    all_rule_fractions: list[float] | None = None
    sizes: list[int] = field(default_factory=lambda: [640])
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # true: every seed pre-trains each pre-trained arm anew with that seed (the stand-in, ours, the
    # positive control), so that intervals and paired tests include the variance of pre-training; false:
    # one pre-training per arm, shared by every seed (the seeds then measure fine-tuning noise only).
    pretrain_per_seed: bool = False
    detection: bool = True
    localisation: LocalisationSection = field(default_factory=LocalisationSection)
    probe: ProbeSection = field(default_factory=ProbeSection)
    cam_examples: int = 3                    # test images shown in the report's CAM grid
    notes: list[str] = field(default_factory=list)  # shown at the top of the report (what the numbers are)


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    exp = load_config(Experiment, path, overrides)
    # Names become folder names (runs/experiments/<name>, runs/det_<init>_...): plain ones only, so no
    # name can leave the experiment folder or share another's run folder.
    for what, name in [("name", exp.name), *(("init", i) for i in exp.inits)]:
        if safe_name(name) != name:
            raise BtcxrError(f"{path}: {what} {cut(str(name))!r} cannot name a folder: use letters, digits, '.', "
                             "'_' and '-' (not starting with '.')")
    if exp.baseline not in exp.inits:
        raise BtcxrError(f"{path}: baseline {exp.baseline!r} is not one of the inits ({', '.join(exp.inits)})")
    if not exp.seeds or not exp.fractions or not exp.sizes:
        raise BtcxrError(f"{path}: seeds, fractions and sizes must each list at least one value")
    if not any(f > 0 for f in exp.fractions) or any(not 0 < f <= 1 for f in exp.fractions):
        raise BtcxrError(f"{path}: fractions must lie in (0, 1], got {exp.fractions}")
    unknown = [r for r in exp.rules if r not in RULES]
    if unknown or not exp.rules:
        raise BtcxrError(f"{path}: rules must list some of {', '.join(RULES)}, got {exp.rules}")
    return exp


# Fine-tuning rule -> the finetune overrides that make it ("paper" is the config's own auto rule).
RULES = {"paper": [], "all": ["model.trainable_layers=5", "model.norm=bn"]}


@dataclass(frozen=True)
class DetectionRun:
    """A Faster R-CNN fine-tuning run of the grid."""
    kind: ClassVar[str] = "detection"
    init: str
    size: int
    fraction: float
    seed: int
    rule: str = "paper"

    @property
    def run_id(self) -> str:
        rule = "" if self.rule == "paper" else f"_{self.rule}"
        return f"det_{self.init}_s{self.size}_f{self.fraction:g}_seed{self.seed}{rule}"

    @property
    def label(self) -> str:
        """How the report names the arm: the init, plus the rule when it is not the paper's."""
        return self.init if self.rule == "paper" else f"{self.init} ({self.rule} layers)"


@dataclass(frozen=True)
class ProbeRun:
    """An NIH probe run of the grid."""
    kind: ClassVar[str] = "probe"
    init: str
    fraction: float
    seed: int

    @property
    def run_id(self) -> str:
        return f"probe_{self.init}_f{self.fraction:g}_seed{self.seed}"


@dataclass(frozen=True)
class CurveRun:
    """A run of the probe curve: the frozen probe of an intermediate backbone (backbone_step<k>.pth)."""
    kind: ClassVar[str] = "probe_curve"
    init: str
    step: int
    backbone: Path

    @property
    def run_id(self) -> str:
        return f"curve_{self.init}_step{self.step}"


def probe_grid(exp: Experiment) -> list[ProbeRun]:
    """Every fraction x seed x init of the probe (none when it is disabled)."""
    if not exp.probe.enabled:
        return []
    return [ProbeRun(init, f, s) for f in exp.probe.fractions for s in exp.seeds for init in exp.inits]


def detection_grid(exp: Experiment) -> list[DetectionRun]:
    """Every init x size x fraction x seed under the paper's rule, and under the "all" rule where asked
    (random init is left out there: the paper's rule already trains all of it, with batch norm)."""
    runs = [DetectionRun(init, size, fraction, seed)
            for size in exp.sizes for fraction in exp.fractions for seed in exp.seeds for init in exp.inits]
    if "all" in exp.rules:
        fractions = exp.all_rule_fractions if exp.all_rule_fractions is not None else exp.fractions
        runs += [DetectionRun(init, size, fraction, seed, "all")
                 for size in exp.sizes for fraction in fractions for seed in exp.seeds for init in exp.inits
                 if exp.inits[init] != "random"]
    if "paper" not in exp.rules:
        runs = [r for r in runs if r.rule != "paper"]
    return runs


def shard(items: list, index: int, count: int) -> list:
    """The share of `items` that shard `index` of `count` runs (round robin, stable across launches)."""
    if count < 1 or not 0 <= index < count:
        raise BtcxrError(f"shard {index}/{count} is invalid: use 0 <= index < count")
    return [item for i, item in enumerate(items) if i % count == index]


def fingerprint(obj) -> str:
    """Short stable hash of settings, to tell a finished run from one made with other settings."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]
