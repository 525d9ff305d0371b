"""Aspect-ratio grouped batches (torchvision references/detection/group_by_aspect_ratio.py, compacted).

Images of similar aspect ratio share a batch, so padding to the largest image of the batch wastes little.
The batch count per epoch is fixed (len(sampler) // batch_size, like drop_last) whatever the shuffle, which
DDP needs: every rank must run the same number of iterations. Wrap a DistributedSampler (also in a single
process: its shuffle depends only on seed and epoch, which makes resumed runs repeat exactly).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def aspect_ratio_groups(aspect_ratios: Sequence[float], k: int = 3) -> np.ndarray:
    """Group id per image: aspect width / height quantised into 2k bins spaced evenly in log2 between 1/2
    and 2 (torchvision's bins), plus one bin on each side for anything beyond; k = 0: one group."""
    aspect = np.asarray(aspect_ratios, dtype=np.float64)
    if k <= 0:
        return np.zeros(len(aspect), dtype=np.int64)
    bins = 2 ** np.linspace(-1, 1, 2 * k + 1)
    return np.digitize(aspect, bins).astype(np.int64)


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of `batch_size` indices from `sampler`, each drawn from one group where possible.

    Indices fill per-group buffers; a full buffer is a batch. What is left when the sampler runs out
    (fewer than batch_size per group) is merged in group order into the batches still missing, so the
    epoch always has exactly len(sampler) // batch_size batches.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.sampler = sampler
        self.group_ids = np.asarray(group_ids)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = defaultdict(list)
        emitted = 0
        for idx in self.sampler:
            buffer = buffers[int(self.group_ids[idx])]
            buffer.append(int(idx))
            if len(buffer) == self.batch_size:
                yield list(buffer)
                buffer.clear()
                emitted += 1
        leftover = [i for group in sorted(buffers) for i in buffers[group]]
        for start in range(0, (len(self) - emitted) * self.batch_size, self.batch_size):
            yield leftover[start:start + self.batch_size]

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
