"""The one way the package writes a file: into a temporary name beside it, then renamed over it.

Readers (and a rerun after kill -9) see the old file or the new one, never half of one. Every temporary name
is unique to its writer, so two processes finishing together never write through the same temporary file,
and it is marked so that `remove_temp_files` can clear what a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from btcxr.errors import BtcxrError

TEMP_MARK = ".tmp"


def _temp_prefix(name: str) -> str:
    """The start of the temporary names of file `name`: at most 100 bytes of it, so that a long name (an
    image id of 242 characters) still gives a temporary name within the 255 bytes of a file name."""
    return "." + name.encode()[:100].decode(errors="ignore")


def temp_name(path: Path) -> Path:
    """A hidden, marked name in the same directory as `path` (os.replace is only atomic within one)."""
    return path.with_name(f"{_temp_prefix(path.name)}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARK in name


def ensure_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create `path` (and parents) or explain why it cannot be: a file in the way, no permission."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise BtcxrError(f"{what} {path}: a file of that name exists (or one of its parents is a file); "
                         "choose another folder") from exc
    except (NotADirectoryError, PermissionError, OSError) as exc:
        raise BtcxrError(f"{what} {path} cannot be created: {exc.strerror or exc}") from exc
    if not path.is_dir():
        raise BtcxrError(f"{what} {path} is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise BtcxrError(f"{what} {path} is not writable (permission denied)")
    return path


# What torch.save's C++ writer says when the file system refuses bytes (a full disk, a quota).
_TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")


def _is_torch_write_failure(exc: BaseException) -> bool:
    return any(text in str(exc) for text in _TORCH_WRITE_FAILURES)


def write_error(path: Path, exc: BaseException) -> BtcxrError:
    """An OSError (or torch's serialiser failing on a full disk) as a message naming the file."""
    reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0][:200] or type(exc).__name__
    hint = ""
    if getattr(exc, "errno", None) == errno.ENOSPC or _is_torch_write_failure(exc):
        hint = " (is the disk full?)"
    return BtcxrError(f"cannot write {path}: {reason}{hint}")


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "wb", encoding: str | None = None,
                  durable: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on success it is flushed to disk and renamed to `path`.

    durable=False skips the fsync: the rename alone is enough against kill -9 (the kernel keeps the bytes),
    only a power cut can then lose the file. For the thousands of small files a cache holds, which a rerun
    checks and rewrites anyway."""
    path = Path(path)
    ensure_dir(path.parent)
    tmp = temp_name(path)
    try:
        with open(tmp, mode, encoding=encoding if "b" not in mode else None) as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and _is_torch_write_failure(exc)):
            raise write_error(path, exc) from exc
        raise


def write_bytes(path: str | Path, data: bytes, durable: bool = True) -> None:
    with atomic_output(path, "wb", durable=durable) as handle:
        handle.write(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, **dumps: Any) -> None:
    write_text(path, json.dumps(obj, **{"indent": 2, **dumps}) + "\n")


def write_yaml(path: str | Path, obj: Any) -> None:
    import yaml

    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def write_csv(path: str | Path, frame: Any) -> None:
    """A pandas frame as CSV with '\\n' line ends (the same bytes on every platform)."""
    write_text(path, frame.to_csv(index=False, lineterminator="\n"))


def save_figure(fig: Any, path: str | Path, **savefig: Any) -> None:
    """A matplotlib figure as a PNG (or the format `path` names)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    with atomic_output(path, "wb") as handle:
        fig.savefig(handle, format=fmt, **savefig)


def remove_temp_files(folder: str | Path, name: str | None = None) -> int:
    """Delete the temporary files killed writers left in `folder` (only those of `name` when given)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    prefix = _temp_prefix(name) if name else None
    removed = 0
    for entry in folder.iterdir():
        if entry.is_file() and is_temp_name(entry.name) and (prefix is None or entry.name.startswith(prefix)):
            entry.unlink(missing_ok=True)
            removed += 1
    return removed
