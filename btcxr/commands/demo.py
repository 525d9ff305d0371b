"""`btcxr demo`: the whole pipeline on built-in synthetic radiographs, in minutes on a CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Generate a small synthetic VinDr-CXR and NIH set, prepare caches, pre-train a small ResNet with Barlow
Twins, fine-tune Faster R-CNN from random init and from the pre-trained backbone, evaluate on the test
split, explain the detections with Ablation-CAM, and write the report. Every stage is the real one, at a
size a laptop CPU runs in minutes (the packaged experiments/demo: `btcxr configs show experiments/demo`).
"""

EPILOG = """\
examples:
  btcxr demo --out demo_out
  btcxr demo --out demo_out seeds=[0,1]       # any experiment setting can be overridden
"""

# A packaged config name, not a path: the same in a clone and in an installed wheel.
DEMO_EXPERIMENT = "experiments/demo"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the whole pipeline on synthetic data (CPU, minutes)",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override demo experiment settings")
    parser.add_argument("--out", default="demo_out", metavar="DIR", help="where everything goes (default demo_out)")
    parser.add_argument("--config", default=DEMO_EXPERIMENT, metavar="NAME|FILE",
                        help=f"experiment name or file (default: {DEMO_EXPERIMENT})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from btcxr.config_files import resolve_config
    from btcxr.engine.lock import claim
    from btcxr.experiment.local import reproduce

    started = time.time()
    config = resolve_config(args.config, "experiments")
    claim(args.out)
    report = reproduce(config, args.overrides, out=args.out)
    out = Path(args.out)
    print(f"\ndemo finished in {time.time() - started:.0f} s. Everything is in {out}/:")
    print(f"  synthetic datasets   {out / 'data'}  (contact sheets: {out / 'data' / '*' / 'contact_sheet.png'})")
    print(f"  prepared caches      {out / 'cache'}")
    print(f"  pre-training run     {out / 'pretrain'}  (backbone.pth)")
    print(f"  fine-tuning runs     {out / 'runs'}  (test_metrics.json, per-class tables, PR curves)")
    print(f"  Ablation-CAM         {out / 'localisation'}")
    print(f"  report               {report}")
    return 0
