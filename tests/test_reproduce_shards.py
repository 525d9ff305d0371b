"""`btcxr reproduce --shard i/n`: bad shards refused while parsing, and shards finishing together."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from test_reproduce import FakeFinetune, _fake_experiment

from btcxr.cli import build_parser, main
from btcxr.config_files import CONFIG_DIR
from btcxr.engine.io import is_temp_name
from btcxr.errors import BtcxrError
from btcxr.experiment import data_stage
from btcxr.experiment import local as launcher
from btcxr.experiment import results as results_stage

ROOT = Path(__file__).resolve().parents[1]
DEMO = CONFIG_DIR / "experiments" / "demo.yaml"


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if is_temp_name(p.name)]


# ------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("text, index, count", [("0/1", 0, 1), ("1/2", 1, 2), ("3/4", 3, 4), (" 2 / 8 ", 2, 8)])
def test_a_valid_shard_is_parsed_into_index_and_count(text, index, count):
    args = build_parser().parse_args(["reproduce", "--config", str(DEMO), f"--shard={text}"])
    assert args.shard == (index, count)
    assert build_parser().parse_args(["reproduce", "--config", str(DEMO)]).shard == (0, 1)


@pytest.mark.parametrize("text, words", [
    ("2/2", "0..1"), ("5/2", "0..1"), ("-1/2", "0..1"),          # index out of range
    ("0/0", "at least 1"), ("1/-2", "at least 1"),               # zero or negative count
    ("a/b", "expected i/n"), ("1", "expected i/n"), ("1/2/3", "expected i/n"), ("1.0/2", "expected i/n"),
    ("", "expected i/n"), ("１/２", "expected i/n"),
])
def test_a_bad_shard_is_refused_before_anything_starts(tmp_path, monkeypatch, capsys, text, words):
    def must_not_run(*args, **kwargs):
        raise AssertionError("reproduce started despite a bad --shard")

    monkeypatch.setattr(launcher, "reproduce", must_not_run)
    monkeypatch.setattr("btcxr.data.synthetic.generate", must_not_run)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "--config", str(DEMO), "--out", str(out), f"--shard={text}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--shard" in err and words in err
    assert not out.exists()


def test_the_library_refuses_a_bad_shard_before_any_stage(tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("a stage started despite a bad shard")

    monkeypatch.setattr(data_stage, "prepare_data", must_not_run)
    monkeypatch.setattr(launcher, "make_plan", must_not_run)
    for index, count in [(2, 2), (0, 0), (-1, 3)]:
        with pytest.raises(BtcxrError, match="invalid"):
            launcher.reproduce(DEMO, out=tmp_path / "out", shard_index=index, shard_count=count)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------- shards finishing together
def test_shards_finishing_together_take_turns_writing_results_and_report(tmp_path, monkeypatch):
    """Two shards (threads: flock also excludes two opens in one process) whose last runs end at the same
    moment: results.csv and the report are never written by both at once, and the last results.csv holds
    every run of the grid once."""
    exp_path = _fake_experiment(tmp_path)
    out = tmp_path / "out"
    fake = FakeFinetune()
    together = threading.Barrier(2)
    local = threading.local()

    def finetune(cfg, out_dir, resume=False):
        local.runs = getattr(local, "runs", 0) + 1
        best = fake(cfg, out_dir, resume)
        if local.runs == 4:             # each shard's last of its 4 runs: release both at once
            together.wait(timeout=60)
        return best

    guard = threading.Lock()
    active, most = [0], [0]

    def exclusive(write):
        def wrapped(*args, **kwargs):
            with guard:
                active[0] += 1
                most[0] = max(most[0], active[0])
            try:
                time.sleep(0.05)        # widen the window a second writer would hit
                return write(*args, **kwargs)
            finally:
                with guard:
                    active[0] -= 1
        return wrapped

    import btcxr.report.build as build

    monkeypatch.setattr("btcxr.detect.train.finetune", finetune)
    monkeypatch.setattr(results_stage, "write_csv", exclusive(results_stage.write_csv))
    monkeypatch.setattr(build, "build_report", exclusive(build.build_report))

    returned: dict[int, object] = {}
    errors: list[BaseException] = []

    def shard(index):
        try:
            returned[index] = launcher.reproduce(exp_path, out=out, shard_index=index, shard_count=2)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert most[0] == 1                          # never two writers at once
    reports = [r for r in returned.values() if r is not None]
    assert reports and all(r == out / "report" / "index.html" for r in reports)
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 8 and results["run_id"].is_unique and set(results["status"]) == {"done"}
    assert sorted(name for name, _ in fake.calls) == sorted(results["run_id"])   # each run ran once
    assert _temp_files(out) == []


# ------------------------------------------------------------------------ the real thing, 2 processes
TINY = ["data.synthetic={n_vindr: 48, n_nih: 40, size: 96, seed: 0, normal_fraction: 0.2}",
        "data.cache_size=64", "data.pretrain_size=32", "sizes=[64]", "pretrain.overrides=[optim.epochs=1]",
        "finetune.overrides=[optim.epochs=1]", "probe.overrides=[optim.epochs=1]",
        "localisation.max_images=1", "localisation.ratio=0.05", "localisation.score_thr=0.0", "cam_examples=1"]


@pytest.mark.slow
def test_two_shard_processes_started_together_write_one_correct_results_csv_and_one_report(tmp_path):
    out = tmp_path / "exp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "btcxr.cli", "-q", "reproduce", "--config", str(DEMO),
                               "--out", str(out), "--shard", f"{i}/2", "--workers", "1", *TINY],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]

    text = (out / "results.csv").read_text()
    results = pd.read_csv(out / "results.csv")
    expected = ["det_btcxr_s64_f1_seed0", "det_random_s64_f1_seed0", "probe_btcxr_f1_seed0",
                "probe_random_f1_seed0"]
    assert sorted(results["run_id"]) == expected, text      # every run once, no duplicates
    assert set(results["status"]) == {"done"}
    assert results.loc[results["kind"] == "detection", "map50"].between(0, 1).all()
    assert results.loc[results["kind"] == "probe", "mean_auroc"].notna().all()
    assert text.count("\n") == len(expected) + 1            # the header and one line per run, nothing else

    pages = sorted(out.rglob("index.html"))
    assert pages == [out / "browse" / "index.html", out / "report" / "index.html"]  # one report, one browser
    reports = pages[1:]
    assert any(f"report: {reports[0]}" in log for log in logs)
    html = reports[0].read_text()
    assert html.rstrip().endswith("</html>") and "Detection: test mAP50" in html
    assert _temp_files(out) == []
    assert (out / "pretrain" / "backbone.pth").exists()
    assert len(list(out.glob("runs/*.stale-*"))) == 0        # no shard redid the other's runs
