"""The done-marker protocol every stage of an experiment follows.

A unit of work (a synthetic dataset, a cache, a pre-training, a run of the grid, the localisation, the
report) lives in its own folder and is finished when that folder's `done.json` holds the fingerprint of the
settings it was made with: the same settings are never redone, other settings redo it. A run folder also
records in `started.json` the settings it was started with, so an interrupted run resumes and a folder
left by other settings is moved aside.

Who may do the upstream units (data, pre-training) is a process's `Role`: a unit it may not do and that
is not finished stops it with `StageNotFinished` instead of a second, concurrent copy of another job's
work. Shards started by hand on one machine take turns through a shared stage with `stage_lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from btcxr.engine.distributed import is_main_rank
from btcxr.engine.io import ensure_dir, write_json
from btcxr.engine.lock import has_content
from btcxr.engine.run import CHECKPOINT
from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)

DONE = "done.json"
STARTED = "started.json"
UPSTREAM = ("data", "pretrain")  # the stages whose outputs the runs of the grid share


def is_done(folder: Path, key: str) -> bool:
    """True when `folder` holds a unit finished with the settings whose fingerprint is `key`."""
    marker = folder / DONE
    return marker.exists() and json.loads(marker.read_text()).get("fingerprint") == key


def done_fingerprint(folder: Path) -> str | None:
    """The fingerprint `folder`'s unit was finished with, whatever the settings are now (None: unfinished)."""
    marker = folder / DONE
    return json.loads(marker.read_text()).get("fingerprint") if marker.exists() else None


def mark_done(folder: Path, key: str, **info: Any) -> None:
    """Record `folder`'s unit as finished with settings `key` (and `info`, shown to a reader)."""
    if is_main_rank():  # every rank of a multi-GPU job runs the stage; one of them records it
        write_json(folder / DONE, {"fingerprint": key, **info}, default=str)


def start_run(run_dir: Path, key: str) -> bool:
    """Get `run_dir` ready for the run with settings `key`; True when an interrupted run is to be resumed.

    A folder left by a run with other settings is moved aside (never deleted) and the run starts afresh. In
    a multi-GPU job rank 0 alone does this; the other ranks only read the same decision from the folder."""
    started = run_dir / STARTED
    previous = json.loads(started.read_text()).get("fingerprint") if started.exists() else None
    if not is_main_rank():
        return previous == key and (run_dir / CHECKPOINT).exists()
    if has_content(run_dir) and previous != key:
        stale = run_dir.with_name(f"{run_dir.name}.stale-{previous or 'unknown'}")
        for n in range(1, 1000):  # a run may go back and forth between settings
            if not stale.exists():
                break
            stale = run_dir.with_name(f"{run_dir.name}.stale-{previous or 'unknown'}-{n}")
        log.warning("%s holds a run with other settings: moved to %s, starting afresh", run_dir, stale.name)
        run_dir.rename(stale)
    ensure_dir(run_dir, "run folder")
    write_json(started, {"fingerprint": key}, indent=None)
    return (run_dir / CHECKPOINT).exists()


@dataclass(frozen=True)
class Role:
    """What one process may do: the upstream stages it runs (the others it only looks up), and whether it
    takes the file locks of shards started by hand on one machine."""
    stages: frozenset[str] = frozenset(UPSTREAM)
    lock: bool = True

    def __post_init__(self):
        object.__setattr__(self, "stages", frozenset(self.stages))


class StageNotFinished(BtcxrError):
    """An upstream stage this process may not run (its job runs it) has not finished."""


def must_run(role: Role, stage: str, what: Path) -> bool:
    """Called where `stage` has work left: True when this process runs it now; any other process stops
    with a clear error instead of starting a second copy of another job's work."""
    if stage in role.stages:
        return True
    raise StageNotFinished(f"{what} is not finished: the {stage} stage has to finish first (its job failed "
                           "or is still queued; rerun the launch command to resubmit it)")


@contextlib.contextmanager
def stage_lock(out: Path, name: str, role: Role) -> Iterator[None]:
    """Shards started by hand take turns through a shared stage: flock on OUT/.<name>.lock, reliable on one
    machine's disk. Under a launcher every stage has exactly one job, so no lock is taken (flock over NFS or
    Lustre is not to be trusted)."""
    if not role.lock:
        yield
        return
    ensure_dir(out, "experiment folder")
    with open(out / f".{name}.lock", "a") as handle:  # the lock file itself holds nothing
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
