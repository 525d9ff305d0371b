"""`btcxr reproduce`: the paper's comparison from one experiment file, ending in a report."""

from __future__ import annotations

import argparse
import re

DESCRIPTION = """\
Run the comparison an experiment file describes: data (synthetic or real, prepared into caches),
Barlow Twins pre-training (or an existing backbone.pth), Faster R-CNN fine-tuning for every
init x input size x label fraction x seed, the NIH probe, the Ablation-CAM localisation score, and a
report (OUT/report/index.html and results.md) with means, 95 % intervals, paired tests against the
ImageNet baseline, label-efficiency curves, per-class AP, training curves and CAM grids.

Every run lives in OUT/runs/<run id>; a finished run is never redone and an interrupted one resumes, so
the same command can simply be run again. Spread the grid over GPUs or nodes by launching it once per
shard with --shard i/n (shared stages are locked; the last shard to finish writes the report).
"""

EPILOG = """\
examples:
  btcxr reproduce --config synthetic
  btcxr reproduce --config paper data.vindr_root=/data/vinbigdata \\
      data.nih_root=/data/nih --out runs/paper
  CUDA_VISIBLE_DEVICES=1 btcxr reproduce --config paper --shard 1/4
  btcxr reproduce --config synthetic seeds=[0] fractions=[1.0]
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("reproduce", help="run the paper's comparison end to end and write the report",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, metavar="NAME|FILE",
                        help="a packaged experiment (paper, synthetic, demo; `btcxr configs` lists them) or a "
                             "YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override experiment settings")
    parser.add_argument("--out", metavar="DIR", help="experiment directory (default: runs/experiments/<name>)")
    parser.add_argument("--shard", default=(0, 1), type=shard_spec, metavar="i/n",
                        help="run shard i of n of the grid, 0 <= i < n (default 0/1)")
    parser.add_argument("--workers", type=int, help="processes for synthesis and preparation (default: all cores)")
    parser.set_defaults(func=run)


def shard_spec(text: str) -> tuple[int, int]:
    """`--shard i/n` -> (i, n), checked while the arguments are parsed: a bad value is refused before
    any data is synthesised or any model trained."""
    match = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", text, re.ASCII)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected i/n with whole numbers, e.g. 0/4 "
                                         "(shard 0 of 4)")
    index, count = int(match[1]), int(match[2])
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the number of shards n must be at least 1")
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"{text!r}: the shard index must be one of 0..{count - 1} "
                                         f"(shards count from 0)")
    return index, count


def run(args: argparse.Namespace) -> int:
    from btcxr.config_files import resolve_config
    from btcxr.report.reproduce import reproduce

    index, count = args.shard
    config = resolve_config(args.config, "experiments")
    report = reproduce(config, args.overrides, out=args.out, shard_index=index, shard_count=count,
                       workers=args.workers)
    if report is not None:
        print(f"report: {report}")
    return 0
