"""Atomic checkpoints, read back without executing code (weights_only=True), and the RNG states they hold."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from btcxr.engine.io import atomic_output
from btcxr.errors import BtcxrError


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to a temporary file beside `path`, then rename: a kill never leaves half a file."""
    with atomic_output(path, "wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (or any plain tensor dict) safely."""
    path = Path(path)
    if not path.is_file():
        raise BtcxrError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, foreign object types
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise BtcxrError(f"checkpoint {path} cannot be read as a weights-only PyTorch file: {reason}") from exc
    if not isinstance(state, dict):
        raise BtcxrError(f"checkpoint {path} holds a {type(state).__name__}, not a dict of tensors")
    return state


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU and CUDA), storable with weights_only loading."""
    version, py_state, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": list(py_state) + [gauss if gauss is not None else -1],
        "python_version": version,
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    gauss = None if py[-1] == -1 else py[-1]
    random.setstate((state["python_version"], tuple(int(x) for x in py[:-1]), gauss))
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        # A run resumed on fewer or more GPUs per process restores the devices both have.
        for index in range(min(len(saved), torch.cuda.device_count())):
            torch.cuda.set_rng_state(saved[index], index)


def library_versions() -> dict[str, str]:
    import torchvision

    from btcxr import __version__

    return {"btcxr": __version__, "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "numpy": str(np.__version__)}
