"""Ablation-CAM speed: our batched implementation (btcxr.explain.ablation) vs pytorch-grad-cam's AblationCAM.

Same detector (Faster R-CNN + FPN, random weights with confident class scores, torchvision's 1000 proposals),
same image, layer, boxes, and the same ablated channels (pytorch-grad-cam's ratio rule: 2 * int(C * ratio)
channels; --channels picks the ratio so a CPU run stays short; every channel costs the same, so the
speed-up does not depend on the count and the time of a full run is proportional to it).

pytorch-grad-cam computes one box per call (one heatmap = all ablations again); ours computes every box of
the image in one call. Printed: seconds for N boxes with each, the speed-up, the speed-up for a single box,
the agreement of the heatmaps (Pearson r), and the extrapolated time for all channels.

    .venv/bin/python benchmarks/explain.py                       # ResNet-50, 640 px, 3 boxes, 32 channels
    .venv/bin/python benchmarks/explain.py --arch resnet18 --size 320 --boxes 5
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import AblationCAM as PackageAblationCAM

from btcxr.detect.config import ModelConfig
from btcxr.detect.model import build_detector
from btcxr.explain.ablation import AblationCAM, channels_to_ablate
from btcxr.explain.base import box_targets, get_module, select_boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet34", "resnet50"])
    parser.add_argument("--size", type=int, default=640, help="longest image side (default: 640)")
    parser.add_argument("--boxes", type=int, default=3, help="detected boxes explained (default: 3)")
    parser.add_argument("--channels", type=int, default=32, help="ablated channels (even; default: 32)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layer", default="layer3")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    model = build_detector(ModelConfig(arch=args.arch, init="random", size=args.size)).eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(20)  # confident boxes from random weights
    model.to(device)
    h, w = args.size, int(args.size * 0.8) // 32 * 32  # portrait, like a chest radiograph
    image = F.avg_pool2d(torch.rand(1, 1, h, w, generator=torch.Generator().manual_seed(0)), 15, 1, 7)[0].to(device)

    ours = AblationCAM(model, args.layer, ratio=1.0, batch_size=args.batch_size)
    out = ours.detect(image)
    n_channels = ours._split.num_channels
    ratio = (args.channels // 2) / n_channels
    ours.ratio = ratio
    ablated = len(channels_to_ablate(ours._split.activation, ratio))
    keep = select_boxes(out, 0.0, args.boxes)
    targets = box_targets(out, keep)
    print(f"{args.arch} FPN detector, image {h}x{w}, layer {args.layer} ({n_channels} channels), "
          f"{len(targets)} box(es), {ablated} ablated channels (ratio {ratio:.5f}), batch {args.batch_size}, "
          f"device {device} ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    # ours: every box from one pass over the ablated channels (detection pass included)
    sync()
    start = time.perf_counter()
    ours_explanation = ours.explain(image, score_thr=0.0, top_k=args.boxes)
    sync()
    ours_all = time.perf_counter() - start
    start = time.perf_counter()
    ours.explain(image, score_thr=0.0, top_k=1)
    sync()
    ours_one = time.perf_counter() - start

    package = PackageAblationCAM(model, [get_module(model, ours.layer.module_path)], batch_size=args.batch_size,
                                 ratio_channels_to_ablate=ratio)
    per_box, maps = [], []
    for target in targets:
        sync()
        start = time.perf_counter()
        with np.errstate(divide="ignore", invalid="ignore"):
            maps.append(package(image[None], targets=[target])[0])
        sync()
        per_box.append(time.perf_counter() - start)
    package_all = sum(per_box)
    r = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(ours_explanation.heatmaps, maps)]

    print(f"pytorch-grad-cam AblationCAM: {package_all:8.1f} s for {len(targets)} box(es) "
          f"({np.mean(per_box):.1f} s a box)")
    print(f"btcxr AblationCAM:            {ours_all:8.1f} s for {len(targets)} box(es) (one box alone: {ours_one:.1f} s)")
    print(f"speed-up: {package_all / ours_all:.1f}x for {len(targets)} boxes, {np.mean(per_box) / ours_one:.1f}x "
          "for one box")
    print(f"heatmap agreement (Pearson r per box): {', '.join(f'{v:.4f}' for v in r)}")
    full = n_channels / ablated
    print(f"all {n_channels} channels (ratio 0.5 or 1.0), extrapolated: pytorch-grad-cam {package_all * full / 60:.1f} "
          f"min, btcxr {ours_all * full / 60:.1f} min")


if __name__ == "__main__":
    main()
