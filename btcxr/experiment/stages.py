"""The stages of an experiment (`btcxr reproduce`), put together: the plan, then data (synthesise or read
the raw datasets, then prepare caches) -> pre-training (unless a backbone file is given) -> the grid of
fine-tuning and probe runs -> localisation, results.csv and the report. Each stage is skipped when its
outputs are already there with the same settings (btcxr.experiment.markers).

`make_plan` computes the experiment's Plan once (btcxr.experiment.plan); every stage reads it and none
changes it. Who runs which stage is the launcher's business (btcxr.experiment.local: this process, or one
shard of the grid; btcxr.experiment.slurm: one SLURM job per stage, each handed the launcher's plan). A
Role says which upstream stages a process may run; the others it only looks up, and a missing one is an
error instead of a second, concurrent run.

    stages.py          this: make_plan, run_upstream, upstream_pending
    markers.py         done.json / started.json, Role, must_run, StageNotFinished, stage_lock
    plan.py            the Plan and the units it lists (types only)
    data_stage.py      synthetic data, caches (and the ImageNet stand-in's pictures)
    pretrain_stage.py  the ImageNet check and fallback, the pre-trainings
    grids.py           detection, probe and probe-curve runs through one skeleton
    results.py         results.csv, the localisation, the case browser
    report_stage.py    the report and its done marker
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from btcxr.config import config_to_dict, save_config
from btcxr.engine.distributed import is_main_rank
from btcxr.engine.run import CONFIG
from btcxr.experiment import data_stage, grids, pretrain_stage
from btcxr.experiment.markers import Role
from btcxr.experiment.plan import Plan
from btcxr.experiment.spec import fingerprint, load_experiment

EXPERIMENT = "experiment.yaml"  # the experiment as read, in its folder


def make_plan(exp_path: str | Path, overrides: list[str] | tuple[str, ...] = (), out: str | Path | None = None, *,
              workers: int | None = None, absolute: bool = False,
              arch_names: set[str] | None = None) -> Plan:
    """The plan of an experiment file with `overrides`, its folder `out` (default runs/experiments/<name>).

    Reads the experiment and the stage configs and checks whether the ImageNet weights load here; runs
    nothing and writes nothing. absolute: `out` made absolute (for jobs started elsewhere). arch_names:
    the ResNet depths the ImageNet check loads (default: those of the stage configs)."""
    exp_path = Path(exp_path)
    exp = load_experiment(exp_path, overrides)
    out = Path(out) if out else Path("runs") / "experiments" / exp.name
    if absolute:
        out = out.resolve()
    syntheses, caches, vindr_cache, nih_cache = data_stage.plan_data(exp, exp_path, out)
    choice = pretrain_stage.choose_inits(exp, exp_path, arch_names)
    natural = data_stage.plan_natural(exp, out) if choice.stand_in else None
    if natural is not None:
        syntheses, caches = (*syntheses, natural[0]), (*caches, natural[1])
    data_key = fingerprint(config_to_dict(exp.data))
    pre = pretrain_stage.plan_pretrainings(exp, exp_path, out, choice, nih_cache=nih_cache, data_key=data_key,
                                           natural=natural)
    plan = Plan(exp=exp, exp_path=exp_path, out=out, workers=workers, inits=choice.inits, baseline=choice.baseline,
                renamed=choice.renamed, imagenet_replaced=choice.replaced,
                notes=(*exp.notes, *([choice.note] if choice.note else []), variance_note(exp, pre.pretrainings)),
                data_key=data_key,
                vindr_cache=vindr_cache, nih_cache=nih_cache, syntheses=syntheses, caches=caches,
                pretrainings=pre.pretrainings, backbones=pre.backbones, backbone_keys=pre.backbone_keys,
                configs={"experiment": out / EXPERIMENT, **pre.configs})
    runs = grids.plan_grid(plan)  # the runs' configs read the plan's caches and backbones
    shown = {}  # the report shows the config of the grid's first fine-tuning run and first probe run
    for name, kind in (("finetune", "detection"), ("probe", "probe")):
        first = next((r for r in runs if r.kind == kind), None)
        if first is not None:
            shown[name] = plan.run_dir(first.run_id) / CONFIG
    return dataclasses.replace(plan, configs={**plan.configs, **shown}, runs=runs)


def variance_note(exp, pretrainings) -> str:
    """What the seeds of the grid vary, so the report's intervals and p-values can be read for what they are."""
    fixed = "the data (images, split and label subsets) are the same for every seed"
    if exp.data.synthetic:
        fixed = f"the synthetic data (one sample, data.synthetic.seed {exp.data.synthetic.seed}), its split and label subsets are the same for every seed"
    tuning = "fine-tuning and probe runs (head init, batch order, augmentation)"
    if not pretrainings:
        return f"Seeds vary the {tuning}; {fixed}."
    if exp.pretrain_per_seed:
        return (f"Seeds replicate whole arms: each seed pre-trains every pre-trained arm anew with that seed "
                f"(projector or head init, views, batch order; the stand-in also its backbone init) and then "
                f"seeds its {tuning}, so intervals and paired tests include pre-training variance; {fixed}.")
    return (f"Seeds vary only the {tuning}: each pre-trained arm was pre-trained once and every seed starts "
            f"from that one backbone, so intervals and p-values leave out the variance of pre-training "
            f"(pretrain_per_seed: true includes it); {fixed}.")


def run_upstream(plan: Plan, role: Role) -> None:
    """The data and every pre-training: run where `role` allows it, else looked up (StageNotFinished
    when missing). The process that runs the data stage also records the experiment as read."""
    if "data" in role.stages and is_main_rank():
        save_config(plan.exp, plan.out / EXPERIMENT)
    data_stage.prepare_data(plan, role)
    pretrain_stage.run_pretrain(plan, role)


def upstream_pending(plan: Plan) -> set[str]:
    """The upstream stages with work left (what a launcher has to submit), from the done markers."""
    return {stage for stage, left in (("data", data_stage.pending(plan)), ("pretrain", pretrain_stage.pending(plan)))
            if left}
