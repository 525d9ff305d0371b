"""The stages of an experiment (`btcxr reproduce`), each skipped when its outputs are already there with the
same settings: data (synthesise or read the raw datasets, then prepare caches) -> pre-training (unless a
backbone file is given) -> one detection fine-tuning run per init x size x label fraction x seed -> NIH
probe runs -> localisation of Ablation-CAM heatmaps -> results.csv and the report.

Who runs which stage is the launcher's business (btcxr.experiment.local: this process, or one shard of the
grid; btcxr.experiment.slurm: one SLURM job per stage). A Context says which upstream stages this process
may run; the others it only looks up, and a missing one is an error instead of a second, concurrent run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from btcxr.config import config_to_dict, load_config, save_config
from btcxr.config_files import resolve_config
from btcxr.engine.distributed import is_main_rank
from btcxr.engine.io import ensure_dir, remove_temp_files, write_csv, write_json
from btcxr.errors import BtcxrError
from btcxr.experiment.spec import (
    RULES,
    DetectionRun,
    Experiment,
    detection_grid,
    fingerprint,
    load_experiment,
)

log = logging.getLogger(__name__)

DONE = "done.json"


# ----------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _stage_lock(ctx: Context, name: str):
    """Shards started by hand take turns through a shared stage: flock, reliable on one machine's disk.
    Under a launcher every stage has exactly one job, so no lock is taken (flock over NFS or Lustre is not
    to be trusted)."""
    if not ctx.lock:
        yield
        return
    ensure_dir(ctx.out, "experiment folder")
    with open(ctx.out / f".{name}.lock", "a") as handle:  # the lock file itself holds nothing
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class StageNotFinished(BtcxrError):
    """An upstream stage this process may not run (its job runs it) has not finished."""


def _must_run(ctx: Context, stage: str, what: Path) -> bool:
    """Called where `stage` has work left: True when this process runs it now. A launcher that only plans
    notes the stage as pending; any other process that may not run it stops with a clear error."""
    if stage in ctx.stages:
        return True
    if ctx.planning:
        ctx.pending.add(stage)
        return False
    raise StageNotFinished(f"{what} is not finished: the {stage} stage has to finish first (its job failed "
                           "or is still queued; rerun the launch command to resubmit it)")


def _is_done(run_dir: Path, key: str) -> bool:
    marker = run_dir / DONE
    return marker.exists() and json.loads(marker.read_text()).get("fingerprint") == key


def _mark_done(run_dir: Path, key: str, **info: Any) -> None:
    if is_main_rank():  # every rank of a multi-GPU job runs the stage; one of them records it
        write_json(run_dir / DONE, {"fingerprint": key, **info}, default=str)


def _start_run(run_dir: Path, key: str) -> bool:
    """Get `run_dir` ready for the run with settings `key`; True when an interrupted run is to be resumed.

    A folder left by a run with other settings is moved aside (never deleted) and the run starts afresh. In
    a multi-GPU job rank 0 alone does this; the other ranks only read the same decision from the folder."""
    started = run_dir / "started.json"
    previous = json.loads(started.read_text()).get("fingerprint") if started.exists() else None
    if not is_main_rank():
        return previous == key and (run_dir / "last.pt").exists()
    if run_dir.exists() and any(run_dir.iterdir()) and previous != key:
        stale = run_dir.with_name(f"{run_dir.name}.stale-{previous or 'unknown'}")
        for n in range(1, 1000):  # a run may go back and forth between settings
            if not stale.exists():
                break
            stale = run_dir.with_name(f"{run_dir.name}.stale-{previous or 'unknown'}-{n}")
        log.warning("%s holds a run with other settings: moved to %s, starting afresh", run_dir, stale.name)
        run_dir.rename(stale)
    ensure_dir(run_dir, "run folder")
    write_json(started, {"fingerprint": key}, indent=None)
    return (run_dir / "last.pt").exists()


def _run_key(ctx: Context, init: str, cfg) -> str:
    """The run's config plus what it inherits: the data, and the pre-training behind its init."""
    backbone = ctx.backbone_keys.get(ctx.inits.get(init, ""))
    return fingerprint({"settings": config_to_dict(cfg), "data": ctx.data_key, "backbone": backbone})


UPSTREAM = ("data", "pretrain")  # the stages whose outputs the runs of the grid share


