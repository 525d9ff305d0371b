"""btcxr.engine.io, the one way the package writes files, and checkpoint loading that never runs code."""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from btcxr.engine import io
from btcxr.errors import BtcxrError


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if io.is_temp_name(p.name))


# ------------------------------------------------------------------------------ interrupted writes
@pytest.mark.parametrize("error", [ValueError("a bug mid-write"), KeyboardInterrupt()])
def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, error):
    path = tmp_path / "results.csv"
    io.write_text(path, "old content\n")
    with pytest.raises(type(error)):
        with io.atomic_output(path, "w") as handle:
            handle.write("new content, half of it")
            raise error
    assert path.read_text() == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_an_interrupted_first_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with io.atomic_output(tmp_path / "new.json", "w") as handle:
            handle.write("{")
            raise ValueError("stop")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_inside_the_write_names_the_file_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "report" / "index.html"
    io.write_text(path, "old page")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(BtcxrError) as info:
        io.write_text(path, "new page")
    message = str(info.value)
    assert str(path) in message and "disk full" in message
    monkeypatch.undo()
    assert path.read_text() == "old page" and _temp_files(path.parent) == []


def test_disk_full_raised_by_the_writer_itself(tmp_path):
    path = tmp_path / "boxes.csv"
    with pytest.raises(BtcxrError, match="disk full") as info:
        with io.atomic_output(path, "wb") as handle:
            handle.write(b"x" * 10)
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ concurrent writers
def _contents(n_bytes: int = 1 << 20) -> tuple[bytes, bytes]:
    return b"A" * n_bytes + b"\nend A\n", b"B" * (n_bytes // 2) + b"\nend B\n"   # different lengths, too


def test_two_threads_writing_one_path_never_corrupt_it(tmp_path):
    path = tmp_path / "results.csv"
    contents = _contents()
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(data: bytes) -> None:
        try:
            start.wait()
            for _ in range(15):
                io.write_bytes(path, data)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(c,)) for c in contents]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if path.exists():
            data = path.read_bytes()
            assert data in contents, f"a reader saw {len(data)} bytes, neither complete file"
    for t in threads:
        t.join()
    assert not errors
    assert path.read_bytes() in contents
    assert _temp_files(tmp_path) == []


WRITER = """
import sys
from btcxr.engine.io import write_bytes
path, letter, n = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
data = letter * n + b"\\nend " + letter + b"\\n"
for _ in range(20):
    write_bytes(path, data)
"""


def test_two_processes_writing_one_path_never_corrupt_it(tmp_path):
    path = tmp_path / "results.csv"
    sizes = {b"A": 1 << 20, b"B": 1 << 19}
    contents = [letter * n + b"\nend " + letter + b"\n" for letter, n in sizes.items()]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), letter.decode(), str(n)], env=env,
                              stderr=subprocess.PIPE) for letter, n in sizes.items()]
    while any(p.poll() is None for p in procs):
        if path.exists():
            data = path.read_bytes()
            assert data in contents, f"a reader saw {len(data)} bytes, neither complete file"
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    assert path.read_bytes() in contents
    assert _temp_files(tmp_path) == []


# ---------------------------------------------------------------------------- temporary files left
def test_remove_temp_files_removes_only_marked_temporary_files(tmp_path):
    target = tmp_path / "results.csv"
    killed = [io.temp_name(target), io.temp_name(target), io.temp_name(tmp_path / "done.json")]
    for p in killed:
        p.write_bytes(b"half")
    keep = ["results.csv", ".hidden", "notes.tmp", "data.tmp123", ".results.lock"]
    for name in keep:
        (tmp_path / name).write_text("keep")
    (tmp_path / ".folder.tmp1-abc").mkdir()       # a folder is never removed
    assert all(io.is_temp_name(p.name) for p in killed)

    assert io.remove_temp_files(tmp_path, "results.csv") == 2      # only that file's
    assert killed[2].exists() and not killed[0].exists() and not killed[1].exists()
    assert io.remove_temp_files(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, ".folder.tmp1-abc"])
    assert io.remove_temp_files(tmp_path / "missing") == 0


