"""benchmarks/ssl_sanity.py, reduced (one seed, 128 steps at 32 px), for the lightly methods: VICReg and
SimCLR through `btcxr pretrain` must beat the random features of their own init on the shapes. BYOL does not
beat them on this benchmark, at this length or the full one (docs/results.md), so it is not asserted here;
its loss, target, momentum and resume are tested in test_ssl_methods.py and test_kill_matrix.py."""

from __future__ import annotations

import pytest
from test_ssl_sanity import run_reduced


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vicreg", "simclr"])
def test_reduced_sanity_benchmark_method_beats_random_features(method, tmp_path):
    summary = run_reduced(tmp_path, method)
    assert summary["acc"] > summary["acc_random"] + 0.05, summary
