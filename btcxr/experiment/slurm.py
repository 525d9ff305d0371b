"""The SLURM launcher (`btcxr reproduce --launcher slurm`): the experiment as jobs submitted through submitit.

One job per shared stage and one array task per run, chained by SLURM dependencies:

    prepare (data, 1 task, no GPU) -> pretrain (N nodes x G GPUs, one rank per GPU, torchrun's environment
    from SLURM) -> runs (a job array: each fine-tuning or probe run on G GPUs) -> report (the probe curve,
    localisation, results.csv and the report, on one GPU)

The launcher alone decides what runs where, so no job takes a file lock (flock is not to be trusted on the
NFS and Lustre filesystems clusters share). It computes the experiment's plan once on the login node
(btcxr.experiment.stages.make_plan: nothing is trained), reads from the done markers what is finished,
submits only what is not, and records every job in OUT/slurm/jobs.json, the logs in OUT/slurm/logs/. Every
job gets that plan (submitit pickles it with the job): no job reads the experiment file or checks the
ImageNet weights again. Run it again at any time: a finished run is skipped, a queued or running job is left
alone (never submitted twice; but a queued one planned for work the experiment file changed since is
replaced), a failed, cancelled, timed-out or pre-empted one is submitted again. A job that SLURM signals
before its time limit or pre-empts checkpoints and requeues itself (submitit's checkpointing; the run
resumes from its last.pt, so it ends as an uninterrupted run).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from btcxr.config import config_to_dict, save_config
from btcxr.engine.io import ensure_dir, write_json
from btcxr.errors import BtcxrError, cut
from btcxr.experiment.data_stage import prepare_data
from btcxr.experiment.grids import curve_runs, finished_runs, grid_runs, run_grid_run
from btcxr.experiment.markers import Role
from btcxr.experiment.plan import Plan
from btcxr.experiment.report_stage import mark_report_done, report_done, write_report
from btcxr.experiment.spec import fingerprint
from btcxr.experiment.stages import EXPERIMENT, make_plan, run_upstream, upstream_pending

log = logging.getLogger(__name__)

# SLURM job states (sacct) in which a job still holds its work: it is not submitted again.
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
          "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "UNKNOWN"}
CLUSTERS = ("slurm", "local", "debug")  # local and debug: submitit's executors without a cluster (tests)
# What SLURM accepts as a partition, account or QOS name (partitions may be a comma list): anything else,
# a newline above all, would reach an #SBATCH line of the generated script and could run there.
SLURM_NAME = re.compile(r"[A-Za-z0-9_.\-]+(?:,[A-Za-z0-9_.\-]+)*")


@dataclass(frozen=True)
class SlurmSettings:
    partition: str | None = None
    gpus_per_task: int = 1        # GPUs of every job's node (one rank each); pre-training gets `nodes` of them
    nodes: int = 1                # nodes of the pre-training job
    time: str = "24:00"           # every job's time limit, HH:MM (a longer pre-training requeues itself)
    account: str | None = None
    qos: str | None = None
    array_parallelism: int = 32   # runs of the grid at once
    cpus_per_task: int = 8        # data loading and preparation
    max_requeues: int = 20        # time-outs a job may requeue itself after (pre-emptions are not counted)

    def __post_init__(self):
        if self.gpus_per_task < 0 or self.nodes < 1 or self.array_parallelism < 1 or self.cpus_per_task < 1:
            raise BtcxrError(f"--gpus-per-task {self.gpus_per_task}, --nodes {self.nodes}, --array-parallelism "
                             f"{self.array_parallelism}, --cpus-per-task {self.cpus_per_task}: need gpus >= 0 "
                             "and the others >= 1")
        for flag, value in (("--partition", self.partition), ("--account", self.account), ("--qos", self.qos)):
            if value is not None and not SLURM_NAME.fullmatch(value):
                raise BtcxrError(f"{flag} {cut(value)!r}: a SLURM name has only letters, digits and _ . - "
                                 "(partitions: a comma-separated list)")
        minutes(self.time)

    @property
    def time_min(self) -> int:
        return minutes(self.time)


def minutes(text: str) -> int:
    """SLURM's time limit forms HH:MM, D-HH:MM and MM -> minutes."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d{2}))?", text)
    if not match or (match[1] and not match[3]):
        raise BtcxrError(f"--time {cut(text)!r}: expected HH:MM (e.g. 24:00), D-HH:MM or minutes")
    days, first, second = int(match[1] or 0), int(match[2]), match[3]
    total = days * 1440 + (first * 60 + int(second) if second is not None else first)
    if total < 1:
        raise BtcxrError(f"--time {cut(text)!r}: the time limit must be at least one minute")
    return total


