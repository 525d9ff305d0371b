"""What the pre-training monitors cost next to the training they watch, side by side in one run.

    .venv/bin/python benchmarks/monitor.py                          # resnet18, 64 px, batch 32, the defaults
    .venv/bin/python benchmarks/monitor.py --arch resnet50 --size 224 --batch 64 --threads 2

Times one Barlow Twins optimizer step (the loop's `train_step`, batch --batch, fixed views) and one monitor
measurement (`MonitorSet.measure`: RankMe, spread and the k-NN probe on --images val images with a bank of
--bank train images of a throw-away NIH-style cache, random pixels and labels: speed does not depend on
content), best of --repeat each, and prints the monitor's share of a run's time at one measurement every
--every steps: measure / (every x step + measure).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=512, help="monitor set (monitor_images)")
    parser.add_argument("--bank", type=int, default=1024, help="k-NN bank (monitor_bank)")
    parser.add_argument("--every", type=int, default=1000, help="steps between measurements (monitor_every)")
    parser.add_argument("--projector", default="512,512")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from probe import write_cache

    from btcxr.config import load_config
    from btcxr.config_files import resolve_config
    from btcxr.engine.distributed import DistEnv
    from btcxr.pretrain.barlow_twins.loop import build_model, train_step
    from btcxr.pretrain.common import optimizer_and_scaler
    from btcxr.pretrain.config import PretrainConfig
    from btcxr.pretrain.monitor import MonitorSet
    from btcxr.pretrain.views import model_input

    with tempfile.TemporaryDirectory() as tmp:
        n = int((args.images + args.bank) / 0.8) + 8  # write_cache: 60 % train, 20 % val, 20 % test
        n = max(n, int(args.bank / 0.6) + 8, int(args.images / 0.2) + 8)
        cache = write_cache(Path(tmp) / "cache", n, args.size)
        cfg = load_config(PretrainConfig, resolve_config("demo", "pretrain"), [
            f"data.cache={cache}", f"model.arch={args.arch}", "model.init=random", f"model.size={args.size}",
            f"optim.batch_size={args.batch}", f"model.projector=[{args.projector}]", "device=cpu",
            "channels_last=false", "amp=none"])
        env = DistEnv()
        model = build_model(cfg)
        optimizer, scaler = optimizer_and_scaler(cfg, model, env)
        g = torch.Generator().manual_seed(0)
        y1, y2 = (model_input(torch.rand(args.batch, 1, args.size, args.size, generator=g)) for _ in range(2))
        model.train()
        step_s = best_of(lambda: train_step(model, optimizer, scaler, y1, y2, (0.01, 0.001), cfg, env), args.repeat)
        monitor = MonitorSet(str(cache), args.size, args.images, args.bank)
        measure_s = best_of(lambda: monitor.measure(model.backbone, model.projector), args.repeat)
    share = measure_s / (args.every * step_s + measure_s)
    print(f"{args.arch} at {args.size} px, {torch.get_num_threads()} thread(s)")
    print(f"{'one training step, batch ' + str(args.batch):<52} {step_s:9.3f} s")
    print(f"{f'one monitor measurement ({args.images} images, bank {args.bank})':<52} {measure_s:9.3f} s")
    print(f"{f'monitor share of the run at monitor_every={args.every}':<52} {100 * share:8.2f} %")


if __name__ == "__main__":
    main()
