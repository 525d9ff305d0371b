"""`btcxr browse`: a static case browser of a cache split with each model's detections and heatmaps."""

from __future__ import annotations

import argparse

from btcxr.commands.common import Deprecated

DESCRIPTION = """\
Write a case browser into --out: a static site (plain HTML, CSS and JavaScript, no network, works from
file:// or `python -m http.server`) with every image of the cache split(s). The index has one row per
image with each model's true positives, false positives and missed boxes at an IoU and a score threshold
set on the page (the matching of `btcxr evaluate --counts-at`), sortable (worst first) and filterable by
class, ground-truth finding and split, and exported as CSV; an image a model did not predict reads "not
predicted" and is left out of its totals. Each model's default score threshold is its best F1 on the val
images it predicted (a fixed 0.3 without any). An image opens with the fused ground truth, each
radiologist's boxes (caches prepared with readers.csv), each model's detections (score slider, class
toggles), the Ablation-CAM heatmap of each box `btcxr explain` explained (opacity slider) and a
window/level, models side by side with zoom and pan kept in step; arrow keys step through the images. The
URL keeps the view. Only image ids reach the site.
"""

EXAMPLES = """\
examples:
  btcxr browse --cache cache/vindr640 --split test --run runs/imagenet-640 --run runs/btcxr-640 --out browse/
  btcxr explain --checkpoint runs/imagenet-640/best.pt --checkpoint runs/btcxr-640/best.pt \\
                --split test --cache cache/vindr640 --out cam/test
  btcxr browse --cache cache/vindr640 --split test --run runs/imagenet-640 --run runs/btcxr-640 \\
               --cam cam/test --out browse/
  python -m http.server --directory browse 8000      # or open browse/index.html
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("browse", help="a static case browser: ground truth, detections and heatmaps per image",
                            description=DESCRIPTION, epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, metavar="CACHE", help="prepared VinDr cache")
    parser.add_argument("--split", action="append", metavar="NAME",
                        help="cache split(s) to show; repeat for several (default: test)")
    parser.add_argument("--run", action="append", required=True, metavar="RUN_DIR",
                        help="a `btcxr finetune` run folder (its test_predictions.csv, and val_predictions.csv "
                             "for the default threshold) or a predictions.csv (with the images.csv of `btcxr "
                             "predict` beside it), a Kaggle submission or COCO results JSON (ids of the cache's "
                             "coco_<split>.json, e.g. MMDetection output); repeat to compare models")
    parser.add_argument("--label", action="append", metavar="NAME",
                        help="name of each --run, in order (default: the folder name; must match the model "
                             "names of --cam)")
    parser.add_argument("--cam", action="append", default=[], metavar="DIR",
                        help="a `btcxr explain` output folder whose heatmaps to show (repeatable)")
    parser.add_argument("--score-thr", type=float, default=0.05,
                        help="detections below this score are left out of the site, and no threshold goes "
                             "below it (default: 0.05)")
    parser.add_argument("--min-score", type=float, dest="score_thr", action=Deprecated, new="--score-thr",
                        help=argparse.SUPPRESS)
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from btcxr.browse.site import build_site, model_of
    from btcxr.engine.lock import claim
    from btcxr.errors import BtcxrError

    if args.label and len(args.label) != len(args.run):
        raise BtcxrError(f"{len(args.label)} --label for {len(args.run)} --run: give one per run, in order")
    if not 0 <= args.score_thr <= 1:
        raise BtcxrError(f"--score-thr must be in [0, 1], got {args.score_thr}")
    claim(args.out, [("--cache", args.cache), *(("--run", r) for r in args.run), *(("--cam", c) for c in args.cam)])
    labels = args.label or [None] * len(args.run)
    models = [model_of(run, label) for run, label in zip(args.run, labels)]
    index = build_site(args.cache, args.split or ["test"], models, args.out, cams=args.cam, min_score=args.score_thr)
    print(f"case browser: {index} (open it, or: python -m http.server --directory {index.parent})")
    return 0
