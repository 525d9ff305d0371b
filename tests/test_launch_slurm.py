"""`btcxr reproduce --launcher slurm`: the experiment as submitit jobs, tested without a cluster.

submitit's debug executor runs the jobs in this process (the order, the ledger, relaunching); a fake sbatch,
srun, sacct and scancel on PATH stand for SLURM (the sbatch scripts submitit writes from the flags, what a
relaunch submits for each job state); submitit's local executor runs a real fine-tuning run in a child
process that is pre-empted with SLURM's signal and requeues itself.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from test_finetune import write_square_cache
from test_kill_matrix import _same_tensors

from btcxr.cli import main
from btcxr.config_files import CONFIG_DIR
from btcxr.engine.checkpoint import load_checkpoint
from btcxr.errors import BtcxrError
from btcxr.experiment import pretrain_stage, slurm, stages
from btcxr.experiment.markers import DONE, StageNotFinished
from btcxr.experiment.stages import make_plan

CONFIGS = CONFIG_DIR
RUN_IDS = [f"det_{init}_s64_f1_seed{seed}" for seed in (0, 1) for init in ("random", "btcxr")]


def _experiment(tmp_path: Path) -> Path:
    """Tiny synthetic data (really made), our pre-training and fine-tuning faked: 4 runs and every stage."""
    lines = ["name: tiny",
             "data: {synthetic: {n_vindr: 24, n_nih: 24, size: 96, seed: 0, normal_fraction: 0.3},"
             " cache_size: 64, pretrain_size: 32}",
             f"pretrain: {{config: {CONFIGS / 'pretrain' / 'demo.yaml'}}}",
             f"finetune: {{config: {CONFIGS / 'finetune' / 'demo.yaml'}}}",
             "inits: {random: random, btcxr: btcxr}", "baseline: random", "sizes: [64]", "fractions: [1.0]",
             "seeds: [0, 1]", "probe: {enabled: false}", "localisation: {enabled: false}"]
    path = tmp_path / "tiny.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Recorder:
    """Fake pre-training and fine-tuning that log when they ran, plus a log of the real stages around them."""

    def __init__(self, monkeypatch):
        self.events: list[str] = []
        import btcxr.data.cache as cache
        import btcxr.report.build as build

        real_prepare, real_report = cache.prepare, build.build_report

        def prepare(settings):
            self.events.append(f"prepare {settings.dataset}")
            return real_prepare(settings)

        def report(*args, **kwargs):
            self.events.append("report")
            return real_report(*args, **kwargs)

        monkeypatch.setattr(cache, "prepare", prepare)
        monkeypatch.setattr(build, "build_report", report)
        monkeypatch.setattr("btcxr.pretrain.run.pretrain", self.pretrain)
        monkeypatch.setattr("btcxr.detect.train.finetune", self.finetune)

    def pretrain(self, cfg, out_dir, resume=False):
        self.events.append("pretrain")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.zeros(1)}, out / "backbone.pth")

    def finetune(self, cfg, out_dir, resume=False):
        out = Path(out_dir)
        self.events.append(f"finetune {out.name}")
        ap = 0.3 + 0.1 * cfg.seed
        (out / "test_metrics.json").write_text(json.dumps({"map50": ap, "map50_ci": [ap - 0.1, ap + 0.1]}))
        (out / "metrics.jsonl").write_text(json.dumps({"phase": "epoch", "step": 1, "epoch": 1, "loss": 1.0}) + "\n")
        (out / "best.pt").write_bytes(b"weights")
        return out / "best.pt"


def _plan(exp: Path, out: Path):
    """The plan the launcher hands its jobs (jobs called here directly, as SLURM would)."""
    return make_plan(exp, (), out, absolute=True)


def _ledger(out: Path) -> dict:
    return json.loads((out / "slurm" / "jobs.json").read_text())["jobs"]


# ------------------------------------------------------------------------- debug executor: order
def test_stages_run_in_dependency_order_and_a_relaunch_submits_only_what_is_left(tmp_path, monkeypatch):
    rec = Recorder(monkeypatch)
    exp, out = _experiment(tmp_path), tmp_path / "out"
    submitted = slurm.launch(exp, out=out, cluster="debug")
    assert list(submitted) == ["prepare", "pretrain", *RUN_IDS, "report"]
    # data before pre-training before every run before the report
    assert rec.events[:2] == ["prepare vindr", "prepare nih"]
    assert rec.events[2] == "pretrain"
    assert sorted(rec.events[3:7]) == sorted(f"finetune {r}" for r in RUN_IDS)
    assert rec.events[7:] == ["report"]
    ledger = _ledger(out)
    assert {u: e["job_id"] for u, e in ledger.items()} == submitted
    assert {e["state"] for e in ledger.values()} == {"DONE"}
    assert (out / "report" / "index.html").is_file() and list((out / "slurm" / "logs").glob("*_log.out"))
    assert not list(out.glob(".*.lock"))  # the launcher decides what runs where: no job takes a file lock

    rec.events.clear()
    assert slurm.launch(exp, out=out, cluster="debug") == {}     # all finished: nothing is submitted again
    assert rec.events == []

    # One run fails (its job ends FAILED, its folder holds no finished run): only it and the report are redone.
    (out / "runs" / RUN_IDS[2] / DONE).unlink()
    ledger[RUN_IDS[2]]["state"] = "FAILED"
    (out / "slurm" / "jobs.json").write_text(json.dumps({"jobs": ledger}))
    again = slurm.launch(exp, out=out, cluster="debug")
    assert list(again) == [RUN_IDS[2], "report"]
    assert rec.events == [f"finetune {RUN_IDS[2]}", "report"]


def test_every_job_gets_the_launchers_plan_and_none_computes_it_again(tmp_path, monkeypatch):
    rec = Recorder(monkeypatch)
    exp, out = _experiment(tmp_path), tmp_path / "out"
    plans, reads, seen = [], [], []
    real_plan, real_load, real_choose = stages.make_plan, stages.load_experiment, pretrain_stage.choose_inits

    def plan_once(*args, **kwargs):
        if plans:
            raise AssertionError("the plan was computed again")
        plans.append(real_plan(*args, **kwargs))
        return plans[-1]

    def counted(real, what):
        def call(*args, **kwargs):
            reads.append(what)
            return real(*args, **kwargs)
        return call

    real_call = slurm.StageJob.__call__

    def job_call(self, *args):
        seen.append((self.stage, self.plan is plans[0]))
        return real_call(self, *args)

    monkeypatch.setattr(stages, "make_plan", plan_once)
    monkeypatch.setattr(slurm, "make_plan", plan_once)
    monkeypatch.setattr(stages, "load_experiment", counted(real_load, "experiment file"))
    monkeypatch.setattr(pretrain_stage, "choose_inits", counted(real_choose, "ImageNet check"))
    monkeypatch.setattr(slurm.StageJob, "__call__", job_call)
    submitted = slurm.launch(exp, out=out, cluster="debug")
    assert list(submitted) == ["prepare", "pretrain", *RUN_IDS, "report"]
    assert len(plans) == 1 and reads == ["experiment file", "ImageNet check"]   # once, by the launcher
    assert seen == [("prepare", True), ("pretrain", True), *[("run", True)] * 4, ("report", True)]

    # On a cluster the job is unpickled in another process: the plan travels with it, whole.
    job = pickle.loads(pickle.dumps(slurm.StageJob(plans[0], "run")))
    assert job.plan == plans[0] and job.plan.out.is_absolute()
    (out / "runs" / RUN_IDS[1] / DONE).unlink()
    rec.events.clear()
    assert job(RUN_IDS[1]) == RUN_IDS[1]
    assert rec.events == [f"finetune {RUN_IDS[1]}"] and len(plans) == 1


def test_a_job_whose_upstream_stage_has_not_finished_stops_with_a_clear_error(tmp_path, monkeypatch):
    Recorder(monkeypatch)
    exp, out = _experiment(tmp_path), tmp_path / "out"
    job = slurm.StageJob(_plan(exp, out), "run")
    with pytest.raises(StageNotFinished, match=r"data.*not finished.*data stage has to finish first"):
        job(RUN_IDS[0])
    slurm.StageJob(_plan(exp, out), "prepare")()
    with pytest.raises(StageNotFinished, match=r"pretrain.*pretrain stage has to finish first"):
        job(RUN_IDS[0])
    assert not (out / "runs").exists()  # a run job never starts an upstream stage itself


def test_bad_launcher_settings_are_refused_with_the_flag_named():
    with pytest.raises(BtcxrError, match="--time '1:2:3'"):
        slurm.SlurmSettings(time="1:2:3")
    with pytest.raises(BtcxrError, match="--nodes 0"):
        slurm.SlurmSettings(nodes=0)
    assert slurm.minutes("24:00") == 1440 and slurm.minutes("1-02:30") == 1590 and slurm.minutes("90") == 90


@pytest.mark.parametrize("flag", ["partition", "account", "qos"])
@pytest.mark.parametrize("value", ["gpu\ntouch /tmp/owned", "gpu; rm -rf ~", "gpu --wrap=id", "", "a" * 5000 + "\n"])
def test_a_value_that_would_reach_an_sbatch_line_must_be_a_slurm_name(flag, value):
    """A newline in --partition became its own line of the sbatch script, and ran (issue 24)."""
    with pytest.raises(BtcxrError, match=f"--{flag} ") as error:
        slurm.SlurmSettings(**{flag: value})
    assert len(str(error.value)) < 400   # a huge value is cut in the message
    assert slurm.SlurmSettings(**{flag: "gpu-a100_x.2"})
    with pytest.raises(BtcxrError, match="--time"):
        slurm.SlurmSettings(time="24:00\n#SBATCH --wrap=id")


def test_partitions_may_be_a_comma_list():
    assert slurm.SlurmSettings(partition="gpu,debug").partition == "gpu,debug"


@pytest.mark.parametrize("text", ['{"jobs": []}', '{"jobs": {"run": 3}}', '{"jobs": {"run": {"state": "PENDING"}}}',
                                  '[1, 2]', '{"jobs": {"run": {"job_id": 12}}}'])
def test_a_ledger_of_the_wrong_shape_is_a_clear_error(tmp_path, text):
    path = tmp_path / "jobs.json"
    path.write_text(text)
    with pytest.raises(BtcxrError, match="is not a job ledger of btcxr"):
        slurm.Ledger(path)


# ----------------------------------------------------------------------- fake SLURM: sbatch scripts
FAKE_SBATCH = """#!/bin/sh
# records the script submitit submits, answers as sbatch does
n=$(($(cat "$FAKE_SLURM/counter" 2>/dev/null || echo 0) + 1))
if [ "$n" = "$(cat "$FAKE_SLURM/refuse_at" 2>/dev/null)" ]; then
  echo "sbatch: error: Batch job submission failed: Invalid account or account/partition combination" >&2
  exit 1
