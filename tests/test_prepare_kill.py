"""`btcxr prepare` killed for real: a decoding worker SIGKILLed (the out-of-memory killer) and the whole run
killed -9 part-way. The run must end (not hang) with a message naming files, and a rerun of the same command
must give the very cache an uninterrupted run gives, byte for byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from btcxr.data.cache import PrepareSettings, prepare
from btcxr.engine.io import is_temp_name

pytestmark = pytest.mark.slow

TIMEOUT = 60  # seconds a killed run may take to stop: past it, it hangs


@pytest.fixture(scope="module")
def vindr(tmp_path_factory) -> Path:
    """A synthetic VinDr (Kaggle layout) with one unreadable DICOM, so errors.csv is part of the cache."""
    from btcxr.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth") / "vindr"
    generate(root, "vindr-kaggle", n=100, size=96, seed=0, workers=1, render_max=64, contact_sheet=False)
    broken = sorted((root / "train").iterdir())[7]
    broken.write_bytes(broken.read_bytes()[:300])  # truncated inside the header
    return root


def _command(root: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "btcxr", "-q", "prepare", "vindr", "--root", str(root), "--out", str(out),
            "--size", "48", "--workers", "2", "--with-normals", "--on-error", "skip"]


def _settings(root: Path, out: Path) -> PrepareSettings:
    return PrepareSettings(dataset="vindr", root=str(root), out=str(out), size=48, workers=2, with_normals=True,
                           on_error="skip")


def _start(root: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(_command(root, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _journal_lines(out: Path) -> int:
    try:
        return max(0, (out / "journal.csv").read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def _children(pid: int) -> list[int]:
    """Live child processes of `pid` (the pool's workers), read from /proc."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(entry.name))
    return kids


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"prepare ended (rc {proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"timed out waiting for {what}")


def _snapshot(out: Path) -> dict[str, bytes]:
    """Every file of a finished cache by relative path; prepare.json without what depends on the run."""
    files = {}
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.name != "journal.csv":
            files[str(path.relative_to(out))] = path.read_bytes()
    record = json.loads(files["prepare.json"])
    record.pop("seconds")
    record["counts"].pop("prepared")
    record["counts"].pop("reused")
    files["prepare.json"] = json.dumps(record, sort_keys=True).encode()
    return files


def _assert_no_temp_files(out: Path) -> None:
    left = [p for p in out.rglob("*") if is_temp_name(p.name)]
    assert left == []


@pytest.fixture(scope="module")
def reference(vindr, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("reference") / "cache"
    report = prepare(_settings(vindr, out))
    assert report.skipped == 1 and report.images == 79  # 80 train images, one unreadable
    return _snapshot(out)


def test_killed_worker_ends_the_run_naming_files_and_a_rerun_completes(vindr, reference, tmp_path):
    out = tmp_path / "cache"
    proc = _start(vindr, out)
    try:
        _wait_for(lambda: _journal_lines(out) >= 2, proc, "the first images were finished")
        workers = _wait_for(lambda: _children(proc.pid), proc, "the pool's workers")
        # Freeze the workers so that work is surely left, kill one as the OOM killer would, let the other go.
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        os.kill(workers[0], signal.SIGKILL)
        for pid in workers[1:]:
            os.kill(pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("prepare hung after one of its workers was killed")
    assert proc.returncode == 2, err
    assert "worker process died" in err and ".dicom" in err and str(vindr / "train") in err
    assert "Traceback" not in err
    finished = _journal_lines(out)
    assert 2 <= finished < 79 and not (out / "manifest.csv").exists()

    rerun = subprocess.run(_command(vindr, out), env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                           text=True, timeout=TIMEOUT)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads((out / "prepare.json").read_text())["counts"]["reused"] >= 2
    assert _snapshot(out) == reference
    _assert_no_temp_files(out)


@pytest.mark.parametrize("after", [3, 30], ids=["early", "midway"])
def test_kill_9_then_rerun_gives_the_uninterrupted_cache_bit_for_bit(vindr, reference, tmp_path, after):
    out = tmp_path / "cache"
    proc = _start(vindr, out)
    _wait_for(lambda: _journal_lines(out) >= after, proc, f"{after} images were finished")
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its workers, as kill -9 of a session would
    proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.csv").exists()  # killed before it finished
    assert json.loads((out / "prepare.json").read_text())["status"] == "running"

    rerun = subprocess.run(_command(vindr, out), env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                           text=True, timeout=TIMEOUT)
    assert rerun.returncode == 0, rerun.stderr
    counts = json.loads((out / "prepare.json").read_text())["counts"]
    assert counts["reused"] >= after and counts["prepared"] + counts["reused"] == 79
    snapshot = _snapshot(out)
    assert sorted(snapshot) == sorted(reference)
    for name in reference:  # one by one, so a failure names the file
        assert snapshot[name] == reference[name], name
    _assert_no_temp_files(out)
