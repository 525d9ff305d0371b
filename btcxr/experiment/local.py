"""The local launcher: the whole experiment in this process, or one shard of its grid (`--shard i/n`).

Shards started by hand share the experiment folder on one machine: the shared stages (data, pre-training)
and results.csv are guarded by file locks there, so the first shard does a shared stage and the others
wait, and the last shard to finish writes the report. Across machines use a launcher that decides what runs
where (btcxr.experiment.slurm): flock over NFS or Lustre is not to be trusted.
"""

from __future__ import annotations

import logging
from pathlib import Path

from btcxr.experiment.grids import grid_runs
from btcxr.experiment.markers import Role, stage_lock
from btcxr.experiment.report_stage import write_report
from btcxr.experiment.spec import shard
from btcxr.experiment.stages import make_plan, run_upstream

log = logging.getLogger(__name__)

LOCAL = Role(lock=True)  # every upstream stage, shards taking turns through file locks


def reproduce(exp_path: str | Path, overrides: list[str] | tuple[str, ...] = (), out: str | Path | None = None,
              shard_index: int = 0, shard_count: int = 1, workers: int | None = None) -> Path | None:
    """Run this shard's share of the experiment; the shard that finds the grid complete writes the report.

    results.csv and the report are written under the report lock, from what the shard finds on disk once it
    holds the lock: shards finishing together take turns, and the last one to write saw every run finished
    before it (its own and those marked done by the shards before it), so the file is never a stale view.
    Returns the report's index.html, or None while runs of other shards are still missing.
    """
    shard([], shard_index, shard_count)   # a bad shard is refused before any stage starts
    plan = make_plan(exp_path, overrides, out, workers=workers)
    plan.make_folder()
    run_upstream(plan, LOCAL)
    for _, run in shard(list(grid_runs(plan).items()), shard_index, shard_count):
        run()
    with stage_lock(plan.out, "report", LOCAL):
        index = write_report(plan)
    if index is None and shard_count > 1:
        log.warning("the report is written by the last shard to finish (or rerun this command with any shard)")
    return index
