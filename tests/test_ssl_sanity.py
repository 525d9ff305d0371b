"""benchmarks/ssl_sanity.py, reduced (one seed, 128 steps at 32 px): Barlow Twins through `btcxr pretrain`
must beat the random features of its own init on shapes whose class survives the views, and the backbone's
RankMe must rise over training. The full benchmark (3 seeds, paired test) is in the README."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from btcxr.data.synthetic.shapes import SHAPES, render_shape, shape_label

ROOT = Path(__file__).resolve().parents[1]


def test_shapes_are_a_pure_function_of_seed_and_index_with_balanced_classes():
    a, b, other = render_shape(3, 7, 32), render_shape(3, 7, 32), render_shape(4, 7, 32)
    assert a.dtype == np.uint8 and a.shape == (32, 32)
    assert np.array_equal(a, b) and not np.array_equal(a, other)
    assert np.bincount([shape_label(i, len(SHAPES)) for i in range(60)]).tolist() == [10] * len(SHAPES)
    with pytest.raises(ValueError, match="classes"):
        render_shape(0, 0, 32, classes=1)


@pytest.mark.parametrize(("shape", "area"), [
    ("disc", np.pi), ("square", 1.5 ** 2), ("triangle", 3 * np.sqrt(3) / 4), ("cross", 2 * 0.56 * 2 - 0.56 ** 2),
    ("ring", np.pi * (1 - 0.6 ** 2)), ("bar", 2 * 0.6)])
def test_each_class_is_the_shape_its_name_says(shape, area):
    """The masks' areas in their own frame (unit circumradius) against the geometry's formulas."""
    from btcxr.data.synthetic.shapes import _inside

    step = 1 / 400
    v, u = np.mgrid[-1.2:1.2:step, -1.2:1.2:step]
    assert _inside(shape, u, v).sum() * step ** 2 == pytest.approx(area, rel=0.01)


def run_reduced(tmp_path: Path, method: str) -> dict:
    """benchmarks/ssl_sanity.py --reduced for one method; its summary."""
    out = tmp_path / "sanity.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ssl_sanity.py"), "--reduced", "--methods",
                             method, "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())["summary"][method]


@pytest.mark.slow
def test_reduced_sanity_benchmark_barlow_twins_beats_random_features(tmp_path):
    summary = run_reduced(tmp_path, "barlow_twins")
    assert summary["acc"] > summary["acc_random"] + 0.05, summary
    assert summary["rankme_rises"], summary
