"""Every CUDA path of the package, exercised for real in a few minutes on one GPU; exits non-zero on a failure.

    .venv/bin/python benchmarks/gpu_check.py                 # on a machine with a GPU (about 5 minutes)
    .venv/bin/python benchmarks/gpu_check.py --device cpu    # the same checks where they exist on a CPU

What runs, each as the real `btcxr` command line on small synthetic caches made first:
1. pre-training steps with amp none / bf16 / fp16 (GradScaler), torch.compile on and off, views made on
   the GPU on and off, channels_last;
2. a fine-tuning run in bf16, and explain (both Ablation-CAM modes) on the GPU;
3. kill -9 inside a checkpoint write and resume, for pre-training and fine-tuning: the resumed run's
   losses and weights must equal the uninterrupted run's (CUDA RNG state included in the checkpoint;
   compared to a tolerance, since cuDNN kernels are not bit-reproducible run to run);
4. torchrun with two processes for pre-training and fine-tuning (SyncBatchNorm, DDP): NCCL over two GPUs
   when two are visible, else both ranks on one GPU over gloo (NCCL refuses two ranks on one device);
5. throughput at the paper's settings: ResNet-50 Barlow Twins at 224 px (pairs/s, peak memory) and
   Faster R-CNN ResNet-50 FPN at 640 px (images/s, peak memory).
Results go to --out (default runs/gpu_check): one line per check here, gpu_check.json there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from btcxr.config_files import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = CONFIG_DIR
KILL = ROOT / "tests" / "kill_launcher.py"


class CheckFailed(Exception):
    pass


def btcxr(*args: str, env: dict | None = None, launcher: list[str] | None = None, expect_kill: bool = False,
          timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [*(launcher or [sys.executable, "-m", "btcxr"]), *map(str, args)]
    full_env = os.environ | (env or {})
    result = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)
    if expect_kill:
        if result.returncode != -9:
            raise CheckFailed(f"expected a SIGKILL, got exit {result.returncode}: {' '.join(cmd)}\n"
                              f"{result.stderr[-3000:]}")
    elif result.returncode != 0:
        raise CheckFailed(f"exit {result.returncode}: {' '.join(cmd)}\n{result.stderr[-3000:]}")
    return result


def metrics(run: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("phase") == kind]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def compare_runs(resumed: Path, reference: Path, kind: str, tensors: str, rtol: float) -> str:
    """Same losses at every logged step and the same weights, to `rtol`; returns the largest differences."""
    a, b = metrics(resumed, kind), metrics(reference, kind)
    if [r["step"] for r in a] != [r["step"] for r in b]:
        raise CheckFailed(f"{resumed}: logged steps {[r['step'] for r in a]} != {[r['step'] for r in b]}")
    loss_diff = max(abs(x["loss"] - y["loss"]) / max(abs(y["loss"]), 1e-12) for x, y in zip(a, b))
    wa, wb = load(resumed / tensors), load(reference / tensors)
    wa, wb = wa.get("model", wa), wb.get("model", wb)
    weight_diff = 0.0
    for key, value in wb.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            scale = value.abs().max().item() or 1.0
            weight_diff = max(weight_diff, (wa[key].float() - value.float()).abs().max().item() / scale)
    if loss_diff > rtol or weight_diff > rtol:
        raise CheckFailed(f"{resumed} differs from the uninterrupted run: loss {loss_diff:.2e}, weights "
                          f"{weight_diff:.2e} (relative; tolerance {rtol})")
    return f"loss diff {loss_diff:.1e}, weight diff {weight_diff:.1e}"


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.cuda = args.device.startswith("cuda")
        self.results: list[dict] = []
        self.gpus = torch.cuda.device_count() if self.cuda else 0

    def run(self, name: str, fn) -> None:
        if any(word in name for word in self.args.skip):
            print(f"{'skipped':>7}           {name}", flush=True)
            return
        start = time.perf_counter()
        try:
            detail = fn() or ""
            status = "ok"
        except (CheckFailed, subprocess.TimeoutExpired) as exc:
            detail, status = str(exc), "FAILED"
        seconds = time.perf_counter() - start
        self.results.append({"check": name, "status": status, "seconds": round(seconds, 1), "detail": detail})
        first = detail.splitlines()[0] if detail else ""
        print(f"{status:>6}  {seconds:6.1f} s  {name}{':  ' + first if first else ''}", flush=True)
        if status != "ok":
            print("\n".join("        " + line for line in detail.splitlines()[1:40]), flush=True)

    # ------------------------------------------------------------------------------------------ data
    def data(self) -> str:
        small = 64 if self.cuda else 32
        for layout, n, size in (("nih", self.args.nih_images, 256), ("vindr-kaggle", small, 512)):
            btcxr("synth", "--out", self.out / "data" / layout, "--layout", layout, "--n", n, "--size", size,
                  "--seed", "0", "--normal-fraction", "0.3")
        btcxr("prepare", "nih", "--root", self.out / "data" / "nih", "--out", self.out / "cache" / "nih",
              "--size", 224 if self.cuda else 64)
        btcxr("prepare", "vindr", "--root", self.out / "data" / "vindr-kaggle", "--out",
              self.out / "cache" / "vindr", "--size", 640 if self.cuda else 128)
        return f"{self.args.nih_images} NIH and {small} VinDr phantoms"

    def pretrain_args(self, run: str, *extra: str) -> list[str]:
        return ["pretrain", "--config", CONFIGS / "pretrain" / "demo.yaml", "--out", self.out / run,
                f"data.cache={self.out / 'cache' / 'nih'}", f"device={self.args.device}", "tensorboard=false",
                "model.size=64", "optim.batch_size=16", "optim.epochs=1", "model.projector=[64,32]", "log_every=1",
                "corr_every_steps=0", *extra]

    def finetune_args(self, run: str, *extra: str) -> list[str]:
        return ["finetune", "--config", CONFIGS / "finetune" / "demo.yaml", "--out", self.out / run,
                f"data.cache={self.out / 'cache' / 'vindr'}", f"device={self.args.device}", "tensorboard=false",
                "model.size=128", "optim.epochs=3", "optim.batch_size=4", "log_every=1", "--backbone", "random",
                *extra]

    # ------------------------------------------------------------------------------------------ checks
    def pretrain_modes(self) -> None:
        modes = [("none", "false", "false"), ("bf16", "false", "false"), ("fp16", "false", "false"),
                 ("bf16", "true", "false"), ("bf16", "false", "true"), ("fp16", "true", "true")]
        if not self.cuda:
            modes = [("none", "false", "false")]
        for amp, compiled, on_gpu in modes:
            name = f"pretrain amp={amp} compile={compiled} views.on_gpu={on_gpu}"
            run = f"pretrain_{amp}_{compiled}_{on_gpu}"

            def go(amp=amp, compiled=compiled, on_gpu=on_gpu, run=run):
                btcxr(*self.pretrain_args(run, f"amp={amp}", f"compile={compiled}", f"views.on_gpu={on_gpu}",
                                          f"channels_last={'true' if self.cuda else 'false'}"))
                losses = [r["loss"] for r in metrics(self.out / run, "train")]
                if not losses or not all(map(lambda v: v == v and abs(v) < float("inf"), losses)):
                    raise CheckFailed(f"losses {losses}")
                return f"{len(losses)} steps, loss {losses[0]:.1f} -> {losses[-1]:.1f}"

            self.run(name, go)

    def resume(self, stage: str) -> None:
        if stage == "pretrain":
            args = lambda run: self.pretrain_args(run, "optim.epochs=2", "checkpoint_every_steps=2",  # noqa: E731
                                                  f"amp={'bf16' if self.cuda else 'none'}")
            kind, tensors = "train", "backbone.pth"
        else:
            args = lambda run: self.finetune_args(run, f"amp={'bf16' if self.cuda else 'none'}")  # noqa: E731
            kind, tensors = "epoch", "last.pt"
        btcxr(*args(f"{stage}_uninterrupted"))
        btcxr(*args(f"{stage}_killed"), launcher=[sys.executable, str(KILL), "last.pt:2:end"], expect_kill=True)
        btcxr(*args(f"{stage}_killed"), "--resume")
        rtol = 1e-2 if self.cuda else 1e-6
        return compare_runs(self.out / f"{stage}_killed", self.out / f"{stage}_uninterrupted", kind, tensors, rtol)

    def torchrun(self, stage: str) -> str:
        env, device = {}, self.args.device
        if self.cuda and self.gpus < 2:
            env["BTCXR_DIST_BACKEND"] = "gloo"  # NCCL refuses two ranks on one GPU
            device = "cuda:0"
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "btcxr"]
        run = f"{stage}_ddp"
        if stage == "pretrain":
            args = self.pretrain_args(run, f"device={device}", f"amp={'bf16' if self.cuda else 'none'}")
        else:  # trainable batch norm under DDP: SyncBatchNorm
            args = self.finetune_args(run, f"device={device}", "model.norm=bn", "optim.epochs=1")
        btcxr(*args, launcher=launcher, env=env)
        backend = env.get("BTCXR_DIST_BACKEND", "nccl" if self.cuda else "gloo")
        return f"2 ranks, {backend}, {len(metrics(self.out / run, 'train' if stage == 'pretrain' else 'epoch'))} rows"

    def finetune_bf16(self) -> str:
        btcxr(*self.finetune_args("finetune_bf16", f"amp={'bf16' if self.cuda else 'none'}", "optim.epochs=1"))
        losses = [r["loss"] for r in metrics(self.out / "finetune_bf16", "epoch")]
        if not (self.out / "finetune_bf16" / "test_metrics.json").is_file():
            raise CheckFailed("no test_metrics.json")
        return f"epoch loss {losses[-1]:.3f}, scored on test"

    def explain(self) -> str:
        checkpoint = self.out / "finetune_bf16" / "best.pt"
        seen = []
        for mode in ("box", "exact"):
            btcxr("explain", "--checkpoint", checkpoint, "--split", "test", "--cache", self.out / "cache" / "vindr",
                  "--max-images", "2", "--score-thr", "0", "--top-k", "2", "--ratio", "0.05", "--ablation-mode", mode,
                  "--device", self.args.device, "--out", self.out / f"explain_{mode}")
            summary = json.loads((self.out / f"explain_{mode}" / "localisation.json").read_text())
            seen.append(f"{mode}: {summary['boxes']} boxes on {summary['images']} images")
        return ", ".join(seen)

    def throughput(self) -> str:
        cache = self.out / "cache" / "nih"
        batch = self.args.pretrain_batch
        btcxr("pretrain", "--config", CONFIGS / "pretrain" / "paper.yaml", "--out", self.out / "speed_pretrain",
              f"data.cache={cache}", "model.init=random", "optim.epochs=1", f"optim.batch_size={batch}", "log_every=1",
              "tensorboard=false", "corr_every_steps=0", "views.on_gpu=true", "data.workers=8")
        rows = metrics(self.out / "speed_pretrain", "train")[1:]  # the first step includes start-up
        pairs = sum(r["pairs_per_s"] for r in rows) / max(len(rows), 1)
        memory = max((r.get("max_mem_gb", 0.0) for r in rows), default=0.0)
        btcxr("finetune", "--config", CONFIGS / "finetune" / "paper_640.yaml", "--out", self.out / "speed_finetune",
              f"data.cache={self.out / 'cache' / 'vindr'}", "--backbone", "random", "optim.epochs=2",
              "tensorboard=false", "train.eval_every=2")
        epochs = metrics(self.out / "speed_finetune", "epoch")
        images = epochs[-1].get("images_per_s", 0.0)
        ft_memory = max((r.get("max_mem_gb", 0.0) for r in epochs), default=0.0)
        return (f"pretrain ResNet-50 224 px batch {batch}: {pairs:.0f} pairs/s, peak {memory:.1f} GiB; "
                f"finetune ResNet-50 FPN 640 px: {images:.1f} images/s, peak {ft_memory:.1f} GiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu (what a CPU can check)")
    parser.add_argument("--out", default="runs/gpu_check")
    parser.add_argument("--nih-images", type=int, default=1024, help="NIH phantoms (default: 1024)")
    parser.add_argument("--pretrain-batch", type=int, default=256, help="throughput batch (default: 256)")
    parser.add_argument("--skip", nargs="*", default=[], metavar="WORD",
                        help="leave out the checks whose name contains one of these words")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("no CUDA GPU is visible: nothing was checked (use --device cpu for the CPU subset)")
        return 2
    name = torch.cuda.get_device_name(args.device) if cuda else platform.processor() or platform.machine()
    print(f"btcxr GPU check, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {name}, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}, {torch.cuda.device_count() if cuda else 0} GPU(s)", flush=True)
    check = Check(args)
    check.run("synthetic data and caches", check.data)
    check.pretrain_modes()
    check.run(f"finetune amp={'bf16' if cuda else 'none'}", check.finetune_bf16)
    check.run("explain on the device (box and exact modes)", check.explain)
    check.run("pretrain kill -9 + resume", lambda: check.resume("pretrain"))
    check.run("finetune kill -9 + resume", lambda: check.resume("finetune"))
    check.run("torchrun 2 ranks pretrain", lambda: check.torchrun("pretrain"))
    check.run("torchrun 2 ranks finetune (SyncBatchNorm)", lambda: check.torchrun("finetune"))
    if cuda:
        check.run("throughput at the paper's settings", check.throughput)
    failed = [r for r in check.results if r["status"] != "ok"]
    (check.out / "gpu_check.json").write_text(json.dumps({"device": name, "results": check.results}, indent=1))
    print(f"{len(check.results) - len(failed)} of {len(check.results)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
