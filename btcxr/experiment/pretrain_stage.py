"""The pre-training stage, and the ImageNet check with its fallback policy that decides what it pre-trains.

`choose_inits` checks whether the ImageNet weights an init needs can be loaded here, and applies the
experiment's `imagenet_fallback` when they cannot ("random": drop or replace the ImageNet init; "natural":
pre-train the cross-domain stand-in and use it wherever ImageNet weights would be). `plan_pretrainings`
lists the pre-trainings (the stand-in, ours, the other methods, the supervised positive control) with their configs and
fingerprints; `run_pretrain` runs them where the process's role allows, else checks they finished.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

from btcxr.config import config_to_dict, load_config
from btcxr.engine.run import CHECKPOINT, CONFIG
from btcxr.errors import BtcxrError
from btcxr.experiment.markers import Role, is_done, mark_done, must_run, stage_lock
from btcxr.experiment.plan import CachePrep, FrozenDict, Plan, Pretraining, Synthesis, slot, stage_config
from btcxr.experiment.spec import Experiment, StageSection, fingerprint
from btcxr.pretrain.config import LIGHTLY_METHODS

log = logging.getLogger(__name__)


def method_section(exp: Experiment, method: str) -> StageSection:
    """The config and overrides of another self-supervised method's pre-training (init spec `method`):
    its section's config, else pretrain.config, with pretrain.overrides, method=<method>, then its own."""
    own = getattr(exp, method)
    return StageSection(config=own.config or exp.pretrain.config,
                        overrides=[*exp.pretrain.overrides, f"method={method}", *own.overrides])


# ------------------------------------------------------------------------------ the ImageNet check
@dataclass(frozen=True)
class InitChoice:
    """The inits an experiment compares once the ImageNet check and its fallback are applied."""
    inits: FrozenDict[str, str]
    baseline: str
    renamed: FrozenDict[str, str] = field(default_factory=FrozenDict)  # dropped init -> the one standing in
    replaced: str | None = None     # the init spec used instead of the ImageNet weights (fallback random)
    stand_in: bool = False          # the cross-domain stand-in is pre-trained and used as "imagenet"
    note: str | None = None         # what the report says about it


def archs(exp: Experiment, exp_path: Path) -> set[str]:
    """The ResNet depths that would load ImageNet weights in this experiment."""
    from btcxr.classify.config import ProbeConfig
    from btcxr.detect.config import FinetuneConfig
    from btcxr.pretrain.config import PretrainConfig

    specs = set(exp.inits.values())
    stages = [(exp.detection, FinetuneConfig, exp.finetune, "finetune"),
              (exp.probe.enabled, ProbeConfig, exp.probe, "probe"),
              ("btcxr" in specs and not exp.pretrain.backbone, PretrainConfig, exp.pretrain, "pretrain"),
              *((m in specs, PretrainConfig, method_section(exp, m), "pretrain") for m in LIGHTLY_METHODS)]
    return {load_config(cls, stage_config(exp_path, section.config, kind), section.overrides).model.arch
            for used, cls, section, kind in stages if used}


def imagenet_unavailable(exp: Experiment, arch_names: set[str]) -> str | None:
    """Why the ImageNet weights of an init cannot be loaded here (None: they can, or no init uses them)."""
    from btcxr.backbones import build_resnet

    if "imagenet" not in exp.inits.values():
        return None
    try:
        for arch in sorted(arch_names):
            build_resnet(arch, "imagenet", weights_file=exp.imagenet_weights_file)
    except BtcxrError as exc:
        if not exp.imagenet_fallback:
            raise BtcxrError(f"{exc} (or set imagenet_fallback: random in the experiment file)") from exc
        return str(exc).split(" (")[0]
    return None


