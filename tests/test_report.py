"""The reproduction report built from a synthetic results table with known numbers."""

from __future__ import annotations

import importlib.util
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from btcxr.data.classes import NIH_LABELS, VINDR_CLASSES
from btcxr.errors import BtcxrError
from btcxr.report.build import build_report, read_curve
from btcxr.report.tables import fmt_fraction, fmt_interval, fmt_p

# Known test mAP50 per init, label fraction and seed (seeds 0, 1, 2).
MAP50 = {
    "imagenet": {0.1: [0.20, 0.22, 0.25], 1.0: [0.40, 0.41, 0.43]},
    "btcxr": {0.1: [0.24, 0.25, 0.27], 1.0: [0.42, 0.40, 0.46]},
    "random": {0.1: [0.05, 0.07, 0.06], 1.0: [0.20, 0.22, 0.19]},
}
AUROC = {"imagenet": {0.1: [0.70, 0.71, 0.69], 1.0: [0.78, 0.79, 0.80]},
         "btcxr": {0.1: [0.73, 0.74, 0.75], 1.0: [0.80, 0.80, 0.82]},
         "random": {0.1: [0.60, 0.62, 0.58], 1.0: [0.66, 0.65, 0.67]}}
ABSENT_CLASS = "Pneumothorax"
SIZE = 224


def _class_ap(map50: float, k: int) -> float:
    return math.nan if VINDR_CLASSES[k] == ABSENT_CLASS else map50 * (0.5 + k / 14)


def make_results(root: Path, seeds=(0, 1, 2), probe: bool = True, curves: bool = True) -> pd.DataFrame:
    """results.csv rows for 3 inits x 2 fractions x seeds, with run folders holding metrics.jsonl."""
    rows = []
    for init, by_fraction in MAP50.items():
        for fraction, values in by_fraction.items():
            for seed in seeds:
                m = values[seed]
                run_id = f"det_{init}_s{SIZE}_f{fraction:g}_seed{seed}"
                run_dir = root / "runs" / run_id
                run_dir.mkdir(parents=True, exist_ok=True)
                if curves and not (init == "random" and seed == seeds[-1]):   # one run lacks its log
                    with (run_dir / "metrics.jsonl").open("w") as f:
                        for epoch in range(1, 6):
                            f.write(json.dumps({"phase": "train", "step": epoch * 10, "loss": 2.0 / epoch,
                                                "lr": 0.005}) + "\n")
                            f.write(json.dumps({"phase": "epoch", "step": epoch * 10, "epoch": epoch,
                                                "loss": 1.5 / epoch, "val_ap50": m * epoch / 5}) + "\n")
                row = {"run_id": run_id, "kind": "detection", "init": init, "size": SIZE, "fraction": fraction,
                       "seed": seed, "run_dir": str(run_dir), "status": "done", "map50": m,
                       "map50_ci_lo": m - 0.03, "map50_ci_hi": m + 0.04, "map": m / 2, "map50_voc": m + 0.01,
                       "kaggle_map40": m + 0.02}
                row |= {f"ap50/{c}": _class_ap(m, k) for k, c in enumerate(VINDR_CLASSES)}
                rows.append(row)
    if probe:
        for init, by_fraction in AUROC.items():
            for fraction, values in by_fraction.items():
                for seed in seeds:
                    a = values[seed]
                    row = {"run_id": f"probe_{init}_f{fraction:g}_seed{seed}", "kind": "probe", "init": init,
                           "size": 224, "fraction": fraction, "seed": seed, "run_dir": str(root / "p"),
                           "status": "done", "mean_auroc": a, "val_mean_auroc": a - 0.01, "mode": "freeze"}
                    row |= {f"auroc/{lab}": a + 0.001 * k for k, lab in enumerate(NIH_LABELS)}
                    rows.append(row)
    return pd.DataFrame(rows)


LOCALISATION = {
    "imagenet": {"energy_in_box": {"mean": 0.31, "ci_lo": 0.27, "ci_hi": 0.35, "n": 40},
                 "pointing_game": {"mean": 0.45, "ci_lo": 0.30, "ci_hi": 0.60, "n": 40},
                 "per_class": {"Cardiomegaly": {"energy_in_box": {"mean": 0.52, "ci_lo": 0.44, "ci_hi": 0.60, "n": 12},
                                                "pointing_game": {"mean": 0.75, "ci_lo": 0.47, "ci_hi": 0.91, "n": 12}}}},
    "btcxr": {"energy_in_box": {"mean": 0.377, "ci_lo": 0.33, "ci_hi": 0.42, "n": 40},
              "pointing_game": {"mean": 0.55, "ci_lo": 0.40, "ci_hi": 0.69, "n": 40},
              "per_class": {"Cardiomegaly": {"energy_in_box": {"mean": 0.61, "ci_lo": 0.55, "ci_hi": 0.68, "n": 12},
                                             "pointing_game": {"mean": 0.83, "ci_lo": 0.55, "ci_hi": 0.95, "n": 12}}}},
}


