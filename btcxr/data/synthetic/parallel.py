"""Run per-image jobs in order, on several processes or inline, with a progress bar.

Results come back in job order whatever the number of workers, and every job carries its own seed, so
the output does not depend on how the work was spread.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

from btcxr.logs import progress_disabled

J = TypeVar("J")
R = TypeVar("R")


def default_workers() -> int:
    """All the cores this process may use."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def run_jobs(fn: Callable[[J], R], jobs: Sequence[J], workers: int | None, desc: str) -> list[R]:
    """fn(job) for every job, in order; `workers` processes (None: all cores, 1: this process)."""
    workers = default_workers() if workers is None else max(int(workers), 1)
    workers = min(workers, max(len(jobs), 1))
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=progress_disabled())
    results: Iterable[R]
    try:
        if workers == 1:
            out = []
            for job in jobs:
                out.append(fn(job))
                bar.update()
            return out
        # forkserver/spawn, not fork: the caller may hold threads (torch, tqdm) that fork would copy half-way
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            chunk = max(1, min(8, len(jobs) // (4 * workers)))
            results = pool.map(fn, jobs, chunksize=chunk)
            out = []
            for r in results:
                out.append(r)
                bar.update()
            return out
    finally:
        bar.close()