class Context:
    """What every stage needs: the experiment, where things go, and the inits actually available."""

    def __init__(self, exp: Experiment, exp_path: Path, out: Path, *, stages=UPSTREAM, lock: bool = True,
                 planning: bool = False):
        self.exp, self.exp_path, self.out = exp, exp_path, out
        self.stages = frozenset(stages)  # the upstream stages this process may run; others are looked up
        self.lock = lock                 # flock around shared stages (shards on one machine)
        self.planning = planning         # a launcher's look: unfinished stages are noted in pending, not run
        self.pending: set[str] = set()
        self.notes: list[str] = []
        self.configs: dict[str, Path] = {"experiment": out / "experiment.yaml"}
        self.vindr_cache: Path | None = None
        self.nih_cache: Path | None = None
        self.backbone: Path | None = None
        self.inits: dict[str, str] = dict(exp.inits)
        self.baseline = exp.baseline
        self.imagenet_replaced: str | None = None  # the init used instead when ImageNet weights are unavailable
        self.renamed: dict[str, str] = {}  # dropped init name -> the compared init that stands in for it
        self.workers: int | None = None
        # What runs depend on upstream: the data settings, and the backbone file behind each init spec that
        # a pre-training of this experiment produced ("btcxr", "supervised", "imagenet" as the stand-in),
        # with the fingerprint of that pre-training.
        self.data_key = fingerprint(config_to_dict(exp.data))
        self.backbones: dict[str, Path] = {}
        self.backbone_keys: dict[str, str] = {}

    def config(self, path: str, kind: str) -> Path | None:
        """A stage config the experiment names: a path (relative to the working directory or to the
        experiment file: `../pretrain/demo.yaml`) or a packaged name (`pretrain/demo`); "" = the defaults."""
        return resolve_config(path, kind, self.exp_path.parent) if path else None


# -------------------------------------------------------------------------------------------- data
def prepare_data(ctx: Context) -> None:
    """The caches the runs read, prepared from the raw (or first synthesised) datasets."""
    d = ctx.exp.data
    vindr_root, nih_root = d.vindr_root, d.nih_root
    if d.synthetic is not None:
        vindr_root, nih_root = _synthesise(ctx)
    needs_nih = (ctx.exp.probe.enabled or "supervised" in ctx.inits.values()
                 or ("btcxr" in ctx.inits.values() and not ctx.exp.pretrain.backbone))
    with _stage_lock(ctx, "data"):
        if d.vindr_cache:
            ctx.vindr_cache = Path(d.vindr_cache)
        elif vindr_root:
            ctx.vindr_cache = _cache(ctx, "vindr", vindr_root, d.cache_size, protocol=d.vindr_protocol)
        if d.nih_cache:
            ctx.nih_cache = Path(d.nih_cache)
        elif nih_root and needs_nih:
            ctx.nih_cache = _cache(ctx, "nih", nih_root, d.pretrain_size)
    if ctx.exp.detection and ctx.vindr_cache is None:
        raise BtcxrError(f"{ctx.exp_path}: detection needs data.vindr_root, data.vindr_cache or data.synthetic")
    if needs_nih and ctx.nih_cache is None:
        raise BtcxrError(f"{ctx.exp_path}: pre-training and the probe need data.nih_root, data.nih_cache or "
                         "data.synthetic")


def _cache(ctx: Context, dataset: str, root: Path | str, size: int, name: str | None = None,
           protocol: str = "btcxr") -> Path:
    """OUT/cache/<name>. The data stage always calls prepare (it only adds what the raw folder gained);
    later stages look the cache up by its done marker."""
    from btcxr.data.cache import PrepareSettings, prepare

    cache = ctx.out / "cache" / (name or dataset)
    # The protocol enters the key only when it is not the default, so caches marked before it existed stay done.
    key = fingerprint({"dataset": dataset, "root": str(root), "size": size,
                       **({"protocol": protocol} if protocol != "btcxr" else {})})
    if "data" in ctx.stages:
        prepare(PrepareSettings(dataset=dataset, root=str(root), out=str(cache), size=size, workers=ctx.workers,
                                protocol=protocol))
        _mark_done(cache, key)
    elif not _is_done(cache, key):
        _must_run(ctx, "data", cache)
    return cache