class _Page(HTMLParser):
    """Headings, image sources and table rows (as lists of cell texts) of the written page."""

    def __init__(self, text: str):
        super().__init__()
        self.headings: list[str] = []
        self.images: list[str] = []
        self.rows: list[list[str]] = []
        self._tag: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        self._tag = tag

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._tag == "h2":
            self.headings.append(data.strip())


def _row(rows: list[list[str]], *keys: str) -> list[str]:
    """The first table row whose leading cells are `keys`."""
    found = [r for r in rows if r[: len(keys)] == list(keys)]
    assert found, f"no row starting with {keys}"
    return found[0]


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("exp")
    results = make_results(root)
    grid = root / "grid.png"
    Image.fromarray(np.full((40, 80, 3), 200, np.uint8)).save(grid)
    config = root / "finetune.yaml"
    config.write_text("optim:\n  lr: 0.005  # <b>not html</b>\n")
    index = build_report(root / "report", results, localisation=LOCALISATION, cam_grids=[grid],
                         configs={"finetune": config}, versions={"torch": "2.14.1", "numpy": "2.1"},
                         notes=["ImageNet weights could not be loaded here"])
    return index, results


def test_every_section_and_image_is_there(full_report):
    index, _ = full_report
    page = _Page(index.read_text())
    for heading in ["Summary", "Detection: test mAP50", "Label efficiency", "Per-class AP50", "Training curves",
                    "Ablation-CAM examples", "Localisation of the heatmaps", "NIH classification probe",
                    "Configs", "Versions", "All runs"]:
        assert heading in page.headings
    assert page.images, "the report shows no figure"
    for src in page.images:
        assert not src.startswith(("/", "http")) and (index.parent / src).is_file(), src
    names = {Path(s).name for s in page.images}
    assert {"label_efficiency_224px.png", "per_class_ap50_224px.png", "training_224px.png"} <= names
    assert any(n.startswith("cam_") for n in names)
    text = index.read_text()
    assert "ImageNet weights could not be loaded here" in text        # the note, shown at the top
    assert "&lt;b&gt;not html&lt;/b&gt;" in text and "<b>not html" not in text   # configs are escaped
    assert "<script" not in text and "http" not in text.replace("http-equiv", "")


def test_detection_numbers_match_independent_statistics(full_report):
    index, _ = full_report
    rows = _Page(index.read_text()).rows
    for init, fraction in [("btcxr", 0.1), ("random", 1.0), ("imagenet", 1.0)]:
        x = np.array(MAP50[init][fraction])
        half = stats.t.ppf(0.975, 2) * x.std(ddof=1) / math.sqrt(3)
        row = _row(rows, f"{SIZE} px", fmt_fraction(fraction), init)
        assert row[3] == "3"
        assert row[4] == f"{x.mean():.3f} [{x.mean() - half:.3f}, {x.mean() + half:.3f}]"
        if init != "imagenet":
            base = np.array(MAP50["imagenet"][fraction])
            d = x - base
            dhalf = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
            assert row[5] == f"{d.mean():+.3f} [{d.mean() - dhalf:+.3f}, {d.mean() + dhalf:+.3f}]"
            assert row[6] == fmt_p(stats.ttest_rel(x, base).pvalue)
        else:
            assert row[5] == "baseline"


def test_summary_states_what_the_numbers_say(full_report):
    index, _ = full_report
    text = index.read_text()
    for fraction in (0.1, 1.0):
        x, base = np.array(MAP50["btcxr"][fraction]), np.array(MAP50["imagenet"][fraction])
        p = stats.ttest_rel(x, base).pvalue
        verdict = "significant" if p < 0.05 else "not significant"
        assert f"At {SIZE} px with {fmt_fraction(fraction)} of the labels: mean test mAP50 {x.mean():.3f} for " \
            f"btcxr against {base.mean():.3f} for imagenet; paired difference over 3 seeds " \
            f"{x.mean() - base.mean():+.3f} [" in text
        assert f"t-test p = {fmt_p(p)}: {verdict} at 0.05" in text
    # 0.1: +0.030 on every seed but one (p ~ 0.02); 1.0: mixed signs (p ~ 0.6).
    assert stats.ttest_rel(MAP50["btcxr"][0.1], MAP50["imagenet"][0.1]).pvalue < 0.05
    assert "btcxr had a higher mean than imagenet in 2 of 2 setting(s)" in text
    assert "significantly positive in 1 and significantly negative in 0" in text


