"""Text from files or the command line made inert where it is written: Markdown and spreadsheet CSV.

(HTML goes through `html.escape` where it is written; JavaScript data through `json.dumps`.)

- `md_text`: a Markdown renderer would run raw HTML (`<script>`), follow `[x](javascript:...)` links and
  read `|` as a table border; characters it gives meaning to are escaped, so a name shows as written.
- `csv_cell`: a spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` (and tab or CR) as a formula
  (OWASP "CSV injection"); such text is prefixed with `'`, which spreadsheets show as text. Used for the
  tables people open (report and replication CSVs, the browser's export), not for the data files btcxr
  reads back (predictions, manifests), whose values must round-trip as they are.
"""

from __future__ import annotations

import re

import pandas as pd

_MD_SPECIAL = re.compile(r"([\\`*_|~]|\](?=\())")  # "](" alone makes a link; numbers' "[a, b]" stay plain
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def md_text(text: object) -> str:
    """`text` for a Markdown line or table cell: shown as written, never run or linked."""
    value = " ".join(str(text).splitlines())  # a newline would end the cell or start a new block
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", value)


def csv_cell(value: object) -> object:
    """A text value a spreadsheet would run as a formula, prefixed with `'`; anything else as it is."""
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value
    return value


def csv_table(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every text cell (and column name) passed through `csv_cell`."""
    out = frame.rename(columns=lambda c: csv_cell(c) if isinstance(c, str) else c)
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(csv_cell)
    return out
