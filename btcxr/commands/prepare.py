"""`btcxr prepare`: decode, resize and split a dataset once into a cache that training reads fast."""

from __future__ import annotations

import argparse
import os

from btcxr.errors import ON_ERROR, check_on_error

EXAMPLES = """\
examples:
  # NIH ChestX-ray14 at 224 px: official test list held out of pre-training, 10 % patient-level val
  btcxr prepare nih --root ~/data/ChestX-ray14 --out cache/nih-224 --size 224

  # the same, keeping 880 box-annotated images out of pre-training for the CAM study
  btcxr prepare nih --root ~/data/ChestX-ray14 --out cache/nih-224 --size 224 --reserve bbox_images.txt

  # VinDr-CXR (Kaggle layout) at 640 px, readers fused by WBF, stratified split 70/15/15 without normals
  btcxr prepare vindr --root ~/data/vinbigdata --out cache/vindr-640 --size 640 --fusion wbf --iou-thr 0.4

  # the paper's own ground truth and split (its val/test lists ship with btcxr), exactly
  btcxr prepare vindr --root ~/data/vinbigdata --out cache/vindr-paper-640 --size 640 --protocol paper

  # VinDr as Kaggle users hold it: train/<id>.png resized to 1024 px, original sizes in train_meta.csv
  btcxr prepare vindr --root ~/data/vinbigdata-png-1024 --out cache/vindr-640 --size 640 \
      --meta-csv ~/data/vinbigdata-png-1024/train_meta.csv

  # VinDr-CXR 1.0.0 (PhysioNet): keep normals, 16-bit PNGs, the official 3,000 test images as test
  btcxr prepare vindr --root ~/data/vindr-cxr/1.0.0 --out cache/vindr-1024 --size 1024 --bits 16 \\
      --with-normals --official-test --ratios 85,15,0

  # any folder of radiographs (png/jpg/dcm, recursive), for pre-training only; skip unreadable files
  btcxr prepare folder --root ~/data/hospital_export --out cache/local-224 --size 224 --on-error skip

A killed run is finished by running the same command again: images already written are not decoded
again. Rerunning with other split or fusion options (same --size/--bits) re-splits without decoding.

The cache holds images/*.png (one channel, longest side --size), manifest.csv (image_id, file,
patient_id, split, labels, orig_width, orig_height, scale), prepare.json (settings and counts),
splits/*.csv (saved splits), and for VinDr annotations.csv (fused boxes, original pixels) and
coco_{train,val,test}.json (COCO detection files in the cache frame, for MMDetection/Detectron2).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="decode, resize and split a dataset into a training cache",
        description="Decode every image once (PNG, JPEG or DICOM), resize it so its longest side is --size "
                    "(aspect kept), write single-channel PNGs and a manifest with splits, labels and the "
                    "scale back to the original pixels. VinDr also gets the radiologists' boxes fused "
                    "(annotations.csv) and COCO files. Runs on all cores and resumes where it stopped.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", choices=["nih", "vindr", "folder"],
                        help="nih (ChestX-ray14), vindr (VinDr-CXR, Kaggle or PhysioNet layout), folder (any "
                             "tree of radiographs, for pre-training)")
    parser.add_argument("--root", required=True, metavar="DIR", help="the dataset as downloaded")
    parser.add_argument("--out", required=True, metavar="CACHE", help="cache folder to write (or to finish)")
    parser.add_argument("--size", required=True, type=int, metavar="PX", help="longest side of cached images")
    parser.add_argument("--bits", type=int, choices=[8, 16], default=8, help="PNG bit depth (default 8)")

    vindr = parser.add_argument_group("VinDr")
    vindr.add_argument("--protocol", choices=["btcxr", "paper"], default="btcxr",
                       help="btcxr (default): the options below; paper: the paper's ground truth and split "
                            "exactly (wbf-pooled fusion at IoU 0.5, normals dropped, the paper's val/test images)")
    vindr.add_argument("--fusion", default=None, metavar="{wbf,wbf-pooled,nms,union,reader:R8}",
                       help="how the three radiologists' boxes become one set (default: the protocol's, wbf)")
    vindr.add_argument("--iou-thr", type=float, default=None,
                       help="IoU threshold of WBF/NMS (default: the protocol's, 0.4; paper 0.5)")
    vindr.add_argument("--skip-box-thr", type=float, default=0.0,
                       help="drop fused boxes whose score (share of readers) is below this (default 0)")
    vindr.add_argument("--label-set", choices=["kaggle", "local"], default="kaggle",
                       help="14 Kaggle classes (default) or the 22 local labels of VinDr-CXR 1.0.0")
    vindr.add_argument("--ratios", default="70,15,15", metavar="TRAIN,VAL,TEST",
                       help="split of the training images, multi-label stratified (default 70,15,15)")
    normals = vindr.add_mutually_exclusive_group()
    normals.add_argument("--with-normals", dest="with_normals", action="store_true",
                         help="keep images without any finding in the splits")
    normals.add_argument("--no-normals", dest="with_normals", action="store_false",
                         help="drop images without any finding, as the paper did (default)")
    vindr.add_argument("--meta-csv", metavar="FILE",
                       help="original sizes (image_id,dim0,dim1) of resized PNG/JPEG copies (default: "
                            "<root>/train_meta.csv, <root>/test_meta.csv when present)")
    vindr.add_argument("--official-test", action="store_true",
                       help="use the 3,000 official test images (PhysioNet layout, annotations_test.csv) as "
                            "the test split; the training images are split train/val by --ratios")

    nih = parser.add_argument_group("NIH")
    nih.add_argument("--val-fraction", type=float, default=0.1,
                     help="share of the train_val patients held out as val (default 0.1)")
    nih.add_argument("--include-test-in-pretrain", action="store_true",
                     help="let pre-training see the test (and reserved) images, as the published recipe did "
                          "(leaks the evaluation images; off by default)")
    parser.add_argument("--allow-missing-images", action="store_true",
                        help="nih/vindr: leave out images listed in Data_Entry, train.csv or the paper's split but "
                             "absent below --root (counted, listed in errors.csv) instead of failing")
    parser.add_argument("--reserve", metavar="FILE",
                        help="nih/folder: image names (one a line) kept out of pre-training and probe training "
                             "(split 'reserved')")
    parser.add_argument("--seed", type=int, default=0, help="seed of the val/test split (default 0)")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"decoding processes (default: all {os.cpu_count()} cores)")
    parser.add_argument("--on-error", default="stop", metavar="{" + ",".join(ON_ERROR) + "}",
                        help="an unreadable image (or a VinDr annotation row given twice) stops the run (stop, "
                             "default) or is skipped, counted and listed in errors.csv (skip)")
    parser.set_defaults(func=run, with_normals=False)


def run(args: argparse.Namespace) -> int:
    from btcxr.data.cache import PrepareSettings, prepare
    from btcxr.engine.lock import claim

    claim(args.out, [("--root", args.root), ("--meta-csv", getattr(args, "meta_csv", None)),
                     ("--reserve", getattr(args, "reserve", None))])
    settings = PrepareSettings(
        dataset=args.dataset, root=args.root, out=args.out, size=args.size, bits=args.bits,
        protocol=args.protocol, fusion=args.fusion, iou_thr=args.iou_thr, skip_box_thr=args.skip_box_thr,
        label_set=args.label_set, ratios=args.ratios, with_normals=args.with_normals,
        official_test=args.official_test, meta_csv=args.meta_csv,
        val_fraction=args.val_fraction, include_test_in_pretrain=args.include_test_in_pretrain,
        allow_missing_images=args.allow_missing_images, reserve=args.reserve, seed=args.seed,
        workers=args.workers, on_error=check_on_error(args.on_error),
    )
    prepare(settings)
    return 0
