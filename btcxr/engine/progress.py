"""One progress monitor for every training loop: the bar, the metrics rows and their means over the ranks.

    progress = Progress(env, run.open_metrics(), log_every=cfg.log_every, last=total, start=step,
                        desc="pretrain", rate="pairs_per_s")
    for batch in loader:
        ...                                               # the step
        step += 1
        if progress.update(step, items=batch_size):       # the bar moves; True when a row is due
            progress.row(step, epoch=epoch + 1, loss=loss, lr=lr, mean=("loss",))
    progress.close()

A row is due every `log_every` steps and at the run's `last` step, on every rank alike: the values named in
`mean` (what differs between ranks, e.g. the loss of this rank's share of the batch) are averaged over the
ranks then, a collective that every rank takes part in, and never on the other steps. The main rank writes
the row to metrics.jsonl (and TensorBoard) and shows it as the bar's postfix; the bar is drawn on the main
rank only, and not at all when logging is quiet (`btcxr.logs.progress_disabled`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from btcxr.engine import distributed
from btcxr.engine.distributed import DistEnv
from btcxr.engine.runlog import MetricsLog
from btcxr.logs import progress_disabled

POSTFIX = ("loss",)  # shown on the bar, with the throughput


class Progress:
    """The bar and the "train" rows of one loop (or of one epoch of it: `length`).

    `start`: the global step before the first `update`; `last`: the run's last step, which always gets a
    row (None: only the multiples of `log_every`); `length`: the bar's length when it shows a part of the
    run (an epoch), else it runs from `start` to `last`; `rate`: the name of the throughput column, items a
    second since the previous row (`items` of `update`: the global batch, all ranks together)."""

    def __init__(self, env: DistEnv, metrics: MetricsLog | None, *, log_every: int, last: int | None = None,
                 start: int = 0, desc: str = "", length: int | None = None, leave: bool = True,
                 rate: str | None = None):
        if log_every < 1:
            raise ValueError(f"log_every must be at least 1, got {log_every}")
        self.env, self.metrics, self.log_every, self.last, self.rate = env, metrics, log_every, last, rate
        whole = length is None
        self.bar = tqdm(total=last if whole else length, initial=start if whole else 0, desc=desc, unit="step",
                        leave=leave, dynamic_ncols=True, disable=progress_disabled() or not env.is_main)
        self.t0, self.items = time.perf_counter(), 0

    def due(self, step: int) -> bool:
        """Whether `step` (counted after it ran) gets a metrics row."""
        return step % self.log_every == 0 or step == self.last

    def update(self, step: int, items: int = 0) -> bool:
        """One step done (`step`: the global count after it); `items` it consumed, for the throughput.
        Returns `due(step)`: then every rank calls `row`."""
        self.bar.update()
        self.items += items
        return self.due(step)

    def row(self, step: int, *, mean: Sequence[str] = (), **values: Any) -> dict[str, Any]:
        """The metrics row of `step`: `values` (tensors and numpy scalars read as numbers), those named in
        `mean` averaged over the ranks, plus the throughput under `rate`. Collective when `mean` is not
        empty; returns the row (on every rank), after the main rank wrote it."""
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}
        for key in mean:
            row[key] = distributed.mean_over_ranks(float(row[key]), self.env)
        if self.rate is not None:
            now = time.perf_counter()
            row[self.rate] = self.items / max(now - self.t0, 1e-9)
            self.t0, self.items = now, 0
        if self.metrics is not None:
            self.metrics.log(step, "train", **row)
        self.bar.set_postfix({k: f"{row[k]:.4g}" for k in (*POSTFIX, self.rate) if k in row})
        return row

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
