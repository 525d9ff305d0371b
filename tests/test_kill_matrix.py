"""kill -9 matrix: every training command is SIGKILLed part-way (from outside, while it trains) and inside a
checkpoint write (right after the write starts, and with the whole temporary file on disk just before its
rename); the same command is then rerun, and its final artefacts must equal an uninterrupted run's bit for
bit: model tensors, metrics.jsonl (each row once, none missing; only the wall-clock fields may differ), the
results. One process on the CPU with OMP_NUM_THREADS=1, as the issue asks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_finetune import write_square_cache
from test_pretrain import TINY, make_unlabeled_cache
from test_probe import make_nih_cache

from btcxr.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = Path(__file__).with_name("kill_launcher.py")
# Wall-clock measurements: the only values of a metrics row that may differ between two identical runs.
TIMING = {"pairs_per_s", "images_per_s", "train_seconds", "max_mem_gb"}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO)}


def _run(args: list[str], kill: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    prefix = [sys.executable, str(LAUNCHER), kill] if kill else [sys.executable, "-m", "btcxr"]
    return subprocess.run([*prefix, "-q", *args], env=_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _kill_when(args: list[str], metrics: Path, rows: int, timeout: float = 240) -> None:
    """Start the command and SIGKILL it once its metrics log holds `rows` rows (part-way through training)."""
    proc = subprocess.Popen([sys.executable, "-m", "btcxr", "-q", *args], env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if metrics.exists() and metrics.read_text().count("\n") >= rows:
                proc.send_signal(signal.SIGKILL)
                break
            if proc.poll() is not None:
                pytest.fail(f"the run ended (exit {proc.returncode}) before it could be killed: "
                            f"{proc.stderr.read()[-2000:]}")
            time.sleep(0.02)
        else:
            pytest.fail("the run never reached the point to kill it at")
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        if isinstance(a[key], dict):
            _same_tensors(a[key], b[key], f"{what}.{key}")
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), f"{what}.{key}"


def _no_temp_files(run: Path) -> None:
    left = [p.name for p in run.rglob(".*") if ".tmp" in p.name]
    assert not left, f"temporary files left behind: {left}"


def _check_same(run: Path, reference: Path, files: tuple[str, ...]) -> None:
    assert _rows(run) == _rows(reference)
    for name in files:
        _same_tensors(load_checkpoint(run / name), load_checkpoint(reference / name), name)
    _no_temp_files(run)


# ------------------------------------------------------------------------------------------------ stages
@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> dict[str, tuple[list[str], tuple[str, ...], int]]:
    """stage -> (command line without --out, checkpoint-like files to compare, metrics rows to kill at)."""
    base = tmp_path_factory.mktemp("kill")
    unlabeled = make_unlabeled_cache(base / "unlabeled", n=20, size=32)  # 17 train images
    nih = make_nih_cache(base / "nih", n=(24, 12, 12), seed=1)
    vindr = write_square_cache(base / "vindr", {"train": 8, "val": 4, "test": 4}, size=64)
    pretrain = ["pretrain", "--config", "configs/pretrain/demo.yaml", f"data.cache={unlabeled}", *TINY,
                "optim.epochs=3", "optim.batch_size=4", "model.projector=[32,16]", "checkpoint_every_steps=2"]
    probe = ["probe", "--config", "configs/probe/demo.yaml", f"data.cache={nih}", "tensorboard=false",
             "optim.epochs=3", "model.size=32", "optim.batch_size=8", "probe.mode=finetune", "log_every=1"]
    finetune = ["finetune", "--config", "configs/finetune/demo.yaml", f"data.cache={vindr}", "tensorboard=false",
                "model.size=64", "model.fpn_channels=32", "model.box_head_dim=64", "optim.epochs=3",
                "optim.batch_size=4", "optim.warmup_iters=2", "log_every=1", "data.workers=0"]
    # BYOL (lightly): last.pt must carry the target network and the resumed momentum schedule bit for bit.
    byol = [*pretrain, "method=byol", "byol.predictor_hidden=16", "byol.momentum_base=0.9"]
    return {"pretrain": (pretrain, ("last.pt", "backbone.pth"), 5),
            "pretrain_byol": (byol, ("last.pt", "backbone.pth"), 5),
            "probe": (probe, ("last.pt", "best.pt"), 4),
            "finetune": (finetune, ("last.pt", "best.pt"), 4)}


@pytest.fixture(scope="module")
def references(stages, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("reference")
    for name, (args, _, _) in stages.items():
        result = _run([*args, "--out", str(out / name)])
        assert result.returncode == 0, result.stderr[-3000:]
    return {name: out / name for name in stages}


@pytest.mark.parametrize("stage", ["pretrain", "pretrain_byol", "probe", "finetune"])
def test_killed_part_way_and_rerun_equals_the_uninterrupted_run(stage, stages, references, tmp_path):
    args, files, rows = stages[stage]
    run = tmp_path / "run"
    _kill_when([*args, "--out", str(run)], run / "metrics.jsonl", rows)
    result = _run([*args, "--out", str(run)])  # the same command: it resumes by itself
    assert result.returncode == 0, result.stderr[-3000:]
    _check_same(run, references[stage], files)


# Each stage killed in its first checkpoint write (no last.pt yet: the rerun starts afresh) and in a later one
# (the rerun resumes from the previous last.pt), right after the write starts and with the whole temporary
# file on disk before its rename; start and end alternate over the stages, so each case is covered twice.
@pytest.mark.parametrize("stage,nth,when", [("pretrain", 1, "start"), ("pretrain", 3, "end"), ("probe", 1, "end"),
                                            ("probe", 2, "start"), ("finetune", 1, "start"), ("finetune", 2, "end")])
def test_killed_inside_a_checkpoint_write_and_rerun_equals_the_uninterrupted_run(stage, nth, when, stages,
                                                                              references, tmp_path):
    args, files, _ = stages[stage]
    run = tmp_path / "run"
    killed = _run([*args, "--out", str(run)], kill=f"last.pt:{nth}:{when}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert list(run.glob(".last.pt.tmp*")), "the kill was meant to leave a temporary checkpoint behind"
    result = _run([*args, "--out", str(run)])
    assert result.returncode == 0, result.stderr[-3000:]
    _check_same(run, references[stage], files)


def test_a_finished_run_rerun_changes_nothing(stages, references, tmp_path):
    """Rerunning a finished run resumes at its end: no row is appended twice, no weight moves."""
    args, files, _ = stages["probe"]
    run = tmp_path / "run"
    for _ in range(2):
        result = _run([*args, "--out", str(run)])
        assert result.returncode == 0, result.stderr[-3000:]
    _check_same(run, references["probe"], files)
    assert json.loads((run / "results.json").read_text())["test"] == \
        json.loads((references["probe"] / "results.json").read_text())["test"]


# ------------------------------------------------------------------------------------------- reproduce
EXPERIMENT = ["reproduce", "--config", "configs/experiments/demo.yaml", "--workers", "1",
              "data.synthetic={n_vindr: 48, n_nih: 40, size: 96, seed: 0, normal_fraction: 0.2}",
              "data.cache_size=64", "data.pretrain_size=32", "sizes=[64]", "pretrain.overrides=[optim.epochs=2]",
              "finetune.overrides=[optim.epochs=2]", "probe.overrides=[optim.epochs=1]",
              "localisation.max_images=1", "localisation.ratio=0.05", "localisation.score_thr=0.0",
              "cam_examples=1"]


def _results(out: Path):
    import pandas as pd

    return pd.read_csv(out / "results.csv").drop(columns=["run_dir"]).sort_values("run_id", ignore_index=True)


@pytest.fixture(scope="module")
def reproduce_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("experiment") / "exp"
    result = _run([*EXPERIMENT, "--out", str(out)], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


# Killed in a grid run (the pre-training stage's own kill and resume are the pretrain cases above).
@pytest.mark.parametrize("where", ["runs/det_random_s64_f1_seed0"])
def test_reproduce_killed_part_way_and_rerun_gives_the_same_results_and_report(where, reproduce_reference,
                                                                             tmp_path):
    out = tmp_path / "exp"
    _kill_when([*EXPERIMENT, "--out", str(out)], out / where / "metrics.jsonl", 1, timeout=600)
    result = _run([*EXPERIMENT, "--out", str(out)], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    import pandas as pd

    pd.testing.assert_frame_equal(_results(out), _results(reproduce_reference), check_exact=True)
    report, reference = ((o / "report" / "results.md").read_text().replace(str(o), "OUT")
                         for o in (out, reproduce_reference))
    assert report == reference  # every number of the report
    _same_tensors(load_checkpoint(out / "pretrain" / "backbone.pth"),
                  load_checkpoint(reproduce_reference / "pretrain" / "backbone.pth"), "backbone.pth")
    assert not list(out.glob("runs/*.stale-*"))  # a resumed run is not mistaken for one with other settings
