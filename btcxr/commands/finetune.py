"""`btcxr finetune`: Faster R-CNN + FPN fine-tuning on VinDr-CXR from any backbone."""

from __future__ import annotations

import argparse

from btcxr.commands.common import add_training_flags, check_cache, check_init, training_overrides

DESCRIPTION = """\
Fine-tune torchvision's Faster R-CNN + FPN (ResNet backbone, 14 VinDr finding classes) on a VinDr cache
made by `btcxr prepare vindr`. The backbone starts from ImageNet weights, random weights, our pre-training
(backbone.pth or its checkpoint) or the original Barlow Twins / BarlowTwins-CXR checkpoint files.
Validation AP50 (COCO AP at IoU 0.5, original pixels) every epoch keeps the best epoch as best.pt, which
is then scored once on the test part. Under torchrun every rank runs this same command.
"""

EXAMPLES = """\
examples:
  # the paper's recipe at 640 px from our pre-trained backbone
  btcxr finetune --config paper_640 data.cache=cache/vindr-640 \\
      --backbone runs/pretrain/backbone.pth --out runs/finetune/bt-640-s0

  # ImageNet baseline (V1 weights, as the paper) on an offline machine, 10 % of the labels, seed 1
  btcxr finetune --config paper_640 data.cache=cache/vindr-640 data.fraction=0.1 \\
      --backbone imagenet --init-weights ~/weights/resnet50-0676ba61.pth --seed 1

  # 4 GPUs, global batch 32 (8 a GPU), bf16
  torchrun --nproc_per_node 4 -m btcxr finetune --config paper_640 \\
      data.cache=cache/vindr-640 --backbone runs/pretrain/backbone.pth --out runs/finetune/bt-640-ddp

  # a minute on a laptop CPU: synthetic data, resnet18 at 128 px
  btcxr synth --out synth --layout vindr-kaggle --n 120 --size 256 --seed 0
  btcxr prepare vindr --root synth/vindr-kaggle --out cache/vindr-demo --size 128
  btcxr finetune --config demo data.cache=cache/vindr-demo --out runs/finetune/demo

  # continue an interrupted run (a run folder holding last.pt is also resumed without --resume)
  btcxr finetune --config paper_640 data.cache=cache/vindr-640 \\
      --out runs/finetune/bt-640-s0 --resume

The run directory gets config.yaml (resolved), metrics.jsonl and tb/ (losses, lr, images/s, val AP50),
last.pt, best.pt, test_predictions.csv, test_images.csv, test_metrics.json and test/ (per-class table, PR
curves), and the same of the best checkpoint on val (val_predictions.csv, val_images.csv, val/), which
`btcxr browse` uses to choose each model's score threshold.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune Faster R-CNN + FPN on VinDr-CXR (best epoch by val AP50)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="NAME|FILE",
                        help="a packaged config (paper_640, paper_224, demo; `btcxr configs` lists them) or a "
                             "YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. data.cache=cache/vindr-640 data.fraction=0.1 model.size=1024")
    add_training_flags(parser, "backbone init: ImageNet weights, random, or a file (backbone.pth, a pre-training "
                               "checkpoint, Barlow Twins resnet50.pth / checkpoint.pth, a torchvision, timm, "
                               "lightly or MMDetection ResNet)")
    parser.add_argument("--out", metavar="RUN_DIR",
                        help="run directory (default: runs/finetune/<init>-<size>-f<fraction>-s<seed>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from RUN_DIR/last.pt (an error when there is none; rerunning the same command resumes anyway)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import os
    from pathlib import Path

    from btcxr.config import load_config
    from btcxr.config_files import resolve_config
    from btcxr.detect.config import FinetuneConfig
    from btcxr.detect.train import finetune

    cfg = load_config(FinetuneConfig, resolve_config(args.config, "finetune") if args.config else None,
                      training_overrides(args))
    check_init(cfg.model.init)
    check_cache(cfg.data.cache)
    out = Path(args.out or _default_out(cfg))
    best = finetune(cfg, out, resume=args.resume)
    test = out / "test_metrics.json"
    if os.environ.get("RANK", "0") != "0":  # torchrun: the main rank reports
        return 0
    if test.exists():
        metrics = json.loads(test.read_text(encoding="utf-8"))
        print(f"best checkpoint: {best}\ntest mAP50: {metrics.get('map50')}  (details: {test})")
    else:
        print(f"best checkpoint: {best}")
    return 0


def _default_out(cfg) -> str:
    from pathlib import Path

    init = cfg.model.init
    name = init if init in ("imagenet", "random") else f"{Path(init).parent.name}_{Path(init).stem}".lstrip("_")
    return f"runs/finetune/{name}-{cfg.model.size}-f{cfg.data.fraction:g}-s{cfg.seed}"
