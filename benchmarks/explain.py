"""Ablation-CAM speed and agreement: our box-local mode, our exact mode and pytorch-grad-cam's AblationCAM.

Same detector (Faster R-CNN + FPN), image, layer, boxes and ablated channels for all three (pytorch-grad-cam's
ratio rule: 2 * int(C * ratio) channels; --channels picks the ratio so a CPU run stays short; every channel
costs the same, so the ratios do not depend on the count).

- exact (btcxr --ablation-mode exact): the layers before the target run once, every box of the image is read
  off one batched pass, everything after the target layer (RPN included) is re-run per ablated copy;
- box (the default): the first pass's proposals, and per copy only the FPN levels, RoIs and box-head rows
  the explained boxes' scores depend on (btcxr/explain/box_local.py);
- pytorch-grad-cam: one full run of all ablations per box (its FasterRCNNBoxScoreTarget); timed on the first
  --package-boxes boxes, and extrapolated linearly to N boxes (each box is an independent run).

Agreement: Pearson r of each box's heatmap with the exact mode's (and the exact mode's with the package's),
and whether the peak lands in the same cell of the target layer.

By default the detector has random weights (its class scores sharpened so it finds boxes): right for speed,
but a random RPN's proposals move with every ablation, which the box mode by design does not follow, so
agreement should be read from a trained detector: --checkpoint best.pt (its arch and size are used).

    .venv/bin/python benchmarks/explain.py                                   # ResNet-50 640 and ResNet-18 320
    .venv/bin/python benchmarks/explain.py --configs resnet18:320 --boxes 1 10
    .venv/bin/python benchmarks/explain.py --checkpoint runs/finetune/x/best.pt --boxes 1 5 --package-boxes 0
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


def random_detector(arch: str, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_detector(ModelConfig(arch=arch, init="random", size=size)).eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(20)  # confident boxes from random weights
    return model


def trained_detector(path: str) -> tuple[torch.nn.Module, str, int]:
    from btcxr.explain.run import load_detectors

    detector = load_detectors([path], None, torch.device("cpu"))[0]
    return detector.model.eval(), type(detector.model.backbone.body.layer1[0]).__name__, detector.size


def test_image(size: int, checkpoint_cache: str | None) -> torch.Tensor:
    if checkpoint_cache:  # a real cached radiograph of the checkpoint's test split
        from btcxr.data.datasets import VindrDetection
        from btcxr.detect.transforms import eval_transform

        image, _ = VindrDetection(checkpoint_cache, "test")[0]
        return eval_transform(size)(image, {})[0]
    h, w = size, int(size * 0.8) // 32 * 32  # portrait, like a chest radiograph
    return F.avg_pool2d(torch.rand(1, 1, h, w, generator=torch.Generator().manual_seed(0)), 15, 1, 7)[0]


def timed(device: torch.device, fn, *args, **kwargs):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def same_peak(a: np.ndarray, b: np.ndarray, cell: int) -> bool:
    pa = np.array(np.unravel_index(a.argmax(), a.shape))
    pb = np.array(np.unravel_index(b.argmax(), b.shape))
    return bool(np.abs(pa - pb).max() <= cell)


def bench(model, name: str, image: torch.Tensor, args, device: torch.device) -> None:
    model.to(device)
    image = image.to(device)
    exact = AblationCAM(model, args.layer, ratio=1.0, batch_size=args.batch_size, mode="exact")
    box = AblationCAM(model, args.layer, ratio=1.0, batch_size=args.batch_size, mode="box")
    out = exact.detect(image)
    n_channels = exact._split.num_channels
    ratio = (args.channels // 2) / n_channels
    exact.ratio = box.ratio = ratio
    ablated = len(channels_to_ablate(exact._split.activation, ratio))
    cell = round(image.shape[-1] / exact._split.activation.shape[-1])
    print(f"\n{name}, image {tuple(image.shape[-2:])}, layer {args.layer} ({n_channels} channels, {cell} px cells), "
          f"{ablated} ablated channels, batch {args.batch_size}, {device} ({torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()})")
    print(f"{'boxes':>5} {'grad-cam s':>11} {'exact s':>8} {'box s':>7} {'box vs grad-cam':>16} "
          f"{'box vs exact':>13} {'r box/exact min, median':>24} {'same peak':>10} {'r exact/grad-cam min':>21} "
          f"{'candidates':>11}")
    package = PackageAblationCAM(model, [get_module(model, exact.layer.module_path)], batch_size=args.batch_size,
                                 ratio_channels_to_ablate=ratio)
    for n in args.boxes:
        keep = select_boxes(out, 0.0, n)
        if len(keep) < n:
            print(f"{n:>5} only {len(keep)} boxes detected: skipped")
            continue
        e, t_exact = timed(device, exact.explain, image, score_thr=0.0, top_k=n)
        b, t_box = timed(device, box.explain, image, score_thr=0.0, top_k=n)
        candidates = len(box._split.candidate_heads(box_targets(box._output, keep)).candidates)
        r = [pearson(x, y) for x, y in zip(b.heatmaps, e.heatmaps)]
        peaks = sum(same_peak(x, y, cell) for x, y in zip(b.heatmaps, e.heatmaps))
        k = min(n, args.package_boxes)
        package_cell, r_package = "-", "-"
        if k:
            maps, per_box = [], []
            for target in box_targets(out, keep[:k]):
                with np.errstate(divide="ignore", invalid="ignore"):
                    m, t = timed(device, package, image[None], targets=[target])
                maps.append(m[0])
                per_box.append(t)
            t_package = float(np.mean(per_box)) * n
            package_cell = f"{t_package:.1f}" + ("" if k == n else f" ({k})")
            r_package = f"{min(pearson(x, y) for x, y in zip(e.heatmaps, maps)):.4f}"
            ratio_package = f"{t_package / t_box:.1f}x"
        else:
            ratio_package = "-"
        print(f"{n:>5} {package_cell:>11} {t_exact:>8.1f} {t_box:>7.1f} {ratio_package:>16} "
              f"{t_exact / t_box:>12.1f}x {min(r):>11.4f}, {np.median(r):.4f} {peaks:>6}/{n:<3} {r_package:>21} "
              f"{candidates:>5}/{len(box._split.proposals)}")


def agreement(model, cache: str, n_images: int, args, device: torch.device) -> None:
    """Box-local vs exact mode over the first n_images test images of a cache: every box with score >= 0.3
    (up to 10 an image), all channels of the target layer (ratio 0.5), as `btcxr explain --split` runs."""
    from btcxr.data.datasets import VindrDetection
    from btcxr.detect.transforms import eval_transform

    model.to(device)
    size = int(model.transform.max_size)
    exact = AblationCAM(model, args.layer, ratio=0.5, batch_size=args.batch_size, mode="exact")
    box = AblationCAM(model, args.layer, ratio=0.5, batch_size=args.batch_size, mode="box")
    dataset = VindrDetection(cache, "test")
    r, peaks, t_exact, t_box, cell = [], 0, 0.0, 0.0, 16
    for index in range(min(n_images, len(dataset))):
        image = eval_transform(size)(dataset[index][0], {})[0].to(device)
        e, te = timed(device, exact.explain, image, score_thr=0.3, top_k=10)
        b, tb = timed(device, box.explain, image, score_thr=0.3, top_k=10)
        t_exact, t_box = t_exact + te, t_box + tb
        cell = round(image.shape[-1] / exact._split.activation.shape[-1])
        r += [pearson(x, y) for x, y in zip(b.heatmaps, e.heatmaps)]
        peaks += sum(same_peak(x, y, cell) for x, y in zip(b.heatmaps, e.heatmaps))
    r = np.asarray([v for v in r if np.isfinite(v)])
    print(f"\nbox-local vs exact on {min(n_images, len(dataset))} test images of {cache} ({len(r)} boxes, score >= 0.3, "
          f"all {exact._split.num_channels} channels of {args.layer}, {device}):")
    print(f"  Pearson r: min {r.min():.4f}, 5th percentile {np.percentile(r, 5):.4f}, median {np.median(r):.4f}; "
          f"same peak cell ({cell} px) for {peaks} of {len(r)}; r >= 0.98 for {(r >= 0.98).mean():.0%}")
    print(f"  time: exact {t_exact:.1f} s, box-local {t_box:.1f} s ({t_exact / t_box:.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["resnet50:640", "resnet18:320"],
                        help="ARCH:SIZE of random-weight detectors (default: resnet50:640 resnet18:320)")
    parser.add_argument("--checkpoint", help="a trained detector (best.pt) instead of --configs")
    parser.add_argument("--cache", help="with --checkpoint: explain the first test image of this cache")
    parser.add_argument("--agreement-images", type=int, default=0, metavar="N",
                        help="with --checkpoint and --cache: also compare box-local and exact mode on N test "
                             "images (every box >= 0.3, all channels)")
    parser.add_argument("--boxes", type=int, nargs="+", default=[1, 10], help="boxes explained (default: 1 10)")
    parser.add_argument("--package-boxes", type=int, default=2,
                        help="boxes pytorch-grad-cam is timed on, then extrapolated (0: skip it; default: 2)")
    parser.add_argument("--channels", type=int, default=32, help="ablated channels (even; default: 32)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layer", default="layer3")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.checkpoint:
        model, arch, size = trained_detector(args.checkpoint)
        bench(model, f"trained detector ({arch} blocks) from {args.checkpoint}", test_image(size, args.cache), args, device)
        if args.agreement_images and args.cache:
            agreement(model, args.cache, args.agreement_images, args, device)
        return
    for spec in args.configs:
        arch, size = spec.split(":")
        bench(random_detector(arch, int(size)), f"{arch} FPN detector (random weights)", test_image(int(size), None),
              args, device)


if __name__ == "__main__":
    main()
