"""Loader throughput: reading the prepared cache versus decoding and resizing the original PNGs each time.

    .venv/bin/python benchmarks/loader.py                    # 256 NIH-like 1024 px PNGs, cache at 224 px
    .venv/bin/python benchmarks/loader.py --n 512 --size 224 --workers 0,2,4 --batch 64

Both loaders hand out the same thing, a batch of (1, size, size) uint8 tensors, through a torch DataLoader;
the cache side is btcxr.data.datasets.UnlabeledImages. Each measurement runs in a fresh subprocess, so the
peak resident memory (ru_maxrss of the process and of its loader workers) belongs to that loader alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class OriginalPngs:
    """Decode the original file and resize it at every access: what training does without a cache."""

    def __init__(self, folder: str, size: int) -> None:
        self.files = sorted(str(p) for p in Path(folder).glob("*.png"))
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        import torch

        from btcxr.data.images import read_image, resize_longest

        pixels, _ = resize_longest(read_image(self.files[index]).pixels, self.size)
        return torch.from_numpy(pixels)[None]


def measure(kind: str, path: str, size: int, batch: int, workers: int, epochs: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from btcxr.data.datasets import UnlabeledImages

    torch.set_num_threads(1)
    data = UnlabeledImages(path, splits=["train"]) if kind == "cache" else OriginalPngs(path, size)
    loader = DataLoader(data, batch_size=batch, num_workers=workers, shuffle=True,
                        persistent_workers=workers > 0)
    # Resident memory before loading anything (torch and the dataset index are in it already).
    with open("/proc/self/statm") as fh:
        rss_start = int(fh.read().split()[1]) * resource.getpagesize() / 2**20
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        for images in loader:
            seen += images.shape[0]
    seconds = time.perf_counter() - start
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    del loader  # stop persistent workers so RUSAGE_CHILDREN counts them
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"images": seen, "seconds": seconds, "rate": seen / seconds, "rss_start_mib": rss_start,
            "rss_main_mib": rss_self, "rss_worker_mib": rss_children}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="number of 1024 px source PNGs")
    parser.add_argument("--png-size", type=int, default=1024)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--_one", nargs=4, metavar=("KIND", "PATH", "WORKERS", "EPOCHS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        kind, path, workers, epochs = args._one
        print(json.dumps(measure(kind, path, args.size, args.batch, int(workers), int(epochs))))
        return

    import logging

    from btcxr.data.cache import PrepareSettings, prepare

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from prepare import radiograph_like  # benchmarks/prepare.py: the same synthetic radiographs

    logging.basicConfig(level=logging.WARNING)
    base = Path(tempfile.mkdtemp(prefix="btcxr-bench-loader-"))
    try:
        originals = base / "png"
        originals.mkdir()
        for k in range(args.n):
            Image.fromarray(radiograph_like(args.png_size, args.png_size, k, 255)).save(originals / f"{k:05d}.png")
        cache = base / "cache"
        prepare(PrepareSettings("folder", str(originals), str(cache), size=args.size))
        mib = lambda folder: sum(p.stat().st_size for p in folder.rglob("*.png")) / 2**20  # noqa: E731
        print(f"{args.n} PNGs {args.png_size} px ({mib(originals):.0f} MiB) -> cache at {args.size} px "
              f"({mib(cache):.1f} MiB); batch {args.batch}, {args.epochs} epochs")
        print(f"{'source':28s} {'workers':>7s} {'img/s':>8s} {'RSS at start':>13s} {'peak RSS main':>14s} "
              f"{'peak RSS worker':>16s}")
        for workers in [int(w) for w in args.workers.split(",")]:
            for kind, path, label in (("cache", cache, f"cache ({args.size} px PNG)"),
                                      ("original", originals, f"original {args.png_size} px + resize")):
                cmd = [sys.executable, __file__, "--size", str(args.size), "--batch", str(args.batch),
                       "--_one", kind, str(path), str(workers), str(args.epochs)]
                result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                worker_rss = f"{result['rss_worker_mib']:.0f} MiB" if workers else "-"
                print(f"{label:28s} {workers:7d} {result['rate']:8.1f} {result['rss_start_mib']:9.0f} MiB "
                      f"{result['rss_main_mib']:10.0f} MiB "
                      f"{worker_rss:>16s}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
