"""Pre-training batches: a cache's images, shuffled per epoch and split over the ranks, with augmentations
that are a pure function of (seed, epoch, image index).

Seeding every image's draw from those three numbers (instead of the workers' running RNG) makes a run
independent of the number of workers and lets a resume continue mid-epoch with exactly the batches and
views the uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from btcxr.engine.distributed import DistEnv
from btcxr.errors import BtcxrError
from btcxr.pretrain.config import PretrainConfig


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class SeededViews(Dataset):
    """dataset[(epoch, index)] -> transform(images[index]) drawn from its own seed."""

    def __init__(self, images: Dataset, transform: Callable, seed: int):
        self.images, self.transform, self.seed = images, transform, seed

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        image = self.images[index]
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched (num_workers=0)
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            return self.transform(image)


class EpochSampler(Sampler):
    """This rank's share of a seeded per-epoch shuffle (DistributedSampler, also for one rank), as
    (epoch, index) keys, optionally without the first `skip` images (a mid-epoch resume)."""

    def __init__(self, n: int, env: DistEnv, seed: int):
        self.inner = DistributedSampler(range(n), num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                        seed=seed, drop_last=True)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return len(self.inner) - self.skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i, index in enumerate(self.inner):
            if i >= self.skip:
                yield self.epoch, index


def build_loader(cfg: PretrainConfig, env: DistEnv, transform: Callable, per_rank_batch: int,
                 images: Dataset | None = None) -> DataLoader:
    """DataLoader over the cache named by `cfg.data.cache` (or `images`), drop_last, pinned, persistent."""
    if images is None:
        from btcxr.data.datasets import UnlabeledImages

        if not cfg.data.cache:
            raise BtcxrError("data.cache is not set: pass a prepared cache, e.g. "
                             "data.cache=/data/cache/nih224")
        splits = tuple(cfg.data.splits) if cfg.data.splits is not None else None
        images = UnlabeledImages(cfg.data.cache, splits=splits)
    n = len(images)  # type: ignore[arg-type]
    steps = n // env.world_size // per_rank_batch
    if steps == 0:
        raise BtcxrError(f"data.cache {cfg.data.cache}: {n} images (splits {cfg.data.splits}) make no full "
                         f"batch of {per_rank_batch} per rank over {env.world_size} rank(s); lower "
                         "batch_size")
    workers = cfg.data.workers
    return DataLoader(
        SeededViews(images, transform, cfg.seed),
        batch_size=per_rank_batch,
        sampler=EpochSampler(n, env, cfg.seed),
        num_workers=workers,
        pin_memory=cfg.data.pin_memory and env.device.type == "cuda",
        persistent_workers=cfg.data.persistent_workers and workers > 0,
        prefetch_factor=cfg.data.prefetch_factor if workers > 0 else None,
        drop_last=True,
    )
