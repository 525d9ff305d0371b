import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from btcxr.report.stats import mean_ci, paired_difference, summarise


def test_mean_ci_is_the_student_t_interval():
    x = [0.30, 0.34, 0.29]
    ci = mean_ci(x)
    sem = np.std(x, ddof=1) / math.sqrt(3)
    assert ci.mean == pytest.approx(np.mean(x))
    assert ci.hi - ci.mean == pytest.approx(4.302652729911275 * sem)  # t_{0.975, 2}
    one = mean_ci([0.5])
    assert one.mean == 0.5 and math.isnan(one.lo) and one.n == 1
    assert mean_ci([0.1, math.nan, 0.3]).n == 2


def test_paired_difference_pairs_on_seed():
    df = pd.DataFrame({"init": ["imagenet"] * 3 + ["btcxr"] * 3, "seed": [0, 1, 2, 2, 1, 0],
                       "ap50": [0.30, 0.20, 0.40, 0.43, 0.22, 0.33]})
    d = paired_difference(df, "ap50", "btcxr", "imagenet")
    assert d.n_pairs == 3
    assert d.diff.mean == pytest.approx(np.mean([0.03, 0.02, 0.03]))
    assert d.p_value == pytest.approx(stats.ttest_rel([0.33, 0.22, 0.43], [0.30, 0.20, 0.40]).pvalue)


def test_summarise_one_row_per_setting_and_init():
    df = pd.DataFrame({"init": ["imagenet", "btcxr", "random"] * 2, "seed": [0, 0, 0, 1, 1, 1],
                       "fraction": [0.1] * 6, "ap50": [0.3, 0.35, 0.1, 0.32, 0.36, 0.12]})
    out = summarise(df, "ap50", ["fraction"])
    assert list(out["init"]) == ["imagenet", "btcxr", "random"]
    assert math.isnan(out.loc[0, "diff_vs_baseline"])
    assert out.loc[1, "diff_vs_baseline"] == pytest.approx(0.045)
    assert out.loc[2, "n_pairs"] == 2


@pytest.mark.parametrize("n", [3, 5, 10])
def test_minimum_detectable_difference_has_the_stated_power(n):
    """Checked by simulation, an independent reference: paired differences drawn with the detectable mean
    and the given spread are found significant (paired t, p < 0.05) in 80 % of experiments."""
    from scipy import stats as sps

    from btcxr.report.stats import minimum_detectable_difference

    sd = 0.03
    mde = minimum_detectable_difference(sd, n)
    rng = np.random.default_rng(n)
    diffs = rng.normal(mde, sd, size=(40000, n))
    p = sps.ttest_1samp(diffs, 0.0, axis=1).pvalue
    assert np.mean(p < 0.05) == pytest.approx(0.8, abs=0.01)
    # more seeds detect smaller effects; the normal approximation would claim far too much power at n = 3
    assert minimum_detectable_difference(sd, n + 5) < mde
    normal = (sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) * sd / np.sqrt(n)
    assert mde > normal
    assert np.isnan(minimum_detectable_difference(sd, 1)) and np.isnan(minimum_detectable_difference(0.0, 5))


def test_summary_rows_carry_the_detectable_difference():
    from btcxr.report.stats import minimum_detectable_difference, summarise

    runs = pd.DataFrame({"init": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2, "fraction": 1.0,
                         "map50": [0.30, 0.32, 0.35, 0.25, 0.28, 0.27]})
    row = summarise(runs, "map50", ["fraction"], baseline="b").set_index("init").loc["a"]
    d = np.array([0.05, 0.04, 0.08])
    assert row["mde"] == pytest.approx(minimum_detectable_difference(float(np.std(d, ddof=1)), 3))
