"""What a run's numbers depend on beyond its config: library versions, thread counts, the deterministic-
algorithm setting, the CPU kernels torch picked, the GPU stack, and the code's git commit when run from a
clone. Two runs with the same config and the same fingerprint should give the same numbers (on the CPU);
when they do not, this is where to look. Written by every run into RUN/environment.json."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from btcxr.engine.checkpoint import library_versions

REPO = Path(__file__).resolve().parents[2]  # the clone's root when btcxr runs from one (editable install)


def environment_fingerprint() -> dict[str, Any]:
    """A JSON-able description of this process's numeric environment."""
    import pandas
    import scipy
    import sklearn

    cuda = torch.cuda.is_available()
    return {
        "versions": library_versions() | {"scipy": scipy.__version__, "scikit-learn": sklearn.__version__,
                                          "pandas": pandas.__version__},
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # which vectorised kernels run: AVX2, AVX512
        "mkldnn": torch.backends.mkldnn.is_available(),
        "machine": platform.machine(),
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark if cuda else None,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        **git_state(REPO),
    }


def git_state(root: Path) -> dict[str, Any]:
    """git_commit and git_dirty (tracked files changed) of the clone at `root`; None for both outside a clone
    (an installed wheel) or without git."""
    if not (root / ".git").exists():
        return {"git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": bool(status.strip())}