# ----------------------------------------------------------------------------------------- folders
def test_ensure_dir_on_a_file_path_is_a_btcxr_error(tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("a file, not a folder")
    with pytest.raises(BtcxrError, match="out"):
        io.ensure_dir(blocker)
    with pytest.raises(BtcxrError, match="out"):
        io.ensure_dir(blocker / "sub")       # a parent is a file
    with pytest.raises(BtcxrError):
        io.write_text(blocker / "report.md", "text")
    assert io.ensure_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()


# ---------------------------------------------------------------------------------- file formats
def test_save_figure_writes_a_valid_png(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1.5), dpi=50)
    fig.add_subplot().plot([0, 1], [1, 0])
    path = tmp_path / "figures" / "curve.png"
    io.save_figure(fig, path, dpi=50, bbox_inches="tight")
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 10 and image.height > 10
    assert _temp_files(path.parent) == []


def test_json_yaml_and_csv_round_trip(tmp_path):
    import json

    import yaml

    io.write_json(tmp_path / "a.json", {"x": 1, "y": [1.5, None]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1, "y": [1.5, None]}
    io.write_yaml(tmp_path / "a.yaml", {"b": 2, "a": {"c": "d"}})
    assert yaml.safe_load((tmp_path / "a.yaml").read_text()) == {"b": 2, "a": {"c": "d"}}
    frame = pd.DataFrame({"run_id": ["r1", "r2"], "map50": [0.25, 0.5]})
    io.write_csv(tmp_path / "r.csv", frame)
    assert b"\r\n" not in (tmp_path / "r.csv").read_bytes()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "r.csv"), frame)


# ------------------------------------------------------------------ loading never executes code
class _Payload:
    """Unpickling this (plain pickle, weights_only=False) opens `marker` for writing: it creates the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A file as `torch.save` writes it, whose unpickling would run code; the payload works (checked)."""
    probe = marker.with_name(marker.name + ".probe")
    pickle.loads(pickle.dumps(_Payload(probe)))  # unpickled the unsafe way, the code runs ...
    assert probe.exists()                        # ... which proves the payload is live
    probe.unlink()
    torch.save({"model": _Payload(marker), "state_dict": _Payload(marker), "kind": "detector"}, path)
    return path


def _load_checkpoint(path):
    from btcxr.engine.checkpoint import load_checkpoint

    load_checkpoint(path)


def _backbone_as_init(path):
    from btcxr.backbones import build_resnet

    build_resnet("resnet18", str(path))


def _imagenet_weights_file(path):
    from btcxr.backbones import build_resnet

    build_resnet("resnet18", "imagenet", weights_file=path)


def _detector(path):
    from btcxr.detect.model import load_detector

    load_detector(path)


def _explain_detectors(path):
    from btcxr.explain.run import load_detectors

    load_detectors([path], None, torch.device("cpu"))


def _resumed_run(path):
    from btcxr.engine.distributed import DistEnv
    from btcxr.engine.run import CHECKPOINT, RunDir
    from btcxr.pretrain.config import PretrainConfig

    run_dir = path.parent / "run"
    run_dir.mkdir()
    os.replace(path, run_dir / CHECKPOINT)
    RunDir(run_dir, PretrainConfig(), DistEnv(), kind="pretrain", resume=True)


LOADERS = [_load_checkpoint, _backbone_as_init, _imagenet_weights_file, _detector, _explain_detectors,
           _resumed_run]


@pytest.mark.parametrize("loader", LOADERS, ids=[f.__name__.strip("_") for f in LOADERS])
@pytest.mark.parametrize("name", ["evil.pt", "backbone.pth"])
def test_loading_a_checkpoint_never_executes_code(tmp_path, loader, name):
    marker = tmp_path / "code-ran"
    path = _malicious_checkpoint(tmp_path / name, marker)
    with pytest.raises(BtcxrError):
        loader(path)
    assert not marker.exists()


@pytest.mark.parametrize("stem", ["x" * 242, "é" * 120])
def test_a_name_near_the_file_system_limit_is_written_atomically(tmp_path, stem):
    """A 255-byte file name leaves no room for a marked temporary name built from all of it."""
    target = tmp_path / f"{stem}.png"
    assert len(target.name.encode()) <= 255
    io.write_bytes(target, b"image")
    assert target.read_bytes() == b"image" and [p.name for p in tmp_path.iterdir()] == [target.name]
    leftover = io.temp_name(target)
    assert len(leftover.name.encode()) <= 255 and io.is_temp_name(leftover.name)
    leftover.write_bytes(b"half")   # what a killed writer leaves: found again by the file's name
    assert io.remove_temp_files(tmp_path, target.name) == 1 and not leftover.exists()
