"""The report stage: with every run of the grid finished, the localisation, the case browser and
OUT/report (index.html, results.md), marked done with the fingerprint of what it shows."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from btcxr.config import config_to_dict
from btcxr.engine.runlog import read_metrics
from btcxr.experiment.grids import grid_runs
from btcxr.experiment.markers import DONE, done_fingerprint, is_done, mark_done
from btcxr.experiment.plan import Plan
from btcxr.experiment.results import build_browser, run_localisation, write_results
from btcxr.experiment.spec import fingerprint

log = logging.getLogger(__name__)


def report_key(plan: Plan) -> str | None:
    """Fingerprint of what the report shows (the experiment's settings, each run's); None while a run of
    the grid has not finished."""
    runs = {}
    for run_id in grid_runs(plan):
        if not (plan.run_dir(run_id) / DONE).exists():
            return None
        runs[run_id] = done_fingerprint(plan.run_dir(run_id))
    return fingerprint({"experiment": config_to_dict(plan.exp), "runs": runs})


def report_done(plan: Plan) -> bool:
    key = report_key(plan)
    return key is not None and is_done(plan.out / "report", key)


def mark_report_done(plan: Plan) -> None:
    mark_done(plan.out / "report", report_key(plan))


def ground_truth_note(plan: Plan) -> list[str]:
    """The report says which protocol made the VinDr boxes and split (from the cache's prepare.json)."""
    from btcxr.data.cache_format import read_settings

    text = read_settings(plan.vindr_cache).get("ground_truth") if plan.vindr_cache else None
    return [f"VinDr ground truth and split: {text}."] if text else []


def monitor_rows(plan: Plan) -> pd.DataFrame:
    """The monitor rows of every pre-training of the plan (with one per seed: the first seed's), named by the
    init(s) that use its backbone."""
    frames = []
    for pre in plan.pretrainings:
        if pre.seed not in (None, plan.exp.seeds[0]):
            continue
        names = [name for name, spec in plan.inits.items() if spec == pre.spec] or [pre.spec]
        rows = read_metrics(pre.run_dir, "monitor")
        if rows:
            frames.append(pd.DataFrame(rows).assign(init=" / ".join(names)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def monitor_floor(plan: Plan) -> dict[str, float]:
    """The monitors of a random-init backbone (drawn with the pre-training's seed) on the monitor set of
    the first pre-training on the NIH cache that wrote monitor rows: the floor the curves are read against
    ({} when none did)."""
    import torch

    from btcxr.backbones import build_resnet
    from btcxr.pretrain.monitor import MonitorSet

    cfg = next((p.cfg for p in plan.pretrainings if plan.nih_cache and Path(p.cfg.data.cache) == Path(plan.nih_cache)
                and read_metrics(p.run_dir, "monitor")), None)
    if cfg is None:
        return {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        backbone = build_resnet(cfg.model.arch, init="random")
    monitor = MonitorSet(cfg.data.cache, cfg.model.size, cfg.monitor_images, cfg.monitor_bank)
    return monitor.measure(backbone)


def write_report(plan: Plan) -> Path | None:
    """results.csv from what is on disk; with every run finished, the localisation and the report.
    None while runs are missing. Only one process at a time may call this (the launcher sees to it)."""
    from btcxr.engine.checkpoint import library_versions
    from btcxr.report.build import build_report

    results = write_results(plan)
    expected = len(grid_runs(plan))
    if len(results) < expected:
        log.warning("%d of %d runs finished; the report is written once the others are done", len(results),
                    expected)
        return None
    localisation, grids = run_localisation(plan, results)
    browser = build_browser(plan)
    index = build_report(plan.out / "report", results, baseline=plan.baseline, localisation=localisation,
                         cam_grids=grids, configs={k: v for k, v in plan.configs.items() if v.exists()},
                         versions=library_versions(), notes=[*plan.notes, *ground_truth_note(plan)], browser=browser,
                         monitors=monitor_rows(plan), monitor_floor=monitor_floor(plan))
    log.info("report: %s", index)
    return index