def choose_inits(exp: Experiment, exp_path: Path, arch_names: set[str] | None = None) -> InitChoice:
    """The experiment's inits, with the configured fallback in place of the ImageNet init when its weights
    cannot be loaded here. `arch_names`: the depths to check (default: those the stage configs use)."""
    inits = dict(exp.inits)
    reason = imagenet_unavailable(exp, archs(exp, exp_path) if arch_names is None else arch_names)
    if reason is None:
        return InitChoice(FrozenDict(inits), exp.baseline)
    fallback = exp.imagenet_fallback
    if fallback == "natural":
        note = (f"ImageNet weights could not be loaded here ({reason}). 'imagenet' is the offline "
                f"stand-in instead: Barlow Twins from random init on {exp.cross_domain.n} "
                "dead-leaves pictures (btcxr synth --layout natural); pre-training on radiographs "
                "starts from it, as the paper's starts from ImageNet.")
        log.warning("%s", note)
        return InitChoice(FrozenDict(inits), exp.baseline, stand_in=True, note=note)
    names = [n for n, spec in inits.items() if spec == "imagenet"]
    baseline, renamed = exp.baseline, {}
    if fallback in inits.values():
        # The fallback init is already compared: ImageNet runs would only repeat it.
        stand_in = next(n for n, s in inits.items() if s == fallback)
        for name in names:
            del inits[name]
            renamed[name] = stand_in
        if baseline in names:
            baseline = stand_in
        note = (f"ImageNet weights could not be loaded here ({reason}). The ImageNet init was "
                f"dropped and '{baseline}' ({fallback} init) is the baseline instead; pre-training "
                f"also starts from {fallback} init.")
    else:
        for name in names:
            inits[name] = fallback
        note = (f"ImageNet weights could not be loaded here ({reason}): the '{'/'.join(names)}' "
                f"init was replaced by {fallback} init, and pre-training starts from it too.")
    log.warning("%s", note)
    return InitChoice(FrozenDict(inits), baseline, FrozenDict(renamed), replaced=fallback, note=note)


# ---------------------------------------------------------------------------------- the plan's part
@dataclass(frozen=True)
class PretrainPlan:
    """What the pre-training stage contributes to the plan."""
    pretrainings: tuple[Pretraining, ...]
    backbones: FrozenDict[str, Path]       # init spec -> backbone file (pre-trained here, or given)
    backbone_keys: FrozenDict[str, str]
    configs: FrozenDict[str, Path]         # the pre-trainings' config.yaml the report shows


