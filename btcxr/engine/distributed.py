"""torchrun-aware process-group set-up: one code path for one CPU, one GPU, or many nodes."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from btcxr.engine.runtime import resolve_device
from btcxr.errors import BtcxrError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK).

    Without those variables this is a single process. `device`: "auto" (CUDA when present), "cpu" or "cuda".
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = env_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        # BTCXR_DIST_BACKEND=gloo: several ranks on one GPU (benchmarks/gpu_check.py), which NCCL refuses.
        backend = os.environ.get("BTCXR_DIST_BACKEND") or ("nccl" if dev.type == "cuda" else "gloo")
        if backend not in ("nccl", "gloo"):
            raise BtcxrError(f"BTCXR_DIST_BACKEND={backend!r}: use nccl or gloo")
        dist.init_process_group(backend=backend)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def env_rank() -> int:
    """This process's rank as torchrun (or a SLURM job, btcxr.experiment.slurm) describes it, readable before
    any process group exists; 0 for a single process."""
    return int(os.environ.get("RANK", "0"))


def is_main_rank() -> bool:
    return env_rank() == 0


@contextlib.contextmanager
def distributed_session(device: str = "auto") -> Iterator[DistEnv]:
    """`init_distributed` for the length of a command; the group is torn down only by the code that made
    it (a caller that set up its own group, e.g. a test, keeps it). The run folders locked during the
    command are given back at its end."""
    from btcxr.engine.lock import released_on_exit

    owns_group = not (dist.is_available() and dist.is_initialized())
    env = init_distributed(device)
    try:
        with released_on_exit():  # the run folders this command locked
            yield env
    finally:
        if owns_group and env.distributed and dist.is_initialized():
            dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def mean_over_ranks(value: float, env: DistEnv) -> float:
    """Average a python scalar over ranks (for logging only; no autograd)."""
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return float(t.item()) / env.world_size


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks whose backward sums the gradients over the ranks too.

    torch.distributed.nn.functional.all_reduce does this in every torch this package supports (>= 2.1);
    recent releases flag it as deprecated in favour of _functional_collectives, whose all_reduce has a
    backward only in recent releases."""
    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(x)
