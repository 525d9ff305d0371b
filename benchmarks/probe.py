"""Linear-probe wall time: features extracted once (probe.cache_features=true) versus the frozen backbone
run on the images every epoch (cache_features=false), plus one fine-tuning epoch for scale.

    .venv/bin/python benchmarks/probe.py                                # resnet18, 64 px, 160 images, 5 epochs
    .venv/bin/python benchmarks/probe.py --arch resnet50 --size 224 --n 64 --epochs 3 --threads 2

Each setting is a real `btcxr.classify.train.probe` run on a throw-away NIH-style cache (random pixels and
labels: speed does not depend on content), timed end to end (data loading, training, val every epoch, one
test pass). The per-epoch figure subtracts nothing: it is total / epochs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_cache(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """An NIH cache as `btcxr prepare nih` writes it: 60 / 20 / 20 % train / val / test, random labels."""
    from btcxr.data.cache_format import MANIFEST_COLUMNS
    from btcxr.data.classes import NIH_LABELS
    from btcxr.engine.io import write_csv, write_text

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        split = "train" if i < 0.6 * n else "val" if i < 0.8 * n else "test"
        image_id = f"{i:08d}_000.png"
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / "images" / image_id)
        labels = [name for name in NIH_LABELS[:-1] if rng.random() < 0.15] or ["No Finding"]
        rows.append({"image_id": image_id, "file": f"images/{image_id}", "patient_id": str(i), "split": split,
                     "labels": "|".join(labels), "orig_width": size, "orig_height": size, "scale": 1.0})
    write_csv(root / "manifest.csv", pd.DataFrame(rows, columns=MANIFEST_COLUMNS))
    write_text(root / "prepare.json", '{"dataset": "nih"}\n')
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=160, help="images in the cache (60 % train)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()

    import torch

    from btcxr.classify.config import ProbeConfig
    from btcxr.classify.train import probe
    from btcxr.config import load_config

    torch.set_num_threads(args.threads)
    logging.getLogger("btcxr").setLevel(logging.ERROR)  # no per-epoch lines, no progress bars
    with tempfile.TemporaryDirectory() as tmp:
        cache = write_cache(Path(tmp) / "cache", args.n, args.size)
        common = [f"data.cache={cache}", f"model.size={args.size}", "data.workers=0", "device=cpu",
                  f"model.arch={args.arch}", f"optim.batch_size={args.batch}", "tensorboard=false"]
        settings = [
            ("freeze, cached features", [f"optim.epochs={args.epochs}", "probe.cache_features=true"]),
            ("freeze, images every epoch", [f"optim.epochs={args.epochs}", "probe.cache_features=false"]),
            ("finetune (1 epoch)", ["optim.epochs=1", "probe.mode=finetune"]),
        ]
        print(f"{args.arch} at {args.size} px, {args.n} images ({int(0.6 * args.n)} train), batch {args.batch}, "
              f"{args.threads} torch thread(s), CPU")
        print(f"{'setting':30s} {'epochs':>6s} {'total s':>8s} {'s/epoch':>8s}")
        for name, overrides in settings:
            cfg = load_config(ProbeConfig, None, common + overrides)
            start = time.perf_counter()
            probe(cfg, "random", Path(tmp) / name.replace(" ", "_").replace(",", ""))
            total = time.perf_counter() - start
            print(f"{name:30s} {cfg.optim.epochs:6d} {total:8.2f} {total / cfg.optim.epochs:8.2f}")


if __name__ == "__main__":
    main()
