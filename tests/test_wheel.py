"""`pip install` of the wheel works like a clone: the wheel holds the package, its configs and the browser's
files and nothing else, builds without deprecation warnings, and, installed into a fresh virtual environment,
runs `btcxr --help`, `btcxr configs` and a tiny `btcxr demo` from a folder that is not the clone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "btcxr"
# What a working clone holds that is not its source: never copied into the build.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "runs", "demo_out",
                                    "__pycache__", ".pytest_cache", ".ruff_cache")
# Every stage of `btcxr demo`, each at its smallest: about 30 s on a 2-core CPU instead of minutes.
TINY_DEMO = ["data.synthetic={n_vindr: 40, n_nih: 32, size: 96, seed: 0, normal_fraction: 0.2}",
             "data.cache_size=64", "data.pretrain_size=32", "sizes=[64]",
             "pretrain.overrides=[epochs=1, batch_size=8]", "finetune.overrides=[optim.epochs=1]",
             "probe.overrides=[optim.epochs=1]", "localisation.max_images=1", "localisation.ratio=0.05",
             "localisation.score_thr=0.0", "cam_examples=1"]


def _run(cmd: list, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> str:
    """The command's standard output; a failure shows the end of its standard error."""
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"exit {result.returncode}: {' '.join(map(str, cmd))}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    """The wheel and the build's output. Built from a copy of the clone: a build/ folder left by an earlier
    build could add stale files, and the clone stays as it was (no build/, no egg-info)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=NOT_SOURCE)
    # -v: the build backend's own output (its warnings too) is shown, so their absence below means something.
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
                            "--no-index", "-w", str(base / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300)
    log = build.stdout + build.stderr
    assert build.returncode == 0, log[-4000:]
    (path,) = (base / "dist").glob("btcxr-*-py3-none-any.whl")
    return path, log


def test_the_wheel_holds_the_package_its_configs_and_static_files_only(wheel):
    path, log = wheel
    names = set(zipfile.ZipFile(path).namelist())
    sources = {p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    expected = {str(p.relative_to(REPO)) for p in sources
                if p.suffix in {".py", ".yaml"} or "static" in p.parts or "paper_split" in p.parts}
    assert {n for n in names if n.startswith("btcxr/")} == expected
    assert {"btcxr/data/paper_split/val.txt", "btcxr/data/paper_split/test.txt"} <= names  # prepare --protocol paper
    assert {f"btcxr/configs/{k}/{n}.yaml" for k, n in [("experiments", "demo"), ("pretrain", "paper")]} <= names
    assert {"btcxr/browse/static/index.html", "btcxr/browse/static/browse.js"} <= names
    assert {n.split("/")[0] for n in names} == {"btcxr", path.name.split("-py3")[0] + ".dist-info"}
    assert not any(n.startswith(("tests/", "benchmarks/", "scripts/", "configs/")) for n in names)
    assert "deprecat" not in log.lower(), log


def test_the_installed_wheel_runs_from_an_unrelated_folder(wheel, tmp_path):
    path, _ = wheel
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", path])
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    # torch, torchvision and the rest come from this test environment, not from the network: its
    # site-packages folders go on sys.path through a .pth file. A .pth inside an added folder is not
    # processed, so this environment's editable btcxr (a .pth finder pointing at the clone) stays out.
    ours = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    (site / "_btcxr_test_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}

    def btcxr(*args: str, timeout: float = 60) -> str:
        return _run([venv / "bin" / "btcxr", *args], cwd=elsewhere, env=env, timeout=timeout)

    where = _run([python, "-c", "import btcxr; print(btcxr.__file__)"], cwd=elsewhere, env=env).strip()
    assert Path(where).parent == site / "btcxr"

    assert "configs" in btcxr("--help") and "reproduce" in btcxr("--help")
    listing = btcxr("configs")
    assert "experiments/demo" in listing and "pretrain/paper" in listing and str(site / "btcxr" / "configs") in listing
    assert btcxr("configs", "show", "pretrain/demo") == (PACKAGE / "configs" / "pretrain" / "demo.yaml").read_text()

    btcxr("-q", "demo", "--out", "demo", *TINY_DEMO, timeout=300)
    out = elsewhere / "demo"
    assert (out / "report" / "index.html").is_file() and (out / "pretrain" / "backbone.pth").is_file()
    runs = (out / "results.csv").read_text()
    assert all(f"{kind}_{init}_" in runs for kind in ("det", "probe") for init in ("random", "btcxr"))
    assert (out / "browse" / "index.html").is_file()   # the case browser, from the wheel's static files