def _synthesise(ctx: Context) -> tuple[Path, Path]:
    from btcxr.data.synthetic import generate

    syn = ctx.exp.data.synthetic
    roots = {"vindr-kaggle": ctx.out / "data" / "vindr", "nih": ctx.out / "data" / "nih"}
    counts = {"vindr-kaggle": syn.n_vindr, "nih": syn.n_nih}
    with _stage_lock(ctx, "data"):
        for layout, root in roots.items():
            key = fingerprint({"layout": layout, "n": counts[layout], "size": syn.size, "seed": syn.seed,
                               "normal_fraction": syn.normal_fraction})
            if _is_done(root, key) or not _must_run(ctx, "data", root):
                continue
            log.info("synthesising %d %s images into %s", counts[layout], layout, root)
            summary = generate(root, layout, n=counts[layout], size=syn.size, seed=syn.seed, workers=ctx.workers,
                               normal_fraction=syn.normal_fraction)
            _mark_done(root, key, summary=summary)
    return roots["vindr-kaggle"], roots["nih"]


def prepare_natural(ctx: Context) -> None:
    """The data stage's share of the ImageNet stand-in: its pictures and their cache, where it is needed."""
    if ctx.exp.imagenet_fallback == "natural" and imagenet_unavailable(ctx, _archs(ctx)):
        _natural_data(ctx)


def _natural_data(ctx: Context) -> tuple[Path, str]:
    """Dead-leaves pictures and their cache for the ImageNet stand-in: (cache, fingerprint of the data)."""
    from btcxr.data.synthetic import generate

    cd = ctx.exp.cross_domain
    root = ctx.out / "data" / "natural"
    data_key = fingerprint({"n": cd.n, "size": cd.size, "seed": cd.seed, "cache_size": cd.cache_size})
    with _stage_lock(ctx, "natural"):
        if not _is_done(root, data_key) and _must_run(ctx, "data", root):
            log.info("synthesising %d dead-leaves pictures into %s", cd.n, root)
            generate(root, "natural", n=cd.n, size=cd.size, seed=cd.seed, workers=ctx.workers)
            _mark_done(root, data_key)
        cache = _cache(ctx, "folder", root, cd.cache_size, name="natural")
    return cache, data_key


# ------------------------------------------------------------------------------------------- inits
def imagenet_unavailable(ctx: Context, archs: set[str]) -> str | None:
    """Why the ImageNet weights of an init cannot be loaded here (None: they can, or no init uses them)."""
    from btcxr.backbones import build_resnet

    if "imagenet" not in ctx.inits.values():
        return None
    try:
        for arch in sorted(archs):
            build_resnet(arch, "imagenet", weights_file=ctx.exp.imagenet_weights_file)
    except BtcxrError as exc:
        if not ctx.exp.imagenet_fallback:
            raise BtcxrError(f"{exc} (or set imagenet_fallback: random in the experiment file)") from exc
        return str(exc).split(" (")[0]
    return None


def check_imagenet(ctx: Context, archs: set[str]) -> None:
    """Replace the ImageNet init by the configured fallback when its weights cannot be loaded here."""
    reason = imagenet_unavailable(ctx, archs)
    if reason is None:
        return
    fallback = ctx.exp.imagenet_fallback
    if fallback == "natural":
        ctx.backbones["imagenet"], ctx.backbone_keys["imagenet"] = run_cross_domain(ctx)
        ctx.notes.append(f"ImageNet weights could not be loaded here ({reason}). 'imagenet' is the offline "
                         f"stand-in instead: Barlow Twins from random init on {ctx.exp.cross_domain.n} "
                         "dead-leaves pictures (btcxr synth --layout natural); pre-training on radiographs "
                         "starts from it, as the paper's starts from ImageNet.")
        log.warning("%s", ctx.notes[-1])
        return
    names = [n for n, spec in ctx.inits.items() if spec == "imagenet"]
    if fallback in ctx.inits.values():
        # The fallback init is already compared: ImageNet runs would only repeat it.
        stand_in = next(n for n, s in ctx.inits.items() if s == fallback)
        for name in names:
            del ctx.inits[name]
            ctx.renamed[name] = stand_in
        if ctx.baseline in names:
            ctx.baseline = stand_in
        ctx.notes.append(f"ImageNet weights could not be loaded here ({reason}). The ImageNet init was "
                         f"dropped and '{ctx.baseline}' ({fallback} init) is the baseline instead; pre-training "
                         f"also starts from {fallback} init.")
    else:
        for name in names:
            ctx.inits[name] = fallback
        ctx.notes.append(f"ImageNet weights could not be loaded here ({reason}): the '{'/'.join(names)}' "
                         f"init was replaced by {fallback} init, and pre-training starts from it too.")
    ctx.imagenet_replaced = fallback
    log.warning("%s", ctx.notes[-1])


