"""`btcxr replicate`: independent runs side by side, a conclusion only where every run supports it."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from btcxr.cli import main
from btcxr.errors import BtcxrError
from btcxr.report.replication import HIGHER, LOWER, NONE_FOUND, NOT_REPLICATED, compare_runs, verdict


def _results(seeds, diffs: dict[str, list[float]], base=(0.30, 0.25, 0.35, 0.28)) -> pd.DataFrame:
    """results.csv rows: random init at `base[i]` for seed i, each arm at base + its difference."""
    rows = []
    for i, seed in enumerate(seeds):
        arms = {"random": 0.0} | {arm: d[i] for arm, d in diffs.items()}
        for arm, d in arms.items():
            rows.append({"run_id": f"det_{arm}_seed{seed}", "kind": "detection", "init": arm, "size": 128,
                         "fraction": 0.1, "seed": seed, "run_dir": "x", "status": "done", "map50": base[i] + d})
            rows.append({"run_id": f"probe_{arm}_seed{seed}", "kind": "probe", "init": arm, "size": 128,
                         "fraction": 1.0, "seed": seed, "run_dir": "x", "status": "done", "mode": "freeze",
                         "mean_auroc": 0.5 + base[i] / 10 + d})
    return pd.DataFrame(rows)


UP = [0.050, 0.060, 0.055, 0.045]       # clearly positive in every seed
NOISE = [0.010, -0.012, 0.011, -0.009]  # no difference
DOWN = [-0.030, -0.035, -0.028, -0.032]


def test_verdicts():
    assert verdict([0.05, 0.04], [0.01, 0.002]) == HIGHER
    assert verdict([-0.05, -0.04], [0.01, 0.002]) == LOWER
    assert verdict([0.05, 0.01], [0.01, 0.40]) == NOT_REPLICATED      # found in one run only
    assert verdict([0.05, -0.04], [0.01, 0.02]) == NOT_REPLICATED     # found in both, opposite signs
    assert verdict([0.01, -0.01], [0.30, 0.70]) == NONE_FOUND
    assert verdict([0.01, float("nan")], [0.01, float("nan")]) == NOT_REPLICATED
    assert verdict([0.05, 0.04], [0.04, 0.06], alpha=0.05) == NOT_REPLICATED


def test_each_run_is_tested_on_its_own_seeds_and_the_verdict_needs_every_run():
    a = _results([0, 1, 2, 3], {"supervised": UP, "btcxr": UP, "imagenet": DOWN})
    b = _results([4, 5, 6, 7], {"supervised": UP, "btcxr": NOISE, "imagenet": NOISE})
    table = compare_runs({"A": a, "B": b}, baseline="random")
    det = table[table["kind"] == "detection"].set_index("init")
    assert det.loc["supervised", "verdict"] == HIGHER
    assert det.loc["btcxr", "verdict"] == NOT_REPLICATED
    assert det.loc["imagenet", "verdict"] == NOT_REPLICATED
    assert det.loc["supervised", "setting"] == "detection mAP50, 128 px, 10 % of the labels"
    # each run's numbers are its own paired t-test (scipy, independently)
    arm, ref = b[(b["kind"] == "detection") & (b["init"] == "btcxr")], b[(b["kind"] == "detection") & (b["init"] == "random")]
    p = stats.ttest_rel(arm["map50"].to_numpy(), ref["map50"].to_numpy()).pvalue
    assert det.loc["btcxr", "B p"] == pytest.approx(p) and p > 0.05
    assert det.loc["btcxr", "B diff"] == pytest.approx(np.mean(NOISE))
    assert det.loc["btcxr", "A diff"] == pytest.approx(np.mean(UP)) and det.loc["btcxr", "A p"] < 0.001
    assert det.loc["btcxr", "A seeds"] == 4
    probe = table[table["kind"] == "probe"].set_index("init")
    assert probe.loc["supervised", "verdict"] == HIGHER and "freeze" in probe.loc["supervised", "setting"]

    # a setting where one run has no baseline run: no paired test there, hence no conclusion
    b_partial = b[~((b["kind"] == "probe") & (b["init"] == "random"))]
    probe = compare_runs({"A": a, "B": b_partial}, "random").query("kind == 'probe'").set_index("init")
    assert probe.loc["supervised", "B seeds"] == 0 and probe.loc["supervised", "verdict"] == NOT_REPLICATED

    both_noise = compare_runs({"A": _results([0, 1, 2, 3], {"btcxr": NOISE}),
                               "B": _results([4, 5, 6, 7], {"btcxr": NOISE})}, "random")
    assert set(both_noise["verdict"]) == {NONE_FOUND}


def test_runs_that_share_seeds_are_not_independent():
    a = _results([0, 1, 2, 3], {"btcxr": UP})
    with pytest.raises(BtcxrError, match=r"share seed\(s\) 2, 3"):
        compare_runs({"A": a, "B": _results([2, 3, 4, 5], {"btcxr": UP})}, "random")
    with pytest.raises(BtcxrError, match="at least two runs"):
        compare_runs({"A": a}, "random")
    with pytest.raises(BtcxrError, match="baseline 'imagenet'"):
        compare_runs({"A": a, "B": _results([4, 5, 6, 7], {"btcxr": UP})}, "imagenet")


def test_the_command_prints_and_writes_the_table(tmp_path, capsys):
    for name, seeds, diffs in (("run-a", [0, 1, 2, 3], UP), ("run-b", [4, 5, 6, 7], UP)):
        (tmp_path / name).mkdir()
        _results(seeds, {"supervised": diffs}).to_csv(tmp_path / name / "results.csv", index=False)
    out = tmp_path / "rep" / "replication.md"
    assert main(["replicate", str(tmp_path / "run-a"), str(tmp_path / "run-b" / "results.csv"),
                 "--name", "seeds 0-3", "--name", "seeds 4-7", "--baseline", "random", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    assert "| seeds 0-3: Δ vs random [95 % CI], p; detectable |" in printed
    assert "| detection mAP50, 128 px, 10 % of the labels | supervised | +0.052 [" in printed
    assert "p < 0.001" in printed and f"**{HIGHER}**" in printed
    assert set(pd.read_csv(out.with_suffix(".csv"))["verdict"]) == {HIGHER}


def test_the_command_names_what_is_wrong(tmp_path, capsys, monkeypatch):
    (tmp_path / "a").mkdir()
    assert main(["replicate", str(tmp_path / "a"), str(tmp_path / "b"), "--baseline", "random"]) == 2
    assert "no results.csv there" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "a" / "results.csv").write_text(_results([0, 1], {"btcxr": UP[:2]}).to_csv(index=False))
    assert main(["replicate", str(tmp_path / "a"), str(bad), "--baseline", "random"]) == 2
    assert str(bad) in capsys.readouterr().err
    assert main(["replicate", str(tmp_path / "a"), str(tmp_path / "a"), "--baseline", "random"]) == 2
    assert "distinct names" in capsys.readouterr().err
    (tmp_path / "c.csv").write_text("run_id,kind\nx,detection\n")
    assert main(["replicate", str(tmp_path / "a"), str(tmp_path / "c.csv"), "--baseline", "random"]) == 2
    assert "missing column(s) init" in capsys.readouterr().err

    def io_error(*args, **kwargs):   # a disk that fails while the table is read (root reads every file)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("pandas.read_csv", io_error)
    assert main(["replicate", str(tmp_path / "a"), str(tmp_path / "c.csv"), "--baseline", "random"]) == 2
    err = capsys.readouterr().err
    assert "a/results.csv: not a readable results table ([Errno 5] Input/output error)" in err
