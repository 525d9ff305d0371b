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
the same command can simply be run again.

Launchers: --launcher local (default) runs it in this process; --shard i/n runs one share of the grid, for
shards started by hand on one machine (shared stages are file-locked; the last shard writes the report).
--launcher slurm submits it to a SLURM cluster through submitit: a data job, the pre-training as one job of
--nodes x --gpus-per-task GPUs, the runs as a job array, then the report job, chained by dependencies. Job
ids, states and logs go to OUT/slurm/; run the same command again to submit what failed or was pre-empted
(queued and running jobs are left alone, finished runs skipped). The experiment is planned once, by the
launch; each job runs that plan, and a queued job planned with settings changed since is replaced.
"""

EPILOG = """\
examples:
  btcxr reproduce --config synthetic
  btcxr reproduce --config paper data.vindr_root=/data/vinbigdata \\
      data.nih_root=/data/nih --out runs/paper
  CUDA_VISIBLE_DEVICES=1 btcxr reproduce --config paper --shard 1/4
  btcxr reproduce --config synthetic seeds=[0] fractions=[1.0]
  btcxr reproduce --config paper data.vindr_root=/data/vinbigdata data.nih_root=/data/nih \\
      --out /shared/runs/paper --launcher slurm --partition gpu --nodes 2 --gpus-per-task 4 \\
      --time 24:00 --account myproj --array-parallelism 8
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
    parser.add_argument("--launcher", choices=["local", "slurm"], default="local",
                        help="local: this process (default); slurm: submit the stages as SLURM jobs (submitit)")
    slurm = parser.add_argument_group("SLURM (--launcher slurm)")
    slurm.add_argument("--partition", help="partition of every job")
    slurm.add_argument("--gpus-per-task", type=int, default=1, metavar="G",
                       help="GPUs of each job's node, one process (rank) per GPU (default 1)")
    slurm.add_argument("--nodes", type=int, default=1, metavar="N", help="nodes of the pre-training job (default 1)")
    slurm.add_argument("--time", default="24:00", metavar="HH:MM",
                       help="time limit of each job; a job signalled before it requeues itself (default 24:00)")
    slurm.add_argument("--account", help="account to charge")
    slurm.add_argument("--qos", help="quality of service")
    slurm.add_argument("--array-parallelism", type=int, default=32, metavar="K",
                       help="runs of the grid at once (default 32)")
    slurm.add_argument("--cpus-per-task", type=int, default=8, metavar="C",
                       help="CPUs of each process, for data loading (default 8)")
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

    config = resolve_config(args.config, "experiments")
    if args.launcher == "slurm":
        return _launch_slurm(args, config)
    from btcxr.experiment.local import reproduce

    index, count = args.shard
    report = reproduce(config, args.overrides, out=args.out, shard_index=index, shard_count=count,
                       workers=args.workers)
    if report is not None:
        print(f"report: {report}")
    return 0


def _launch_slurm(args: argparse.Namespace, config) -> int:
    from btcxr.errors import BtcxrError
    from btcxr.experiment.slurm import SlurmSettings, launch

    if args.shard != (0, 1):
        raise BtcxrError("--shard is for shards started by hand; --launcher slurm decides what runs where itself")
    settings = SlurmSettings(partition=args.partition, gpus_per_task=args.gpus_per_task, nodes=args.nodes,
                             time=args.time, account=args.account, qos=args.qos,
                             array_parallelism=args.array_parallelism, cpus_per_task=args.cpus_per_task)
    submitted = launch(config, args.overrides, out=args.out, settings=settings, workers=args.workers)
    for unit, job_id in submitted.items():
        print(f"{job_id}\t{unit}")
    return 0
