"""`build_report`: the reproduction report (index.html, results.md, figures/) from results.csv and run folders.

Every section is built from its inputs alone; a section whose inputs are missing (no probe runs, no
localisation, no CAM grids, a run without metrics.jsonl) is replaced by one line that says why, so a
partial experiment still gives a readable report.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from btcxr.data.classes import NIH_LABELS, VINDR_CLASSES
from btcxr.engine.escape import md_text
from btcxr.engine.io import ensure_dir, write_bytes, write_text
from btcxr.engine.runlog import METRICS, read_metrics
from btcxr.errors import BtcxrError
from btcxr.report import html as H
from btcxr.report.figures import (
    FLOOR,
    Curve,
    init_colours,
    label_efficiency_figure,
    monitor_figure,
    per_class_figure,
    probe_curve_figure,
    training_curves_figure,
)
from btcxr.report.tables import (
    SIGNIFICANCE,
    Table,
    comparison_table,
    fmt_fraction,
    fmt_interval,
    fmt_num,
    fmt_p,
    fmt_signed,
    fmt_size,
    init_order,
    key_value_table,
    localisation_settings,
    localisation_tables,
    metrics_table,
    per_label_table,
    runs_table,
    seed_summary,
)

log = logging.getLogger(__name__)

REQUIRED = ["run_id", "kind", "init", "size", "fraction", "seed"]
DETECTION_METRICS = {"map50": "mAP50 (COCO 101-pt)", "map": "mAP@[.5:.95]", "map50_voc": "VOC mAP50",
                     "kaggle_map40": "Kaggle mAP@0.4 (15 classes)"}
TITLE = "BarlowTwins-CXR reproduction report"


class _Report:
    """The HTML page and results.md, filled section by section."""

    def __init__(self, page: H.Page):
        self.page = page
        self.md: list[str] = []

    def section(self, anchor: str, title: str, html_parts: Sequence[str], md_parts: Sequence[str] = ()) -> None:
        self.page.add(anchor, title, *html_parts)
        if md_parts:
            self.md += [f"## {title}", "", *[p.rstrip("\n") + "\n" for p in md_parts]]


def build_report(out_dir: Path, results: pd.DataFrame, *, baseline: str = "imagenet",
                 localisation: dict | None = None, cam_grids: Sequence[Path] = (),
                 configs: dict[str, Path] | None = None, versions: dict[str, str] | None = None,
                 notes: Sequence[str] = (), candidate: str = "btcxr", browser: Path | None = None,
                 monitors: pd.DataFrame | None = None, monitor_floor: dict[str, float] | None = None) -> Path:
    """Write out_dir/index.html, out_dir/results.md and out_dir/figures/*.png; return the index path.
    browser: the index.html of a case browser (btcxr browse) the CAM section links to. monitors: the
    pre-trainings' monitor rows (init, step, rankme_backbone, ...), shown as curves; monitor_floor: the
    same measures of a random-init backbone, shown as the curves' floor.

    `results` has one row per run (the columns of results.csv); `baseline` is the init every other init is
    compared with (paired over seeds); `candidate` is the init the automatic summary is about.
    """
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    ensure_dir(fig_dir, "report folder")
    for stale in fig_dir.glob("*.png"):   # a rebuilt report must not show figures of an earlier build
        stale.unlink()
    notes = list(notes)
    runs = usable_runs(results, notes)
    det = runs[runs["kind"] == "detection"]
    probe = runs[runs["kind"] == "probe"]
    order = init_order(runs["init"].tolist(), baseline, candidate)
    colours = init_colours(order)
    if len(runs) and baseline not in set(runs["init"]):
        notes.append(f"The baseline init '{baseline}' has no finished run: no differences to it are computed.")

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = H.Page(TITLE, _overview(det, probe, baseline), footer=f"Written by btcxr build_report on {stamp}.")
    rep = _Report(page)
    det_summary = seed_summary(det, "map50", ["size", "fraction"], baseline, order)
    probe_group = probe_settings(probe)
    probe_summary = seed_summary(probe, "mean_auroc", probe_group, baseline, order)

    _summary_section(rep, det, probe, probe_group, order, _comparisons(order, baseline, candidate))
    _detection_section(rep, det, det_summary, baseline, order)
    _label_efficiency_section(rep, det_summary, probe_summary, probe_group, fig_dir, colours)
    _per_class_section(rep, det, fig_dir, order, colours)
    _training_section(rep, det, out_dir, fig_dir, colours)
    _cam_section(rep, cam_grids, fig_dir, out_dir, browser)
    _localisation_section(rep, localisation)
    _probe_section(rep, probe, probe_summary, probe_group, baseline, order)
    _probe_curve_section(rep, runs[runs["kind"] == "probe_curve"], probe, fig_dir, colours)
    _monitor_section(rep, monitors, monitor_floor or {}, fig_dir, colours)
    _configs_section(rep, configs or {})
    _versions_section(rep, versions or {})
    _runs_section(rep, det, probe)
    page.notes = notes

    md = [f"# {TITLE}", "", md_text(page.subtitle), ""]
    md += [f"> **Note:** {md_text(n)}" + "\n" for n in notes]
    write_text(out_dir / "results.md", "\n".join(md + rep.md))
    index = page.write(out_dir / "index.html")
    log.info("report written: %s", index)
    return index


# ------------------------------------------------------------------------------------------ inputs
def usable_runs(results: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Finished detection and probe runs; anything else is left out with a note saying how many."""
    missing = [c for c in REQUIRED if c not in results.columns]
    if missing:
        raise BtcxrError(f"results table: missing column(s) {', '.join(missing)} (expected the columns of "
                         f"results.csv: {', '.join(REQUIRED)}, ...)")
    runs = results.copy()
    if "status" in runs:
        not_done = runs["status"].astype(str) != "done"
        if not_done.any():
            notes.append(f"{int(not_done.sum())} run(s) not marked done were left out: "
                         f"{', '.join(map(str, runs.loc[not_done, 'run_id']))}.")
        runs = runs[~not_done]
    unknown = ~runs["kind"].isin(["detection", "probe", "probe_curve"])
    if unknown.any():
        notes.append(f"{int(unknown.sum())} run(s) of an unknown kind were left out "
                     f"({', '.join(sorted(set(map(str, runs.loc[unknown, 'kind']))))}).")
        runs = runs[~unknown]
    if (runs["kind"] == "detection").any() and "map50" not in runs:
        raise BtcxrError("results table: detection rows need a 'map50' column")
    if (runs["kind"] == "probe").any() and "mean_auroc" not in runs:
        raise BtcxrError("results table: probe rows need a 'mean_auroc' column")
    runs = runs.astype({"init": str, "fraction": float})
    runs["seed"] = pd.to_numeric(runs["seed"]).astype(int)
    # Seeds pair runs across inits: two runs of one setting with the same seed would make the pairing ambiguous.
    key = [c for c in ["kind", "mode", "init", "size", "fraction", "seed", "step"] if c in runs]
    twins = runs[runs.duplicated(key, keep=False)]
    if len(twins):
        raise BtcxrError(f"results table: runs {', '.join(map(str, twins['run_id']))} repeat the same "
                         f"{'/'.join(key)}; keep one run per setting and seed")
    return runs.reset_index(drop=True)


def probe_settings(probe: pd.DataFrame) -> list[str]:
    """Probe settings: the mode and label fraction (and input size where several were run)."""
    group = ["fraction"]
    if "size" in probe and probe["size"].nunique() > 1:
        group.insert(0, "size")
    if "mode" in probe and probe["mode"].notna().any():
        group.insert(0, "mode")
    return group


def _overview(det: pd.DataFrame, probe: pd.DataFrame, baseline: str) -> str:
    def describe(runs: pd.DataFrame, what: str) -> str:
        if runs.empty:
            return f"no {what} runs"
        sizes = ", ".join(fmt_size(s) for s in sorted(runs["size"].dropna().unique()))
        fractions = ", ".join(fmt_fraction(f) for f in sorted(runs["fraction"].unique()))
        return (f"{len(runs)} {what} runs (inits {', '.join(dict.fromkeys(runs['init']))}; {sizes}; "
                f"labels {fractions}; seeds {', '.join(map(str, sorted(runs['seed'].unique())))})")

    return f"{describe(det, 'detection')}; {describe(probe, 'NIH probe')}. Baseline: {baseline}."


# ----------------------------------------------------------------------------------------- summary
def summary_sentences(summary: pd.DataFrame, group: list[str], baseline: str, candidate: str,
                      metric_label: str) -> tuple[list[str], list[str]]:
    """Plain sentences from the numbers: (overall verdicts, one sentence per setting). Per setting: did the
    candidate's mean beat the baseline's, and is the paired difference significant at 0.05. Nothing is
    claimed that the tables do not show."""
    if summary.empty:
        return [], []
    inits = list(dict.fromkeys(summary["init"]))
    if baseline not in inits:
        return [f"There are no {baseline} (baseline) runs, so no comparison is made."], []
    focus = [candidate] if candidate in inits else [i for i in inits if i != baseline]
    overall, details = [], []
    for init in focus:
        higher = up = down = tested = settings = 0
        for keys, part in summary.groupby(group, sort=True):
            keys = keys if isinstance(keys, tuple) else (keys,)
            rows = part.set_index("init")
            if init not in rows.index or baseline not in rows.index:
                continue
            c, b = rows.loc[init], rows.loc[baseline]
            settings += 1
            diff = c["mean"] - b["mean"]
            direction = "higher" if diff > 0 else "lower" if diff < 0 else "equal"
            higher += diff > 0
            head = (f"{_setting_words(dict(zip(group, keys)))}: mean {metric_label} {fmt_num(c['mean'])} for "
                    f"{init} against {fmt_num(b['mean'])} for {baseline}")
            if not c["n"] == b["n"] == c["n_pairs"]:   # the means and the paired difference use other runs
                head += f" (means over {int(c['n'])} and {int(b['n'])} seeds)"
            if c["n_pairs"] >= 2 and not math.isnan(c["p_value"]):
                tested += 1
                sig = c["p_value"] < SIGNIFICANCE
                up += sig and diff > 0
                down += sig and diff < 0
                interval = fmt_interval(c["diff_vs_baseline"], c["diff_ci_lo"], c["diff_ci_hi"], signed=True)
                power = ("" if math.isnan(c.get("mde", math.nan)) else
                         f" With this seed-to-seed spread the test detects a true difference of "
                         f"±{fmt_num(c['mde'])} or more with power 0.8.")
                details.append(f"{head}; paired difference over {int(c['n_pairs'])} seeds {interval}, t-test "
                               f"p = {fmt_p(c['p_value'])}: {'significant' if sig else 'not significant'} at "
                               f"{SIGNIFICANCE:g}.{power}")
            elif c["n_pairs"] >= 2:
                tested += 1
                details.append(f"{head}; the paired differences over {int(c['n_pairs'])} seeds are all "
                               f"{fmt_signed(c['diff_vs_baseline'])}, so no t-test is defined.")
            else:
                details.append(f"{head}, {direction} by {fmt_signed(diff)}; with "
                               f"{'one seed' if c['n_pairs'] == 1 else 'no paired seed'} there is no paired "
                               "test, so the difference is untested.")
        if settings == 0:
            overall.append(f"{init} and {baseline} share no setting, so no comparison is made.")
            continue
        line = f"{init} had a higher mean than {baseline} in {higher} of {settings} setting(s)"
        if tested:
            line += (f"; of the {tested} with a paired test over seeds, the difference was significantly "
                     f"positive in {up} and significantly negative in {down} (p < {SIGNIFICANCE:g}, no "
                     f"correction for the {tested} comparisons).")
        else:
            line += "; no setting had the 2 or more seeds a paired test needs, so none of it is tested."
        overall.append(line)
    return overall, details


def _setting_words(setting: dict) -> str:
    parts = []
    if "size" in setting:
        parts.append(f"at {fmt_size(setting['size'])}")
    if "mode" in setting:
        parts.append(f"in {setting['mode']} mode")
    if "fraction" in setting:
        parts.append(f"with {fmt_fraction(setting['fraction'])} of the labels")
    text = " ".join(parts)
    return text[:1].upper() + text[1:]


# The positive control: the same backbone pre-trained with labels; if it does not beat the baseline, the
# benchmark cannot see transfer and says nothing about the method.
POSITIVE_CONTROL = "supervised"
CROSS_DOMAIN = "imagenet"
OTHER_METHODS = ("vicreg", "simclr", "byol")  # the other self-supervised methods, named as their init specs


def _comparisons(inits: Sequence[str], baseline: str, candidate: str) -> list[tuple[str, str, str]]:
    """(init, compared with, what the comparison asks) for the summary: the method against the baseline,
    the method against the cross-domain init it starts from, every other self-supervised method against the
    baseline, and the positive control against the baseline."""
    pairs = [(candidate, baseline, "")]
    pairs += [(m, baseline, "Another self-supervised method, on the same data.") for m in OTHER_METHODS
              if m in inits and m not in (baseline, candidate)]
    if CROSS_DOMAIN in inits and CROSS_DOMAIN != baseline and candidate != CROSS_DOMAIN:
        pairs.append((candidate, CROSS_DOMAIN, "Does pre-training on radiographs add to the cross-domain init?"))
    if POSITIVE_CONTROL in inits and POSITIVE_CONTROL != baseline:
        pairs.append((POSITIVE_CONTROL, baseline, "The positive control: can this benchmark see transfer?"))
    return pairs


def _summary_section(rep: _Report, det, probe, probe_group, order, comparisons) -> None:
    html_parts, md_parts = [], []
    for init, base, question in comparisons:
        for what, runs, group, metric, label in (
                ("Detection (VinDr-CXR test split)", det, ["size", "fraction"], "map50", "test mAP50"),
                ("NIH classification probe", probe, probe_group, "mean_auroc", "test AUROC")):
            summary = seed_summary(runs, metric, group, base, order)
            overall, details = summary_sentences(summary, group, base, init, label)
            if not overall or (len(comparisons) > 1 and not (summary["init"] == init).any()):
                continue
            title = f"{what}, {init} against {base}." + (f" {question}" if question else "")
            html_parts.append(f"<p><strong>{H.esc(title)}</strong> {H.esc(' '.join(overall))}</p>\n")
            html_parts.append(H.bullets(details))
            md_parts.append(f"**{md_text(title)}** " + md_text(" ".join(overall)) + "\n\n"
                            + "".join(f"- {md_text(d)}\n" for d in details))
    if not html_parts:
        html_parts.append(H.absent("No finished runs: there is nothing to summarise."))
        md_parts.append("No finished runs: there is nothing to summarise.\n")
    rep.section("summary", "Summary", ['<div class="summary">', *html_parts, "</div>"], md_parts)


# --------------------------------------------------------------------------------------- detection
def _detection_section(rep: _Report, det, det_summary, baseline, order) -> None:
    if det.empty:
        line = "No finished detection runs: there is no detection table."
        rep.section("detection", "Detection: test mAP50", [H.absent(line)], [line])
        return
    table = comparison_table(det_summary, ["size", "fraction"], "test mAP50", baseline,
                             "Test mAP50 (COCO, IoU 0.5, 101-point) per input size, label fraction and init")
    parts, md = [H.scroll(table.to_html())], [table.to_markdown()]
    other = metrics_table(det, {k: v for k, v in DETECTION_METRICS.items() if k != "map50"}, ["size", "fraction"],
                          baseline, order, "Other test metrics (mean [95 % CI] over seeds)")
    if other is not None:
        parts.append(H.scroll(other.to_html()))
        md.append(other.to_markdown())
    rep.section("detection", "Detection: test mAP50", parts, md)


def _label_efficiency_section(rep, det_summary, probe_summary, probe_group, fig_dir, colours) -> None:
    figures = []
    for size in sorted(det_summary["size"].unique()) if not det_summary.empty else []:
        part = det_summary[det_summary["size"] == size]
        path = label_efficiency_figure(part, fig_dir / f"label_efficiency_{int(size)}px.png", colours=colours,
                                       ylabel="test mAP50", title=f"Detection, {fmt_size(size)} input")
        figures.append(H.figure(f"figures/{path.name}",
                                f"Test mAP50 against the share of training labels at {fmt_size(size)} (log x); "
                                "error bars: 95 % interval over seeds (bootstrap over test images for a single "
                                "seed)."))
    if not probe_summary.empty:
        extra = [g for g in probe_group if g != "fraction"]
        for keys, part in probe_summary.groupby(extra, sort=True) if extra else [((), probe_summary)]:
            tag = "_".join(str(k) for k in (keys if isinstance(keys, tuple) else (keys,)))
            path = label_efficiency_figure(part, fig_dir / f"probe_label_efficiency_{tag}.png", colours=colours,
                                           ylabel="test mean AUROC", title=f"NIH probe {tag}".strip())
            figures.append(H.figure(f"figures/{path.name}", "NIH probe: test mean AUROC (15 labels) against the "
                                    "share of training labels; error bars: 95 % interval over seeds."))
    if not figures:
        line = "No finished runs: no label-efficiency curves."
        rep.section("label-efficiency", "Label efficiency", [H.absent(line)])
        return
    rep.section("label-efficiency", "Label efficiency", [H.figure_row(figures)])


def _per_class_section(rep, det, fig_dir, order, colours) -> None:
    classes = [c for c in VINDR_CLASSES if f"ap50/{c}" in det]
    if det.empty or not classes:
        line = ("No finished detection runs" if det.empty else "The results have no ap50/<class> columns")
        line += ": no per-class AP."
        rep.section("per-class", "Per-class AP50", [H.absent(line)], [line])
        return
    parts, md = [], []
    for size in sorted(det["size"].unique()):
        at_size = det[det["size"] == size]
        fraction = at_size["fraction"].max()
        runs = at_size[at_size["fraction"] == fraction]
        where = f"{fmt_size(size)}, {fmt_fraction(fraction)} of the labels"
        path = per_class_figure(runs, fig_dir / f"per_class_ap50_{int(size)}px.png", classes=classes,
                                prefix="ap50/", colours=colours, ylabel="test AP50", title=f"Per-class AP50, {where}")
        parts.append(H.figure(f"figures/{path.name}", f"Test AP50 per VinDr-CXR class at {where}: mean over "
                              "seeds, error bars the 95 % interval over seeds."))
        table = per_label_table(runs, "ap50/", classes, order, f"Test AP50 per class, {where} (mean [95 % CI])")
        if table is not None:
            parts.append(H.scroll(table.to_html()))
            md.append(table.to_markdown())
    rep.section("per-class", "Per-class AP50", parts, md)


# ------------------------------------------------------------------------------------ training curves
def _resolve_run_dir(run_dir: str, out_dir: Path) -> Path:
    """run_dir as written in results.csv: absolute, relative to the working directory, or to the experiment
    folder that holds the report."""
    p = Path(str(run_dir))
    if p.is_absolute() or p.exists():
        return p
    for base in (out_dir.parent, out_dir):
        if (base / p).exists():
            return base / p
    return p


def read_curve(run: pd.Series, out_dir: Path) -> Curve | None:
    """Per-epoch train loss and validation AP50 of one detection run, or None without metrics.jsonl."""
    run_dir = _resolve_run_dir(run.get("run_dir", ""), out_dir)
    if not (run_dir / METRICS).is_file():
        return None
    curve = Curve(init=str(run["init"]), fraction=float(run["fraction"]), seed=int(run["seed"]))
    # read_metrics: complete lines only, so a run killed mid-write (a torn last line) still plots
    for row in read_metrics(run_dir, "epoch"):
        if "epoch" not in row:
            continue
        if row.get("loss") is not None:
            curve.epochs.append(int(row["epoch"]))
            curve.loss.append(float(row["loss"]))
        if row.get("val_ap50") is not None:
            curve.val_epochs.append(int(row["epoch"]))
            curve.val_ap50.append(float(row["val_ap50"]))
    return curve


def _training_section(rep, det, out_dir, fig_dir, colours) -> None:
    if det.empty:
        rep.section("training", "Training curves", [H.absent("No finished detection runs: no training curves.")])
        return
    parts, missing, empty = [], [], []
    for size in sorted(det["size"].unique()):
        curves = []
        for _, run in det[det["size"] == size].iterrows():
            curve = read_curve(run, out_dir)
            if curve is None:
                missing.append(str(run["run_id"]))
            elif not curve.epochs and not curve.val_epochs:
                empty.append(str(run["run_id"]))
            else:
                curves.append(curve)
        if curves:
            path = training_curves_figure(curves, fig_dir / f"training_{int(size)}px.png", colours=colours,
                                          title=f"Detection fine-tuning, {fmt_size(size)} input")
            parts.append(H.figure(f"figures/{path.name}",
                                  f"Mean training loss and validation AP50 per epoch at {fmt_size(size)}, one line "
                                  f"per run ({len(curves)} runs), colour = init."))
    if missing:
        log.warning("no metrics.jsonl for %d run(s): their training curves are left out", len(missing))
        parts.append(H.absent(f"No metrics.jsonl for {len(missing)} run(s), left out of the curves: "
                              f"{', '.join(missing)}."))
    if empty:
        parts.append(H.absent(f"No epoch rows in metrics.jsonl of {len(empty)} run(s): {', '.join(empty)}."))
    rep.section("training", "Training curves", parts)


# ------------------------------------------------------------------------------- CAMs, localisation
def _cam_section(rep, cam_grids, fig_dir, out_dir: Path, browser: Path | None) -> None:
    parts, missing = [], []
    if browser is not None:
        href = Path(os.path.relpath(browser, out_dir)).as_posix()
        parts.append(H.link_paragraph("Every test image with its ground truth, each model's detections and "
                                      "heatmaps, side by side: ", href, "the case browser", "."))
    for k, src in enumerate(map(Path, cam_grids)):
        if not src.is_file():
            missing.append(str(src))
            continue
        dest = fig_dir / f"cam_{k:02d}_{src.name}"
        write_bytes(dest, src.read_bytes())
        parts.append(H.figure(f"figures/{dest.name}", f"Ablation-CAM heatmaps, {src.stem}: the radiologists' boxes "
                              "with the heatmaps of each model side by side."))
    if missing:
        parts.append(H.absent(f"CAM grid file(s) not found, left out: {', '.join(missing)}."))
    if not parts:
        parts.append(H.absent("No CAM grids were produced (no localisation run)."))
    rep.section("cams", "Ablation-CAM examples", parts)


def _localisation_section(rep, localisation) -> None:
    tables = localisation_tables(localisation)
    if not tables:
        line = ("No localisation run: no energy-in-box or pointing-game scores." if not localisation
                else "The localisation summary holds no scores that could be read.")
        rep.section("localisation", "Localisation of the heatmaps", [H.absent(line)], [line])
        return
    intro = ("Energy in box: share of a heatmap's positive mass that falls inside the radiologists' boxes. "
             "Pointing game: share of heatmaps whose maximum lies inside a box. Higher is better for both; "
             "the intervals are the 95 % intervals the localisation stage computed over its heatmaps.")
    settings = localisation_settings(localisation)
    if settings:
        intro += " Settings: " + ", ".join(f"{k} = {v}" for k, v in settings.items()) + "."
    rep.section("localisation", "Localisation of the heatmaps",
                [H.paragraph(intro), *[H.scroll(t.to_html()) for t in tables]],
                [intro + "\n", *[t.to_markdown() for t in tables]])


# ------------------------------------------------------------------------------------------- probe
def _probe_section(rep, probe, probe_summary, probe_group, baseline, order) -> None:
    title = "NIH classification probe"
    if probe.empty:
        line = "No NIH probe runs in this experiment: no classification table."
        rep.section("probe", title, [H.absent(line)], [line])
        return
    table = comparison_table(probe_summary, probe_group, "test mean AUROC", baseline,
                             "NIH ChestX-ray14 test mean AUROC (15 labels) per label fraction and init")
    parts, md = [H.scroll(table.to_html())], [table.to_markdown()]
    val = metrics_table(probe, {"val_mean_auroc": "validation mean AUROC (epoch selection)"}, probe_group,
                        baseline, order)
    if val is not None:
        parts.append(H.scroll(val.to_html()))
        md.append(val.to_markdown())
    fraction = probe["fraction"].max()
    largest = probe[probe["fraction"] == fraction]
    per_label = per_label_table(largest, "auroc/", NIH_LABELS, order,
                                f"Test AUROC per label at {fmt_fraction(fraction)} of the labels (mean [95 % CI])")
    if per_label is not None:
        per_label.columns[0] = "Label"
        parts.append(H.scroll(per_label.to_html()))
        md.append(per_label.to_markdown())
    rep.section("probe", title, parts, md)


def _probe_curve_section(rep, curve, probe, fig_dir, colours) -> None:
    """Does pre-training learn? The probe's test AUROC against pre-training steps, per pre-trained init,
    between random init (the floor) and the positive control's final backbone (the ceiling)."""
    if curve.empty:
        return
    fraction = float(curve["fraction"].iloc[0])
    final = probe[(probe["fraction"] == fraction) & (probe["seed"] == curve["seed"].iloc[0])].set_index("init")
    bounds = {name: float(final.loc[name, "mean_auroc"]) for name in ("random", POSITIVE_CONTROL)
              if name in final.index}
    path = probe_curve_figure(curve, fig_dir / "probe_curve.png", colours=colours, bounds=bounds)
    rows = [[init, str(int(r["step"])), fmt_num(r["mean_auroc"])]
            for init, part in curve.groupby("init", sort=False) for _, r in part.sort_values("step").iterrows()]
    table = Table(["Init", "Pre-training step", "Test mean AUROC"], rows,
                  f"Linear NIH probe at {fmt_fraction(fraction)} of the labels, seed {int(curve['seed'].iloc[0])}, "
                  "of the backbone after each number of pre-training steps", [
                      "Floor: random init's probe; ceiling: the positive control's final backbone (same probe)."],
                  numeric={1, 2})
    rep.section("probe-curve", "NIH probe against pre-training steps",
                [H.figure(f"figures/{path.name}", "Test mean AUROC of a linear probe against pre-training "
                                                  "steps; dashed: random init (floor) and the positive control "
                                                  "(ceiling)"), H.scroll(table.to_html())],
                [table.to_markdown()])


def _monitor_section(rep, monitors: pd.DataFrame | None, floor: dict[str, float], fig_dir: Path, colours) -> None:
    """Did pre-training learn, by the label-free monitors (and the k-NN probe where the cache has labels)?
    Read against `floor`, the same measures of a random-init backbone."""
    if monitors is None or monitors.empty:
        return
    path = monitor_figure(monitors, fig_dir / "monitors.png", colours=colours, floor=floor)
    keys = [k for k in ("rankme_backbone", "rankme_projector", "embed_spread", "knn_mean_auroc") if k in monitors]
    rows = [[init, str(int(r["step"])), *(fmt_num(r[k]) for k in keys)]
            for init, part in monitors.groupby("init", sort=False) for _, r in part.sort_values("step").iterrows()]
    if floor:
        rows.append([FLOOR, "-", *(fmt_num(floor.get(k, float("nan"))) for k in keys)])
    table = Table(["Init", "Pre-training step", *keys], rows,
                  "Pre-training monitors on the fixed val monitor set (btcxr/pretrain/monitor.py)", [
                      "RankMe: effective rank of the features (1 = collapsed); k-NN: frozen backbone features, "
                      "no training. The supervised init is the positive control (the ceiling); "
                      f"'{FLOOR}' is a random-init backbone on the monitor set of the first pre-training on the "
                      "NIH cache (the floor)."], numeric=set(range(1, 2 + len(keys))))
    rep.section("monitors", "Pre-training monitors",
                [H.figure(f"figures/{path.name}", "RankMe of the backbone features and the k-NN probe's val "
                                                  "mean AUROC against pre-training steps, one line per "
                                                  "pre-trained init; dashed: random init (floor)"),
                 H.scroll(table.to_html())],
                [table.to_markdown()])


# ---------------------------------------------------------------------------------- configs, versions
def _configs_section(rep, configs: dict[str, Path]) -> None:
    if not configs:
        rep.section("configs", "Configs", [H.absent("No configs were passed to the report.")])
        return
    parts = [H.paragraph("The exact resolved configurations the runs used.")]
    for name, path in configs.items():
        try:
            parts.append(H.pre_block(f"{name}: {path}", Path(path).read_text(encoding="utf-8")))
        except OSError as exc:
            parts.append(H.absent(f"{name}: {path} could not be read ({exc.strerror or exc})."))
    rep.section("configs", "Configs", parts)


def _versions_section(rep, versions: dict[str, str]) -> None:
    if not versions:
        line = "No library versions were recorded."
        rep.section("versions", "Versions", [H.absent(line)], [line])
        return
    table: Table = key_value_table(versions, "Library", "Version")
    rep.section("versions", "Versions", [table.to_html()], [table.to_markdown()])


def _runs_section(rep, det, probe) -> None:
    """Every run and its folder, folded away: the tables above are the summary, this is the audit trail."""
    parts = []
    for kind, runs in (("detection", det), ("probe", probe)):
        if not runs.empty:
            what = "detection fine-tuning" if kind == "detection" else "NIH probe"
            parts.append(H.details(f"{len(runs)} {what} runs (click to unfold)",
                                   H.scroll(runs_table(runs, kind).to_html()), opened=False))
    if parts:
        rep.section("runs", "All runs", parts)