# -------------------------------------------------------------------------------------------- jobs
# The upstream stages each job may run (no file locks: each stage has exactly one job); the others it
# only looks up.
ROLES = {"prepare": Role(("data",), lock=False), "pretrain": Role(("pretrain",), lock=False),
         "run": Role((), lock=False), "report": Role((), lock=False)}


@dataclass(frozen=True)
class StageJob:
    """What one job (or array task) runs: a stage of the experiment, from the launcher's plan.

    submitit pickles this object, plan included; `checkpoint` is its pre-emption hook: the same call (the
    same plan) is requeued, and the stage resumes from what is on disk (finished runs are skipped, an
    interrupted one resumes from last.pt).
    """
    plan: Plan
    stage: str                    # prepare | pretrain | run | report

    def __call__(self, run_id: str | None = None) -> str:
        if not logging.getLogger("btcxr").handlers:  # a fresh job process: its log gets what the CLI prints
            from btcxr.logs import setup_logging

            setup_logging()
        _torchrun_environment()
        plan, role = self.plan, ROLES[self.stage]
        if self.stage == "prepare":  # (the launcher wrote experiment.yaml)
            prepare_data(plan, role)
            return "prepared"
        run_upstream(plan, role)  # the pre-training job runs it; every later job only looks it up
        if self.stage == "run":
            runs = grid_runs(plan, curve=False)
            if run_id not in runs:
                raise BtcxrError(f"{run_id} is not a run of {plan.exp_path} as planned at the launch: rerun "
                                 "the launch command")
            runs[run_id]()
        elif self.stage == "report":
            for run in curve_runs(plan):  # the probe curve's backbones exist now
                run_grid_run(plan, run)
            index = write_report(plan)
            if index is None:
                raise BtcxrError("runs of the grid are missing: the report was not written")
            mark_report_done(plan)
        return self.stage if run_id is None else run_id

    def checkpoint(self, *args: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args)


