"""The plan of an experiment: everything the stages need to know, computed once and never changed.

`btcxr.experiment.stages.make_plan` computes it from the experiment file, its overrides and the upstream
facts (which inits remain after the ImageNet check and its fallback, the baseline, the backbone file each
init uses, the notes, the caches' paths, every pre-training and every run of the grid with its config and
fingerprint). Every stage, the local launcher and each SLURM job (pickled by submitit) get the same plan
read-only: no job computes it again, and nothing fills it in later. What exists only after work done
later (the probe curve's intermediate backbones) is looked up on disk by the stage that needs it.

This module only defines the types; it imports no stage.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from btcxr.config_files import resolve_config
from btcxr.engine.io import ensure_dir
from btcxr.engine.paths import check_apart
from btcxr.experiment.spec import CurveRun, DetectionRun, Experiment, ProbeRun

K = TypeVar("K")
V = TypeVar("V")


class FrozenDict(Mapping[K, V], Generic[K, V]):
    """A read-only mapping that pickles (types.MappingProxyType does not)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()):
        object.__setattr__(self, "_items", dict(items))

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a FrozenDict cannot be changed")

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __repr__(self) -> str:
        return f"FrozenDict({self._items!r})"

    def __reduce__(self):
        return FrozenDict, (self._items,)


def stage_config(exp_path: Path, path: str, kind: str) -> Path | None:
    """A stage config an experiment file names: a path (relative to the working directory or to the
    experiment file: `../pretrain/demo.yaml`) or a packaged name (`pretrain/demo`); "" = the defaults."""
    return resolve_config(path, kind, Path(exp_path).parent) if path else None


# ------------------------------------------------------------------------------------- the units
@dataclass(frozen=True)
class Synthesis:
    """A synthetic dataset the data stage generates (btcxr synth) into `root`."""
    layout: str                      # vindr-kaggle | nih | natural
    root: Path
    key: str                         # fingerprint of its settings
    n: int
    size: int
    seed: int
    normal_fraction: float | None    # None for the dead-leaves pictures
    lock: str                        # the shared stage it belongs to: data | natural


@dataclass(frozen=True)
class CachePrep:
    """A cache the data stage prepares (btcxr prepare) from a raw folder into `path`."""
    dataset: str                     # vindr | nih | folder
    root: str
    size: int
    protocol: str
    path: Path
    key: str
    lock: str                        # data | natural


def slot(spec: str, seed: int | None = None) -> str:
    """The key of a backbone in the plan: the init spec, and the seed whose own pre-training made it
    (None: one pre-training that every seed shares)."""
    return spec if seed is None else f"{spec}@seed{seed}"


@dataclass(frozen=True)
class Pretraining:
    """One pre-training of the experiment: OUT/<name>, whose backbone.pth stands for init spec `spec`
    (at `seed` only, when every seed pre-trains its own: experiment option pretrain_per_seed)."""
    name: str                        # pretrain_natural | pretrain | pretrain_supervised [_seed<k>]
    spec: str                        # imagenet (the stand-in) | btcxr | supervised
    cfg: Any                         # its PretrainConfig (a copy goes to the trainer)
    key: str
    run_dir: Path
    seed: int | None = None          # the grid's seed it belongs to; None: shared by every seed

    @property
    def backbone(self) -> Path:
        from btcxr.pretrain.common import BACKBONE

        return self.run_dir / BACKBONE


@dataclass(frozen=True)
class GridRun:
    """One run of the grid: what it compares, its stage config and the fingerprint it is marked done with."""
    run: DetectionRun | ProbeRun | CurveRun
    cfg: Any                         # FinetuneConfig or ProbeConfig (a copy goes to the trainer)
    key: str

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def kind(self) -> str:
        return self.run.kind

    @property
    def init(self) -> str:
        return self.run.init


# -------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Plan:
    """An experiment, planned. Frozen: assigning to a field raises, and its mappings are FrozenDicts."""
    exp: Experiment                          # the experiment as read
    exp_path: Path
    out: Path                                # the experiment folder
    workers: int | None                      # processes for synthesis and preparation
    inits: FrozenDict[str, str]              # init name -> spec, after the ImageNet check and fallback
    baseline: str                            # the init the others are compared with
    renamed: FrozenDict[str, str]            # init dropped by the fallback -> the init standing in for it
    imagenet_replaced: str | None            # the init spec used instead of unavailable ImageNet weights
    notes: tuple[str, ...]                   # shown at the top of the report
    data_key: str                            # fingerprint of the data settings every run inherits
    vindr_cache: Path | None                 # the caches the runs read
    nih_cache: Path | None
    syntheses: tuple[Synthesis, ...]         # the data stage's work
    caches: tuple[CachePrep, ...]
    pretrainings: tuple[Pretraining, ...]    # the pre-training stage's work, in order
    backbones: FrozenDict[str, Path]         # slot(spec, seed) -> the backbone file a pre-training behind it writes
    backbone_keys: FrozenDict[str, str]      # slot(spec, seed) -> fingerprint of that pre-training (or file)
    configs: FrozenDict[str, Path]           # the configs the report shows: name -> config.yaml
    runs: tuple[GridRun, ...] = ()           # the grid (detection, then probe runs), in a stable order

    def __post_init__(self):
        for name in ("inits", "renamed", "backbones", "backbone_keys", "configs"):
            object.__setattr__(self, name, FrozenDict(getattr(self, name)))
        for name in ("notes", "syntheses", "caches", "pretrainings", "runs"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def make_folder(self) -> Path:
        """The experiment folder, created; refused when it is, holds or lies inside a raw dataset."""
        check_apart(self.out, [("data.vindr_root", self.exp.data.vindr_root), ("data.nih_root", self.exp.data.nih_root)],
                    "experiment folder")
        return ensure_dir(self.out, "experiment folder")

    def config(self, path: str, kind: str) -> Path | None:
        """A stage config the experiment names (see `stage_config`)."""
        return stage_config(self.exp_path, path, kind)

    def backbone(self, spec: str, seed: int | None = None) -> Path | None:
        """The backbone file init spec `spec` uses at `seed`: that seed's own pre-training, else the one
        every seed shares (None: the spec is not pre-trained or given in this experiment)."""
        return self.backbones.get(slot(spec, seed), self.backbones.get(spec))

    def backbone_key(self, spec: str, seed: int | None = None) -> str | None:
        return self.backbone_keys.get(slot(spec, seed), self.backbone_keys.get(spec))

    def run_dir(self, run_id: str) -> Path:
        return self.out / "runs" / run_id
