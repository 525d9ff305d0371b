"""A picture of the cross-correlation matrix: it should turn into the identity as pre-training goes."""

from __future__ import annotations

from pathlib import Path

import torch

from btcxr.engine.io import save_figure


def save_corr_heatmap(c: torch.Tensor, path: str | Path, step: int, max_dims: int = 256) -> Path:
    """Plot the top-left `max_dims` x `max_dims` block of c (colours -1..1) to a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(max_dims, c.shape[0])
    block = c[:k, :k].detach().float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(5, 4.4), dpi=100)
    im = ax.imshow(block, cmap="coolwarm", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_title(f"cross-correlation, step {step} (first {k} of {c.shape[0]} dims)", fontsize=9)
    ax.set_xlabel("view 2 dimension")
    ax.set_ylabel("view 1 dimension")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)
    return path
