"""Report figures (PNG, matplotlib's Agg canvas): label-efficiency curves, per-class AP bars, training curves.

Figures are built on `matplotlib.figure.Figure` directly rather than pyplot, so building a report never
touches a global figure registry or needs a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from btcxr.engine.io import save_figure
from btcxr.report.stats import mean_ci
from btcxr.report.tables import fmt_fraction

# Fixed colours for the usual inits so every figure of a report (and of two reports) agrees.
KNOWN_COLOURS = {"imagenet": "#1f77b4", "btcxr": "#d62728", "random": "#7f7f7f", "vicreg": "#2ca02c",
                 "simclr": "#9467bd", "byol": "#ff7f0e"}
OTHER_COLOURS = ["#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79", "#637939"]
DPI = 110


def init_colours(order: Sequence[str]) -> dict[str, str]:
    others = iter(OTHER_COLOURS * 3)
    return {init: KNOWN_COLOURS.get(init) or next(others) for init in order}


def _save(fig: Figure, path: Path) -> Path:
    save_figure(fig, path, dpi=DPI, bbox_inches="tight")
    return path


def _interval_errors(summary: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and the (lower, upper) error bar lengths; the bootstrap interval where a row has one run."""
    boot = (summary["ci_source"] == "bootstrap").to_numpy() if "ci_source" in summary else np.zeros(len(summary), bool)
    mean = summary["mean"].to_numpy(float)
    lo = np.where(boot, summary.get("boot_lo", np.nan), summary["ci_lo"]).astype(float)
    hi = np.where(boot, summary.get("boot_hi", np.nan), summary["ci_hi"]).astype(float)
    return mean, np.nan_to_num(mean - lo, nan=0.0), np.nan_to_num(hi - mean, nan=0.0)


def label_efficiency_figure(summary: pd.DataFrame, path: Path, *, colours: dict[str, str], ylabel: str,
                            title: str) -> Path:
    """Metric against label fraction (log x), one line per init, error bars = the table's 95 % interval."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    inits = [i for i in colours if (summary["init"] == i).any()]
    fractions = sorted(summary["fraction"].unique())
    for k, init in enumerate(inits):
        part = summary[summary["init"] == init].sort_values("fraction")
        mean, err_lo, err_hi = _interval_errors(part)
        # Nudge the inits apart along x (in log space) so overlapping error bars stay readable.
        x = part["fraction"].to_numpy(float) * 1.04 ** (k - (len(inits) - 1) / 2)
        n = part["n"].astype(int)
        label = f"{init} (seeds: {n.min()}" + (f"-{n.max()})" if n.max() != n.min() else ")")
        ax.errorbar(x, mean, yerr=[err_lo, err_hi], marker="o", capsize=4, lw=1.8, color=colours[init],
                    label=label)
    ax.set_xscale("log")
    ax.set_xticks(fractions)
    ax.set_xticklabels([fmt_fraction(f) for f in fractions])
    ax.minorticks_off()
    if len(fractions) == 1:
        ax.set_xlim(fractions[0] / 2, fractions[0] * 2)
    ax.set_xlabel("share of the training labels (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return _save(fig, path)


def per_class_figure(runs: pd.DataFrame, path: Path, *, classes: Sequence[str], prefix: str,
                     colours: dict[str, str], ylabel: str, title: str) -> Path:
    """Grouped bars: one group per class, one bar per init (mean over seeds, error bar = t-interval)."""
    inits = [i for i in colours if (runs["init"] == i).any()]
    fig = Figure(figsize=(max(8.0, 0.75 * len(classes) + 2), 4.6))
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    width = 0.8 / max(1, len(inits))
    absent = []
    for k, init in enumerate(inits):
        part = runs[runs["init"] == init]
        cis = [mean_ci(part[f"{prefix}{c}"].tolist()) if f"{prefix}{c}" in part else mean_ci([]) for c in classes]
        mean = np.array([c.mean for c in cis])
        lo = np.nan_to_num(mean - np.array([c.lo for c in cis]), nan=0.0)
        hi = np.nan_to_num(np.array([c.hi for c in cis]) - mean, nan=0.0)
        ax.bar(x + (k - (len(inits) - 1) / 2) * width, np.nan_to_num(mean), width, yerr=[lo, hi], capsize=2,
               color=colours[init], label=f"{init} (n={part['seed'].nunique()})", error_kw={"lw": 0.8})
    for j, c in enumerate(classes):
        if f"{prefix}{c}" not in runs or runs[f"{prefix}{c}"].isna().all():
            absent.append(c)
            ax.text(j, 0.01, "absent", rotation=90, ha="center", va="bottom", fontsize=8, color="#666")
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=35, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.set_title(title, loc="left")
    ax.grid(axis="y", alpha=0.3)
    # Above the axes, right-aligned: inside it would hide the tallest bars.
    ax.legend(frameon=False, ncols=len(inits), loc="lower right", bbox_to_anchor=(1.0, 1.0), borderaxespad=0.2)
    return _save(fig, path)


@dataclass
class Curve:
    """One run's per-epoch curves from its metrics.jsonl."""
    init: str
    fraction: float
    seed: int
    epochs: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    val_epochs: list[int] = field(default_factory=list)
    val_ap50: list[float] = field(default_factory=list)