def test_per_class_localisation_and_probe_tables(full_report):
    index, _ = full_report
    rows = _Page(index.read_text()).rows
    ap = [_class_ap(v, VINDR_CLASSES.index("Cardiomegaly")) for v in MAP50["btcxr"][1.0]]
    ci = stats.t.interval(0.95, 2, loc=np.mean(ap), scale=stats.sem(ap))
    cardio = _row(rows, "Cardiomegaly")      # the per-class AP50 table comes first
    assert cardio[2] == fmt_interval(np.mean(ap), *ci)
    assert _row(rows, ABSENT_CLASS)[1] == "n/a"
    assert _row(rows, "btcxr", "0.377 [0.330, 0.420]")[-1] == "40"
    assert ["Cardiomegaly", "0.520 [0.440, 0.600] (n=12)", "0.610 [0.550, 0.680] (n=12)"] in rows
    probe = _row(rows, "freeze", "10 %", "btcxr")
    x, base = AUROC["btcxr"][0.1], AUROC["imagenet"][0.1]
    assert probe[4].startswith(f"{np.mean(x):.3f} [")
    assert probe[6] == fmt_p(stats.ttest_rel(x, base).pvalue)


def test_training_curves_note_the_missing_log(full_report):
    text = full_report[0].read_text()
    assert "No metrics.jsonl for 2 run(s)" in text and "det_random_s224_f1_seed2" in text


def test_results_md_holds_the_tables(full_report):
    index, _ = full_report
    md = (index.parent / "results.md").read_text()
    x = np.array(MAP50["btcxr"][0.1])
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {SIZE} px | 10 % | btcxr |"))
    assert f"| {x.mean():.3f} [" in line
    assert fmt_p(stats.ttest_rel(x, MAP50["imagenet"][0.1]).pvalue) in line
    for heading in ["## Summary", "## Detection: test mAP50", "## Per-class AP50", "## Localisation of the heatmaps",
                    "## NIH classification probe", "## Versions"]:
        assert heading in md
    assert "| torch | 2.14.1 |" in md


def test_one_seed_gives_no_paired_test_and_absent_sections_say_why(tmp_path):
    results = make_results(tmp_path, seeds=(0,), probe=False)
    index = build_report(tmp_path / "report", results)
    page = _Page(index.read_text())
    text = index.read_text()
    row = _row(page.rows, f"{SIZE} px", "10 %", "btcxr")
    assert row[3] == "1"
    assert row[4] == "0.240 [0.210, 0.280]†"    # the run's own bootstrap interval (0.24 - 0.03, 0.24 + 0.04)
    assert row[5] == "+0.040 [n/a]" and row[6] == "n/a"
    assert "one seed: the interval is the bootstrap" in text
    assert "higher by +0.040; with one seed there is no paired test, so the difference is untested" in text
    assert "No NIH probe runs in this experiment" in text
    assert "No localisation run" in text and "No CAM grids were produced" in text
    md = (tmp_path / "report" / "results.md").read_text()
    assert "No NIH probe runs in this experiment" in md and "| n/a |" in md


def test_empty_and_partial_inputs_do_not_crash(tmp_path):
    cols = ["run_id", "kind", "init", "size", "fraction", "seed", "run_dir", "status"]
    index = build_report(tmp_path / "empty", pd.DataFrame(columns=cols), localisation={"models": {}},
                         cam_grids=[tmp_path / "missing.png"])
    text = index.read_text()
    assert "No finished runs" in text and "missing.png" in text
    results = make_results(tmp_path, curves=False)
    results.loc[0, "status"] = "failed"
    index = build_report(tmp_path / "partial", results[results["init"] != "imagenet"])
    text = index.read_text()
    assert "The baseline init &#x27;imagenet&#x27; has no finished run" in text
    assert "There are no imagenet (baseline) runs" in text
    with pytest.raises(BtcxrError, match="missing column"):
        build_report(tmp_path / "bad", results.drop(columns=["seed"]))
    twice = pd.concat([results.iloc[[3]], results.iloc[[3]].assign(run_id="again")])
    with pytest.raises(BtcxrError, match="again"):
        build_report(tmp_path / "bad", twice)


def test_broken_metrics_log_names_file_and_line(tmp_path):
    results = make_results(tmp_path, seeds=(0, 2), probe=False)
    log = Path(results.loc[0, "run_dir"]) / "metrics.jsonl"
    log.write_text(log.read_text() + "{not json\n")
    with pytest.raises(BtcxrError, match=r"metrics.jsonl, line 11: not valid JSON"):
        build_report(tmp_path / "report", results)