fi
echo $n > "$FAKE_SLURM/counter"
cp "$1" "$FAKE_SLURM/job$n.sh"
echo "Submitted batch job $n"
"""
FAKE_SACCT = """#!/bin/sh
echo "JobID|State|NodeList"
cat "$FAKE_SLURM/states" 2>/dev/null
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_dir, record = tmp_path / "bin", tmp_path / "slurm-record"
    bin_dir.mkdir()
    record.mkdir()
    for name, text in {"sbatch": FAKE_SBATCH, "sacct": FAKE_SACCT, "srun": "#!/bin/sh\nexit 0\n",
                       "scancel": '#!/bin/sh\necho "$@" >> "$FAKE_SLURM/scancel"\n'}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(record))
    return record


def _sbatch(record: Path, n: int) -> dict[str, str]:
    text = (record / f"job{n}.sh").read_text()
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", text, re.M)) | {"srun": str("srun " in text)}


def _states(record: Path, states: dict[str, str]) -> None:
    (record / "states").write_text("".join(f"{j}|{s}|node1\n" for j, s in states.items()))


def test_sbatch_parameters_match_the_flags_and_relaunches_follow_the_job_states(tmp_path, monkeypatch, fake_slurm):
    Recorder(monkeypatch)
    exp, out = _experiment(tmp_path), tmp_path / "out"
    flags = ["reproduce", "--config", str(exp), "--out", str(out), "--launcher", "slurm", "--partition", "gpu",
             "--gpus-per-task", "4", "--nodes", "2", "--time", "12:30", "--account", "proj", "--qos", "high",
             "--array-parallelism", "3", "--cpus-per-task", "6"]
    assert main(flags) == 0
    assert (fake_slurm / "counter").read_text().strip() == "4"
    common = {"partition": "gpu", "account": "proj", "qos": "high", "time": "750", "cpus-per-task": "6",
              "signal": "USR2@90", "kill-on-invalid-dep": "yes", "srun": "True"}
    prepare, pretrain, runs, report = (_sbatch(fake_slurm, n) for n in (1, 2, 3, 4))
    for script in (prepare, pretrain, runs, report):
        assert script.items() >= common.items()
    assert prepare["job-name"] == "btcxr-prepare" and prepare["nodes"] == "1" and "dependency" not in prepare
    assert prepare["gpus-per-node"] == "0" and prepare["ntasks-per-node"] == "1"
    # pre-training: 2 nodes x 4 GPUs, one task (rank) per GPU, after the data
    assert (pretrain["nodes"], pretrain["ntasks-per-node"], pretrain["gpus-per-node"]) == ("2", "4", "4")
    assert pretrain["dependency"] == "afterok:1"
    # the runs: one array task each, 3 at a time, 4 GPUs each, after the pre-training
    assert runs["array"] == "0-3%3" and runs["dependency"] == "afterok:2"
    assert (runs["nodes"], runs["ntasks-per-node"], runs["gpus-per-node"]) == ("1", "4", "4")
    assert report["dependency"] == "afterok:3_0:3_1:3_2:3_3" and report["gpus-per-node"] == "1"
    assert {u: e["job_id"] for u, e in _ledger(out).items()} == {
        "prepare": "1", "pretrain": "2", **{r: f"3_{i}" for i, r in enumerate(RUN_IDS)}, "report": "4"}

    # Relaunched while everything is queued or running: nothing is submitted twice.
    _states(fake_slurm, {"1": "RUNNING", "2": "PENDING", "3_[0-3]": "PENDING", "4": "PENDING"})
    assert main(flags) == 0
    assert (fake_slurm / "counter").read_text().strip() == "4"

    # The data and pre-training jobs finished (run here in-process), run 0 finished, run 1 failed, run 2 was
    # pre-empted, run 3 is running, the report was cancelled for its failed dependency.
    plan = _plan(exp, out)
    slurm.StageJob(plan, "prepare")()
    slurm.StageJob(plan, "pretrain")()
    slurm.StageJob(plan, "run")(RUN_IDS[0])
    _states(fake_slurm, {"1": "COMPLETED", "2": "COMPLETED", "3_0": "COMPLETED", "3_1": "FAILED",
                         "3_2": "PREEMPTED", "3_3": "RUNNING", "4": "CANCELLED by 0"})
    assert main(flags) == 0
    assert (fake_slurm / "counter").read_text().strip() == "6"
    again, report2 = _sbatch(fake_slurm, 5), _sbatch(fake_slurm, 6)
    # two tasks (at most 2 at once: submitit caps the parallelism); upstream finished: nothing to wait for
    assert again["array"] == "0-1%2" and "dependency" not in again
    assert report2["dependency"] == "afterok:3_3:5_0:5_1"
    ledger = _ledger(out)
    assert (ledger[RUN_IDS[1]]["job_id"], ledger[RUN_IDS[2]]["job_id"], ledger[RUN_IDS[3]]["job_id"]) == (
        "5_0", "5_1", "3_3")
    assert not (fake_slurm / "scancel").exists()


