"""Paths that come from data or from the user, kept where they belong.

- `safe_name`: a name (image id, model label, init or experiment name) made into one file-name part that
  cannot leave its folder, cannot pass the 255-byte limit and cannot collide with another name's part.
- `confined`: a path read from a CSV, JSON or YAML, resolved against the folder it belongs to; one that
  leaves the folder (absolute, `..`, a symlink pointing out) is an error naming the file, row and value.
- `check_relative`: the same rule for a whole column, without touching the disk (a 112,000-row manifest).
- `check_apart`: an output folder that is, holds or lies inside one of the command's inputs is refused
  (`browse --out <the cache>` would otherwise delete cached images, `predict --out <its inputs>` would read
  its own overlays as radiographs the next time).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath

import pandas as pd

from btcxr.errors import BtcxrError, cut

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_NAME = 100  # characters of a name kept before its hash: room for suffixes within 255 bytes


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def safe_name(name: str) -> str:
    """`name` itself when it is a plain, short file name; otherwise its safe characters (others as "_", at
    most MAX_NAME) and 8 hex digits of its SHA-1, so two names never share a file ("a/b" vs "a_b")."""
    text = str(name)
    safe = _UNSAFE.sub("_", text)[:MAX_NAME].lstrip(".") or "_"
    return safe if safe == text else f"{safe}-{_hash(text)}"


def file_names(names: Iterable[str], what: str) -> dict[str, str]:
    """name -> its `safe_name`, distinct even on a case-insensitive file system (macOS, Windows), where
    "Img1" and "img1" would share a file: names whose parts agree but for case get their hash too."""
    names = list(dict.fromkeys(map(str, names)))
    parts = {n: safe_name(n) for n in names}
    folded = Counter(p.casefold() for p in parts.values())
    parts = {n: p if folded[p.casefold()] == 1 or p != n else f"{p}-{_hash(n)}" for n, p in parts.items()}
    if len({p.casefold() for p in parts.values()}) != len(parts):  # 32 bits of two SHA-1 agreeing: never seen
        raise BtcxrError(f"two {what}s get the same file name; rename one of them")
    return parts


def _escapes(value: str) -> bool:
    """True for an absolute path or one that climbs with `..` (either separator, either OS's rules)."""
    posix, windows = PurePosixPath(value), PureWindowsPath(value)
    return (posix.is_absolute() or windows.is_absolute() or bool(windows.drive) or value.startswith(("/", "\\"))
            or ".." in posix.parts or ".." in windows.parts)


def confined(folder: str | Path, value: str, where: str) -> Path:
    """`folder/value`, resolved; BtcxrError naming `where` (file and row) when it lies outside `folder`."""
    root = Path(folder).resolve()
    text = str(value)
    target = (root / text).resolve()
    if _escapes(text) or not target.is_relative_to(root):
        raise BtcxrError(f"{where}: path {cut(text)!r} leads outside {folder}; paths there must be relative "
                         "and stay inside that folder")
    return target


def check_relative(values: pd.Series, source: str | Path, column: str, folder: str | Path) -> None:
    """Every value of `column` is a relative path that stays inside `folder` (by its text: no disk access);
    otherwise a BtcxrError naming the first bad row (its CSV line) and value."""
    bad = values.astype(str).map(_escapes)
    if bad.any():
        row = bad.to_numpy().argmax()
        raise BtcxrError(f"{source}, line {row + 2}: {column} {cut(str(values.iloc[row]))!r} leads outside "
                         f"{folder}; paths there must be relative and stay inside that folder "
                         f"({int(bad.sum())} such row(s))")


def check_apart(out: str | Path, inputs: Iterable[tuple[str, str | Path | None]], what: str = "--out") -> None:
    """`out` must not be, hold or lie inside any input (name, path); inputs given as None are skipped."""
    target = Path(out).resolve()
    for name, path in inputs:
        if path is None or str(path) == "":
            continue
        source = Path(path).resolve()
        if target == source or target.is_relative_to(source) or source.is_relative_to(target):
            relation = ("is" if target == source else "lies inside" if target.is_relative_to(source) else "holds")
            raise BtcxrError(f"{what} {out} {relation} {name} {path}: outputs would mix with (or overwrite) "
                             f"the inputs; choose a folder outside every input")
