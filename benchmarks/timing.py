"""What the benchmark scripts share: best-of-N wall time of a call, printed as a table row."""

from __future__ import annotations

import time


def timed(label: str, fn, repeat: int = 1, width: int = 62):
    """Run `fn` `repeat` times, print the best wall time next to `label`, return the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    print(f"{label:<{width}} {best:8.3f} s")
    return result
