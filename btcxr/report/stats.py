"""Summaries over seeds: mean with a 95 % t-interval, and the paired comparison with a baseline init."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float
    n: int


def mean_ci(values, level: float = 0.95) -> Interval:
    """Mean and Student-t interval of independent runs (seeds). One run gives an interval of NaN."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if x.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, math.nan, math.nan, 1)
    half = stats.t.ppf(0.5 + level / 2, df=x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return Interval(mean, mean - half, mean + half, int(x.size))


@dataclass(frozen=True)
class PairedDiff:
    diff: Interval      # mean difference (init - baseline) with its t-interval
    p_value: float      # two-sided paired t-test over seeds (NaN with fewer than 2 pairs)
    n_pairs: int


def paired_difference(results: pd.DataFrame, metric: str, init: str, baseline: str,
                      pair_on: str = "seed") -> PairedDiff:
    """Compare `init` with `baseline` on runs that share `pair_on` (same seed, hence same split/fraction)."""
    a = results[results["init"] == init].set_index(pair_on)[metric]
    b = results[results["init"] == baseline].set_index(pair_on)[metric]
    common = a.index.intersection(b.index)
    da, db = a.loc[common].to_numpy(float), b.loc[common].to_numpy(float)
    keep = ~(np.isnan(da) | np.isnan(db))
    da, db = da[keep], db[keep]
    diff = mean_ci(da - db)
    d = da - db
    if da.size < 2 or not np.any(d):
        p = math.nan
    elif np.ptp(d) <= 1e-12 * np.abs(d).max():  # the same difference for every seed: t is infinite
        p = 0.0
    else:
        p = float(stats.ttest_rel(da, db).pvalue)
    return PairedDiff(diff=diff, p_value=p, n_pairs=int(da.size))


def summarise(results: pd.DataFrame, metric: str, group: list[str], baseline: str | None = "imagenet"
              ) -> pd.DataFrame:
    """One row per (group..., init): mean, 95 % interval, and the paired difference to `baseline`."""
    rows = []
    for keys, part in results.groupby(group, dropna=False, sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        for init, runs in part.groupby("init", sort=False):
            ci = mean_ci(runs[metric])
            row = dict(zip(group, keys)) | {"init": init, "n": ci.n, "mean": ci.mean, "ci_lo": ci.lo,
                                             "ci_hi": ci.hi}
            if baseline is not None and init != baseline and (part["init"] == baseline).any():
                d = paired_difference(part, metric, init, baseline)
                row |= {"diff_vs_baseline": d.diff.mean, "diff_ci_lo": d.diff.lo, "diff_ci_hi": d.diff.hi,
                        "p_value": d.p_value, "n_pairs": d.n_pairs}
            rows.append(row)
    return pd.DataFrame(rows)
