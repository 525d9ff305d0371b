"""Does a result replicate? Independent runs of one experiment (the same file, disjoint seeds) compared side
by side: every arm's paired difference to the baseline in each run, and a verdict that states a conclusion
only where every run supports it (`btcxr replicate`).

A difference counts as found in a run when its paired t-test over that run's seeds gives p < alpha. Verdicts:
"replicated: higher" / "replicated: lower" (found in every run, same sign), "no difference found in any
run" (with each run's detectable difference, the benchmark's power), and "not replicated" otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from btcxr.engine.escape import md_text
from btcxr.errors import BtcxrError
from btcxr.report.build import probe_settings, usable_runs
from btcxr.report.tables import fmt_fraction, fmt_interval, fmt_num, fmt_p, fmt_size, seed_summary

HIGHER, LOWER = "replicated: higher", "replicated: lower"
NONE_FOUND, NOT_REPLICATED = "no difference found in any run", "not replicated"


def verdict(diffs: list[float], p_values: list[float], alpha: float = 0.05) -> str:
    """The conclusion every run supports, from each run's mean paired difference and p-value."""
    if any(math.isnan(x) for x in (*diffs, *p_values)):
        return NOT_REPLICATED
    found = [p < alpha for p in p_values]
    if all(found) and all(d > 0 for d in diffs):
        return HIGHER
    if all(found) and all(d < 0 for d in diffs):
        return LOWER
    return NONE_FOUND if not any(found) else NOT_REPLICATED


def _settings(kind: str, runs: pd.DataFrame) -> tuple[str, list[str]]:
    if kind == "detection":
        return "map50", ["size", "fraction"]
    return "mean_auroc", probe_settings(runs)


def _describe(kind: str, row: pd.Series) -> str:
    words = ["detection mAP50" if kind == "detection" else "NIH probe mean AUROC"]
    if "size" in row and not pd.isna(row["size"]):
        words.append(fmt_size(row["size"]))
    if "mode" in row and isinstance(row["mode"], str):
        words.append(row["mode"])
    words.append(f"{fmt_fraction(row['fraction'])} of the labels")
    return ", ".join(words)


def compare_runs(tables: Mapping[str, pd.DataFrame], baseline: str, alpha: float = 0.05) -> pd.DataFrame:
    """One row per setting x arm (the baseline aside): each run's mean, paired difference to the baseline
    with its 95 % interval, p-value and detectable difference, and the verdict over the runs.

    tables: run name -> its results.csv. The runs must have disjoint seeds (else they are not independent)."""
    if len(tables) < 2:
        raise BtcxrError(f"replication needs at least two runs, got {len(tables)}")
    runs = {}
    for name, table in tables.items():
        try:
            runs[name] = usable_runs(table, [])
        except BtcxrError as exc:
            raise BtcxrError(f"run {name}: {exc}") from exc
    names = list(runs)
    for name, r in runs.items():
        if baseline not in set(r["init"]):
            raise BtcxrError(f"run {name} has no run of the baseline '{baseline}' (its inits: "
                             f"{', '.join(dict.fromkeys(r['init']))})")
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(set(runs[a]["seed"]) & set(runs[b]["seed"]))
            if shared:
                raise BtcxrError(f"runs {a} and {b} share seed(s) {', '.join(map(str, shared))}: they are not "
                                 "independent; rerun one with other seeds (seeds=[...])")
    rows = []
    for kind in ("detection", "probe"):
        parts = {name: r[r["kind"] == kind] for name, r in runs.items()}
        if any(p.empty for p in parts.values()):
            continue
        metric, group = _settings(kind, parts[names[0]])
        summaries = {name: seed_summary(p, metric, group, baseline, [baseline]).set_index([*group, "init"])
                     for name, p in parts.items()}
        first = summaries[names[0]]
        for key in first.index:
            if key[-1] == baseline or not all(key in s.index for s in summaries.values()):
                continue
            setting = pd.Series(dict(zip([*group, "init"], key)))
            row = {"kind": kind, "setting": _describe(kind, setting), "init": key[-1]}
            diffs, p_values = [], []
            for name, s in summaries.items():
                r = s.loc[key]
                diffs.append(float(r["diff_vs_baseline"]))
                p_values.append(float(r["p_value"]))
                row |= {f"{name} mean": r["mean"], f"{name} diff": r["diff_vs_baseline"],
                        f"{name} diff_lo": r["diff_ci_lo"], f"{name} diff_hi": r["diff_ci_hi"],
                        f"{name} p": r["p_value"], f"{name} mde": r["mde"],
                        f"{name} seeds": int(r["n_pairs"]) if pd.notna(r["n_pairs"]) else 0}
            row["verdict"] = verdict(diffs, p_values, alpha)
            rows.append(row)
    if not rows:
        raise BtcxrError(f"no arm besides the baseline '{baseline}' was run in every run")
    return pd.DataFrame(rows)


def replication_markdown(table: pd.DataFrame, names: list[str], baseline: str) -> str:
    """The comparison as a Markdown table: per run 'Δ [95 % CI], p; detectable ±x', then the verdict."""
    head = ["setting", "arm", *[f"{n}: Δ vs {baseline} [95 % CI], p; detectable" for n in names], "verdict"]
    lines = ["| " + " | ".join(map(md_text, head)) + " |", "|" + "---|" * len(head)]
    for _, row in table.iterrows():
        cells = [md_text(row["setting"]), md_text(row["init"])]
        for n in names:
            interval = fmt_interval(row[f"{n} diff"], row[f"{n} diff_lo"], row[f"{n} diff_hi"], signed=True)
            p = fmt_p(row[f"{n} p"])
            p = f"p {p[0]} {p[1:]}" if p.startswith("<") else f"p = {p}"
            cells.append(f"{interval}, {p}; ±{fmt_num(row[f'{n} mde'])} ({row[f'{n} seeds']} seeds)")  # ours: plain
        verdict_text = row["verdict"]
        cells.append(f"**{verdict_text}**" if verdict_text in (HIGHER, LOWER) else verdict_text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
