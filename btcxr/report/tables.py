"""Report tables: summaries over seeds turned into cells, written as markdown (results.md) and HTML.

Every number in the report goes through the `fmt_*` helpers here, so the HTML page, results.md and the
automatic summary print a value the same way.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from btcxr.engine.escape import md_text
from btcxr.report.stats import mean_ci, summarise

NA = "n/a"
SIGNIFICANCE = 0.05


# ------------------------------------------------------------------------------------------ formatting
def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or pd.isna(x)


def fmt_num(x, digits: int = 3) -> str:
    """0.31234 -> '0.312'; NaN/None -> 'n/a'."""
    return NA if _missing(x) else f"{float(x):.{digits}f}"


def fmt_signed(x, digits: int = 3) -> str:
    return NA if _missing(x) else f"{float(x):+.{digits}f}"


def fmt_interval(mean, lo, hi, digits: int = 3, signed: bool = False) -> str:
    """'0.312 [0.290, 0.334]'; the bracket is dropped when the interval is undefined (one run)."""
    f = fmt_signed if signed else fmt_num
    if _missing(mean):
        return NA
    if _missing(lo) or _missing(hi):
        return f(mean, digits)
    return f"{f(mean, digits)} [{f(lo, digits)}, {f(hi, digits)}]"


def fmt_p(p) -> str:
    """Two-sided p-value: '0.034', '<0.001', or 'n/a' when no test was possible."""
    if _missing(p):
        return NA
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_fraction(f) -> str:
    """Label fraction as a percentage: 0.01 -> '1 %', 1.0 -> '100 %'."""
    return NA if _missing(f) else f"{float(f) * 100:g} %"


def fmt_size(s) -> str:
    return NA if _missing(s) else f"{int(s)} px"


GROUP_LABELS = {"size": "Input", "fraction": "Labels", "mode": "Mode"}
GROUP_FORMATS = {"size": fmt_size, "fraction": fmt_fraction}


# ----------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Cell:
    text: str
    strong: bool = False        # bold: a significant paired difference
    title: str | None = None    # HTML tooltip, e.g. how the interval was computed


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Cell | str]]
    caption: str = ""
    footnotes: list[str] = field(default_factory=list)
    numeric: set[int] = field(default_factory=set)  # column indexes aligned right
    group_starts: set[int] = field(default_factory=set)  # row indexes that open a new setting (a rule above)

    def to_markdown(self) -> str:
        esc = md_text

        def cell(c: Cell | str) -> str:
            c = c if isinstance(c, Cell) else Cell(c)
            return f"**{esc(c.text)}**" if c.strong else esc(c.text)

        align = ["---:" if i in self.numeric else ":---" for i in range(len(self.columns))]
        lines = [f"*{md_text(self.caption)}*", ""] if self.caption else []
        lines += ["| " + " | ".join(esc(c) for c in self.columns) + " |", "| " + " | ".join(align) + " |"]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in self.rows]
        if self.footnotes:
            lines += [""] + [f"{md_text(note)}  " for note in self.footnotes]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        def td(i: int, c: Cell | str, tag: str = "td") -> str:
            c = c if isinstance(c, Cell) else Cell(c)
            attrs = ' class="num"' if i in self.numeric else ""
            attrs += f' title="{html.escape(c.title)}"' if c.title else ""
            text = html.escape(c.text)
            return f"<{tag}{attrs}>{'<strong>' + text + '</strong>' if c.strong else text}</{tag}>"

        out = [f'<p class="caption">{html.escape(self.caption)}</p>'] if self.caption else []
        out.append("<table>")
        out.append("<thead><tr>" + "".join(td(i, c, "th") for i, c in enumerate(self.columns)) + "</tr></thead>")
        out.append("<tbody>")
        out += [("<tr class=\"group\">" if r in self.group_starts and r else "<tr>")
                + "".join(td(i, c) for i, c in enumerate(row)) + "</tr>" for r, row in enumerate(self.rows)]
        out.append("</tbody></table>")
        if self.footnotes:
            out += [f'<p class="footnote">{html.escape(n)}</p>' for n in self.footnotes]
        return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------ summaries
def init_order(inits: Sequence[str], baseline: str, candidate: str = "btcxr") -> list[str]:
    """Baseline first, then our init, then the others in the order they were given."""
    seen = list(dict.fromkeys(inits))
    first = [i for i in (baseline, candidate) if i in seen]
    return first + [i for i in seen if i not in first]


def seed_summary(runs: pd.DataFrame, metric: str, group: list[str], baseline: str,
                 order: Sequence[str]) -> pd.DataFrame:
    """stats.summarise over seeds, inits sorted by `order`, with every column present (NaN when absent).

    Where a group has a single run and the run has a within-run bootstrap interval (`<metric>_ci_lo/hi`),
    that interval is carried in `boot_lo/boot_hi` (and `ci_source` says which interval the row shows).
    """
    cols = ["n", "mean", "ci_lo", "ci_hi", "diff_vs_baseline", "diff_ci_lo", "diff_ci_hi", "p_value", "n_pairs",
            "mde"]
    runs = runs[runs[metric].notna()] if metric in runs else runs.iloc[0:0]
    if runs.empty:
        return pd.DataFrame(columns=[*group, "init", *cols, "boot_lo", "boot_hi", "ci_source"])
    table = summarise(runs, metric, group, baseline=baseline)
    table = table.reindex(columns=[*group, "init", *cols])
    rank = {name: i for i, name in enumerate(order)}
    table["_rank"] = table["init"].map(lambda i: rank.get(i, len(rank)))
    table = table.sort_values([*group, "_rank"], kind="stable").drop(columns="_rank").reset_index(drop=True)
    table["boot_lo"], table["boot_hi"], table["ci_source"] = math.nan, math.nan, "seeds"
    lo_col, hi_col = f"{metric}_ci_lo", f"{metric}_ci_hi"
    if lo_col in runs and hi_col in runs:
        for i, row in table.iterrows():
            if row["n"] != 1:
                continue
            match = runs[(runs["init"] == row["init"])]
            for g in group:
                match = match[match[g] == row[g]]
            lo, hi = match[lo_col].iloc[0], match[hi_col].iloc[0]
            if not (_missing(lo) or _missing(hi)):
                table.loc[i, ["boot_lo", "boot_hi", "ci_source"]] = [float(lo), float(hi), "bootstrap"]
    return table


BOOT_MARK = "†"
BOOT_NOTE = (f"{BOOT_MARK} one seed: the interval is the bootstrap over the test images of that single run "
             "(it shows test-set noise, not seed-to-seed variation).")


def _mean_cell(row: pd.Series) -> Cell:
    if row.get("ci_source") == "bootstrap":
        return Cell(fmt_interval(row["mean"], row["boot_lo"], row["boot_hi"]) + BOOT_MARK,
                    title="bootstrap over test images of one run")
    return Cell(fmt_interval(row["mean"], row["ci_lo"], row["ci_hi"]),
                title=f"mean of {int(row['n'])} seeds, Student-t 95 % interval")


def _diff_cells(row: pd.Series, baseline: str) -> list[Cell]:
    """Δ vs baseline with its interval, and the paired p-value ('n/a' below 2 paired seeds)."""
    if row["init"] == baseline:
        return [Cell("baseline"), Cell("")]
    if _missing(row.get("n_pairs")) or row["n_pairs"] == 0:
        return [Cell(NA, title="no baseline run with the same seed"), Cell(NA)]
    if row["n_pairs"] < 2:
        return [Cell(f"{fmt_signed(row['diff_vs_baseline'])} [{NA}]", title="one paired seed: no interval"),
                Cell(NA, title="a paired test needs at least 2 seeds")]
    p = row["p_value"]
    strong = not _missing(p) and p < SIGNIFICANCE
    return [Cell(fmt_interval(row["diff_vs_baseline"], row["diff_ci_lo"], row["diff_ci_hi"], signed=True),
                 strong=strong),
            Cell(fmt_p(p), strong=strong, title=f"two-sided paired t-test over {int(row['n_pairs'])} seeds")]


def comparison_table(summary: pd.DataFrame, group: list[str], metric_label: str, baseline: str,
                     caption: str = "") -> Table:
    """One row per setting x init: seeds, mean [95 % CI], Δ vs baseline [95 % CI], paired p."""
    columns = [GROUP_LABELS.get(g, g) for g in group] + [
        "Init", "Seeds", f"{metric_label} [95 % CI]", f"Δ vs {baseline} [95 % CI]", "p (paired t)",
        "Detectable Δ"]
    rows, starts, previous = [], set(), None
    for _, row in summary.iterrows():
        keys = [GROUP_FORMATS.get(g, str)(row[g]) for g in group]
        if keys != previous:
            starts.add(len(rows))
            previous = keys
        mde = "" if row["init"] == baseline else (NA if _missing(row.get("mde")) else f"±{fmt_num(row['mde'])}")
        rows.append([*keys, row["init"], str(int(row["n"])), _mean_cell(row), *_diff_cells(row, baseline),
                     Cell(mde, title="smallest true difference the paired test detects (alpha 0.05, power 0.8)")])
    footnotes = ["Intervals: Student-t over seeds; Δ and p: paired over seeds (same seed = same split and "
                 "label subset), bold where p < 0.05. n/a: fewer than 2 paired seeds.",
                 "Detectable Δ: the benchmark's power, the smallest true difference a paired t-test over these "
                 "seeds detects at alpha 0.05 with power 0.8, from the spread of the paired differences "
                 "(noncentral t). A smaller true effect is likely to be missed."]
    if (summary.get("ci_source") == "bootstrap").any():
        footnotes.append(BOOT_NOTE)
    n = len(group)
    return Table(columns, rows, caption, footnotes, numeric={n + 1, n + 2, n + 3, n + 4, n + 5},
                 group_starts=starts)


def metrics_table(runs: pd.DataFrame, metrics: dict[str, str], group: list[str], baseline: str,
                  order: Sequence[str], caption: str = "") -> Table | None:
    """Secondary metrics side by side: mean [95 % CI] over seeds for each metric present."""
    present = {m: label for m, label in metrics.items() if m in runs and runs[m].notna().any()}
    if not present:
        return None
    parts = [seed_summary(runs, m, group, baseline, order).set_index([*group, "init"]) for m in present]
    index = parts[0].index
    rows, starts = [], set()
    for r, key in enumerate(index):
        if r == 0 or key[:-1] != index[r - 1][:-1]:
            starts.add(r)
        cells = [GROUP_FORMATS.get(g, str)(v) for g, v in zip(group, key[:-1])] + [key[-1]]
        for part in parts:
            cells.append(_mean_cell(part.loc[key]) if key in part.index else Cell(NA))
        rows.append(cells)
    n = len(group)
    return Table([GROUP_LABELS.get(g, g) for g in group] + ["Init", *present.values()], rows, caption,
                 numeric=set(range(n + 1, n + 1 + len(present))), group_starts=starts)


def per_label_table(runs: pd.DataFrame, prefix: str, labels: Sequence[str], order: Sequence[str],
                    caption: str = "") -> Table | None:
    """Rows = labels (classes), columns = inits: mean [95 % CI] over seeds of `<prefix><label>`."""
    inits = [i for i in order if (runs["init"] == i).any()]
    labels = [lab for lab in labels if f"{prefix}{lab}" in runs]
    if not inits or not labels:
        return None
    rows = []
    absent = []
    for lab in labels:
        col = f"{prefix}{lab}"
        if runs[col].isna().all():
            absent.append(lab)
        cells: list[Cell | str] = [lab]
        for init in inits:
            ci = mean_ci(runs.loc[runs["init"] == init, col].tolist())
            cells.append(fmt_interval(ci.mean, ci.lo, ci.hi))
        rows.append(cells)
    notes = [f"n/a: absent from the test split ({', '.join(absent)})."] if absent else []
    return Table(["Class", *inits], rows, caption, notes, numeric=set(range(1, len(inits) + 1)))


def runs_table(runs: pd.DataFrame, kind: str) -> Table:
    """Every run of one kind with its own headline number, to trace a mean back to its run folder."""
    detection = kind == "detection"
    rows = []
    for _, r in runs.iterrows():
        value = (fmt_interval(r.get("map50"), r.get("map50_ci_lo"), r.get("map50_ci_hi")) if detection
                 else fmt_num(r.get("mean_auroc")))
        rows.append([str(r["run_id"]), str(r["init"]), fmt_size(r.get("size")), fmt_fraction(r.get("fraction")),
                     str(r.get("seed")), value, str(r.get("run_dir", ""))])
    metric = "test mAP50 [bootstrap 95 %]" if detection else "test mean AUROC"
    return Table(["Run", "Init", "Input", "Labels", "Seed", metric, "Folder"], rows, numeric={4, 5})


def key_value_table(items: dict[str, str], key: str, value: str) -> Table:
    return Table([key, value], [[str(k), str(v)] for k, v in items.items()])


# ---------------------------------------------------------------------------------------- localisation
LOCALISATION_LABELS = {"energy_in_box": "Energy in box", "pointing_game": "Pointing game"}


def _as_interval(value) -> tuple[float, float, float, float] | None:
    """(mean, lo, hi, n) from {'mean','ci_lo','ci_hi','n'} (or 'lo'/'hi'), a bare number, or [mean, lo, hi]."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value), math.nan, math.nan, math.nan
    if isinstance(value, dict) and "mean" in value:
        def num(*keys):
            for k in keys:
                if value.get(k) is not None:
                    return float(value[k])
            return math.nan
        return num("mean"), num("ci_lo", "lo"), num("ci_hi", "hi"), num("n", "count")
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
        return float(value[0]), float(value[1]), float(value[2]), math.nan
    return None


