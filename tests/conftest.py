"""Shared fixtures: the real NIH and VinDr annotation files shipped inside the torchxrayvision wheel, one
torch thread per test, and temporary folders that do not outlive their module.

The session-scoped tables are read once per test session; tests must not modify them (copy first).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

# The longest files first (`--durations`): `make test` hands whole files to two workers in this order, and a
# long file handed out last would run alone at the end while the other worker idles.
LONGEST_FIRST = ("test_kill_matrix.py", "test_reproduce.py", "test_ssl_sanity.py", "test_ssl_sanity_methods.py",
                 "test_ssl_methods_distributed.py", "test_gpu_check.py",
                 "test_launch_slurm.py", "test_pretrain_supervised.py", "test_wheel.py")


def pytest_collection_modifyitems(items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on 2 cores: one intra-op thread avoids oversubscription with loaders and other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def release_module_folders(request, tmp_path_factory):
    """Delete the folders a module's fixtures made (tmp_path_factory.mktemp) once the module is done,
    unless one of its tests failed. The suite writes many checkpoints: kept to the session's end they took
    15 GB and filled CI's disk. Function-scoped tmp_path folders go with pyproject's retention policy."""
    base = tmp_path_factory.getbasetemp()
    before, failed = set(base.iterdir()), request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for path in set(base.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """torchxrayvision's data folder: Data_Entry_2017_v2020.csv.gz, BBox_List_2017.csv.gz, vinbigdata-train.csv.gz."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("torchxrayvision (a test extra: pip install -e '.[test]') is not installed: the real "
                    "annotation files the readers are tested on are unavailable")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@pytest.fixture(scope="session")
def vindr_train_csv(real_data_dir: Path) -> Path:
    """The real Kaggle VinDr-CXR train.csv (gzipped)."""
    return real_data_dir / "vinbigdata-train.csv.gz"


@pytest.fixture(scope="session")
def vindr_real(vindr_train_csv: Path) -> pd.DataFrame:
    """The real VinDr train.csv read through btcxr (67,914 rows). Read-only."""
    from btcxr.data.vindr import read_kaggle_train_csv

    return read_kaggle_train_csv(vindr_train_csv)


@pytest.fixture(scope="session")
def nih_data_entry_csv(real_data_dir: Path) -> Path:
    """The real NIH Data_Entry_2017_v2020.csv (gzipped)."""
    return real_data_dir / "Data_Entry_2017_v2020.csv.gz"


@pytest.fixture(scope="session")
def nih_real(nih_data_entry_csv: Path) -> pd.DataFrame:
    """The real NIH index read through btcxr (112,120 rows). Read-only."""
    from btcxr.data.nih import read_data_entry

    return read_data_entry(nih_data_entry_csv)