def test_torn_last_line_of_a_metrics_log_is_left_out(tmp_path):
    """A run killed while writing its log leaves a last line without its newline: the curves plot without it."""
    results = make_results(tmp_path, seeds=(0, 2), probe=False)
    log = Path(results.loc[0, "run_dir"]) / "metrics.jsonl"
    whole = read_curve(results.loc[0], tmp_path / "report")
    log.write_text(log.read_text() + '{"phase": "epoch", "step": 99, "epo')
    assert read_curve(results.loc[0], tmp_path / "report") == whole
    assert (build_report(tmp_path / "report", results)).is_file()


def test_screenshot_script_says_when_chromium_is_missing(tmp_path):
    spec = importlib.util.spec_from_file_location("screenshot_report",
                                                  Path(__file__).parents[1] / "scripts" / "screenshot_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = tmp_path / "index.html"
    page.write_text("<html></html>")
    with pytest.raises(SystemExit, match="no Chromium found.*apt-get install -y chromium"):
        module.main([str(page), str(tmp_path / "shot.png"), "--chromium", str(tmp_path / "no-such-browser")])


def test_localisation_tables_accept_a_models_wrapper_and_bare_numbers():
    from btcxr.report.tables import localisation_settings, localisation_tables

    summary = {"layer": "layer3", "images": 50, "models": {
        "imagenet": {"energy_in_box": 0.25, "pointing_game": [0.5, 0.4, 0.6]},
        "btcxr": {"energy_in_box": {"mean": 0.3, "lo": 0.2, "hi": 0.4, "count": 7}},
        "settings": {"threshold": "0.3"}}}
    overall, = localisation_tables(summary)
    assert overall.rows == [["imagenet", "0.250", "0.500 [0.400, 0.600]", "n/a"],
                            ["btcxr", "0.300 [0.200, 0.400]", "n/a", "7"]]
    assert localisation_settings(summary) == {"layer": "layer3", "images": "50"}
    assert localisation_tables(None) == [] and localisation_tables({"models": {}}) == []


def test_a_missing_value_drops_that_seed_from_the_pairing(tmp_path):
    results = make_results(tmp_path, probe=False, curves=False)
    lost = (results["init"] == "imagenet") & (results["fraction"] == 0.1) & (results["seed"] == 1)
    results.loc[lost, "map50"] = math.nan
    index = build_report(tmp_path / "report", results)
    x, base = np.array(MAP50["btcxr"][0.1])[[0, 2]], np.array(MAP50["imagenet"][0.1])[[0, 2]]
    row = _row(_Page(index.read_text()).rows, f"{SIZE} px", "10 %", "btcxr")
    assert row[6] == fmt_p(stats.ttest_rel(x, base).pvalue)
    assert row[5].startswith(f"{(x - base).mean():+.3f} [")
    assert "(means over 3 and 2 seeds); paired difference over 2 seeds" in index.read_text()


def test_summary_answers_the_three_questions_with_random_as_baseline(tmp_path):
    """With random as the baseline: the method against random, the method against the cross-domain init it
    starts from, and the positive control against random, each with its own paired test."""
    results = make_results(tmp_path, probe=False, curves=False)
    control = results[results["init"] == "btcxr"].copy()
    control["init"] = "supervised"
    control["map50"] = control["map50"] + 0.1
    index = build_report(tmp_path / "report", pd.concat([results, control]), baseline="random")
    md = (tmp_path / "report" / "results.md").read_text()
    summary = md[md.index("## Summary"):md.index("## Detection")]
    assert "btcxr against random." in summary
    assert "btcxr against imagenet. Does pre-training on radiographs add to the cross-domain init?" in summary
    assert "supervised against random. The positive control: can this benchmark see transfer?" in summary
    assert "Detectable Δ" in md and index.exists()


def test_monitor_curves_of_the_pre_trainings(tmp_path):
    results = make_results(tmp_path, seeds=(0, 2), probe=False)
    monitors = pd.DataFrame({"init": ["btcxr"] * 3 + ["supervised"] * 3, "step": [0, 5, 10] * 2,
                             "rankme_backbone": [3.0, 5.5, 9.25, 3.0, 4.0, 6.0],
                             "knn_mean_auroc": [0.5, 0.55, 0.6, 0.5, 0.7, 0.8]})
    floor = {"rankme_backbone": 2.5, "knn_mean_auroc": 0.51}
    index = build_report(tmp_path / "report", results, monitors=monitors, monitor_floor=floor)
    assert "Pre-training monitors" in index.read_text() and (tmp_path / "report" / "figures" / "monitors.png").is_file()
    md = (tmp_path / "report" / "results.md").read_text()
    assert "| btcxr | 10 | 9.250 | 0.600 |" in md
    assert "| random init (floor) | - | 2.500 | 0.510 |" in md
    assert "Pre-training monitors" not in build_report(tmp_path / "plain", results).read_text()
