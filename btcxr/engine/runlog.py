"""What every run directory holds: the resolved config, a JSON-lines metrics log and TensorBoard events."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from btcxr.engine.io import write_text
from btcxr.errors import BtcxrError

METRICS = "metrics.jsonl"


class MetricsLog:
    """Append-only JSON-lines log plus TensorBoard scalars. Only the main rank should create one.

    `rows` counts the complete rows in the file; a checkpoint stores it, so a resumed run can drop exactly
    the rows written after that checkpoint (`truncate_metrics`)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS
        self.rows = len(_lines(self.path))
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))

    def log(self, step: int, phase: str = "train", **values: Any) -> None:
        record = {"phase": phase, "step": int(step), **{k: _plain(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.rows += 1
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step" and math.isfinite(value):
                    self._tb.add_scalar(f"{phase}/{key}", value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def truncate_metrics(run_dir: str | Path, rows: int, step: int | None = None) -> None:
    """Keep the first `rows` rows of the log (the ones a checkpoint saw). rows < 0 (a checkpoint of an
    older version, which did not count): keep the rows up to `step`."""
    path = Path(run_dir) / METRICS
    lines = _lines(path)
    if rows < 0:
        kept = [line for line in lines if json.loads(line).get("step", 0) <= (step or 0)]
    else:
        kept = lines[:rows]
    if kept != lines or (path.exists() and not path.read_bytes().endswith(b"\n") and path.stat().st_size):
        write_text(path, "".join(line + "\n" for line in kept))


def read_metrics(run_dir: str | Path, phase: str | None = None) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    rows = []
    for number, line in enumerate(_lines(path), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise BtcxrError(f"{path}, line {number}: not valid JSON ({exc.msg})") from exc
    return [r for r in rows if phase is None or r.get("phase") == phase]


def _lines(path: Path) -> list[str]:
    """The complete lines of a JSON-lines file; a last line a kill cut short (no newline) is not one."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    return [line for line in lines[:-1] if line.strip()]


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars -> python numbers, so json.dumps never fails mid-run."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value