def _archs(ctx: Context) -> set[str]:
    """The ResNet depths that would load ImageNet weights in this experiment."""
    from btcxr.classify.config import ProbeConfig
    from btcxr.detect.config import FinetuneConfig
    from btcxr.pretrain.config import PretrainConfig

    exp = ctx.exp
    stages = [(exp.detection, FinetuneConfig, exp.finetune, "finetune"),
              (exp.probe.enabled, ProbeConfig, exp.probe, "probe"),
              ("btcxr" in ctx.inits.values() and not exp.pretrain.backbone, PretrainConfig, exp.pretrain, "pretrain")]
    return {load_config(cls, ctx.config(section.config, kind), section.overrides).model.arch
            for used, cls, section, kind in stages if used}


def run_cross_domain(ctx: Context) -> tuple[Path, str]:
    """The ImageNet stand-in: Barlow Twins from random init on the dead-leaves pictures' cache."""
    from btcxr.pretrain.config import PretrainConfig

    cd = ctx.exp.cross_domain
    cache, data_key = _natural_data(ctx)
    cfg = load_config(PretrainConfig, ctx.config(cd.config or ctx.exp.pretrain.config, "pretrain"),
                      [*ctx.exp.pretrain.overrides, *cd.overrides, f"data.cache={cache}", "model.init=random"])
    return _pretrain_stage(ctx, "pretrain_natural", cfg, data_key)


def run_pretrain(ctx: Context) -> None:
    """Our pre-training (init spec "btcxr") and the positive control ("supervised"), each when compared."""
    from btcxr.pretrain.config import PretrainConfig

    specs = set(ctx.inits.values())
    base = ctx.config(ctx.exp.pretrain.config, "pretrain")
    if "btcxr" in specs and ctx.exp.pretrain.backbone:
        path = Path(ctx.exp.pretrain.backbone)
        if not path.is_file():
            raise BtcxrError(f"{ctx.exp_path}: pretrain.backbone {path} does not exist")
        stat = path.stat()
        ctx.backbones["btcxr"] = path
        ctx.backbone_keys["btcxr"] = fingerprint({"file": str(path), "bytes": stat.st_size, "mtime": stat.st_mtime})
    elif "btcxr" in specs:
        cfg = load_config(PretrainConfig, base, [*ctx.exp.pretrain.overrides, f"data.cache={ctx.nih_cache}"])
        ctx.configs["pretrain"] = ctx.out / "pretrain" / "config.yaml"
        ctx.backbones["btcxr"], ctx.backbone_keys["btcxr"] = _pretrain_stage(ctx, "pretrain", _start(ctx, cfg))
    if "supervised" in specs:
        section = ctx.exp.supervised
        cfg = load_config(PretrainConfig, ctx.config(section.config, "pretrain") or base,
                          [*ctx.exp.pretrain.overrides, "method=supervised", *section.overrides,
                           f"data.cache={ctx.nih_cache}"])
        ctx.configs["pretrain (supervised)"] = ctx.out / "pretrain_supervised" / "config.yaml"
        ctx.backbones["supervised"], ctx.backbone_keys["supervised"] = _pretrain_stage(
            ctx, "pretrain_supervised", _start(ctx, cfg))


def _start(ctx: Context, cfg):
    """A pre-training that starts from ImageNet starts from whatever stands in for it here."""
    if cfg.model.init == "imagenet":
        if "imagenet" in ctx.backbones:
            cfg.model.init = str(ctx.backbones["imagenet"])
        elif ctx.imagenet_replaced:
            cfg.model.init = ctx.imagenet_replaced
        elif ctx.exp.imagenet_weights_file:
            cfg.model.weights_file = ctx.exp.imagenet_weights_file
    return cfg