def test_a_queued_job_planned_with_other_settings_is_replaced_before_it_starts(tmp_path, monkeypatch, fake_slurm):
    """A job carries the plan of the launch that submitted it: after an edit of the experiment, a relaunch
    replaces the queued jobs whose work changed (the others are left alone, as always)."""
    Recorder(monkeypatch)
    exp, out = _experiment(tmp_path), tmp_path / "out"
    flags = ["reproduce", "--config", str(exp), "--out", str(out), "--launcher", "slurm", "--partition", "gpu"]
    assert main(flags) == 0
    _states(fake_slurm, {"1": "RUNNING", "2": "PENDING", "3_[0-3]": "PENDING", "4": "PENDING"})
    assert main([*flags, "finetune.overrides=[optim.epochs=3]"]) == 0   # the runs' settings changed
    # data and pre-training are the same work: left alone; the runs and the report: replaced
    assert (fake_slurm / "counter").read_text().strip() == "6"
    runs, report = _sbatch(fake_slurm, 5), _sbatch(fake_slurm, 6)
    assert runs["array"] == "0-3%4" and runs["dependency"] == "afterok:2"
    assert report["dependency"] == "afterok:5_0:5_1:5_2:5_3"
    cancelled = (fake_slurm / "scancel").read_text().split()
    assert {"3_0", "3_1", "3_2", "3_3", "4"} <= set(cancelled) and not {"1", "2"} & set(cancelled)
    assert {u: e["job_id"] for u, e in _ledger(out).items()} == {
        "prepare": "1", "pretrain": "2", **{r: f"5_{i}" for i, r in enumerate(RUN_IDS)}, "report": "6"}