def localisation_models(localisation: dict | None) -> dict[str, dict]:
    """{model: entry} from the localisation summary, tolerating a top-level 'models' wrapper; entries without
    a single score (settings, metadata) are not models."""
    if not isinstance(localisation, dict):
        return {}
    models = localisation.get("models", localisation)
    if not isinstance(models, dict):
        return {}
    return {str(k): v for k, v in models.items() if isinstance(v, dict) and (
        isinstance(v.get("per_class"), dict) or any(_as_interval(x) for key, x in v.items() if key != "per_class"))}


def localisation_settings(localisation: dict | None) -> dict[str, str]:
    """Top-level plain values of the summary next to a 'models' wrapper (layer, images, ...), for display."""
    if not isinstance(localisation, dict) or "models" not in localisation:
        return {}
    return {str(k): str(v) for k, v in localisation.items()
            if k != "models" and isinstance(v, (str, int, float, bool))}


def _metric_label(key: str) -> str:
    return LOCALISATION_LABELS.get(key, key.replace("_", " ").capitalize())


def _fmt_loc(iv: tuple[float, float, float, float] | None, with_n: bool = False) -> str:
    if iv is None:
        return NA
    text = fmt_interval(iv[0], iv[1], iv[2])
    return f"{text} (n={int(iv[3])})" if with_n and not _missing(iv[3]) else text


