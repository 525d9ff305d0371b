"""What the finished runs found: results.csv (one row per finished run of the whole grid), the
Ablation-CAM localisation of the compared detectors, and the case browser of their predictions."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from btcxr.engine.io import ensure_dir, remove_temp_files, write_csv
from btcxr.engine.run import BEST, PROBE_RESULTS, TEST_METRICS
from btcxr.experiment.grids import curve_runs, detection_runs, probe_runs
from btcxr.experiment.markers import DONE, done_fingerprint, is_done, mark_done
from btcxr.experiment.plan import Plan
from btcxr.experiment.spec import DetectionRun, fingerprint

RESULTS = "results.csv"
COLUMNS = ["run_id", "kind", "init", "size", "fraction", "seed", "run_dir", "status"]


def collect_results(plan: Plan) -> pd.DataFrame:
    """One row per finished run of the whole grid (all shards), as in results.csv. A run finished with
    other settings (its done.json fingerprint differs) is not finished: its shard has yet to redo it."""
    from btcxr.data.classes import NIH_LABELS, VINDR_CLASSES

    rows: list[dict[str, Any]] = []
    for gr in detection_runs(plan):
        run, run_dir = gr.run, plan.run_dir(gr.run_id)
        metrics_path = run_dir / TEST_METRICS
        if not is_done(run_dir, gr.key) or not metrics_path.exists():
            continue
        m = json.loads(metrics_path.read_text())
        ci = m.get("map50_ci") or [math.nan, math.nan]
        row = {"run_id": run.run_id, "kind": "detection", "init": run.label, "rule": run.rule, "size": run.size,
               "fraction": run.fraction, "seed": run.seed, "run_dir": str(run_dir), "status": "done",
               "map50": m.get("map50"), "map50_ci_lo": ci[0], "map50_ci_hi": ci[1], "map": m.get("map"),
               "map50_voc": m.get("map50_voc"), "kaggle_map40": m.get("kaggle_map40")}
        per_class = m.get("per_class_ap50") or {}
        row |= {f"ap50/{c}": per_class.get(c) for c in VINDR_CLASSES}
        rows.append(row)
    for gr in probe_runs(plan):
        run, run_dir = gr.run, plan.run_dir(gr.run_id)
        results_path = run_dir / PROBE_RESULTS
        if not is_done(run_dir, gr.key) or not results_path.exists():
            continue
        r = json.loads(results_path.read_text())
        row = {"run_id": run_dir.name, "kind": "probe", "init": run.init, "size": r.get("input_size"),
               "fraction": run.fraction, "seed": run.seed, "run_dir": str(run_dir), "status": "done",
               "mean_auroc": r["test"].get("mean_auroc"), "val_mean_auroc": r["val"].get("mean_auroc"),
               "mode": r.get("mode")}
        per_label = r["test"].get("auroc") or {}
        row |= {f"auroc/{label}": per_label.get(label) for label in NIH_LABELS}
        rows.append(row)
    for gr in curve_runs(plan):
        run, run_dir = gr.run, plan.run_dir(gr.run_id)
        if not is_done(run_dir, gr.key):
            continue
        r = json.loads((run_dir / PROBE_RESULTS).read_text())
        rows.append({"run_id": run_dir.name, "kind": "probe_curve", "init": run.init, "size": r.get("input_size"),
                     "fraction": r["fraction"], "seed": r["seed"], "step": run.step, "run_dir": str(run_dir),
                     "status": "done", "mean_auroc": r["test"].get("mean_auroc"), "mode": "freeze"})
    return pd.DataFrame(rows).astype({"fraction": float}, errors="ignore") if rows else pd.DataFrame(columns=COLUMNS)


def write_results(plan: Plan) -> pd.DataFrame:
    """OUT/results.csv from what is on disk now; the rows written."""
    remove_temp_files(plan.out, RESULTS)  # a temporary file of it now is a killed writer's
    results = collect_results(plan)
    write_csv(plan.out / RESULTS, results)
    return results


# ------------------------------------------------------------------------------------ localisation
def _compared_run(plan: Plan, init: str) -> Path:
    """The detection run of an init that the localisation explains and the browser shows: the largest
    size and label fraction, the first seed."""
    exp = plan.exp
    return plan.run_dir(DetectionRun(init, max(exp.sizes), max(exp.fractions), exp.seeds[0]).run_id)


def build_browser(plan: Plan) -> Path | None:
    """OUT/browse: the case browser of the VinDr test split with each init's compared run and their heatmaps."""
    from btcxr.browse.site import Model, build_site

    models = []
    for init in plan.inits:
        run_dir = _compared_run(plan, init)
        if (run_dir / DONE).exists() and (run_dir / "test_predictions.csv").is_file():
            models.append(Model(init, run_dir / "test_predictions.csv"))
    if not models:
        return None
    boxes = plan.out / "localisation" / "boxes.csv"
    # heatmap files exist from this version of `btcxr explain` on; an older localisation stage shows none
    with_heatmaps = boxes.is_file() and "heatmap" in boxes.open().readline().rstrip("\n").split(",")
    cams = [boxes.parent] if with_heatmaps else []
    return build_site(plan.vindr_cache, ["test"], models, plan.out / "browse", cams=cams)


def run_localisation(plan: Plan, results: pd.DataFrame) -> tuple[dict | None, list[Path]]:
    """Ablation-CAM of the chosen inits' detectors on the test split: the score and the CAM grids."""
    loc = plan.exp.localisation
    # An init dropped by the ImageNet fallback is compared through the init standing in for it.
    inits = [i for i in dict.fromkeys(plan.renamed.get(i, i) for i in loc.inits) if i in plan.inits]
    det = results[results["kind"] == "detection"] if len(results) else results
    if not loc.enabled or len(inits) == 0 or len(det) == 0:
        return None, []
    from btcxr.explain.run import explain_split

    checkpoints, runs = {}, {}
    for init in inits:
        run_dir = _compared_run(plan, init)
        if (run_dir / DONE).exists():
            checkpoints[init] = run_dir / BEST
            # The run's own fingerprint: a redone fine-tuning run (same path, new weights) redoes this stage.
            runs[init] = done_fingerprint(run_dir)
    if not checkpoints:
        return None, []
    out = plan.out / "localisation"
    settings = {"checkpoints": {k: str(v) for k, v in checkpoints.items()}, "runs": runs, "layer": loc.layer,
                "ratio": loc.ratio, "score_thr": loc.score_thr, "max_images": loc.max_images,
                "grids": plan.exp.cam_examples}
    if loc.ablation_mode != "exact":  # localisations made before the modes existed were exact: still valid
        settings["ablation_mode"] = loc.ablation_mode
    key = fingerprint(settings)
    if not is_done(out, key):
        ensure_dir(out, "localisation folder")
        explain_split(list(checkpoints.values()), plan.vindr_cache, "test", out, labels=list(checkpoints),
                      layer=loc.layer, ratio=loc.ratio, ablation_mode=loc.ablation_mode, score_thr=loc.score_thr,
                      max_images=loc.max_images, grid_images=plan.exp.cam_examples)
        mark_done(out, key)
    summary = json.loads((out / "localisation.json").read_text())
    grids = sorted((out / "grids").glob("*.png")) if (out / "grids").exists() else []
    return summary, grids
