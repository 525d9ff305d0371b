"""Barlow Twins pre-training speed: training pairs/s and peak memory, the paper's input path against ours.

Run: .venv/bin/python benchmarks/pretrain.py [--arch resnet18] [--batch 32] [--size 96] [--steps 5]
     [--warmup 2] [--workers 2] [--images 256] [--image-size 128] [--threads N] [--device auto]
     [--projector 512 512 512] [--policy paper] [--variants paper ours ours-gpu-views] [--repeat 2] [--cache DIR]

Variants (each in its own subprocess, so peak memory is its own):
- paper:   what the published code did: PNG read as RGB by PIL, the Barlow Twins PIL augmentations in the
           loader workers (RandomResizedCrop bicubic, flip, ColorJitter, grayscale, PIL GaussianBlur,
           solarize), ToTensor + Normalize there, float32 3-channel tensors shipped; fp16 autocast on CUDA
           (the original script's torch.cuda.amp), contiguous memory format.
- ours:    single-channel cache PNG decoded to a uint8 tensor, the same views with torchvision v2 on
           tensors (`--policy paper`: the gray copied to 3 channels, as the paper, one shipped; or
           `--policy radiograph`: 1 channel throughout), uint8 shipped, channels expanded and normalised
           on the device, channels_last, bf16 on CUDA.
- ours-gpu-views: as ours but the loader only resizes to a fixed size and the views are made batched on
           the device (views.on_gpu).
First the loader alone is timed (loader pairs/s: the input pipeline's ceiling), then full training
steps: next batch from the loader (workers, pin_memory on CUDA), both views through backbone +
projector, loss, backward, LARS update. pairs/s = batch x steps / seconds after `--warmup` steps; the
variants run interleaved `--repeat` times and the best round is shown. Peak memory: CUDA
max_memory_allocated; on CPU the peak resident set size of the main process and of the largest loader
worker (ru_maxrss).

The synthetic cache (--images PNGs of --image-size px, or --cache DIR) stands in for a prepared cache.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = ("paper", "ours", "ours-gpu-views")


def make_cache(root: Path, n: int, size: int) -> Path:
    """images/*.png + manifest.csv (train split) of smooth random gray images."""
    import pandas as pd
    from PIL import Image

    from btcxr.engine.io import write_csv

    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        img = 100 + 60 * np.sin(2 * np.pi * (xx * rng.uniform(1, 4) + yy * rng.uniform(1, 4)))
        img += rng.normal(0, 8, (size, size))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"b{i:05d}.png")
        rows.append({"image_id": f"b{i:05d}", "file": f"images/b{i:05d}.png", "patient_id": i, "split": "train",
                     "labels": "", "orig_width": size, "orig_height": size, "scale": 1.0})
    write_csv(root / "manifest.csv", pd.DataFrame(rows))
    return root


# ------------------------------------------------------------------- the published code's input path
class _PilBlur:
    def __init__(self, p: float):
        self.p = p

    def __call__(self, img):
        from PIL import ImageFilter

        if random.random() < self.p:
            return img.filter(ImageFilter.GaussianBlur(radius=random.random() * 1.9 + 0.1))
        return img


class _PilSolarize:
    def __init__(self, p: float):
        self.p = p

    def __call__(self, img):
        from PIL import ImageOps

        return ImageOps.solarize(img) if random.random() < self.p else img


def _paper_pil_view(size: int, blur_p: float, solarize_p: float):
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        _PilBlur(blur_p),
        _PilSolarize(solarize_p),
        T.ToTensor(),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])


class PaperRGBImages(torch.utils.data.Dataset):
    """The original loader: ImageFolder-style PIL RGB reads and two PIL-augmented float views."""

    def __init__(self, files: list[str], size: int):
        self.files = files
        self.views = (_paper_pil_view(size, 1.0, 0.0), _paper_pil_view(size, 0.1, 0.2))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            img = im.convert("RGB")
        return self.views[0](img), self.views[1](img)


# ------------------------------------------------------------------------------------------- one variant
def _endless(loader, seeded_sampler: bool):
    epoch = 0
    while True:
        if seeded_sampler:
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def run_variant(args: argparse.Namespace) -> dict:
    from btcxr.backbones import FEATURE_DIM, build_resnet
    from btcxr.config import load_config
    from btcxr.engine.distributed import DistEnv
    from btcxr.pretrain.barlow_twins.loss import barlow_twins_loss
    from btcxr.pretrain.barlow_twins.model import BarlowTwins
    from btcxr.pretrain.batched_views import BatchedViews
    from btcxr.pretrain.config import PretrainConfig
    from btcxr.pretrain.data import build_loader
    from btcxr.pretrain.lars import LARS, lars_param_groups
    from btcxr.pretrain.views import loader_transform, model_input

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    ours = args.variant != "paper"
    overrides = [f"data.cache={args.cache}", f"data.workers={args.workers}", f"optim.batch_size={args.batch}",
                 f"model.size={args.size}", f"views.policy={args.policy}", f"views.on_gpu={args.variant == 'ours-gpu-views'}",
                 f"model.arch={args.arch}", "data.persistent_workers=true"]
    cfg = load_config(PretrainConfig, None, overrides)
    env = DistEnv(device=device)
    steps = args.warmup + args.steps
    if ours:
        loader = build_loader(cfg, env, loader_transform(cfg.views, cfg.model.size), args.batch)
    else:
        import pandas as pd

        files = [str(Path(args.cache) / f) for f in pd.read_csv(Path(args.cache) / "manifest.csv")["file"]]
        loader = torch.utils.data.DataLoader(PaperRGBImages(files, args.size), batch_size=args.batch, shuffle=True,
                                             num_workers=args.workers, pin_memory=cuda, drop_last=True,
                                             persistent_workers=args.workers > 0)
    torch.manual_seed(0)
    model = BarlowTwins(build_resnet(args.arch, init="random"), FEATURE_DIM[args.arch], args.projector).to(device)
    channels_last = ours
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = LARS(lars_param_groups(model), lr=0.1, weight_decay=1e-6)
    amp_dtype = torch.bfloat16 if ours else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and not ours)
    batched = BatchedViews(cfg.views, cfg.model.size) if args.variant == "ours-gpu-views" else None
    gen = torch.Generator(device=device).manual_seed(0)
    model.train()

    it = _endless(loader, ours)
    # the input pipeline alone: pairs/s the loader delivers (views on the device included for gpu-views)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            t_load = time.perf_counter()
        batch = next(it)
        if batched is not None:
            batched(batch.to(device, non_blocking=True), gen)
    if cuda:
        torch.cuda.synchronize()
    loader_rate = args.batch * args.steps / (time.perf_counter() - t_load)
    t0 = None
    for i in range(steps):
        if i == args.warmup:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
        batch = next(it)
        if ours:
            if batched is not None:
                v1, v2 = batched(batch.to(device, non_blocking=True), gen)
            else:
                v1, v2 = (b.to(device, non_blocking=True) for b in batch)
            y1, y2 = model_input(v1, channels_last), model_input(v2, channels_last)
        else:
            y1, y2 = (b.to(device, non_blocking=True) for b in batch)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=cuda):
            emb = model(y1, y2)
        loss = barlow_twins_loss(emb.n1, emb.n2).loss
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        loss.item()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    out = {"variant": args.variant, "device": str(device), "pairs_per_s": args.batch * args.steps / seconds,
           "step_s": seconds / args.steps, "loader_pairs_per_s": loader_rate}
    if cuda:
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out["peak_rss_main_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del loader, it  # stop persistent workers before reading their peak
    import gc

    gc.collect()
    time.sleep(0.5)
    out["peak_rss_worker_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=96, help="view size (the paper: 224)")
    parser.add_argument("--policy", default="paper", choices=["paper", "radiograph"], help="our view policy")
    parser.add_argument("--projector", type=int, nargs="+", default=[512, 512, 512])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=128, help="synthetic cache image size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--repeat", type=int, default=2,
                        help="rounds over the variants, interleaved; the best round is shown (shared machines)")
    parser.add_argument("--cache", help="a prepared cache to read instead of a synthetic one")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or str(make_cache(Path(tmp) / "cache", args.images, args.image_size))
        print(f"{args.arch}, batch {args.batch}, {args.size} px views, projector {args.projector}, "
              f"{args.workers} workers, {args.steps} timed steps after {args.warmup}; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads available")
        print(f"{'variant':<16} {'device':<7} {'train pairs/s':>13} {'s/step':>7} {'loader pairs/s':>14} "
              f"{'peak GPU MB':>11} {'peak RSS main MB':>16} {'worker MB':>9}")
        base = [sys.executable, __file__, "--cache", cache]
        for name, value in vars(args).items():
            if name in ("variant", "variants", "cache", "repeat") or value is None:
                continue
            flag = "--" + name.replace("_", "-")
            base += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
        best: dict[str, dict] = {}
        for _ in range(args.repeat):
            for variant in args.variants:
                res = subprocess.run([*base, "--variant", variant], capture_output=True, text=True)
                if res.returncode:
                    print(f"{variant:<16} failed:\n{res.stderr[-2000:]}")
                    continue
                r = json.loads(res.stdout.strip().splitlines()[-1])
                if variant not in best or r["pairs_per_s"] > best[variant]["pairs_per_s"]:
                    best[variant] = r
        for variant, r in best.items():
            gpu = f"{r['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in r else "-"
            print(f"{variant:<16} {r['device']:<7} {r['pairs_per_s']:>13.1f} {r['step_s']:>7.3f} "
                  f"{r['loader_pairs_per_s']:>14.1f} {gpu:>11} {r['peak_rss_main_mb']:>16.0f} "
                  f"{r['peak_rss_worker_mb']:>9.0f}")


if __name__ == "__main__":
    main()
