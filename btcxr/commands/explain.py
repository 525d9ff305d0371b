"""`btcxr explain`: Ablation-CAM (or Grad-CAM / EigenCAM) heatmaps of every detected box, figures and
the localisation score against the radiologists' boxes."""

from __future__ import annotations

import argparse

from btcxr.commands.common import Deprecated
from btcxr.errors import ON_ERROR, check_on_error

DESCRIPTION = """\
For each image, run each detector (checkpoints of `btcxr finetune`), take its boxes with score >= --score-thr
(the --top-k best) and compute one heatmap per box: Ablation-CAM by default (Desai and Ramaswamy 2020, the
paper's method): weight_k = (y - y_k) / y where y is the box's score (the best-matching detection of its class,
IoU + score as pytorch-grad-cam's Faster R-CNN target) and y_k the score with channel k of the target layer
zeroed; heatmap = ReLU(sum_k weight_k A_k), upsampled and normalised to [0, 1]. All boxes of an image share
one batched pass over the ablated channels, and the layers before the target layer run once.

Layers: layer1..layer4 (ResNet stages; layer3 is the paper's), fpn.0..fpn.3 and fpn.pool (FPN outputs),
fpn (all FPN levels, as pytorch-grad-cam's Faster R-CNN tutorial), or a module path such as
backbone.body.layer3.5. --ratio is pytorch-grad-cam's ratio_channels_to_ablate (its rule: the int(C*r)
best- and int(C*r) worst-ranked channels are ablated, so 0.5 ablates all; the others get weight 0).

Two modes:
  IMAGES...                files or folders (DICOM, PNG, JPEG), resized as `btcxr predict` does; with
                           --cache, images whose id is in the cache get their ground-truth boxes drawn and
                           scored.
  --split NAME --cache C   the images of a prepared VinDr cache split that hold finding boxes (--max-images
                           of them): the localisation score; pictures for the first --grid-images.

Writes OUT/boxes.csv (one row per box, coordinates in ORIGINAL pixels), OUT/skipped.csv (images where a model
found nothing above --score-thr), OUT/boxes/<image>/<model>_box<k>_<class>.png, OUT/grids/<image>.png (two or
more checkpoints: findings x models, the paper's figure) and, with ground truth, OUT/localisation.json and
OUT/localisation.md: per model and class the share of heatmap energy inside the matched ground-truth box and
the pointing game (peak within --tolerance px of the box), for true positives (IoU >= 0.5), with 95 %
bootstrap intervals over images.
"""

EXAMPLES = """\
examples:
  btcxr explain --checkpoint runs/finetune/bt-640-s0/best.pt scans/patient1.dcm --out cam/
  btcxr explain --checkpoint runs/imagenet-640/best.pt --label ImageNet \\
                --checkpoint runs/btcxr-640/best.pt --label BarlowTwins-CXR \\
                cache/vindr640/images/0a1b2c.png --cache cache/vindr640 --out cam/compare
  btcxr explain --checkpoint runs/imagenet-640/best.pt --checkpoint runs/btcxr-640/best.pt \\
                --split test --cache cache/vindr640 --max-images 100 --out cam/test
  btcxr explain --checkpoint best.pt scans/ --out cam/ --method eigencam --layer fpn --device cpu
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="Ablation-CAM heatmaps of every detected box, figures and localisation score",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", action="append", required=True, metavar="CKPT",
                        help="best.pt / last.pt of `btcxr finetune`; repeat to compare models side by side")
    parser.add_argument("--label", action="append", metavar="NAME",
                        help="column title of each checkpoint, in the same order (default: the run folder)")
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files or folders (recursive)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--split", metavar="NAME", help="explain a cache split instead of IMAGES (needs --cache)")
    parser.add_argument("--cache", metavar="CACHE", help="prepared VinDr cache: ground truth (and --split images)")
    parser.add_argument("--max-images", type=int, metavar="N", help="with --split: the first N images")
    parser.add_argument("--grid-images", type=int, default=8, metavar="N",
                        help="with --split: pictures for the first N images (default: 8)")
    parser.add_argument("--method", choices=["ablation", "gradcam", "eigencam"], default="ablation",
                        help="ablation (default, the paper's), or pytorch-grad-cam's gradcam / eigencam")
    parser.add_argument("--layer", default="layer3",
                        help="target layer: layer1..layer4, fpn.0..fpn.3, fpn.pool, fpn, or a module path "
                             "(default: layer3)")
    parser.add_argument("--score-thr", type=float, default=0.3, help="explain boxes with at least this score "
                                                                       "(default: 0.3)")
    parser.add_argument("--top-k", type=int, default=10, help="at most this many boxes per image (default: 10)")
    parser.add_argument("--ratio", type=float, default=0.5,
                        help="Ablation-CAM: pytorch-grad-cam's ratio_channels_to_ablate (default: 0.5)")
    parser.add_argument("--ablation-mode", choices=["exact", "box"], default="exact",
                        help="Ablation-CAM: exact (default) re-runs everything after the layer, RPN included, "
                             "as pytorch-grad-cam; box re-runs only what the explained boxes' scores depend "
                             "on with the first pass's proposals: faster, approximate (docs/explain.md)")
    parser.add_argument("--ablation-batch-size", type=int, default=32, metavar="N",
                        help="Ablation-CAM: ablated copies per forward pass (default: 32)")
    parser.add_argument("--batch-size", type=int, dest="ablation_batch_size", action=Deprecated,
                        new="--ablation-batch-size", help=argparse.SUPPRESS)
    parser.add_argument("--on-error", default="stop", metavar="{" + ",".join(ON_ERROR) + "}",
                        help="IMAGES mode: an unreadable image stops the run (stop, default) or is skipped and "
                             "listed in skipped.csv (skip)")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="pointing game: pixels the peak may lie outside the box (default: 0, the peak "
                             "must be inside; Zhang et al. used 15)")
    parser.add_argument("--no-figures", dest="figures", action="store_false",
                        help="IMAGES mode: write no pictures (tables only)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from btcxr.engine.lock import claim
    from btcxr.errors import BtcxrError
    from btcxr.explain.run import explain_images, explain_split

    claim(args.out, [*(("--checkpoint", c) for c in args.checkpoint), *(("image", i) for i in args.images or []),
                     ("--cache", args.cache)])
    common = dict(labels=args.label, method=args.method, layer=args.layer, score_thr=args.score_thr,
                  top_k=args.top_k, ratio=args.ratio, batch_size=args.ablation_batch_size,
                  ablation_mode=args.ablation_mode, device=args.device,
                  tolerance=args.tolerance)
    if args.split:
        if not args.cache:
            raise BtcxrError("--split needs --cache CACHE (the prepared VinDr cache holding the split)")
        if args.images:
            raise BtcxrError("give either IMAGES or --split, not both")
        summary = explain_split(args.checkpoint, args.cache, args.split, args.out, max_images=args.max_images,
                                grid_images=args.grid_images, **common)
    else:
        if not args.images:
            raise BtcxrError("give IMAGE files or folders, or --split NAME with --cache CACHE")
        summary = explain_images(args.checkpoint, args.images, args.out, cache=args.cache, figures=args.figures,
                                 on_error=check_on_error(args.on_error), **common)
    print(f"{summary['images']} image(s), {summary['boxes']} box(es) explained, {summary['skipped']} skip(s) "
          f"-> {args.out}")
    return 0
