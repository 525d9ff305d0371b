"""`btcxr synth`: phantom chest radiographs written as the real NIH and VinDr datasets lie on disk."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Write synthetic chest radiographs in the official layouts of NIH ChestX-ray14 (PNGs, Data_Entry_2017*.csv,
BBox_List_2017.csv, train_val_list.txt / test_list.txt) and VinDr-CXR (Kaggle: train/ test/ DICOMs,
train.csv, sample_submission.csv; PhysioNet: annotations/annotations_*.csv, image_labels_*.csv).

The phantoms have lungs, vessels, heart, mediastinum, spine, ribs, clavicles and diaphragm, vary in patient
and exposure, and carry findings drawn where they occur, boxed by three of seventeen simulated
radiologists (VinDr). Files are byte-identical for a seed, whatever --workers is. A contact_sheet.png
shows a few images with their boxes.
"""

EPILOG = """\
examples:
  btcxr synth --out synth --layout all --n 200 --size 512 --seed 0
  btcxr synth --out vindr --layout vindr-kaggle --n 2000 --size 512 --normal-fraction 0.5
  btcxr synth --out nih --layout nih --n 500 --size 256 --nih-kaggle-layout --workers 4
  btcxr synth --out small --layout vindr-physionet --n 50 --prevalence Cardiomegaly=0.8 \\
      --prevalence "Nodule/Mass=0.5"
  # natural-image-like pictures (dead leaves) for a cross-domain init where ImageNet cannot be loaded
  btcxr synth --out natural --layout natural --n 2000 --size 128
  btcxr prepare folder --root natural --out cache/natural --size 64
"""


def _prevalence(text: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected CLASS=PROBABILITY (e.g. Cardiomegaly=0.5), got {text!r}")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"probability of {name!r} is not a number: {value!r}") from None


def register(subparsers) -> None:
    parser = subparsers.add_parser("synth", help="write synthetic NIH / VinDr datasets", description=DESCRIPTION,
                                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--layout", default="all", choices=["nih", "vindr-kaggle", "vindr-physionet", "all", "natural"],
                        help="dataset layout; all writes one sub-folder per layout (default: all); natural "
                             "writes dead-leaves pictures (images/*.png) to pre-train a cross-domain init "
                             "offline, in place of ImageNet")
    parser.add_argument("--n", type=int, default=200, help="images per layout (default: 200)")
    parser.add_argument("--size", type=int, default=512,
                        help="NIH image side; VinDr DICOMs are this x U(0.85, 1.3) tall (default: 512)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--normal-fraction", type=float, default=0.7,
                        help="share of images without findings (default: 0.7, as in VinDr)")
    parser.add_argument("--prevalence", type=_prevalence, action="append", default=None, metavar="CLASS=P",
                        help="probability of a VinDr class on an abnormal image; repeat for several classes "
                             "(the ones given replace the default table)")
    parser.add_argument("--nih-kaggle-layout", action="store_true",
                        help="NIH PNGs in images_001/images/ .. images_012/images/ instead of images/")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="VinDr test share (default: 0.2)")
    parser.add_argument("--nih-test-fraction", type=float, default=0.23,
                        help="NIH test share of patients (default: 0.23)")
    parser.add_argument("--render-max", type=int, default=384,
                        help="long side the anatomy is drawn at before upsampling (default: 384)")
    parser.add_argument("--no-contact-sheet", action="store_true", help="skip contact_sheet.png")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from btcxr.data.synthetic import generate
    from btcxr.engine.lock import claim

    claim(args.out)
    summary = generate(
        Path(args.out), args.layout, args.n, args.size, args.seed,
        workers=args.workers,
        normal_fraction=args.normal_fraction,
        prevalence=dict(args.prevalence) if args.prevalence else None,
        nih_kaggle_layout=args.nih_kaggle_layout,
        test_fraction=args.test_fraction,
        nih_test_fraction=args.nih_test_fraction,
        render_max=args.render_max,
        contact_sheet=not args.no_contact_sheet,
    )
    log = logging.getLogger("btcxr.synth")
    for name, info in summary["layouts"].items():
        log.info("%s: %d images, %d drawn boxes -> %s", name, info["images"], info.get("boxes", 0), info["root"])
    return 0
