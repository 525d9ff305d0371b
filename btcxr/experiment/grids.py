"""The grids of runs: detection fine-tuning (init x size x fraction x seed x rule), the NIH probe (init x
fraction x seed) and the probe curve (one frozen probe per intermediate backbone of each pre-training).

Every run goes through one skeleton (`run_grid_run`): skip it when its folder is marked done with its
fingerprint (its config plus what it inherits: the data and the pre-training behind its init), else start
or resume it in OUT/runs/<run id>, train, mark it done. The detection and probe runs are in the plan; the
curve's backbones exist only once pre-training ran, so `curve_runs` looks them up on disk.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from btcxr.config import config_to_dict, load_config
from btcxr.experiment.markers import is_done, mark_done, start_run
from btcxr.experiment.plan import GridRun, Plan
from btcxr.experiment.spec import (
    RULES,
    CurveRun,
    DetectionRun,
    ProbeRun,
    detection_grid,
    fingerprint,
    probe_grid,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- configs
def init_spec(plan: Plan, name: str, seed: int) -> tuple[str, str | None]:
    """(model init, ImageNet weights file) of an init name of the experiment at a seed of the grid."""
    spec = plan.inits[name]
    backbone = plan.backbone(spec, seed)
    if backbone is not None:  # pre-trained in this experiment (ours, the positive control, the stand-in)
        return str(backbone), None
    if spec == "imagenet":
        return "imagenet", plan.exp.imagenet_weights_file
    return spec, None


def _run_overrides(plan: Plan, init: str, fraction: float, seed: int) -> list[str]:
    """What a fine-tuning and a probe run of the grid set alike (one config vocabulary for both)."""
    model_init, weights = init_spec(plan, init, seed)
    overrides = [f"data.fraction={fraction}", f"seed={seed}", f"model.init={model_init}"]
    if weights:
        overrides.append(f"model.weights_file={weights}")
    return overrides


def detection_config(plan: Plan, run: DetectionRun):
    from btcxr.detect.config import FinetuneConfig

    exp = plan.exp
    overrides = [*exp.finetune.overrides, *_run_overrides(plan, run.init, run.fraction, run.seed),
                 f"data.cache={plan.vindr_cache}", f"model.size={run.size}", *RULES[run.rule]]
    return load_config(FinetuneConfig, plan.config(exp.finetune.config, "finetune"), overrides)


def probe_config(plan: Plan, run: ProbeRun):
    from btcxr.classify.config import ProbeConfig

    probe = plan.exp.probe
    overrides = [*probe.overrides, *_run_overrides(plan, run.init, run.fraction, run.seed),
                 f"data.cache={plan.nih_cache}", f"probe.mode={probe.mode}"]
    return load_config(ProbeConfig, plan.config(probe.config, "probe"), overrides)


def curve_config(plan: Plan, run: CurveRun):
    """The probe config at the curve's fraction, first seed, on the frozen features of an intermediate backbone."""
    cfg = probe_config(plan, ProbeRun(run.init, plan.exp.probe.curve_fraction, plan.exp.seeds[0]))
    cfg.model.init, cfg.probe.mode = str(run.backbone), "freeze"  # linear evaluation of the frozen features
    return cfg


RUN_CONFIGS = {"detection": detection_config, "probe": probe_config, "probe_curve": curve_config}


def run_key(plan: Plan, init: str, cfg) -> str:
    """The run's config plus what it inherits: the data, and the pre-training behind its init (at the
    run's seed)."""
    backbone = plan.backbone_key(plan.inits.get(init, ""), cfg.seed)
    return fingerprint({"settings": config_to_dict(cfg), "data": plan.data_key, "backbone": backbone})


def grid_run(plan: Plan, run: DetectionRun | ProbeRun | CurveRun) -> GridRun:
    """A run with its config and fingerprint."""
    cfg = RUN_CONFIGS[run.kind](plan, run)
    return GridRun(run, cfg, run_key(plan, run.init, cfg))


# ------------------------------------------------------------------------------------------- grids
def plan_grid(plan: Plan) -> tuple[GridRun, ...]:
    """Every detection run (of the inits the plan kept), then every probe run, in a stable order."""
    exp = plan.exp
    runs: list[Any] = [r for r in detection_grid(exp) if r.init in plan.inits] if exp.detection else []
    runs += [r for r in probe_grid(exp) if r.init in plan.inits]
    return tuple(grid_run(plan, r) for r in runs)


def detection_runs(plan: Plan) -> list[GridRun]:
    return [r for r in plan.runs if r.kind == "detection"]


def probe_runs(plan: Plan) -> list[GridRun]:
    return [r for r in plan.runs if r.kind == "probe"]


def curve_runs(plan: Plan) -> list[GridRun]:
    """The probe curve, from disk: each intermediate backbone (backbone_step<k>.pth) of each init
    pre-trained in this experiment (the first seed's pre-training), by init then step."""
    probe = plan.exp.probe
    if not (probe.enabled and probe.curve_fraction):
        return []
    runs = []
    for init, spec in plan.inits.items():
        backbone = plan.backbone(spec, plan.exp.seeds[0])
        if backbone is not None:
            for path in backbone.parent.glob("backbone_step*.pth"):
                runs.append(CurveRun(init, int(path.stem.removeprefix("backbone_step")), path))
    return [grid_run(plan, r) for r in sorted(runs, key=lambda r: (r.init, r.step))]


# ---------------------------------------------------------------------------------------- skeleton
def _describe(run: DetectionRun | ProbeRun | CurveRun) -> str:
    if isinstance(run, DetectionRun):
        return (f"fine-tuning (init {run.init}, {run.size} px, {run.fraction:g} of the labels, seed "
                f"{run.seed})")
    if isinstance(run, CurveRun):
        return f"NIH probe of the backbone after {run.step} pre-training steps"
    return "NIH probe"


def _train(kind: str) -> Callable[..., Any]:
    """The stage's entry point, looked up at the call (tests replace it)."""
    if kind == "detection":
        from btcxr.detect.train import finetune

        return finetune
    from btcxr.classify.train import probe

    return probe


def run_grid_run(plan: Plan, run: GridRun) -> None:
    """Run one run of a grid, or find it finished; an interrupted run resumes."""
    run_dir = plan.run_dir(run.run_id)
    if is_done(run_dir, run.key):
        log.info("%s: finished earlier, skipped", run.run_id)
        return
    log.info("%s: %s", run.run_id, _describe(run.run))
    result = _train(run.kind)(copy.deepcopy(run.cfg), run_dir, resume=start_run(run_dir, run.key))
    # a fine-tuning run records its best checkpoint
    mark_done(run_dir, run.key, **({"checkpoint": result} if run.kind == "detection" else {}))


def grid_runs(plan: Plan, curve: bool = True) -> dict[str, Callable[[], None]]:
    """run id -> the call that runs it (or finds it finished), for every run of the grid in a stable order.
    The probe curve's runs exist once the pre-trainings wrote their intermediate backbones."""
    runs = [*plan.runs, *(curve_runs(plan) if curve else [])]
    return {r.run_id: partial(run_grid_run, plan, r) for r in runs}


def finished_runs(plan: Plan) -> set[str]:
    """Run ids of the grid (the probe curve aside) finished with the settings they have now."""
    return {r.run_id for r in plan.runs if is_done(plan.run_dir(r.run_id), r.key)}
