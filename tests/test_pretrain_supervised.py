"""`btcxr pretrain` with `method: supervised`, the benchmark's positive control: the backbone learns the labels,
its backbone.pth transfers like Barlow Twins' one, and the run engine resumes it exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torchvision
from fixtures_dist import free_port, join_gloo
from test_pretrain import TINY, make_unlabeled_cache
from test_probe import demo_cfg, make_nih_cache

from btcxr.classify.train import probe
from btcxr.config import load_config
from btcxr.config_files import CONFIG_DIR
from btcxr.engine.checkpoint import load_checkpoint
from btcxr.engine.runlog import read_metrics
from btcxr.errors import BtcxrError
from btcxr.pretrain.config import PretrainConfig
from btcxr.pretrain.run import pretrain

SUPERVISED = ["method=supervised", "views.policy=radiograph", "views.radiograph.crop_scale=[0.8,1]",
              "views.radiograph.rotation_deg=0", "views.radiograph.noise_p=0", "views.radiograph.blur_p=[0,0]",
              "model.projector=[8]"]


def _cfg(cache: Path, *overrides: str) -> PretrainConfig:
    return load_config(PretrainConfig, CONFIG_DIR / "pretrain/demo.yaml",
                       [f"data.cache={cache}", *TINY, *SUPERVISED, *overrides])


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    return make_nih_cache(tmp_path_factory.mktemp("sup") / "cache", n=(64, 24, 24), seed=3)


def test_supervised_init_learns_the_labels_and_beats_random_features(labelled, tmp_path):
    out = tmp_path / "sup"
    cfg = _cfg(labelled, "optim.epochs=12", "optim.batch_size=16", "optim.lr_weights=2.0", "optim.lr_biases=0.05",
               "optim.warmup_epochs=1")
    path = pretrain(cfg, out)
    losses = [r["loss"] for r in read_metrics(out, "train")]
    assert len(losses) == 12 * ((64 + 24) // 16)  # train + val: the splits prepare marks for pre-training
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4  # the labels are learnt
    state = torch.load(path, weights_only=True)
    result = torchvision.models.resnet18().load_state_dict(state, strict=False)
    assert result.missing_keys == ["fc.weight", "fc.bias"] and not result.unexpected_keys
    assert load_checkpoint(out / "last.pt")["kind"] == "btcxr-pretrain-supervised"
    # The monitors (labelled cache: with the k-NN probe) at the init and at the last step.
    first, last = read_metrics(out, "monitor")
    assert (first["step"], last["step"]) == (0, len(losses))
    assert last["knn_mean_auroc"] > first["knn_mean_auroc"] and 1 < last["rankme_backbone"] <= 512

    # The positive-control property on these labels: a linear probe of its frozen features beats one of
    # random features (same probe, same seed).
    auroc = {}
    for name, init in (("random", "random"), ("supervised", str(path))):
        results = probe(demo_cfg(labelled, f"model.init={init}", "model.size=32", "optim.epochs=10"),
                        tmp_path / f"probe_{name}")
        auroc[name] = results["test"]["mean_auroc"]
    assert auroc["supervised"] > auroc["random"] + 0.02, auroc


def test_supervised_run_resumes_to_the_same_weights(labelled, tmp_path, monkeypatch):
    import btcxr.engine.run as run_mod

    cfg = _cfg(labelled, "optim.epochs=2", "optim.batch_size=16", "checkpoint_every_steps=3")
    pretrain(cfg, tmp_path / "straight")
    real, calls = run_mod.save_checkpoint, {"n": 0}

    def save_then_die(path, state):
        real(path, state)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, tmp_path / "cut")
    monkeypatch.undo()
    pretrain(cfg, tmp_path / "cut")
    a, b = (load_checkpoint(tmp_path / run / "last.pt") for run in ("straight", "cut"))
    assert a["step"] == b["step"] == 10
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["step"] for r in read_metrics(tmp_path / "cut")] == [r["step"] for r in read_metrics(tmp_path / "straight")]


def test_supervised_needs_labels_and_loader_views(tmp_path):
    unlabeled = make_unlabeled_cache(tmp_path / "plain", n=12, size=32)
    with pytest.raises(BtcxrError, match="supervised pre-training"):
        pretrain(_cfg(unlabeled, "optim.epochs=1", "optim.batch_size=4"), tmp_path / "run")
    with pytest.raises(BtcxrError, match="views.on_gpu=false"):
        _cfg(unlabeled, "views.on_gpu=true")
    with pytest.raises(BtcxrError, match="method must be one of"):
        _cfg(unlabeled, "method=dino")


def test_a_resumed_run_whose_data_gives_other_steps_an_epoch_is_refused(labelled, tmp_path):
    """The cache may move on resume (data.cache is free to change), but one that gives another number of
    steps an epoch would change the rest of the schedule and the data order: refused, nothing rewritten."""
    out = tmp_path / "run"
    pretrain(_cfg(labelled, "optim.epochs=1", "optim.batch_size=16"), out)  # 88 images: 5 steps an epoch
    fewer = make_nih_cache(tmp_path / "fewer", n=(40, 8, 8), seed=4)  # 48 images: 3 steps an epoch
    before = (out / "last.pt").read_bytes(), (out / "metrics.jsonl").read_bytes()
    with pytest.raises(BtcxrError, match=r"the run had 5 steps an epoch, the data now gives 3"):
        pretrain(_cfg(fewer, "optim.epochs=1", "optim.batch_size=16"), out)
    assert ((out / "last.pt").read_bytes(), (out / "metrics.jsonl").read_bytes()) == before


def _counting_worker(rank: int, world: int, port: int, cache: str, out: str) -> None:
    """A two-rank supervised run that counts, on this rank, the means over ranks it asks for."""
    join_gloo(rank, world, port)
    try:
        import btcxr.engine.distributed as distributed
        import btcxr.pretrain.supervised as supervised

        calls: list[float] = []

        def counting(value: float, env) -> float:
            calls.append(value)
            return value  # no collective: a rank that asks alone must show in the count, not hang the test

        for module in (distributed, supervised):
            module.mean_over_ranks = counting  # supervised: its own import (before the shared monitor)
        pretrain(_cfg(Path(cache), "optim.epochs=1", "optim.batch_size=16", "log_every=2", "device=cpu"),
                 Path(out) / "run")
        (Path(out) / f"calls{rank}.json").write_text(json.dumps(len(calls)))
    finally:
        torch.distributed.destroy_process_group()


def test_the_loss_is_averaged_over_the_ranks_only_for_a_metrics_row(labelled, tmp_path):
    """Two gloo ranks, 5 steps, log_every=2: rows at steps 2, 4 and 5 (the last), and every rank joins
    exactly one mean of the loss per row (a collective on every step, or on the main rank alone, is not
    what the run engine promises)."""
    mp.spawn(_counting_worker, args=(2, free_port(), str(labelled), str(tmp_path)), nprocs=2, join=True)
    assert [r["step"] for r in read_metrics(tmp_path / "run", "train")] == [2, 4, 5]
    assert [json.loads((tmp_path / f"calls{rank}.json").read_text()) for rank in range(2)] == [3, 3]