def test_a_launch_that_sbatch_refuses_part_way_keeps_what_it_submitted(tmp_path, monkeypatch, fake_slurm, capsys):
    Recorder(monkeypatch)
    exp, out = _experiment(tmp_path), tmp_path / "out"
    flags = ["reproduce", "--config", str(exp), "--out", str(out), "--launcher", "slurm", "--partition", "gpu"]
    (fake_slurm / "refuse_at").write_text("3")  # the array of runs is refused
    assert main(flags) != 0
    assert "submitting the run job failed" in capsys.readouterr().err
    assert {u: e["job_id"] for u, e in _ledger(out).items()} == {"prepare": "1", "pretrain": "2"}
    (fake_slurm / "refuse_at").unlink()
    _states(fake_slurm, {"1": "RUNNING", "2": "PENDING"})
    assert main(flags) == 0                     # the data and pre-training jobs are not submitted again
    assert _sbatch(fake_slurm, 3)["array"] == "0-3%4" and _sbatch(fake_slurm, 3)["dependency"] == "afterok:2"
    assert (fake_slurm / "counter").read_text().strip() == "4"


def test_the_slurm_launcher_needs_a_cluster_and_no_shard(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun here
    exp = _experiment(tmp_path)
    assert main(["reproduce", "--config", str(exp), "--out", str(tmp_path / "o"), "--launcher", "slurm"]) != 0
    assert "srun is not on PATH" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["reproduce", "--config", str(exp), "--launcher", "slurm", "--shard", "1/2"]) != 0
    assert "--shard is for shards started by hand" in capsys.readouterr().err


