"""`btcxr evaluate`: detection metrics (COCO mAP50, VOC, Kaggle score, bootstrap CI) from files."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Score VinDr-CXR detections against ground truth.

Predictions: our predictions.csv (image_id,class_id,class_name,score,x_min,y_min,x_max,y_max in original
pixels) or a Kaggle submission (image_id,PredictionString). Ground truth: a cache's annotations.csv, or a
raw Kaggle train.csv / PhysioNet annotations_*.csv whose readers are fused first (--fusion ...).
GT images without predictions count as images where nothing was detected.

Writes OUT/metrics.json (map50 = COCO AP at IoU 0.5, the paper's mAP50, with a bootstrap interval over
images; map = COCO AP 0.50:0.95; map50_voc; kaggle_map40 = the competition score; per-class APs; counts),
OUT/per_class.csv, OUT/per_class.md and OUT/pr_curves.png.
"""

EPILOG = """\
examples:
  btcxr evaluate --pred runs/ft/predictions.csv --gt cache/vindr/annotations.csv --out runs/ft/eval
  btcxr evaluate --pred submission.csv --gt vinbigdata/train.csv --fusion wbf --iou-thr 0.4 --out eval_kaggle
  btcxr evaluate --pred predictions.csv --gt annotations.csv --out eval --bootstrap 2000 --seed 1 --lenient
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
    files.add_argument("--pred", required=True, metavar="PRED.csv",
                       help="predictions.csv or a Kaggle submission (told apart by the header)")
    files.add_argument("--gt", required=True, metavar="GT.csv",
                       help="annotations.csv of a cache, or a raw Kaggle train.csv / PhysioNet annotations file")
    files.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    fusion = parser.add_argument_group("fusion of raw reader annotations (ignored for annotations.csv)")
    fusion.add_argument("--fusion", default="wbf", help="wbf, nms, union or reader:R8 (default: wbf)")
    fusion.add_argument("--iou-thr", type=float, default=0.4, help="fusion IoU threshold (default: 0.4)")
    fusion.add_argument("--skip-box-thr", type=float, default=0.0,
                        help="drop fused boxes with a reader-agreement score below this (default: 0)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="bootstrap resamples of the images for the 95%% intervals; 0 = none (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument("--no-finding-rule", choices=["1-max", "none"], default="1-max",
                        help="class-14 predictions for the Kaggle score when the predictions have none: "
                             "'1-max' adds '14 s 0 0 1 1' with s = 1 - max score on the image (default)")
    parser.add_argument("--lenient", action="store_true",
                        help="skip (and count) predictions on images that are not in the ground truth "
                             "instead of stopping")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from btcxr.detect.evaluate_files import evaluate_files
    from btcxr.errors import BtcxrError

    if args.bootstrap < 0:
        raise BtcxrError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    evaluate_files(args.pred, args.gt, args.out, fusion=args.fusion, iou_thr=args.iou_thr,
                   skip_box_thr=args.skip_box_thr, bootstrap=args.bootstrap, seed=args.seed,
                   no_finding_rule=args.no_finding_rule, lenient=args.lenient)
    return 0
