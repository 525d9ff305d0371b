"""The run engine every training command shares (btcxr.engine.run.RunDir and friends): resume or refuse,
one allow-list, metrics rows written once, every rank's RNG, the NaN stop, one config vocabulary."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fixtures_dist import free_port, join_gloo
from test_finetune import tiny_config, write_square_cache

from btcxr.classify.config import ProbeConfig
from btcxr.cli import main
from btcxr.config import load_config, migrate_config_dict
from btcxr.config_files import CONFIG_DIR
from btcxr.detect.config import FinetuneConfig
from btcxr.engine.checkpoint import load_checkpoint, save_checkpoint
from btcxr.engine.distributed import DistEnv
from btcxr.engine.run import RESUME_FREE_KEYS, RunDir, config_differences
from btcxr.engine.runlog import read_metrics
from btcxr.engine.runtime import autocast, resolve_device, seed_everything
from btcxr.errors import BtcxrError
from btcxr.pretrain.config import PretrainConfig


@dataclasses.dataclass
class _Cfg:
    seed: int = 0
    lr: float = 0.1
    log_every: int = 1
    tensorboard: bool = False


def _toy(tmp_path: Path, cfg: _Cfg | None = None, resume: bool = False) -> RunDir:
    return RunDir(tmp_path / "run", cfg or _Cfg(), DistEnv(), kind="toy", resume=resume)


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


# --------------------------------------------------------------------------------------------- RunDir
def test_save_and_restore_every_object_value_and_rng_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    run = _toy(tmp_path)
    run.open_metrics().log(1, "train", loss=1.0)
    seed_everything(3)
    run.save(step=7, epoch=2, model=model, optimizer=optimizer, best=0.5)
    expected = _draws()
    run.close()

    fresh, fresh_opt = torch.nn.Linear(3, 2), None
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    again = _toy(tmp_path)
    assert again.resumed and again.saved_step == 7
    state = again.restore(model=fresh, optimizer=fresh_opt)
    assert _draws() == expected  # python, numpy and torch RNG continue where the checkpoint was taken
    assert (state["step"], state["epoch"], state["best"], state["kind"]) == (7, 2, 0.5, "toy")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert torch.equal(fresh_opt.state_dict()["state"][0]["momentum_buffer"],
                       optimizer.state_dict()["state"][0]["momentum_buffer"])
    assert set(state["versions"]) >= {"btcxr", "torch", "torchvision"} and state["config"]["lr"] == 0.1


def test_changed_config_is_refused_naming_every_key_and_the_allow_list_may_change(tmp_path):
    run = _toy(tmp_path)
    run.save(step=1, epoch=0)
    with pytest.raises(BtcxrError, match=r"another config \(lr: 0.1 in the run, 0.2 now; seed: 0 in the run, 5 now\)"):
        _toy(tmp_path, _Cfg(lr=0.2, seed=5))
    assert _toy(tmp_path, _Cfg(log_every=50, tensorboard=True)).resumed  # logging may change
    assert {"log_every", "tensorboard", "device", "data.cache", "data.workers"} <= RESUME_FREE_KEYS
    assert config_differences({"a": {"b": [1, 2]}}, {"a": {"b": (1, 2)}}) == []


def test_resume_without_checkpoint_and_a_foreign_checkpoint_are_errors(tmp_path):
    with pytest.raises(BtcxrError, match="nothing to resume"):
        _toy(tmp_path, resume=True)
    save_checkpoint(tmp_path / "run" / "last.pt", {"kind": "btcxr-detector", "step": 3, "config": {}})
    with pytest.raises(BtcxrError, match="is not a toy checkpoint"):
        _toy(tmp_path)


def test_rows_written_after_the_checkpoint_are_dropped_and_a_cut_line_too(tmp_path):
    run = _toy(tmp_path)
    log = run.open_metrics()
    log.log(1, "train", loss=1.0)
    log.log(2, "train", loss=2.0)
    run.save(step=2, epoch=0)
    log.log(3, "train", loss=3.0)  # after the checkpoint: a killed run wrote it, the resumed one writes it again
    run.close()
    with (tmp_path / "run" / "metrics.jsonl").open("a") as f:
        f.write('{"phase": "train", "step": 4, "loss": 1.2')  # a kill in the middle of a line
    again = _toy(tmp_path)
    again.open_metrics().log(3, "train", loss=3.5)
    again.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "run")] == [(1, 1.0), (2, 2.0), (3, 3.5)]


def test_each_run_records_the_environment_its_numbers_depend_on(tmp_path):
    run = _toy(tmp_path)
    run.open_metrics()
    run.save(step=2, epoch=0)
    run.close()
    path = tmp_path / "run" / "environment.json"
    (entry,) = json.loads(path.read_text())
    assert entry["from_step"] == 0 and entry["versions"]["torch"] == torch.__version__
    assert entry["torch_threads"] == torch.get_num_threads()
    assert entry["deterministic_algorithms"] == torch.are_deterministic_algorithms_enabled()
    assert entry["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():  # a clone (CI's is one): the commit the code ran at
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert entry["git_commit"] == head.stdout.strip() and isinstance(entry["git_dirty"], bool)
    again = _toy(tmp_path)  # resumed in the same environment: nothing new
    again.open_metrics()
    again.close()
    assert len(json.loads(path.read_text())) == 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:  # resumed with another thread count: a second entry, from the checkpoint's step
        elsewhere = _toy(tmp_path)
        elsewhere.open_metrics()
        elsewhere.close()
    finally:
        torch.set_num_threads(threads)
    entries = json.loads(path.read_text())
    assert [e["from_step"] for e in entries] == [0, 2] and entries[1]["torch_threads"] != threads


def test_a_fresh_run_starts_a_fresh_log_and_temp_files_of_killed_writes_go(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text('{"phase": "train", "step": 1}\n')  # no checkpoint: nothing to keep
    (folder / ".last.pt.tmp123-abcd").write_bytes(b"x" * 100)
    (folder / "notes.txt").write_text("mine")
    run = _toy(tmp_path)
    run.open_metrics()
    run.close()
    assert read_metrics(folder) == [] and (folder / "notes.txt").exists()
    assert not list(folder.glob(".*tmp*"))


def test_checkpoint_of_a_single_process_version_resumes_and_world_size_must_match(tmp_path):
    from btcxr.engine.checkpoint import rng_state

    seed_everything(1)
    save_checkpoint(tmp_path / "run" / "last.pt", {"step": 2, "epoch": 1, "rng": rng_state(),
                                                   "config": dataclasses.asdict(_Cfg())})
    expected = _draws()
    _toy(tmp_path).restore()
    assert _draws() == expected
    run = RunDir(tmp_path / "run", _Cfg(), DistEnv(rank=0, world_size=1), kind="toy")
    run.state["rng"] = [rng_state(), rng_state()]
    with pytest.raises(BtcxrError, match="written by 2 rank"):
        run.restore()


def test_non_finite_loss_names_the_last_good_checkpoint(tmp_path):
    run = _toy(tmp_path)
    with pytest.raises(BtcxrError, match="no checkpoint was written yet"):
        run.check_finite(torch.tensor(float("inf")), 0, 0)
    run.save(step=4, epoch=1)
    run.check_finite(torch.tensor(1.5), 5, 1)
    with pytest.raises(BtcxrError, match=r"non-finite loss \(nan\) at step 6 \(epoch 2\).*last\.pt keeps the last "
                                         r"good state \(step 4\)\. Lower the lr\."):
        run.check_finite(float("nan"), 5, 1, "Lower the lr.")


def test_probe_and_finetune_stop_on_a_non_finite_loss(tmp_path, monkeypatch):
    from test_probe import make_nih_cache

    import btcxr.classify.train as probe_train

    cache = make_nih_cache(tmp_path / "nih", n=(16, 8, 8), seed=1)
    monkeypatch.setattr(probe_train.nn, "BCEWithLogitsLoss", lambda: (lambda logits, y: logits.sum() * np.nan))
    code = main(["probe", "--config", str(CONFIG_DIR / "probe/demo.yaml"), f"data.cache={cache}",
                 "tensorboard=false", "model.size=32", "--out", str(tmp_path / "probe")])
    assert code == 2
    vindr = write_square_cache(tmp_path / "vindr", {"train": 4, "val": 2})
    cfg = tiny_config(vindr, **{"optim.lr": 1e6, "optim.warmup_iters": 0, "optim.clip_grad": "null"})
    from btcxr.detect.train import finetune

    with pytest.raises(BtcxrError, match=r"non-finite loss .* at step \d+ \(epoch \d\).*Loss terms"):
        finetune(cfg, tmp_path / "det")


# ------------------------------------------------------------------------------------ config vocabulary
def test_the_five_run_settings_sit_at_the_top_of_every_stage():
    for cls in (PretrainConfig, ProbeConfig, FinetuneConfig):
        names = [f.name for f in dataclasses.fields(cls)]
        assert names[:5] == ["seed", "device", "amp", "log_every", "tensorboard"], cls.__name__
        assert "init" in [f.name for f in dataclasses.fields(cls().model)]


def test_old_config_files_still_load_with_the_moved_keys(tmp_path, caplog):
    old = tmp_path / "old.yaml"
    old.write_text("train:\n  seed: 3\n  amp: fp16\n  log_every: 7\n  hflip: 0.2\n")
    cfg = load_config(FinetuneConfig, old)
    assert (cfg.seed, cfg.amp, cfg.log_every, cfg.train.hflip) == (3, "fp16", 7, 0.2)
    assert "config key train.seed moved to seed" in caplog.text
    assert load_config(PretrainConfig, None, ["log_every_steps=4"]).log_every == 4
    assert load_config(ProbeConfig, None, ["optim.amp=false"]).amp == "none"
    assert load_config(ProbeConfig, None, ["optim.amp=true"]).amp == "bf16"
    with pytest.raises(BtcxrError, match="train.seed moved to seed, and both are set"):
        load_config(FinetuneConfig, None, ["train.seed=1", "seed=2"])
    # a checkpoint's config of the older vocabulary compares equal to today's
    saved = {"train": {"seed": 0, "device": "auto", "amp": "bf16", "log_every": 20, "tensorboard": True,
                       "hflip": 0.5, "eval_every": 1}}
    now = dataclasses.asdict(FinetuneConfig())
    assert migrate_config_dict(FinetuneConfig, saved)["train"] == now["train"]


def test_probe_backbone_is_model_init_and_a_changed_resume_is_refused(tmp_path, capsys):
    from test_probe import make_nih_cache

    cache = make_nih_cache(tmp_path / "nih", n=(16, 8, 8), seed=1)
    args = ["probe", "--config", str(CONFIG_DIR / "probe/demo.yaml"), f"data.cache={cache}", "tensorboard=false",
            "model.size=32", "optim.epochs=2", "--out", str(tmp_path / "run")]
    assert main([*args, "--backbone", "random"]) == 0
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "init: random" in config
    rows = read_metrics(tmp_path / "run")
    capsys.readouterr()
    assert main([*args, "--resume", "optim.lr_head=0.1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr_head: 0.5 in the run, 0.1 now" in err and "Traceback" not in err
    assert (tmp_path / "run" / "config.yaml").read_text() == config  # the refused rerun rewrote nothing
    assert main(args) == 0  # the same command again: resumes at the end, scores again, writes each row once
    assert read_metrics(tmp_path / "run") == rows


def test_device_and_autocast():
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(BtcxrError, match="not a device name"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(BtcxrError, match="no CUDA GPU"):
            resolve_device("cuda")
    with autocast(torch.device("cpu"), "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32  # the CPU computes in fp32
    with pytest.raises(BtcxrError, match="amp must be one of"):
        autocast(torch.device("cpu"), "fp8")


# ------------------------------------------------------------------------------------------ two ranks
def _finetune_worker(rank: int, world: int, port: int, cache: str, out: str) -> None:
    join_gloo(rank, world, port)
    try:
        import btcxr.detect.train as train

        cfg = tiny_config(Path(cache), **{"optim.epochs": 3, "optim.batch_size": 4, "data.test_split": "''",
                                          "device": "cpu"})
        train.finetune(cfg, Path(out) / "straight")
        real, calls = train.train_one_epoch, {"n": 0}

        def interrupted(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt  # every rank stops after the checkpoint of epoch 2
            return real(*args, **kwargs)

        train.train_one_epoch = interrupted
        try:
            train.finetune(cfg, Path(out) / "resumed")
        except KeyboardInterrupt:
            pass
        train.train_one_epoch = real
        torch.manual_seed(1000 + rank)  # whatever the process did since, the checkpoint's RNG must win
        train.finetune(cfg, Path(out) / "resumed")
    finally:
        dist.destroy_process_group()


def test_two_rank_finetune_resumes_bit_identical_with_every_ranks_rng(tmp_path):
    cache = write_square_cache(tmp_path / "c", {"train": 8, "val": 2}, n_neg=0)
    mp.spawn(_finetune_worker, args=(2, free_port(), str(cache), str(tmp_path)), nprocs=2, join=True)
    straight, resumed = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert straight["epoch"] == resumed["epoch"] == 3
    assert len(resumed["rng"]) == 2 and not torch.equal(resumed["rng"][0]["torch"], resumed["rng"][1]["torch"])
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["phase"] == "epoch"] == [1, 2, 3]


def test_process_group_backend_can_be_chosen_and_a_bad_one_is_named(monkeypatch):
    """BTCXR_DIST_BACKEND: gloo for two ranks on one GPU (NCCL refuses them); an unknown name is refused
    before any process group is made."""
    from btcxr.engine import distributed
    from btcxr.errors import BtcxrError

    made = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: made.append(backend))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("BTCXR_DIST_BACKEND", "gloo")
    env = distributed.init_distributed("cpu")
    assert made == ["gloo"] and env.rank == 1 and env.world_size == 2
    monkeypatch.setenv("BTCXR_DIST_BACKEND", "mpi")
    with pytest.raises(BtcxrError, match="BTCXR_DIST_BACKEND='mpi': use nccl or gloo"):
        distributed.init_distributed("cpu")
    assert made == ["gloo"]
