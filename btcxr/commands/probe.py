"""`btcxr probe`: NIH classification evaluation (linear probe or fine-tune) of a backbone."""

from __future__ import annotations

import argparse

from btcxr.commands.common import add_training_flags, check_cache, check_init, training_overrides

EXAMPLES = """\
examples:
  # linear evaluation of our pre-trained backbone on 10 % of the NIH training labels
  btcxr probe --config paper data.cache=cache/nih data.fraction=0.1 \\
      --backbone runs/pretrain/backbone.pth --out runs/probe/bt-freeze-10

  # the ImageNet baseline, fine-tuned, on an offline machine (weights file given)
  btcxr probe --config paper data.cache=cache/nih probe.mode=finetune \\
      optim.lr_head=0.1 optim.lr_backbone=0.01 \\
      --backbone imagenet --init-weights ~/weights/resnet50-11ad3fa6.pth --out runs/probe/in-ft-100

  # a smoke run in seconds: synthetic NIH data, resnet18 at 64 px, random backbone (AUROC near 0.5)
  btcxr synth --out synth-nih --layout nih --n 200 --size 256 --seed 0
  btcxr prepare nih --root synth-nih --out cache/nih-demo --size 64
  btcxr probe --config demo data.cache=cache/nih-demo --backbone random

The run directory gets config.yaml, metrics.jsonl, tb/ (TensorBoard), best.pt (selected epoch: head, plus
the backbone when fine-tuned), last.pt, results.json and results.md. Rerunning the same command
resumes the run (or, when it finished, scores it again); a changed config is refused, naming the keys.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="NIH classification evaluation of a backbone (linear probe / fine-tune, AUROC)",
        description="Train a linear classifier over the 15 NIH labels (14 findings + No Finding) on a frozen "
                    "backbone (probe.mode=freeze) or fine-tune the whole network (probe.mode=finetune), on a "
                    "label fraction of the training split; select the epoch with the best mean val AUROC and "
                    "score the test split once with it.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="NAME|FILE",
                        help="a packaged config (paper, demo; `btcxr configs` lists them) or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. data.cache=cache/nih data.fraction=0.01 "
                             "probe.mode=finetune")
    add_training_flags(parser, "backbone init: ImageNet weights, random, or a file (backbone.pth, a pre-training "
                               "checkpoint, a torchvision, timm, lightly or MMDetection ResNet)")
    parser.add_argument("--out", metavar="RUN_DIR",
                        help="run directory (default: runs/probe/<backbone>-<mode>-f<fraction>-s<seed>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from RUN_DIR/last.pt (an error when there is none; rerunning the same "
                             "command resumes anyway)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from btcxr.classify.config import ProbeConfig
    from btcxr.classify.train import probe
    from btcxr.config import load_config
    from btcxr.config_files import resolve_config

    cfg = load_config(ProbeConfig, resolve_config(args.config, "probe") if args.config else None,
                      training_overrides(args))
    check_init(cfg.model.init)
    check_cache(cfg.data.cache)
    out = args.out or _default_out(cfg)
    probe(cfg, out, resume=args.resume)
    print((Path(out) / "results.md").read_text(encoding="utf-8"))
    return 0


def _default_out(cfg) -> str:
    from pathlib import Path

    backbone = cfg.model.init
    path = Path(backbone)
    name = backbone if backbone in ("imagenet", "random") else f"{path.parent.name}_{path.stem}".lstrip("_")
    return f"runs/probe/{name}-{cfg.probe.mode}-f{cfg.data.fraction:g}-s{cfg.seed}"
