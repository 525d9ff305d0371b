"""`btcxr predict`: run a fine-tuned detector on DICOM / PNG / JPEG files or folders."""

from __future__ import annotations

import argparse

from btcxr.errors import ON_ERROR, check_on_error

DESCRIPTION = """\
Detect the 14 VinDr-CXR findings in radiographs with a checkpoint written by `btcxr finetune` (best.pt or
last.pt). Inputs are files or folders (searched recursively for .dcm .dicom .png .jpg .jpeg). Each image is
resized to the detector's size setting as `btcxr prepare` would cache it; boxes come back in ORIGINAL
pixels. No DICOM patient tag is read or written.

Writes OUT/predictions.csv (image_id,class_id,class_name,score,x_min,y_min,x_max,y_max), OUT/images.csv
(image_id, file, original size, box count), OUT/overlays/<image_id>.png (boxes with class and score over
the radiograph), OUT/submission.csv with --submission (Kaggle VinBigData format) and OUT/errors.csv when
unreadable files are skipped. Image ids are the file names without suffix.
"""

EXAMPLES = """\
examples:
  btcxr predict --checkpoint runs/finetune/bt-640-s0/best.pt scans/ --out pred/
  btcxr predict --checkpoint best.pt vinbigdata/test --out kaggle --submission --no-overlays --score-thr 0.001
  btcxr predict --checkpoint best.pt a.dcm b.png --out pred --device cpu --batch-size 2 --on-error skip
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="detect findings in DICOM/PNG/JPEG files with a fine-tuned checkpoint",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="best.pt / last.pt of `btcxr finetune`")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (recursive)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--score-thr", type=float, default=0.05,
                        help="keep boxes with at least this score in predictions.csv (default: 0.05)")
    parser.add_argument("--overlay-thr", type=float, default=0.3,
                        help="draw boxes with at least this score on the overlays (default: 0.3)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    parser.add_argument("--workers", type=int, default=2, help="image-reading processes (default: 2)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--submission", action="store_true",
                        help="also write submission.csv in the Kaggle VinBigData format "
                             "('No finding' score = 1 - highest finding score)")
    parser.add_argument("--no-overlays", dest="overlays", action="store_false", help="do not draw overlays")
    parser.add_argument("--on-error", default="stop", metavar="{" + ",".join(ON_ERROR) + "}",
                        help="unreadable file: stop with its name (stop, default) or skip it, list it in "
                             "errors.csv and count it (skip); 'raise' is a deprecated spelling of stop")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from btcxr.detect.predict import predict_files
    from btcxr.engine.lock import claim

    on_error = check_on_error(args.on_error)
    claim(args.out, [("--checkpoint", args.checkpoint), *(("input", i) for i in args.inputs)])
    report = predict_files(args.checkpoint, args.inputs, args.out, score_thr=args.score_thr,
                           batch_size=args.batch_size, device=args.device, workers=args.workers,
                           submission=args.submission, overlays=args.overlays, overlay_thr=args.overlay_thr,
                           on_error=on_error)
    print(f"{report.images} image(s), {report.boxes} box(es), {report.skipped} skipped -> "
          f"{report.out_dir / 'predictions.csv'}")
    return 0
