"""`btcxr pretrain`: Barlow Twins (or VICReg, SimCLR, BYOL) self-supervised pre-training of a ResNet on a
prepared image cache."""

from __future__ import annotations

import argparse

from btcxr.commands.common import add_training_flags, check_cache, check_init, training_overrides

DESCRIPTION = """\
Pre-train a ResNet backbone with Barlow Twins (the paper's Stage 1) on the images of a prepared cache:
ResNet-18/34/50 from ImageNet weights, random or a checkpoint; projector and affine-free batch norm; the
cross-correlation loss over the global batch; LARS with warm-up and cosine; AMP; the paper's views or
radiograph-aware ones, on the loader workers or batched on the GPU (views.on_gpu=true).

Other methods on the same pipeline: method=vicreg|simclr|byol (losses, heads and BYOL's momentum update from
lightly: pip install 'btcxr[methods]'; packaged recipes --config vicreg|simclr|byol and *_demo), and
method=supervised (the same backbone trained with the cache's labels: a positive control).

One process or many: launch it with torchrun for several GPUs or nodes (DDP, SyncBatchNorm, the global
batch split over the ranks, correct gradients).

The run directory gets config.yaml, metrics.jsonl, tb/ (TensorBoard), corr_<step>.png (cross-correlation
heatmaps), last.pt (every epoch and every checkpoint_every_steps) and backbone.pth (a torchvision ResNet
state dict without fc, refreshed every epoch). Rerunning the same command continues from last.pt.
"""

EPILOG = """\
examples:
  # the paper's run (ResNet-50, batch 768, 800 epochs, bf16) on one GPU
  btcxr pretrain --config paper data.cache=/data/cache/nih224

  # BYOL with its paper's ResNet-50 recipe on the same data (lightly)
  btcxr pretrain --config byol data.cache=/data/cache/nih224 --out runs/pretrain/byol

  # the same on 2 nodes x 8 GPUs (run on every node; the global batch stays 768)
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
      -m btcxr pretrain --config paper data.cache=/data/cache/nih224 --out runs/pretrain/paper

  # offline cluster: ImageNet weights from a file; radiograph views made on the GPU
  btcxr pretrain --config paper data.cache=/data/cache/nih224 \\
      views.policy=radiograph views.on_gpu=true --init-weights ~/weights/resnet50-11ad3fa6.pth

  # half a minute on a laptop CPU: synthetic images, ResNet-18 at 64 px (one thread is fastest on a
  # small or shared CPU)
  btcxr synth --out synth --layout nih --n 300 --size 128 --seed 0
  btcxr prepare nih --root synth --out cache/nih-demo --size 64
  OMP_NUM_THREADS=1 btcxr pretrain --config demo data.cache=cache/nih-demo

  # continue an interrupted run (also automatic when --out holds last.pt with the same config)
  btcxr pretrain --config paper data.cache=/data/cache/nih224 --resume

The key=value overrides must stay together: options may come before or after them, not in between.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="Barlow Twins self-supervised pre-training of a ResNet backbone",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="NAME|FILE",
                        help="a packaged config (paper, demo; `btcxr configs` lists them) or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. data.cache=/data/cache/nih224 batch_size=512 amp=fp16")
    parser.add_argument("--out", metavar="RUN_DIR", help="run directory (default: runs/pretrain/<name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from RUN_DIR/last.pt (an error when there is none)")
    add_training_flags(parser, "the backbone pre-training starts from: ImageNet weights (the paper's), random, "
                               "or a ResNet file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from btcxr.config import load_config
    from btcxr.config_files import resolve_config
    from btcxr.engine.paths import safe_name
    from btcxr.pretrain.config import PretrainConfig
    from btcxr.pretrain.run import pretrain

    cfg = load_config(PretrainConfig, resolve_config(args.config, "pretrain") if args.config else None,
                      training_overrides(args))
    check_init(cfg.model.init)
    check_cache(cfg.data.cache)
    out = args.out or f"runs/pretrain/{safe_name(cfg.name)}"
    path = pretrain(cfg, out, resume=args.resume)
    print(path)
    return 0