def _pretrain_stage(ctx: Context, name: str, cfg, data_key: str | None = None) -> tuple[Path, str]:
    """Run (or find finished, or resume) one pre-training into OUT/name; (backbone.pth, its fingerprint)."""
    from btcxr.pretrain.run import pretrain

    run_dir = ctx.out / name
    settings = {"config": config_to_dict(cfg), "data": data_key or ctx.data_key}
    if "imagenet" in ctx.backbones and cfg.model.init == str(ctx.backbones["imagenet"]):
        settings["start"] = ctx.backbone_keys["imagenet"]  # a redone stand-in redoes what starts from it
    key = fingerprint(settings)
    with _stage_lock(ctx, name):
        if not _is_done(run_dir, key) and _must_run(ctx, "pretrain", run_dir):
            log.info("%s: pre-training (%s, from %s)", name, cfg.method, cfg.model.init)
            pretrain(cfg, run_dir, resume=(run_dir / "last.pt").exists())
            _mark_done(run_dir, key, backbone=run_dir / "backbone.pth")
    return run_dir / "backbone.pth", key


def init_spec(ctx: Context, name: str) -> tuple[str, str | None]:
    """(model init, ImageNet weights file) of an init name of the experiment."""
    spec = ctx.inits[name]
    if spec in ctx.backbones:  # pre-trained in this experiment (ours, the positive control, the stand-in)
        return str(ctx.backbones[spec]), None
    if spec == "imagenet":
        return "imagenet", ctx.exp.imagenet_weights_file
    return spec, None


# --------------------------------------------------------------------------------------- detection
def detection_runs(ctx: Context) -> list[DetectionRun]:
    return [r for r in detection_grid(ctx.exp) if r.init in ctx.inits] if ctx.exp.detection else []


def detection_config(ctx: Context, run: DetectionRun):
    from btcxr.detect.config import FinetuneConfig

    overrides = [*ctx.exp.finetune.overrides, *_run_overrides(ctx, run.init, run.fraction, run.seed),
                 f"data.cache={ctx.vindr_cache}", f"model.size={run.size}", *RULES[run.rule]]
    return load_config(FinetuneConfig, ctx.config(ctx.exp.finetune.config, "finetune"), overrides)


def _run_overrides(ctx: Context, init: str, fraction: float, seed: int) -> list[str]:
    """What a fine-tuning and a probe run of the grid set alike (one config vocabulary for both)."""
    model_init, weights = init_spec(ctx, init)
    overrides = [f"data.fraction={fraction}", f"seed={seed}", f"model.init={model_init}"]
    if weights:
        overrides.append(f"model.weights_file={weights}")
    return overrides


def run_detection(ctx: Context, run: DetectionRun) -> None:
    from btcxr.detect.train import finetune

    cfg = detection_config(ctx, run)
    run_dir = ctx.out / "runs" / run.run_id
    key = _run_key(ctx, run.init, cfg)
    # Recorded whether or not the run is redone: the report shows the configs of every launch.
    ctx.configs.setdefault("finetune", run_dir / "config.yaml")
    if _is_done(run_dir, key):
        log.info("%s: finished earlier, skipped", run.run_id)
        return
    log.info("%s: fine-tuning (init %s, %d px, %g of the labels, seed %d)", run.run_id, run.init, run.size,
             run.fraction, run.seed)
    best = finetune(cfg, run_dir, resume=_start_run(run_dir, key))
    _mark_done(run_dir, key, checkpoint=best)


# ------------------------------------------------------------------------------------------- probe
def probe_runs(ctx: Context) -> list[tuple[str, float, int]]:
    if not ctx.exp.probe.enabled:
        return []
    return [(init, f, s) for f in ctx.exp.probe.fractions for s in ctx.exp.seeds for init in ctx.inits]


def run_probe(ctx: Context, init: str, fraction: float, seed: int) -> None:
    from btcxr.classify.train import probe

    cfg = probe_config(ctx, init, fraction, seed)
    run_dir = ctx.out / "runs" / _probe_id(init, fraction, seed)
    key = _run_key(ctx, init, cfg)
    ctx.configs.setdefault("probe", run_dir / "config.yaml")
    if _is_done(run_dir, key):
        return
    log.info("%s: NIH probe", run_dir.name)
    probe(cfg, run_dir, resume=_start_run(run_dir, key))
    _mark_done(run_dir, key)


def probe_config(ctx: Context, init: str, fraction: float, seed: int):
    """The probe config of one probe run of the grid."""
    from btcxr.classify.config import ProbeConfig

    overrides = [*ctx.exp.probe.overrides, *_run_overrides(ctx, init, fraction, seed),
                 f"data.cache={ctx.nih_cache}", f"probe.mode={ctx.exp.probe.mode}"]
    return load_config(ProbeConfig, ctx.config(ctx.exp.probe.config, "probe"), overrides)


