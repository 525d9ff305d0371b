"""One writer per run folder: an exclusive flock on FOLDER/.btcxr.lock while a process writes there.

Two `btcxr finetune` processes on one --out would otherwise both run and overwrite each other's config,
checkpoints and metrics without a word. The kernel drops a flock when its process ends, however it ends
(kill -9 included), so a killed run never blocks its rerun: no stale lock files to clean. A process takes
a folder's lock once and may take it again (a resume in the same process); `distributed_session` gives
back the locks taken during a command and removes their files, and a folder the command created but left
empty (it failed before writing anything) is removed too. On a file system without locks (some NFS
mounts) it warns and goes on unlocked.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from btcxr.engine.io import ensure_dir
from btcxr.engine.paths import check_apart
from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)

LOCK = ".btcxr.lock"  # holds who has the folder: "pid 123 on host since 2026-12-06T01:40:00"
_held: dict[Path, IO[str]] = {}  # folder -> the open lock file of this process
_created: set[Path] = set()       # folders this process made by taking their lock


def hold(folder: str | Path, what: str = "run folder") -> None:
    """Take `folder`'s lock for this process (again: nothing to do); BtcxrError naming the holder when
    another live process has it."""
    path = Path(folder).resolve()
    if path in _held:
        return
    created = not path.exists()
    ensure_dir(path, what)
    handle = open(path / LOCK, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()[:200] or "another process"
        handle.close()
        raise BtcxrError(f"{what} {folder} is in use by {holder}: wait for it to finish, or use another "
                         "--out") from None
    except OSError as exc:
        handle.close()
        log.warning("%s: the file system gives no locks (%s); going on without one", path, exc.strerror or exc)
        return
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{dt.datetime.now().isoformat(timespec='seconds')}\n")
    handle.flush()
    _held[path] = handle
    if created:
        _created.add(path)


def has_content(folder: Path) -> bool:
    """True when `folder` holds anything but its lock file (a folder a refused or killed command locked
    and left is still empty)."""
    return folder.is_dir() and any(entry.name != LOCK for entry in folder.iterdir())


def claim(out: str | Path, inputs: Iterable[tuple[str, str | Path | None]] = (), what: str = "--out") -> Path:
    """An output folder for this command: apart from every input (name, path), created, and locked."""
    check_apart(out, inputs, what)
    hold(out, what)
    return Path(out)


def release(folder: str | Path) -> None:
    """Give `folder`'s lock back (nothing to do when this process does not hold it)."""
    path = Path(folder).resolve()
    handle = _held.pop(path, None)
    if handle is None:
        return
    # The lock file goes with the lock (outputs are shared and zipped; a killed process leaves its file for
    # the rerun to take over), and a folder this command made but never wrote to goes too.
    (path / LOCK).unlink(missing_ok=True)
    if path in _created and not has_content(path):
        with contextlib.suppress(OSError):
            path.rmdir()
    _created.discard(path)
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


@contextlib.contextmanager
def released_on_exit() -> Iterator[None]:
    """Give back, on the way out, every lock taken inside the block."""
    before = set(_held)
    try:
        yield
    finally:
        for path in set(_held) - before:
            release(path)