def training_curves_figure(curves: Sequence[Curve], path: Path, *, colours: dict[str, str], title: str) -> Path:
    """Rows = label fractions, columns = train loss and validation AP50 per epoch; a line per run."""
    fractions = sorted({c.fraction for c in curves})
    fig = Figure(figsize=(11, 2.9 * len(fractions) + 0.6))
    axes = fig.subplots(len(fractions), 2, squeeze=False)
    for r, fraction in enumerate(fractions):
        ax_loss, ax_ap = axes[r]
        for c in (c for c in curves if c.fraction == fraction):
            style = {"color": colours.get(c.init, "black"), "lw": 1.3, "alpha": 0.85}
            if c.epochs:
                ax_loss.plot(c.epochs, c.loss, **style)
            if c.val_epochs:
                ax_ap.plot(c.val_epochs, c.val_ap50, marker="." if len(c.val_epochs) < 20 else None, **style)
        for ax, name in ((ax_loss, "train loss (epoch mean)"), (ax_ap, "validation AP50")):
            ax.set_title(f"{name}, {fmt_fraction(fraction)} of the labels", fontsize=10)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    inits = [i for i in colours if any(c.init == i for c in curves)]
    handles = [Line2D([], [], color=colours[i], lw=2) for i in inits]
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.legend(handles, inits, loc="upper center", ncols=len(inits), frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.28 / fig.get_figheight()))
    return _save(fig, path)


FLOOR = "random init (floor)"  # the monitors' line and table row of a random-init backbone
MONITOR_PANELS = (("rankme_backbone", "RankMe of backbone features"), ("knn_mean_auroc", "k-NN probe val mean AUROC"))


def monitor_figure(monitors: pd.DataFrame, path: Path, *, colours: dict[str, str],
                   floor: dict[str, float] | None = None) -> Path:
    """The pre-training monitors against steps, a panel per measure present, a line per pre-trained init;
    `floor` (measure -> value of a random-init backbone) as a dashed line."""
    panels = [(key, label) for key, label in MONITOR_PANELS if key in monitors and monitors[key].notna().any()]
    fig = Figure(figsize=(5.0 * len(panels), 3.6))
    for k, (key, label) in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), k)
        for init, part in monitors.groupby("init", sort=False):
            part = part.sort_values("step")
            ax.plot(part["step"], part[key], marker="o", label=init, color=colours.get(init))
        if floor and key in floor:
            ax.axhline(floor[key], linestyle="--", linewidth=1, color="#444444", label=FLOOR)
        ax.set_xlabel("pre-training steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def probe_curve_figure(curve: pd.DataFrame, path: Path, *, colours: dict[str, str],
                       bounds: dict[str, float]) -> Path:
    """Probe AUROC against pre-training steps, a line per init; `bounds` (name -> AUROC) as dashed lines."""
    fig = Figure(figsize=(6.0, 3.8))
    ax = fig.add_subplot()
    for init, part in curve.groupby("init", sort=False):
        part = part.sort_values("step")
        ax.plot(part["step"], part["mean_auroc"], marker="o", label=init, color=colours.get(init))
    for name, value in bounds.items():
        ax.axhline(value, linestyle="--", linewidth=1, color=colours.get(name, "#444444"), label=f"{name} (final)")
    ax.set_xlabel("pre-training steps")
    ax.set_ylabel("NIH probe test mean AUROC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)