def _probe_id(init: str, fraction: float, seed: int) -> str:
    return f"probe_{init}_f{fraction:g}_seed{seed}"


def curve_runs(ctx: Context) -> list[tuple[str, int, Path]]:
    """(init, step, backbone file) of the probe curve: each intermediate backbone (backbone_step<k>.pth)
    of each init pre-trained in this experiment."""
    if not (ctx.exp.probe.enabled and ctx.exp.probe.curve_fraction):
        return []
    runs = []
    for init, spec in ctx.inits.items():
        if spec in ctx.backbones:
            for path in ctx.backbones[spec].parent.glob("backbone_step*.pth"):
                runs.append((init, int(path.stem.removeprefix("backbone_step")), path))
    return sorted(runs, key=lambda r: (r[0], r[1]))


def _curve_id(init: str, step: int) -> str:
    return f"curve_{init}_step{step}"


def curve_config(ctx: Context, init: str, path: Path):
    cfg = probe_config(ctx, init, ctx.exp.probe.curve_fraction, ctx.exp.seeds[0])
    cfg.model.init, cfg.probe.mode = str(path), "freeze"  # linear evaluation of the frozen features
    return cfg


def run_curve_probe(ctx: Context, init: str, step: int, path: Path) -> None:
    from btcxr.classify.train import probe

    cfg = curve_config(ctx, init, path)
    run_dir = ctx.out / "runs" / _curve_id(init, step)
    key = _run_key(ctx, init, cfg)
    if _is_done(run_dir, key):
        return
    log.info("%s: NIH probe of the backbone after %d pre-training steps", run_dir.name, step)
    probe(cfg, run_dir, resume=_start_run(run_dir, key))
    _mark_done(run_dir, key)


# ----------------------------------------------------------------------------------------- results
def collect_results(ctx: Context) -> pd.DataFrame:
    """One row per finished run of the whole grid (all shards), as in results.csv. A run finished with
    other settings (its done.json fingerprint differs) is not finished: its shard has yet to redo it."""
    from btcxr.data.classes import NIH_LABELS, VINDR_CLASSES

    rows: list[dict[str, Any]] = []
    for run in detection_runs(ctx):
        run_dir = ctx.out / "runs" / run.run_id
        metrics_path = run_dir / "test_metrics.json"
        key = _run_key(ctx, run.init, detection_config(ctx, run))
        if not _is_done(run_dir, key) or not metrics_path.exists():
            continue
        m = json.loads(metrics_path.read_text())
        ci = m.get("map50_ci") or [math.nan, math.nan]
        row = {"run_id": run.run_id, "kind": "detection", "init": run.label, "rule": run.rule, "size": run.size,
               "fraction": run.fraction, "seed": run.seed, "run_dir": str(run_dir), "status": "done",
               "map50": m.get("map50"), "map50_ci_lo": ci[0], "map50_ci_hi": ci[1], "map": m.get("map"),
               "map50_voc": m.get("map50_voc"), "kaggle_map40": m.get("kaggle_map40")}
        per_class = m.get("per_class_ap50") or {}
        row |= {f"ap50/{c}": per_class.get(c) for c in VINDR_CLASSES}
        rows.append(row)
    for init, fraction, seed in probe_runs(ctx):
        run_dir = ctx.out / "runs" / _probe_id(init, fraction, seed)
        results_path = run_dir / "results.json"
        key = _run_key(ctx, init, probe_config(ctx, init, fraction, seed))
        if not _is_done(run_dir, key) or not results_path.exists():
            continue
        r = json.loads(results_path.read_text())
        row = {"run_id": run_dir.name, "kind": "probe", "init": init, "size": r.get("input_size"),
               "fraction": fraction, "seed": seed, "run_dir": str(run_dir), "status": "done",
               "mean_auroc": r["test"].get("mean_auroc"), "val_mean_auroc": r["val"].get("mean_auroc"),
               "mode": r.get("mode")}
        per_label = r["test"].get("auroc") or {}
        row |= {f"auroc/{label}": per_label.get(label) for label in NIH_LABELS}
        rows.append(row)
    for init, step, path in curve_runs(ctx):
        run_dir = ctx.out / "runs" / _curve_id(init, step)
        if not _is_done(run_dir, _run_key(ctx, init, curve_config(ctx, init, path))):
            continue
        r = json.loads((run_dir / "results.json").read_text())
        rows.append({"run_id": run_dir.name, "kind": "probe_curve", "init": init, "size": r.get("input_size"),
                     "fraction": r["fraction"], "seed": r["seed"], "step": step, "run_dir": str(run_dir),
                     "status": "done", "mean_auroc": r["test"].get("mean_auroc"), "mode": "freeze"})
    return pd.DataFrame(rows).astype({"fraction": float}, errors="ignore") if rows else pd.DataFrame(
        columns=["run_id", "kind", "init", "size", "fraction", "seed", "run_dir", "status"])


