"""Faster R-CNN + FPN speed: training images/s and inference latency at the paper's input sizes, plus the
cost of the per-epoch validation AP50 next to pycocotools.

Run: .venv/bin/python benchmarks/detect.py [--archs resnet18 resnet50] [--sizes 640 1024] [--iters 3]
     [--batch 2] [--threads N] [--device auto] [--no-eval]

Detector: the paper's build (256-channel FPN, 1024-wide box head, stem + layer1 frozen, frozen BN), random
weights (speed does not depend on them), gray 4:5 portrait images with three boxes each. Training: SGD
steps (forward + backward + update) after one warm-up step; inference: batch-1 latency and batch
throughput in eval mode (1000 RPN proposals, 100 detections). CUDA runs use bf16 autocast.

Validation cost: 660 images (the 15 % val part of the 4,394 VinDr images with findings) x 100 detections,
GT = real VinDr boxes fused with WBF; our `evaluate_detections` (what every epoch runs) vs pycocotools'
COCOeval (imported from benchmarks/evaluate.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch


def synthetic_batch(batch: int, size: int, seed: int) -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(seed)
    h, w = size, round(size * 0.8)
    images = [torch.rand(1, h, w, generator=g) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(3, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = (0.05 + torch.rand(3, 2, generator=g) * 0.2) * torch.tensor([w, h])
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, 15, (3,), generator=g)})
    return images, targets


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_model(arch: str, size: int, iters: int, batch: int, device: torch.device) -> dict[str, float]:
    from btcxr.detect.config import ModelConfig
    from btcxr.detect.model import build_detector
    from btcxr.engine.runtime import autocast

    amp = "bf16" if device.type == "cuda" else "none"
    cfg = ModelConfig(arch=arch, init="random", norm="frozen", trainable_layers=3, size=size)
    model = build_detector(cfg).to(device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    images, targets = synthetic_batch(batch, size, 0)
    images = [i.to(device) for i in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]

    model.train()
    times = []
    for k in range(iters + 1):  # the first step warms up allocators and kernels
        sync(device)
        start = time.perf_counter()
        with autocast(device, amp):
            loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync(device)
        if k:
            times.append(time.perf_counter() - start)
    train_ips = batch / float(np.median(times))

    model.eval()
    with torch.no_grad():
        lat = []
        for k in range(iters + 1):
            sync(device)
            start = time.perf_counter()
            with autocast(device, amp):
                model(images[:1])
            sync(device)
            if k:
                lat.append(time.perf_counter() - start)
        thr = []
        for k in range(max(2, iters // 2 + 1)):
            sync(device)
            start = time.perf_counter()
            with autocast(device, amp):
                model(images)
            sync(device)
            if k:
                thr.append(time.perf_counter() - start)
    return {"train_ips": train_ips, "latency_ms": 1000 * float(np.median(lat)),
            "infer_ips": batch / float(np.median(thr))}


def bench_validation() -> None:
    import evaluate as bench_evaluate  # benchmarks/evaluate.py, beside this script
    import pandas as pd
    from timing import timed

    from btcxr.data.fusion import fuse_readers
    from btcxr.data.vindr import read_kaggle_train_csv
    from btcxr.detect.metrics import evaluate_detections
    from btcxr.detect.predictions import check_predictions

    data = Path(list(importlib.util.find_spec("torchxrayvision").submodule_search_locations)[0]) / "data"
    gt = fuse_readers(read_kaggle_train_csv(data / "vinbigdata-train.csv.gz"), "wbf", 0.4)
    rng = np.random.default_rng(0)
    ids = rng.choice(gt.loc[gt["class_id"] != 14, "image_id"].unique(), 660, replace=False)
    gt = gt[gt["image_id"].isin(ids)][["image_id", "class_id", "x_min", "y_min", "x_max", "y_max"]]
    gt = gt.reset_index(drop=True)
    # 100 detections an image: every GT box jittered, the rest random boxes, random classes and scores.
    rows = []
    for image_id, g in gt.groupby("image_id"):
        b = g[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float)
        wh = b[:, 2:] - b[:, :2]
        jit = b + rng.normal(0, 0.1, b.shape) * np.tile(wh, 2)
        n_rand = 100 - len(b)
        xy = rng.uniform(0, 2000, (n_rand, 2))
        rand = np.concatenate([xy, xy + rng.uniform(20, 600, (n_rand, 2))], 1)
        boxes = np.concatenate([jit, rand])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        cls = np.concatenate([g["class_id"].to_numpy(), rng.integers(0, 14, n_rand)])
        rows.append(pd.DataFrame({"image_id": image_id, "class_id": cls, "score": rng.random(100),
                                  "x_min": boxes[:, 0], "y_min": boxes[:, 1], "x_max": boxes[:, 2],
                                  "y_max": boxes[:, 3]}))
    pred = check_predictions(pd.concat(rows, ignore_index=True))
    print(f"\nvalidation AP50: {gt['image_id'].nunique()} images, {len(gt)} GT boxes, {len(pred)} detections")
    ours = timed("ours: evaluate_detections(bootstrap=0) (per epoch)",
                                lambda: evaluate_detections(gt, pred, bootstrap=0), repeat=3)
    coco_gt, coco_dt = timed("pycocotools: COCO index + loadRes",
                                            lambda: bench_evaluate.pycocotools_objects(gt, pred), repeat=3)
    ev = timed("pycocotools: COCOeval evaluate + accumulate + summarize",
                              lambda: bench_evaluate.run_cocoeval(coco_gt, coco_dt), repeat=3)
    print(f"map50 ours {ours.metrics['map50']:.6f}  pycocotools {ev.stats[1]:.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[640, 1024])
    parser.add_argument("--iters", type=int, default=3, help="timed steps per setting (median reported)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-eval", action="store_true", help="skip the validation-metric timing")
    args = parser.parse_args()

    from btcxr.engine.runtime import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; batch {args.batch}; median of {args.iters} steps")
    print(f"{'arch':<10}{'size':>6}{'train img/s':>14}{'infer ms (b=1)':>16}{'infer img/s':>14}")
    for arch in args.archs:
        for size in args.sizes:
            r = bench_model(arch, size, args.iters, args.batch, device)
            print(f"{arch:<10}{size:>6}{r['train_ips']:>14.2f}{r['latency_ms']:>16.0f}{r['infer_ips']:>14.2f}",
                  flush=True)
    if not args.no_eval:
        bench_validation()


if __name__ == "__main__":
    main()