# ------------------------------------------------------------- local executor: a real pre-emption
def _task_pid(job) -> int:
    """The task process that submitit's local controller started (the one SLURM would signal)."""
    pid = job._process.pid
    for _ in range(600):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError("the local job started no task")


@pytest.mark.slow
def test_a_preempted_run_requeues_itself_and_ends_as_an_uninterrupted_run(tmp_path, monkeypatch):
    import submitit

    vindr_cache = write_square_cache(tmp_path / 'vindr', {'train': 8, 'val': 4, 'test': 4}, size=64)

    exp = tmp_path / "one.yaml"
    exp.write_text("\n".join([
        "name: one", f"data: {{vindr_cache: {vindr_cache}}}",
        f"finetune: {{config: {CONFIGS / 'finetune' / 'demo.yaml'}, overrides: [optim.epochs=3, tensorboard=false,"
        " model.fpn_channels=32, model.box_head_dim=64, optim.batch_size=4, optim.warmup_iters=2]}",
        "inits: {random: random}", "baseline: random", "sizes: [64]", "fractions: [1.0]", "seeds: [0]",
        "probe: {enabled: false}", "localisation: {enabled: false}"]) + "\n")
    run_id = "det_random_s64_f1_seed0"
    reference = tmp_path / "reference"
    slurm.StageJob(_plan(exp, reference), "run")(run_id)  # uninterrupted, in this process

    out = tmp_path / "preempted"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job's process computes as this one does (one thread)
    ex = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="local")
    # submitit tells a pre-emption from a time-out by the time left: an hour is far from the limit
    ex.update_parameters(timeout_min=60, tasks_per_node=1, stderr_to_stdout=True)
    job = ex.submit(slurm.StageJob(_plan(exp, out), "run"), run_id)  # the plan goes pickled to the job
    task = _task_pid(job)
    last = out / "runs" / run_id / "last.pt"
    for _ in range(2400):               # wait for the first checkpoint, then pre-empt as SLURM does
        if last.exists():
            break
        time.sleep(0.05)
    assert last.exists(), job.stdout()
    os.kill(task, signal.SIGUSR2)
    assert job.result() == run_id
    log = job.stdout()
    assert "this job is preempted" in log and "Requeued job" in log and "resuming" in log

    for name in ("best.pt", "last.pt"):
        _same_tensors(*(load_checkpoint(d / "runs" / run_id / name) for d in (out, reference)), name)
    metrics = [json.loads((d / "runs" / run_id / "test_metrics.json").read_text()) for d in (reference, out)]
    assert [m.pop("sources")["checkpoint"] for m in metrics] == [str(d / "runs" / run_id / "best.pt")
                                                                 for d in (reference, out)]
    assert metrics[0] == metrics[1]