# ------------------------------------------------------------------------------------ localisation
def build_browser(ctx: Context) -> Path | None:
    """OUT/browse: the case browser of the VinDr test split with each init's run at the largest size and
    label fraction, first seed (the runs the localisation explains), and their heatmaps."""
    from btcxr.browse.site import Model, build_site

    size, fraction, seed = max(ctx.exp.sizes), max(ctx.exp.fractions), ctx.exp.seeds[0]
    models = []
    for init in ctx.inits:
        run_dir = ctx.out / "runs" / DetectionRun(init, size, fraction, seed).run_id
        if (run_dir / DONE).exists() and (run_dir / "test_predictions.csv").is_file():
            models.append(Model(init, run_dir / "test_predictions.csv"))
    if not models:
        return None
    boxes = ctx.out / "localisation" / "boxes.csv"
    # heatmap files exist from this version of `btcxr explain` on; an older localisation stage shows none
    with_heatmaps = boxes.is_file() and "heatmap" in boxes.open().readline().rstrip("\n").split(",")
    cams = [boxes.parent] if with_heatmaps else []
    return build_site(ctx.vindr_cache, ["test"], models, ctx.out / "browse", cams=cams)


def run_localisation(ctx: Context, results: pd.DataFrame) -> tuple[dict | None, list[Path]]:
    """Ablation-CAM of the chosen inits' detectors on the test split: the score and the CAM grids."""
    loc = ctx.exp.localisation
    # An init dropped by the ImageNet fallback is compared through the init standing in for it.
    inits = [i for i in dict.fromkeys(ctx.renamed.get(i, i) for i in loc.inits) if i in ctx.inits]
    det = results[results["kind"] == "detection"] if len(results) else results
    if not loc.enabled or len(inits) == 0 or len(det) == 0:
        return None, []
    from btcxr.explain.run import explain_split

    # The runs compared: the largest size and label fraction, the first seed.
    size, fraction, seed = max(ctx.exp.sizes), max(ctx.exp.fractions), ctx.exp.seeds[0]
    checkpoints, runs = {}, {}
    for init in inits:
        run_dir = ctx.out / "runs" / DetectionRun(init, size, fraction, seed).run_id
        if (run_dir / DONE).exists():
            checkpoints[init] = run_dir / "best.pt"
            # The run's own fingerprint: a redone fine-tuning run (same path, new weights) redoes this stage.
            runs[init] = json.loads((run_dir / DONE).read_text()).get("fingerprint")
    if not checkpoints:
        return None, []
    out = ctx.out / "localisation"
    settings = {"checkpoints": {k: str(v) for k, v in checkpoints.items()}, "runs": runs, "layer": loc.layer,
                "ratio": loc.ratio, "score_thr": loc.score_thr, "max_images": loc.max_images,
                "grids": ctx.exp.cam_examples}
    if loc.ablation_mode != "exact":  # localisations made before the modes existed were exact: still valid
        settings["ablation_mode"] = loc.ablation_mode
    key = fingerprint(settings)
    if not _is_done(out, key):
        ensure_dir(out, "localisation folder")
        explain_split(list(checkpoints.values()), ctx.vindr_cache, "test", out, labels=list(checkpoints),
                      layer=loc.layer, ratio=loc.ratio, ablation_mode=loc.ablation_mode, score_thr=loc.score_thr,
                      max_images=loc.max_images, grid_images=ctx.exp.cam_examples)
        _mark_done(out, key)
    summary = json.loads((out / "localisation.json").read_text())
    grids = sorted((out / "grids").glob("*.png")) if (out / "grids").exists() else []
    return summary, grids


