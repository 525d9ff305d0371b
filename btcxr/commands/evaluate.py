"""`btcxr evaluate`: detection metrics (COCO mAP50, VOC, Kaggle score, bootstrap CI) from files."""

from __future__ import annotations

import argparse

from btcxr.commands.common import Deprecated
from btcxr.errors import ON_ERROR, check_on_error

DESCRIPTION = """\
Score VinDr-CXR detections against ground truth.

Predictions: our predictions.csv (image_id,class_id,class_name,score,x_min,y_min,x_max,y_max in original
pixels), a Kaggle submission (image_id,PredictionString) or COCO results JSON ([{image_id, category_id,
bbox [x, y, w, h], score}], as `btcxr predict`, MMDetection and Detectron2 write it). Ground truth: a
cache's annotations.csv (--split NAME keeps one split's images), a raw Kaggle train.csv / PhysioNet
annotations_*.csv whose readers are fused first (--fusion ...), or COCO ground truth JSON (a cache's
coco_<split>.json: cache pixels, so score results in the same frame against it). A COCO results file's
image ids are those of a COCO ground truth, or the image names against a CSV ground truth; categories
are matched by name (btcxr's COCO files: category_id = class_id + 1).
GT images without predictions count as images where nothing was detected.

Writes OUT/metrics.json (map50 = COCO AP at IoU 0.5, the paper's mAP50, with a bootstrap interval over
images; map = COCO AP 0.50:0.95; map50_voc; kaggle_map40 = the competition score; per-class APs; counts),
OUT/per_class.csv, OUT/per_class.md and OUT/pr_curves.png.

Checkpoint mode (--checkpoint CKPT --cache CACHE [--split test]), instead of --pred/--gt: run a detector
written by `btcxr finetune` on a part of a VinDr cache at its size setting, write OUT/predictions.csv
(original pixels) and score it against the cache's annotations.csv as above.
"""

EPILOG = """\
examples:
  btcxr evaluate --pred runs/ft/test_predictions.csv --gt cache/vindr/annotations.csv --split test --out runs/ft/eval
  btcxr evaluate --pred mmdet/results.bbox.json --gt cache/vindr/coco_test.json --out eval_mmdet
  btcxr evaluate --pred submission.csv --gt vinbigdata/train.csv --fusion wbf --iou-thr 0.4 --out eval_kaggle
  btcxr evaluate --pred predictions.csv --gt annotations.csv --out eval --bootstrap 2000 --seed 1 --on-error skip
  btcxr evaluate --checkpoint runs/finetune/bt-640-s0/best.pt --cache cache/vindr-640 --split test --out eval_bt
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="detection metrics (mAP50, Kaggle score, bootstrap CI) from prediction and GT files",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    files = parser.add_argument_group("files")
    files.add_argument("--pred", metavar="PRED",
                       help="predictions.csv, a Kaggle submission (told apart by the header) or COCO results "
                            "JSON (predictions.coco.json, MMDetection / Detectron2 output)")
    files.add_argument("--gt", metavar="GT",
                       help="annotations.csv of a cache, a raw Kaggle train.csv / PhysioNet annotations file, or "
                            "COCO ground truth JSON (a cache's coco_<split>.json)")
    files.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    model = parser.add_argument_group("a fine-tuned detector on a cache part (instead of --pred and --gt)")
    model.add_argument("--checkpoint", metavar="CKPT", help="best.pt / last.pt written by `btcxr finetune`")
    model.add_argument("--cache", metavar="CACHE", help="VinDr cache (`btcxr prepare vindr`)")
    parser.add_argument("--split", metavar="NAME",
                        help="cache split to score: with --checkpoint (default: test), or with --gt a cache's "
                             "annotations.csv (default: every image the file holds)")
    model.add_argument("--include-negatives", choices=["auto", "yes", "no"], default="auto",
                       help="score the part's all-normal images too (auto: as the run was validated)")
    model.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    model.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    model.add_argument("--workers", type=int, default=2, help="image-loading processes (default: 2)")
    fusion = parser.add_argument_group("fusion of raw reader annotations (ignored for annotations.csv)")
    fusion.add_argument("--fusion", default="wbf",
                        help="wbf, wbf-pooled (the paper's), nms, union or reader:R8 (default: wbf)")
    fusion.add_argument("--iou-thr", type=float, default=0.4, help="fusion IoU threshold (default: 0.4)")
    fusion.add_argument("--skip-box-thr", type=float, default=0.0,
                        help="drop fused boxes with a reader-agreement score below this (default: 0)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="bootstrap resamples of the images for the 95%% intervals; 0 = none (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument("--no-finding-rule", choices=["1-max", "none"], default="1-max",
                        help="class-14 predictions for the Kaggle score when the predictions have none: "
                             "'1-max' adds '14 s 0 0 1 1' with s = 1 - max score on the image (default)")
    parser.add_argument("--counts-at", type=float, nargs=2, metavar=("IOU", "SCORE"),
                        help="also write OUT/per_image.csv: each image's true positives, false positives and "
                             "missed boxes at this IoU and score threshold (the case browser's counts)")
    parser.add_argument("--on-error", default="stop", metavar="{" + ",".join(ON_ERROR) + "}",
                        help="predictions on images that are not in the ground truth stop the run (stop, "
                             "default) or are skipped and counted (skip)")
    parser.add_argument("--lenient", dest="on_error", action=Deprecated, new="--on-error skip", constant="skip",
                        help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from btcxr.detect.evaluate_files import evaluate_files
    from btcxr.engine.lock import claim
    from btcxr.errors import BtcxrError

    if args.bootstrap < 0:
        raise BtcxrError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    # before any reading or computing: a bad --out is told at once
    claim(args.out, [("--pred", args.pred), ("--gt", args.gt), ("--checkpoint", args.checkpoint),
                     ("--cache", args.cache)])
    if args.checkpoint:
        if not args.cache or args.pred or args.gt:
            raise BtcxrError("--checkpoint needs --cache, and takes neither --pred nor --gt")
        from btcxr.detect.evaluate_checkpoint import evaluate_checkpoint

        evaluate_checkpoint(args.checkpoint, args.cache, args.split or "test", args.out, device=args.device,
                            batch_size=args.batch_size, workers=args.workers, bootstrap=args.bootstrap,
                            seed=args.seed, include_negatives={"auto": None, "yes": True, "no": False}[
                                args.include_negatives], counts_at=args.counts_at)
        return 0
    if not args.pred or not args.gt:
        raise BtcxrError("give --pred and --gt (files), or --checkpoint and --cache (a detector on a cache part)")
    evaluate_files(args.pred, args.gt, args.out, fusion=args.fusion, iou_thr=args.iou_thr,
                   skip_box_thr=args.skip_box_thr, bootstrap=args.bootstrap, seed=args.seed,
                   no_finding_rule=args.no_finding_rule, lenient=check_on_error(args.on_error) == "skip",
                   counts_at=args.counts_at,
                   split=args.split)
    return 0