def _torchrun_environment() -> None:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT from the SLURM job, as torchrun sets them,
    for a job of several tasks (the engine's init_distributed reads them)."""
    import submitit

    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (e.g. called directly)
        return
    if env.num_tasks > 1:
        # CUDA_VISIBLE_DEVICES stays whole: each rank picks cuda:LOCAL_RANK itself.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


# ------------------------------------------------------------------------------------------ ledger
class Ledger:
    """OUT/slurm/jobs.json: unit (prepare, pretrain, a run id, report) -> its latest job and state."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                entries = json.loads(path.read_text())["jobs"]
                if not isinstance(entries, dict) or not all(
                        isinstance(e, dict) and isinstance(e.get("job_id"), str) for e in entries.values()):
                    raise ValueError("'jobs' must map each unit to an entry with a job_id")
                self.entries = entries
            except (ValueError, KeyError, TypeError) as exc:
                raise BtcxrError(f"{path} is not a job ledger of btcxr ({cut(str(exc))}); move it aside to "
                                 "launch afresh (running jobs are then not known to the launcher)") from exc

    def job_id(self, unit: str) -> str | None:
        return self.entries.get(unit, {}).get("job_id")

    def state(self, unit: str) -> str | None:
        return self.entries.get(unit, {}).get("state")

    def planned(self, unit: str) -> str | None:
        """The fingerprint of the work the unit's job was planned with (None: not recorded)."""
        return self.entries.get(unit, {}).get("planned")

    def record(self, units: dict[str, str], stage: str, cluster: str, planned: dict[str, str]) -> None:
        """Jobs just submitted (unit -> job id), written at once: a launch that fails after this point
        still knows them next time, so they are not submitted twice."""
        now = dt.datetime.now().isoformat(timespec="seconds")
        for unit, job_id in units.items():
            self.entries[unit] = {"job_id": job_id, "stage": stage, "cluster": cluster, "state": "PENDING",
                                  "submitted": now, "planned": planned[unit]}
        self.save()

    def refresh(self, folder: Path) -> None:
        """States from SLURM (sacct, through submitit) for the jobs this ledger holds."""
        import submitit

        jobs = {unit: submitit.SlurmJob(folder, e["job_id"]) for unit, e in self.entries.items()
                if e.get("cluster") == "slurm" and e.get("state") in ACTIVE}
        for unit, job in jobs.items():
            self.entries[unit]["state"] = job.state.split()[0]  # "CANCELLED by 123" -> CANCELLED

    def save(self) -> None:
        write_json(self.path, {"jobs": self.entries}, indent=1)


def is_active(state: str | None) -> bool:
    return state is not None and state in ACTIVE


def planned_work(plan: Plan) -> dict[str, str]:
    """unit -> fingerprint of the work the plan gives its job. A queued job carries the plan of the launch
    that submitted it: one whose work the experiment file changed since is replaced before it starts."""
    units = {"prepare": fingerprint([u.key for u in (*plan.syntheses, *plan.caches)]),
             "pretrain": fingerprint([p.key for p in plan.pretrainings]),
             **{r.run_id: r.key for r in plan.runs}}
    return units | {"report": fingerprint({"experiment": config_to_dict(plan.exp),
                                           "runs": [r.key for r in plan.runs]})}


# ---------------------------------------------------------------------------------------- launcher
class Submitter:
    """Jobs through submitit. SLURM orders them by dependencies; submitit's local and debug executors know
    none, so there the launcher waits for the jobs a new one depends on before submitting it."""

    def __init__(self, cluster: str, folder: Path, settings: SlurmSettings):
        import submitit

        self.cluster, self.folder, self.settings = cluster, folder, settings
        self.submitit = submitit
        self.jobs: dict[str, Any] = {}  # job id -> submitit job, of this launch

    def submit(self, job: StageJob, after: list[str], run_ids: list[str] | None = None) -> list[str]:
        """Submit `job` (an array over `run_ids` when given) to start once the jobs `after` succeeded."""
        s = self.settings
        nodes, gpus = {"prepare": (1, 0), "pretrain": (s.nodes, s.gpus_per_task),
                       "run": (1, s.gpus_per_task), "report": (1, min(1, s.gpus_per_task))}[job.stage]
        ex = self.submitit.AutoExecutor(folder=self.folder, cluster=self.cluster,
                                        slurm_max_num_timeout=s.max_requeues)
        slurm = {"slurm_partition": s.partition, "slurm_account": s.account, "slurm_qos": s.qos,
                 "slurm_array_parallelism": s.array_parallelism,
                 # a job whose dependency failed is cancelled at once: the next launch resubmits it
                 "slurm_additional_parameters": {"kill-on-invalid-dep": "yes"}}
        if after and self.cluster == "slurm":
            slurm["slurm_dependency"] = "afterok:" + ":".join(after)
        ex.update_parameters(name=f"btcxr-{job.stage}", timeout_min=s.time_min, nodes=nodes,
                             tasks_per_node=max(1, gpus), gpus_per_node=gpus, cpus_per_task=s.cpus_per_task,
                             stderr_to_stdout=True, **{k: v for k, v in slurm.items() if v is not None})
        if self.cluster != "slurm":
            self.wait(after)
        try:
            jobs = ex.map_array(job, run_ids) if run_ids is not None else [ex.submit(job)]
        except Exception as exc:  # sbatch's refusal (a bad partition, account, QOS or time limit)
            raise BtcxrError(f"submitting the {job.stage} job failed: {exc}") from exc
        self.jobs |= {j.job_id: j for j in jobs}
        return [j.job_id for j in jobs]

    def wait(self, job_ids: list[str]) -> None:
        """Wait for jobs of this launch (local and debug executors); a failed one stops the launch."""
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is not None:
                job.result()

    def state(self, job_id: str) -> str:
        return self.jobs[job_id].state.split()[0]

    def cancel(self, job_id: str) -> None:
        if self.cluster == "slurm":
            self.submitit.SlurmJob(self.folder, job_id).cancel(check=False)


def launch(exp_path: str | Path, overrides: list[str] | tuple[str, ...] = (), out: str | Path | None = None,
           settings: SlurmSettings | None = None, *, cluster: str = "slurm", workers: int | None = None,
           wait: bool | None = None) -> dict[str, str]:
    """Submit what is left of the experiment; returns unit -> job id of the jobs submitted by this call.

    wait: block until the submitted jobs end (default: only for the local and debug executors, where the
    jobs are children of this process)."""
    if cluster not in CLUSTERS:
        raise BtcxrError(f"launcher cluster {cluster!r}: use one of {', '.join(CLUSTERS)}")
    if cluster == "slurm" and shutil.which("srun") is None:  # before anything is read or written
        raise BtcxrError("--launcher slurm: srun is not on PATH; run the command on a SLURM login node")
    settings = settings or SlurmSettings()
    # Computed once, here: every job gets this plan (paths made absolute: jobs start on other nodes).
    plan = make_plan(Path(exp_path).resolve(), overrides, out, workers=workers, absolute=True)
    plan.make_folder()
    save_config(plan.exp, plan.out / EXPERIMENT)
    pending = upstream_pending(plan)  # the upstream stages with work left
    folder = ensure_dir(plan.out / "slurm" / "logs", "SLURM log folder")
    submitter = Submitter(cluster, folder, settings)
    ledger = Ledger(plan.out / "slurm" / "jobs.json")
    ledger.refresh(folder)
    make = partial(StageJob, plan)
    planned = planned_work(plan)
    submitted: dict[str, str] = {}

    def replanned(unit: str) -> bool:
        """A queued job that has not started, planned by an earlier launch for other work: it is replaced
        (a job reads its plan, not the experiment file, so it would run the old settings)."""
        return ledger.state(unit) == "PENDING" and ledger.planned(unit) not in (None, planned[unit])

    def place(unit: str, needed: bool, after: list[str], upstream_new: bool) -> list[str]:
        """The job ids that stand for `unit` from now on: kept, newly submitted, or none."""
        if not needed:
            return []
        if is_active(ledger.state(unit)):
            if not upstream_new and not replanned(unit):
                log.info("%s: job %s is %s, left alone", unit, ledger.job_id(unit), ledger.state(unit))
                return [ledger.job_id(unit)]
            # its dependency was a failed job that is being replaced, or its work changed: replace it too
            submitter.cancel(ledger.job_id(unit))
        (job_id,) = submitter.submit(make(unit), after)
        ledger.record({unit: job_id}, unit, cluster, planned)
        submitted[unit] = job_id
        return [job_id]

    after = place("prepare", "data" in pending, [], False)
    new = "prepare" in submitted
    after = place("pretrain", "pretrain" in pending, after, new) or after
    new = new or "pretrain" in submitted

    finished = finished_runs(plan)
    left = [r.run_id for r in plan.runs if r.run_id not in finished]
    kept = [r for r in left if is_active(ledger.state(r)) and not new and not replanned(r)]
    for r in left:
        if r not in kept and is_active(ledger.state(r)):
            submitter.cancel(ledger.job_id(r))
    to_submit = [r for r in left if r not in kept]
    run_jobs = [ledger.job_id(r) for r in kept]
    if to_submit:
        ids = dict(zip(to_submit, submitter.submit(make("run"), after, run_ids=to_submit)))
        ledger.record(ids, "run", cluster, planned)
        submitted |= ids
        run_jobs += ids.values()
    new = new or bool(to_submit)
    report_needed = new or bool(kept) or bool(pending) or not report_done(plan)
    place("report", report_needed, (run_jobs or after), new)
    ledger.save()  # the states refreshed above

    if wait if wait is not None else cluster != "slurm":
        submitter.wait(list(submitted.values()))
        for unit, job_id in submitted.items():
            ledger.entries[unit]["state"] = submitter.state(job_id)
        ledger.save()
    _log_summary(ledger, submitted, len(finished), settings)
    return submitted


def _log_summary(ledger: Ledger, submitted: dict[str, str], finished: int, settings: SlurmSettings) -> None:
    if not submitted:
        log.info("nothing to submit: %d runs finished, the others' jobs are queued or running (%s)", finished,
                 ledger.path)
        return
    stages = sorted({ledger.entries[u]["stage"] for u in submitted})
    log.info("submitted %d job(s) (%s) on partition %s; %d runs were finished already; ledger: %s",
             len(submitted), ", ".join(stages), settings.partition, finished, ledger.path)

