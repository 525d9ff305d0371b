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
    sd: float = math.nan   # standard deviation of the paired differences (ddof 1)
    mde: float = math.nan  # the smallest true difference this test detects (alpha 0.05, power 0.8)


def minimum_detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired t-test over `n` pairs detects with probability
    `power` at level `alpha`, when the paired differences have standard deviation `sd`: the benchmark's
    power. Exact, from the noncentral t distribution (not the normal approximation, which is far off for the
    few seeds an experiment has). NaN below 2 pairs or without spread."""
    if n < 2 or not math.isfinite(sd) or sd <= 0:
        return math.nan
    from scipy.optimize import brentq

    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(nc: float) -> float:
        lower = stats.nct.cdf(-crit, df, nc)  # the far tail: tiny, and NaN where scipy underflows
        return stats.nct.sf(crit, df, nc) + (lower if math.isfinite(lower) else 0.0) - power

    high = 1.0
    while shortfall(high) < 0:
        high *= 2
    return float(brentq(shortfall, 0.0, high, xtol=1e-10)) * sd / math.sqrt(n)


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
    sd = float(np.std(d, ddof=1)) if d.size >= 2 else math.nan
    return PairedDiff(diff=diff, p_value=p, n_pairs=int(da.size), sd=sd,
                      mde=minimum_detectable_difference(sd, int(da.size)))


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
                        "p_value": d.p_value, "n_pairs": d.n_pairs, "mde": d.mde}
            rows.append(row)
    return pd.DataFrame(rows)