# -------------------------------------------------------------------------------------------- grid
def open_context(exp_path: str | Path, overrides=(), out: str | Path | None = None, *, workers: int | None = None,
                 **mode: Any) -> Context:
    """The experiment read and its folder made; `mode`: Context's stages, lock and planning."""
    exp_path = Path(exp_path)
    exp = load_experiment(exp_path, overrides)
    out = Path(out) if out else Path("runs") / "experiments" / exp.name
    ensure_dir(out, "experiment folder")
    ctx = Context(exp, exp_path, out, **mode)
    ctx.workers = workers
    ctx.notes.extend(exp.notes)
    return ctx


def run_upstream(ctx: Context) -> None:
    """Data, the ImageNet check and every pre-training: run where ctx.stages allow it, else looked up."""
    if "data" in ctx.stages and is_main_rank():
        save_config(ctx.exp, ctx.out / "experiment.yaml")
    prepare_data(ctx)
    check_imagenet(ctx, _archs(ctx))
    run_pretrain(ctx)


def grid_runs(ctx: Context, curve: bool = True) -> dict[str, Callable[[], Any]]:
    """run id -> the call that runs it (or finds it finished), for every run of the grid in a stable order.
    The probe curve's runs exist once the pre-trainings wrote their intermediate backbones."""
    runs: dict[str, Callable[[], Any]] = {r.run_id: partial(run_detection, ctx, r) for r in detection_runs(ctx)}
    runs |= {_probe_id(*p): partial(run_probe, ctx, *p) for p in probe_runs(ctx)}
    return runs | curve_grid_runs(ctx) if curve else runs


def curve_grid_runs(ctx: Context) -> dict[str, Callable[[], Any]]:
    """The probe curve's share of grid_runs: one frozen probe per intermediate backbone on disk."""
    return {_curve_id(i, s): partial(run_curve_probe, ctx, i, s, path) for i, s, path in curve_runs(ctx)}


def finished_runs(ctx: Context) -> set[str]:
    """Run ids of the grid (the probe curve aside) finished with the settings they have now."""
    keys = {r.run_id: _run_key(ctx, r.init, detection_config(ctx, r)) for r in detection_runs(ctx)}
    keys |= {_probe_id(*p): _run_key(ctx, p[0], probe_config(ctx, *p)) for p in probe_runs(ctx)}
    return {run_id for run_id, key in keys.items() if _is_done(ctx.out / "runs" / run_id, key)}


def _report_key(ctx: Context) -> str | None:
    """Fingerprint of what the report shows (the experiment's settings, each run's); None while a run of
    the grid has not finished."""
    runs = {}
    for run_id in grid_runs(ctx):
        marker = ctx.out / "runs" / run_id / DONE
        if not marker.exists():
            return None
        runs[run_id] = json.loads(marker.read_text()).get("fingerprint")
    return fingerprint({"experiment": config_to_dict(ctx.exp), "runs": runs})


def report_done(ctx: Context) -> bool:
    key = _report_key(ctx)
    return key is not None and _is_done(ctx.out / "report", key)


def _ground_truth_note(ctx: Context) -> list[str]:
    """The report says which protocol made the VinDr boxes and split (from the cache's prepare.json)."""
    from btcxr.data.cache_format import read_settings

    text = read_settings(ctx.vindr_cache).get("ground_truth") if ctx.vindr_cache else None
    return [f"VinDr ground truth and split: {text}."] if text else []


def mark_report_done(ctx: Context) -> None:
    _mark_done(ctx.out / "report", _report_key(ctx))


def write_report(ctx: Context) -> Path | None:
    """results.csv from what is on disk; with every run finished, the localisation and the report.
    None while runs are missing. Only one process at a time may call this (the launcher sees to it)."""
    from btcxr.engine.checkpoint import library_versions
    from btcxr.report.build import build_report

    remove_temp_files(ctx.out, "results.csv")  # a temporary file of it now is a killed writer's
    results = collect_results(ctx)
    write_csv(ctx.out / "results.csv", results)
    expected = len(grid_runs(ctx))
    if len(results) < expected:
        log.warning("%d of %d runs finished; the report is written once the others are done", len(results),
                    expected)
        return None
    localisation, grids = run_localisation(ctx, results)
    browser = build_browser(ctx)
    index = build_report(ctx.out / "report", results, baseline=ctx.baseline, localisation=localisation,
                         cam_grids=grids, configs={k: v for k, v in ctx.configs.items() if v.exists()},
                         versions=library_versions(), notes=[*ctx.notes, *_ground_truth_note(ctx)], browser=browser)
    log.info("report: %s", index)
    return index
