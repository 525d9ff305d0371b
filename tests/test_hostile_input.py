"""Hostile and careless input, driven through the CLI (issue 24): each case ends in a short, clear error
and nothing runs."""

import pytest

from btcxr.cli import main

# 9 levels of 9 aliases: about a billion values once expanded, from 300 bytes of text.
BOMB = "[" + ", ".join(["&a0 [x, x, x, x, x, x, x, x, x]"] + [
    f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]) + ", *a8]"


def _refused(capsys, argv) -> str:
    """Run the CLI; it must exit with the user-error code and a short message, and return that message."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err) < 2000
    return err


@pytest.mark.parametrize("override, words", [
    ("optim.lr=[1,", "is not valid YAML"),
    ("optim.lr=!!python/object/apply:os.system ['touch OWNED']", "is not valid YAML"),
    (f"optim.lr={BOMB}", "aliases expand to"),
    ("optim.lr=" + "[" * 5000 + "]" * 5000, "nested too deeply"),
    ("optim.epochs=" + "x" * 100_000, "must be int"),
])
def test_a_hostile_override_is_refused_before_anything_runs(override, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _refused(capsys, ["pretrain", "--config", "pretrain/demo", "--out", str(tmp_path / "run"), override])
    assert words in err and "optim." in err
    assert not (tmp_path / "OWNED").exists() and not (tmp_path / "run").exists()


def test_an_alias_bomb_in_a_config_file_is_refused(tmp_path, capsys):
    config = tmp_path / "bomb.yaml"
    config.write_text(f"optim:\n  lr: {BOMB}\n")
    err = _refused(capsys, ["pretrain", "--config", str(config), "--out", str(tmp_path / "run")])
    sizes = [10]                                  # a0: a list of 9 scalars
    for _ in range(8):
        sizes.append(1 + 9 * sizes[-1])           # a1..a8: a list of 9 aliases of the level below
    values = 4 + 1 + sum(sizes) + sizes[-1]       # {optim: {lr: [a0, ..., a8, *a8]}}
    assert f"aliases expand to {values:,} values" in err and str(config) in err


def test_a_config_file_that_is_not_text_is_refused(tmp_path, capsys):
    config = tmp_path / "binary.yaml"
    config.write_bytes(b"\xff\xfe\x00\x01")
    assert "cannot be read as UTF-8 text" in _refused(capsys, ["pretrain", "--config", str(config),
                                                                "--out", str(tmp_path / "run")])


@pytest.mark.parametrize("flag", ["--partition", "--account", "--qos"])
def test_a_newline_in_a_slurm_option_never_reaches_the_sbatch_script(flag, tmp_path, capsys):
    err = _refused(capsys, ["reproduce", "--config", "demo", "--out", str(tmp_path / "exp"), "--launcher", "slurm",
                            flag, "gpu\ntouch OWNED"])
    assert f"{flag} 'gpu\\ntouch OWNED': a SLURM name has only letters" in err
    assert not (tmp_path / "exp").exists()


# ------------------------------------------------------------------------------ two runs, one folder
def _holder(folder, tmp_path):
    """Another process that locks `folder` as a training run does and keeps it until killed."""
    import subprocess
    import sys
    import time

    ready = tmp_path / "ready"
    code = ("import sys, time; from pathlib import Path; from btcxr.engine.lock import hold; "
            "hold(sys.argv[1]); Path(sys.argv[2]).touch(); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder), str(ready)])
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the holder did not start"
        time.sleep(0.05)
    return proc


def test_a_second_process_on_a_locked_run_folder_is_refused_until_the_holder_dies(tmp_path, capsys):
    """Two `btcxr finetune` on one --out both ran and the second overwrote the first's files (issue 24)."""
    import signal

    from btcxr.engine.lock import hold, release

    out = tmp_path / "run"
    holder = _holder(out, tmp_path)
    try:
        err = _refused(capsys, ["finetune", "--config", "finetune/demo", "--out", str(out),
                                f"data.cache={tmp_path / 'no-cache'}"])
        assert f"run directory {out} is in use by pid {holder.pid} on " in err
        assert sorted(p.name for p in out.iterdir()) == [".btcxr.lock"]   # nothing of the run was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    hold(out)   # a lock left by a killed process does not block the rerun
    hold(out)   # and this process may take it again (a resume in one process)
    assert str(holder.pid) not in (out / ".btcxr.lock").read_text()
    release(out)
