"""Where and how a run computes: the device, mixed precision and the seeds of every RNG."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from btcxr.errors import BtcxrError

AMP_MODES = ("bf16", "fp16", "none")


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto": the GPU of this rank when CUDA is present, else the CPU; "cuda" without a GPU is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise BtcxrError(f"device={name!r} is not a device name (auto, cpu, cuda, cuda:1)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BtcxrError(f"device={name}: no CUDA GPU is available here (use device=cpu or device=auto)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise BtcxrError(f"device={name!r}: only cpu and cuda are supported")
    return device


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA for amp "bf16" / "fp16"; the CPU always computes in float32."""
    if amp not in AMP_MODES:
        raise BtcxrError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if device.type != "cuda" or amp == "none":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A loss scaler that is only active for fp16 on CUDA (bf16 and fp32 need none). Elsewhere, the CPU
    included, it is disabled: `scale` returns the loss and `step` calls `optimizer.step()` unchanged, so a
    loop steps through it always (`btcxr.engine.loop.backward_step`)."""
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and amp == "fp16")


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (CPU and every GPU) from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
