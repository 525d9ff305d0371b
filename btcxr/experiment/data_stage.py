"""The data stage: synthesise the raw datasets where asked, then prepare the caches the runs read (and the
ImageNet stand-in's dead-leaves pictures and their cache, where the plan has one).

`plan_data` and `plan_natural` say what the stage will make and where (for the plan); `prepare_data` makes
it, or, in a process whose role does not include the data stage, checks that it was made.
"""

from __future__ import annotations

import logging
from pathlib import Path

from btcxr.errors import BtcxrError
from btcxr.experiment.markers import Role, is_done, mark_done, must_run, stage_lock
from btcxr.experiment.plan import CachePrep, Plan, Synthesis
from btcxr.experiment.spec import Experiment, fingerprint
from btcxr.pretrain.config import LIGHTLY_METHODS

log = logging.getLogger(__name__)


def _cache(out: Path, dataset: str, root: Path | str, size: int, name: str | None = None,
           protocol: str = "btcxr", lock: str = "data") -> CachePrep:
    """OUT/cache/<name>, prepared from `root`."""
    # The protocol enters the key only when it is not the default, so caches marked before it existed stay done.
    key = fingerprint({"dataset": dataset, "root": str(root), "size": size,
                       **({"protocol": protocol} if protocol != "btcxr" else {})})
    return CachePrep(dataset=dataset, root=str(root), size=size, protocol=protocol,
                     path=out / "cache" / (name or dataset), key=key, lock=lock)


def needs_nih(exp: Experiment) -> bool:
    """The NIH cache is read by the probe, the pre-trainings and the positive control."""
    specs = set(exp.inits.values())
    return (exp.probe.enabled or bool(specs & {"supervised", *LIGHTLY_METHODS})
            or ("btcxr" in specs and not exp.pretrain.backbone))


def plan_data(exp: Experiment, exp_path: Path, out: Path
              ) -> tuple[tuple[Synthesis, ...], tuple[CachePrep, ...], Path | None, Path | None]:
    """(the synthetic datasets, the caches to prepare, the VinDr cache, the NIH cache) of an experiment."""
    d = exp.data
    vindr_root, nih_root = d.vindr_root, d.nih_root
    syntheses: list[Synthesis] = []
    if d.synthetic is not None:
        syn = d.synthetic
        roots = {"vindr-kaggle": out / "data" / "vindr", "nih": out / "data" / "nih"}
        counts = {"vindr-kaggle": syn.n_vindr, "nih": syn.n_nih}
        for layout, root in roots.items():
            key = fingerprint({"layout": layout, "n": counts[layout], "size": syn.size, "seed": syn.seed,
                               "normal_fraction": syn.normal_fraction})
            syntheses.append(Synthesis(layout, root, key, counts[layout], syn.size, syn.seed, syn.normal_fraction,
                                       lock="data"))
        vindr_root, nih_root = roots["vindr-kaggle"], roots["nih"]
    caches: list[CachePrep] = []
    vindr_cache = nih_cache = None
    if d.vindr_cache:
        vindr_cache = Path(d.vindr_cache)
    elif vindr_root:
        caches.append(_cache(out, "vindr", vindr_root, d.cache_size, protocol=d.vindr_protocol))
        vindr_cache = caches[-1].path
    if d.nih_cache:
        nih_cache = Path(d.nih_cache)
    elif nih_root and needs_nih(exp):
        caches.append(_cache(out, "nih", nih_root, d.pretrain_size))
        nih_cache = caches[-1].path
    if exp.detection and vindr_cache is None:
        raise BtcxrError(f"{exp_path}: detection needs data.vindr_root, data.vindr_cache or data.synthetic")
    if needs_nih(exp) and nih_cache is None:
        raise BtcxrError(f"{exp_path}: pre-training and the probe need data.nih_root, data.nih_cache or "
                         "data.synthetic")
    return tuple(syntheses), tuple(caches), vindr_cache, nih_cache


def plan_natural(exp: Experiment, out: Path) -> tuple[Synthesis, CachePrep]:
    """The dead-leaves pictures of the ImageNet stand-in (their key is the stand-in's data key) and their cache."""
    cd = exp.cross_domain
    root = out / "data" / "natural"
    key = fingerprint({"n": cd.n, "size": cd.size, "seed": cd.seed, "cache_size": cd.cache_size})
    synthesis = Synthesis("natural", root, key, cd.n, cd.size, cd.seed, None, lock="natural")
    return synthesis, _cache(out, "folder", root, cd.cache_size, name="natural", lock="natural")


def pending(plan: Plan) -> bool:
    """True while some dataset or cache of the plan is not finished."""
    return not all(is_done(unit.root if isinstance(unit, Synthesis) else unit.path, unit.key)
                   for unit in (*plan.syntheses, *plan.caches))


def prepare_data(plan: Plan, role: Role) -> None:
    """Make the plan's datasets and caches where `role` allows the data stage; elsewhere check they are made
    (StageNotFinished when not). Each shared stage (data, the stand-in's natural) under its lock."""
    for lock in ("data", "natural"):
        syntheses = [s for s in plan.syntheses if s.lock == lock]
        caches = [c for c in plan.caches if c.lock == lock]
        if not (syntheses or caches):
            continue
        with stage_lock(plan.out, lock, role):
            for synthesis in syntheses:
                _synthesise(plan, role, synthesis)
            for cache in caches:
                _prepare(plan, role, cache)


def _synthesise(plan: Plan, role: Role, s: Synthesis) -> None:
    from btcxr.data.synthetic import generate

    if is_done(s.root, s.key) or not must_run(role, "data", s.root):
        return
    if s.normal_fraction is None:
        log.info("synthesising %d dead-leaves pictures into %s", s.n, s.root)
        generate(s.root, s.layout, n=s.n, size=s.size, seed=s.seed, workers=plan.workers)
        mark_done(s.root, s.key)
        return
    log.info("synthesising %d %s images into %s", s.n, s.layout, s.root)
    summary = generate(s.root, s.layout, n=s.n, size=s.size, seed=s.seed, workers=plan.workers,
                       normal_fraction=s.normal_fraction)
    mark_done(s.root, s.key, summary=summary)


def _prepare(plan: Plan, role: Role, c: CachePrep) -> None:
    """The data stage always calls prepare (it only adds what the raw folder gained); later stages look
    the cache up by its done marker."""
    from btcxr.data.cache import PrepareSettings, prepare

    if "data" in role.stages:
        prepare(PrepareSettings(dataset=c.dataset, root=c.root, out=str(c.path), size=c.size, workers=plan.workers,
                                protocol=c.protocol))
        mark_done(c.path, c.key)
    elif not is_done(c.path, c.key):
        must_run(role, "data", c.path)
