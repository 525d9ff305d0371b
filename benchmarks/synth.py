"""Throughput of `btcxr synth` on one core: images per second at 512 and 2048 px.

    .venv/bin/python benchmarks/synth.py [--n 40] [--sizes 512 2048]

Three figures per size: rendering alone (phantom + findings + exposure), the NIH layout end to end (PNG
files, CSVs) and the VinDr Kaggle layout end to end (DICOMs with their mix of RLE / JPEG 2000 compression,
readers, CSVs). Wall-clock and CPU seconds are both printed: on a shared machine the CPU figure is the one
that says what one free core would do.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from btcxr.data.synthetic import generate
from btcxr.data.synthetic.plan import VINDR_PREVALENCE, plan_vindr
from btcxr.data.synthetic.render import render_case


def timed(fn, *args, **kwargs) -> tuple[float, float]:
    """Wall-clock and CPU seconds of fn(*args, **kwargs)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu


def render_all(plans, size: int, render_max: int) -> None:
    for p in plans:
        render_case(np.random.SeedSequence(0, spawn_key=(p.index,)), (size, size), p.classes, render_max=render_max)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40, help="images per measurement at 512 px (fewer at 2048)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--render-max", type=int, default=384)
    args = parser.parse_args()
    logging.getLogger("btcxr").setLevel(logging.WARNING)  # no progress bars in the timings
    print(f"{'size':>6} {'what':<22} {'images':>6} {'img/s wall':>11} {'img/s cpu':>10}")
    for size in args.sizes:
        n = max(args.n * 512 // size // (2 if size > 1024 else 1), 4)
        plans = plan_vindr(n, size, 0, 0.7, VINDR_PREVALENCE)
        render_case(np.random.SeedSequence(0), (size, size), [], render_max=args.render_max)  # warm-up
        rows = [("render only", timed(render_all, plans, size, args.render_max))]
        with tempfile.TemporaryDirectory() as tmp:
            for layout in ("nih", "vindr-kaggle"):
                rows.append((f"{layout} files", timed(generate, Path(tmp) / layout, layout, n, size, 0, workers=1,
                                                      render_max=args.render_max, contact_sheet=False)))
        for what, (wall, cpu) in rows:
            print(f"{size:>6} {what:<22} {n:>6} {n / wall:>11.1f} {n / cpu:>10.1f}")


if __name__ == "__main__":
    main()