def plan_pretrainings(exp: Experiment, exp_path: Path, out: Path, choice: InitChoice, *, nih_cache: Path | None,
                      data_key: str, natural: tuple[Synthesis, CachePrep] | None = None) -> PretrainPlan:
    """The stand-in (when `natural` is given), our pre-training ("btcxr", unless a backbone file is given),
    the other methods ("vicreg", "simclr", "byol") and the positive control ("supervised"), each when compared: their configs and fingerprints. Once for
    all seeds, or with exp.pretrain_per_seed once per seed of the grid, with that seed (the stand-in of a
    seed is where that seed's other pre-trainings start)."""
    from btcxr.pretrain.config import PretrainConfig

    pretrainings: list[Pretraining] = []
    backbones: dict[str, Path] = {}
    keys: dict[str, str] = {}
    configs: dict[str, Path] = {}
    specs = set(choice.inits.values())
    if "btcxr" in specs and exp.pretrain.backbone:
        path = Path(exp.pretrain.backbone)
        if not path.is_file():
            raise BtcxrError(f"{exp_path}: pretrain.backbone {path} does not exist")
        stat = path.stat()
        backbones["btcxr"] = path
        keys["btcxr"] = fingerprint({"file": str(path), "bytes": stat.st_size, "mtime": stat.st_mtime})

    # the configs the report shows
    shown = {"btcxr": "pretrain", "supervised": "pretrain (supervised)", **{m: f"pretrain ({m})" for m in LIGHTLY_METHODS}}

    def add(name: str, spec: str, config: Path | None, overrides: list[str], data: str, seed: int | None) -> None:
        cfg = start(load_config(PretrainConfig, config, [*overrides, *([f"seed={seed}"] if seed is not None else [])]),
                    seed)
        settings = {"config": config_to_dict(cfg), "data": data}
        stand_in = slot("imagenet", seed)
        if stand_in in backbones and cfg.model.init == str(backbones[stand_in]):
            settings["start"] = keys[stand_in]  # a redone stand-in redoes what starts from it
        name = name if seed is None else f"{name}_seed{seed}"
        unit = Pretraining(name, spec, cfg, fingerprint(settings), out / name, seed)
        pretrainings.append(unit)
        backbones[slot(spec, seed)], keys[slot(spec, seed)] = unit.backbone, unit.key
        if spec in shown and seed in (None, exp.seeds[0]):  # per seed: the first seed's config
            configs[shown[spec]] = unit.run_dir / CONFIG

    def start(cfg, seed: int | None):
        """A pre-training that starts from ImageNet starts from whatever stands in for it here."""
        if cfg.model.init == "imagenet":
            if slot("imagenet", seed) in backbones:
                cfg.model.init = str(backbones[slot("imagenet", seed)])
            elif choice.replaced:
                cfg.model.init = choice.replaced
            elif exp.imagenet_weights_file:
                cfg.model.weights_file = exp.imagenet_weights_file
        return cfg

    base = stage_config(exp_path, exp.pretrain.config, "pretrain")
    for seed in exp.seeds if exp.pretrain_per_seed else [None]:
        if natural is not None:  # the ImageNet stand-in: Barlow Twins from random init on the dead-leaves cache
            cd, (synthesis, cache) = exp.cross_domain, natural
            add("pretrain_natural", "imagenet", stage_config(exp_path, cd.config or exp.pretrain.config, "pretrain"),
                [*exp.pretrain.overrides, *cd.overrides, f"data.cache={cache.path}", "model.init=random"],
                synthesis.key, seed)
        if "btcxr" in specs and not exp.pretrain.backbone:
            add("pretrain", "btcxr", base, [*exp.pretrain.overrides, f"data.cache={nih_cache}"], data_key, seed)
        for method in (m for m in LIGHTLY_METHODS if m in specs):
            section = method_section(exp, method)
            add(f"pretrain_{method}", method, stage_config(exp_path, section.config, "pretrain"),
                [*section.overrides, f"data.cache={nih_cache}"], data_key, seed)
        if "supervised" in specs:
            add("pretrain_supervised", "supervised", stage_config(exp_path, exp.supervised.config, "pretrain") or base,
                [*exp.pretrain.overrides, "method=supervised", *exp.supervised.overrides, f"data.cache={nih_cache}"],
                data_key, seed)
    return PretrainPlan(tuple(pretrainings), FrozenDict(backbones), FrozenDict(keys), FrozenDict(configs))


# --------------------------------------------------------------------------------------- the stage
def pending(plan: Plan) -> bool:
    """True while some pre-training of the plan is not finished."""
    return not all(is_done(p.run_dir, p.key) for p in plan.pretrainings)


def run_pretrain(plan: Plan, role: Role) -> None:
    """Run (or find finished, or resume) each pre-training of the plan, in order (the stand-in first: the
    others start from it), where `role` allows the stage; elsewhere check each finished."""
    from btcxr.pretrain.run import pretrain

    for unit in plan.pretrainings:
        with stage_lock(plan.out, unit.name, role):
            if not is_done(unit.run_dir, unit.key) and must_run(role, "pretrain", unit.run_dir):
                log.info("%s: pre-training (%s, from %s)", unit.name, unit.cfg.method, unit.cfg.model.init)
                pretrain(copy.deepcopy(unit.cfg), unit.run_dir, resume=(unit.run_dir / CHECKPOINT).exists())
                mark_done(unit.run_dir, unit.key, backbone=unit.backbone)
