"""benchmarks/gpu_check.py on the CPU: the checks that exist there run for real through the script itself, so
the script cannot rot between the times a GPU is lent (the CUDA-only checks are the same code paths with
other settings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_passes_its_cpu_subset(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu",
                             "--out", str(tmp_path), "--nih-images", "48",
                             "--skip", "kill", "finetune (SyncBatchNorm)"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = {r["check"]: r for r in summary["results"]}
    assert all(r["status"] == "ok" for r in checks.values())
    # the kill -9 checks (the kill matrix covers their code paths) are left out for time: 40 s, not 80
    assert set(checks) == {"synthetic data and caches", "pretrain amp=none compile=false views.on_gpu=false",
                           "finetune amp=none", "explain on the device (box and exact modes)",
                           "torchrun 2 ranks pretrain"}
    assert "2 ranks, gloo" in checks["torchrun 2 ranks pretrain"]["detail"]
    assert "box: " in checks["explain on the device (box and exact modes)"]["detail"]


def test_gpu_check_without_a_gpu_says_nothing_was_checked(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the script would run")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "no CUDA GPU is visible" in result.stdout