def localisation_tables(localisation: dict | None) -> list[Table]:
    """Overall energy-in-box / pointing game per model, then one per-class table per metric."""
    models = localisation_models(localisation)
    overall: dict[str, dict[str, tuple]] = {}
    per_class: dict[str, dict[str, dict[str, tuple]]] = {}   # metric -> class -> model -> interval
    for model, entry in models.items():
        overall[model] = {k: iv for k, v in entry.items() if k != "per_class" and (iv := _as_interval(v))}
        for cls, metrics in (entry.get("per_class") or {}).items():
            for k, v in (metrics or {}).items():
                if (iv := _as_interval(v)) is not None:
                    per_class.setdefault(k, {}).setdefault(str(cls), {})[model] = iv
    metrics = list(dict.fromkeys(k for m in overall.values() for k in m))
    if not metrics:
        return []
    rows = []
    for model, values in overall.items():
        n = next((iv[3] for iv in values.values() if not _missing(iv[3])), math.nan)
        rows.append([model, *[_fmt_loc(values.get(k)) for k in metrics], NA if _missing(n) else str(int(n))])
    tables = [Table(["Model", *[f"{_metric_label(k)} [95 % CI]" for k in metrics], "n"], rows,
                    "Localisation of the Ablation-CAM heatmaps against the radiologists' boxes (test images)",
                    numeric=set(range(1, len(metrics) + 2)))]
    names = list(models)
    for metric in metrics:
        classes = per_class.get(metric, {})
        if classes:
            tables.append(Table(["Class", *names],
                                [[cls, *[_fmt_loc(by_model.get(m), with_n=True) for m in names]]
                                 for cls, by_model in classes.items()],
                                f"{_metric_label(metric)} per class", numeric=set(range(1, len(names) + 1))))
    return tables