def test_every_rank_of_a_multi_node_job_gets_torchruns_environment_from_slurm(monkeypatch):
    """Rank 5 of 2 nodes x 4 GPUs, as SLURM describes it to the task: what the engine's init_distributed reads."""
    for key in ("CUDA_VISIBLE_DEVICES", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(key, "")  # recorded, so what the export sets is undone after the test (a left
        monkeypatch.delenv(key)      # WORLD_SIZE=8 would make later tests wait for 7 ranks that never come)
    slurm_env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "8", "SLURM_PROCID": "5",
                 "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[03-04]", "SLURM_JOB_NUM_NODES": "2",
                 "SLURM_NODEID": "1"}
    for key, value in slurm_env.items():
        monkeypatch.setenv(key, value)
    slurm._torchrun_environment()
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # left whole: each rank takes cuda:LOCAL_RANK itself
    got = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    assert got == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu03"}
    assert 20000 <= int(os.environ["MASTER_PORT"]) <= 60000  # the same on every rank: drawn from the job id


@pytest.mark.slow
def test_the_pretraining_job_runs_one_rank_per_task_with_the_environment_slurm_gives(tmp_path, monkeypatch):
    """The pre-training job with two tasks (submitit's local executor stands for `srun`): both ranks join
    one process group from the environment the job exports, train together and rank 0 records the stage."""
    import submitit
    from test_pretrain import TINY, make_unlabeled_cache

    nih = make_unlabeled_cache(tmp_path / "nih", n=20, size=32)
    exp = tmp_path / "pre.yaml"
    exp.write_text("\n".join([
        "name: pre", f"data: {{nih_cache: {nih}}}", "detection: false", "probe: {enabled: false}",
        f"pretrain: {{config: pretrain/demo, overrides: [{', '.join(TINY)}, optim.epochs=1, optim.batch_size=8,"
        " 'model.projector=[32,16]']}",
        "inits: {btcxr: btcxr, random: random}", "baseline: random", "localisation: {enabled: false}"]) + "\n")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ex = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="local")
    ex.update_parameters(timeout_min=60, tasks_per_node=2, stderr_to_stdout=True)
    out = tmp_path / "out"
    job = ex.submit(slurm.StageJob(_plan(exp, out), "pretrain"))
    assert job.results() == ["pretrain", "pretrain"]  # one result per task
    rank0 = job.stdout()
    assert "on 2 rank(s)" in rank0, rank0
    done = json.loads((out / "pretrain" / DONE).read_text())
    state = load_checkpoint(out / "pretrain" / "last.pt")
    assert Path(done["backbone"]).is_file() and state["step"] >= 1
    assert len(state["rng"]) == 2  # the checkpoint holds the RNG states of both ranks
