"""Per-label and mean AUROC of multi-label predictions (scikit-learn's roc_auc_score, one label at a time)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AurocReport:
    """per_label: label -> AUROC (NaN where the split holds a single class of that label);
    mean: mean over the defined labels (NaN when none is); excluded: the labels left out of the mean."""

    per_label: dict[str, float]
    mean: float
    excluded: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        """JSON-safe view: NaN (not valid JSON) becomes null."""
        return {"mean_auroc": _none_if_nan(self.mean),
                "auroc": {k: _none_if_nan(v) for k, v in self.per_label.items()},
                "excluded_labels": list(self.excluded)}


def auroc_report(targets: np.ndarray, scores: np.ndarray, labels: Sequence[str], split: str = "",
                 quiet: bool = False) -> AurocReport:
    """AUROC of every column of scores (N, L) against the 0/1 targets (N, L).

    A label with only positives or only negatives in the split has no ROC curve: its AUROC is NaN, it is
    left out of the mean, and the exclusion is logged (a 1 % subset or a small val split can hit this);
    quiet logs it at debug level (for the repeated per-epoch evaluations).
    """
    targets = np.asarray(targets)
    scores = np.asarray(scores, dtype=np.float64)
    if targets.shape != scores.shape or targets.ndim != 2 or targets.shape[1] != len(labels):
        raise ValueError(f"targets {targets.shape} and scores {scores.shape} must both be (N, {len(labels)})")
    per_label: dict[str, float] = {}
    excluded: list[str] = []
    for j, name in enumerate(labels):
        column = targets[:, j] > 0.5
        if column.all() or not column.any():
            per_label[name] = math.nan
            excluded.append(name)
        else:
            per_label[name] = float(roc_auc_score(column, scores[:, j]))
    defined = [v for v in per_label.values() if not math.isnan(v)]
    mean = float(np.mean(defined)) if defined else math.nan
    if excluded:
        where = f" in split {split!r}" if split else ""
        log.log(logging.DEBUG if quiet else logging.WARNING,
                "AUROC undefined%s for %d label(s) with a single class (left out of the mean): %s", where,
                len(excluded), ", ".join(excluded))
    return AurocReport(per_label=per_label, mean=mean, excluded=tuple(excluded))


def _none_if_nan(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)
