"""Per-iteration learning-rate schedules computed up front (as in DINO): linear warm-up, then cosine."""

from __future__ import annotations

import math

import numpy as np


def warmup_cosine(peak: float, total_steps: int, warmup_steps: int, final: float,
                  warmup_start: float = 0.0, final_after_last: bool = False) -> np.ndarray:
    """Learning rate for every step: linear from `warmup_start` to `peak` over `warmup_steps`, then a
    cosine from `peak` down to `final` at the last step (`final_after_last`: one step after the last, as
    the Barlow Twins and DINO code count it: cos(pi * k / K) over the K cosine steps k = 0..K-1)."""
    if total_steps <= 0:
        raise ValueError("total_steps must be positive")
    warmup_steps = min(warmup_steps, total_steps)
    warm = np.linspace(warmup_start, peak, warmup_steps, endpoint=False) if warmup_steps else np.empty(0)
    rest = total_steps - warmup_steps
    steps = np.arange(rest)
    denom = max(rest if final_after_last else rest - 1, 1)
    cos = final + 0.5 * (peak - final) * (1 + np.cos(math.pi * steps / denom))
    return np.concatenate([warm, cos])
