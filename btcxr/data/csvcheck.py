"""Vectorised checks for the datasets' CSV files, with errors that name file, line and field.

Tables are read with every field as text and the frame's index set to the line number in the file
(header = line 1), so a failed check points the user at the exact line without a Python loop over rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd

from btcxr.errors import BtcxrError


def fail(path: str | Path, line: int | None, field: str | None, problem: str) -> NoReturn:
    """Raise a BtcxrError that names the file, the line (1-based, header = 1) and the field."""
    where = str(path)
    if line is not None:
        where += f", line {line}"
    if field is not None:
        where += f", field '{field}'"
    raise BtcxrError(f"{where}: {problem}")


def read_table(path: str | Path, required: Iterable[str], *, what: str = "CSV file") -> pd.DataFrame:
    """Read a CSV (plain or compressed, by suffix) as text; index = line number; required columns checked.

    Blank lines are dropped without shifting the line numbers. Empty fields are ''.
    """
    path = Path(path)
    if not path.is_file():
        raise BtcxrError(f"{path}: {what} not found")
    try:
        df = pd.read_csv(
            path, dtype=str, keep_default_na=False, skip_blank_lines=False, index_col=False, encoding="utf-8"
        )
    except pd.errors.EmptyDataError:
        raise BtcxrError(f"{path}: {what} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise BtcxrError(f"{path}: cannot parse {what}: {exc}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise BtcxrError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} in the header "
            f"(found: {', '.join(repr(c) for c in df.columns)})"
        )
    df.index = pd.RangeIndex(2, len(df) + 2)
    if len(df.columns):
        blank = (df.fillna("") == "").all(axis=1)
        if blank.any():
            df = df[~blank]
    return df


def first_bad(path: str | Path, df: pd.DataFrame, mask: pd.Series | np.ndarray, field: str, problem: str) -> None:
    """If any row of ``mask`` is True, raise for the first one, quoting the field's value."""
    mask = np.asarray(mask, dtype=bool)
    if mask.any():
        pos = int(np.argmax(mask))
        line = int(df.index[pos])
        value = df[field].iloc[pos] if field in df.columns else None
        n_bad = int(mask.sum())
        more = f" ({n_bad - 1} more row(s) with the same problem)" if n_bad > 1 else ""
        fail(path, line, field, f"{problem}, got {value!r}{more}")


def require_text(path: str | Path, df: pd.DataFrame, field: str) -> pd.Series:
    """The column stripped; empty values are an error."""
    col = df[field].fillna("").astype(str).str.strip()
    first_bad(path, df, col == "", field, "value is empty")
    return col


def to_number(
    path: str | Path,
    df: pd.DataFrame,
    field: str,
    *,
    integer: bool = False,
    allow_empty: bool = False,
    min_value: float | None = None,
    positive: bool = False,
) -> pd.Series:
    """Parse a text column as numbers (float64, or int64 when ``integer``); empty -> NaN if allowed."""
    text = df[field].fillna("").astype(str).str.strip()
    empty = text == ""
    if not allow_empty:
        first_bad(path, df, empty, field, "value is empty, expected a number")
    values = pd.to_numeric(text.where(~empty, None), errors="coerce").astype(np.float64)
    first_bad(path, df, ~empty & values.isna(), field, "not a number")
    first_bad(path, df, ~empty & ~np.isfinite(values.fillna(0.0)), field, "not a finite number")
    if integer:
        first_bad(path, df, ~empty & (values.fillna(0.0) % 1 != 0), field, "not a whole number")
    if min_value is not None:
        first_bad(path, df, values.fillna(min_value) < min_value, field, f"must be >= {min_value:g}")
    if positive:
        first_bad(path, df, ~empty & (values.fillna(1.0) <= 0), field, "must be > 0")
    if integer and not allow_empty:
        return values.astype(np.int64)
    return values
