"""`btcxr pretrain` end to end on a tiny synthetic cache: falling loss, run directory, backbone.pth that
torchvision takes, exact resume, refusal of a changed config, stop on a non-finite loss, backbone inits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

from btcxr.backbones import build_resnet
from btcxr.cli import main
from btcxr.config import load_config
from btcxr.config_files import CONFIG_DIR
from btcxr.engine.checkpoint import load_checkpoint
from btcxr.engine.distributed import DistEnv
from btcxr.engine.runlog import read_metrics
from btcxr.errors import BtcxrError
from btcxr.pretrain import run as run_mod
from btcxr.pretrain.barlow_twins import loop as train_mod
from btcxr.pretrain.barlow_twins.loss import barlow_twins_loss
from btcxr.pretrain.config import PretrainConfig
from btcxr.pretrain.data import build_loader
from btcxr.pretrain.views import loader_transform, model_input

DEMO = CONFIG_DIR / "pretrain" / "demo.yaml"
PAPER = CONFIG_DIR / "pretrain" / "paper.yaml"
# Small enough for seconds on one CPU thread; views gentle enough that a few steps visibly learn.
TINY = ["model.arch=resnet18", "model.init=random", "model.size=32", "log_every=1", "corr_every_steps=0",
        "tensorboard=false", "data.workers=0", "channels_last=false"]
EASY_VIEWS = ["views.radiograph.crop_scale=[0.7,1]", "views.radiograph.rotation_deg=0",
              "views.radiograph.gamma_p=0", "views.radiograph.noise_p=0", "views.radiograph.blur_p=[0,0]"]


def make_unlabeled_cache(root: Path, n: int, size: int = 40, seed: int = 0) -> Path:
    """A prepared-cache folder (images/*.png + manifest.csv): stripes of random frequency and a bright blob,
    every eighth image in the test split (which pre-training must leave out)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    rows = []
    for i in range(n):
        fx, fy = rng.uniform(1, 3, 2)
        cx, cy = rng.uniform(0.2, 0.8, 2)
        img = 80 + 60 * np.sin(2 * np.pi * (xx * fx + yy * fy)) + rng.normal(0, 10, (size, size))
        img += 90 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.01)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"im{i:04d}.png")
        rows.append({"image_id": f"im{i:04d}", "file": f"images/im{i:04d}.png", "patient_id": i,
                     "split": "test" if i % 8 == 0 else "train", "labels": "", "orig_width": size,
                     "orig_height": size, "scale": 1.0})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root



@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_unlabeled_cache(tmp_path_factory.mktemp("cache"), n=72)


def tiny(cache: Path, *overrides: str) -> PretrainConfig:
    return load_config(PretrainConfig, DEMO, [f"data.cache={cache}", *TINY, *overrides])


def _fixed_batch_loss(cfg: PretrainConfig, model: torch.nn.Module) -> float:
    loader = build_loader(cfg, DistEnv(), loader_transform(cfg.views, cfg.model.size), cfg.optim.batch_size)
    loader.sampler.set_epoch(999)
    a, b = next(iter(loader))
    model.train()
    with torch.no_grad():
        emb = model(model_input(a), model_input(b))
        return barlow_twins_loss(emb.n1, emb.n2, cfg.lambd).loss.item()


def test_demo_run_learns_and_writes_a_torchvision_backbone(cache, tmp_path):
    out = tmp_path / "run"
    # lr 2.0 (the demo config's): the loss ratio below is about 0.33; at 8.0 it sat near the 0.8 bound.
    args = ["pretrain", "--config", str(DEMO), f"data.cache={cache}", *TINY, *EASY_VIEWS, "tensorboard=true",
            "optim.epochs=8", "optim.batch_size=32", "model.projector=[64,16]", "optim.lr_weights=2.0", "optim.lr_biases=0.1",
            "optim.eta=0.05", "optim.warmup_epochs=1", "corr_every_steps=4", "--out", str(out)]
    assert main(args) == 0
    cfg = load_config(PretrainConfig, out / "config.yaml")
    assert cfg.optim.epochs == 8 and cfg.model.projector == [64, 16] and cfg.data.cache == str(cache)

    rows = read_metrics(out, "train")
    assert [r["step"] for r in rows] == list(range(1, 9))  # 63 train images // 32: one step an epoch
    for key in ("loss", "on_diag", "off_diag", "lr_weights", "lr_biases", "pairs_per_s", "embed_std"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert rows[0]["loss"] == pytest.approx(rows[0]["on_diag"] + 0.0051 * rows[0]["off_diag"], rel=1e-5)
    losses = [r["loss"] for r in rows]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    # the same fixed batch of views, before and after: the trained model decorrelates them better
    torch.manual_seed(cfg.seed)
    model = train_mod.build_model(cfg)
    before = _fixed_batch_loss(cfg, model)
    model.load_state_dict(load_checkpoint(out / "last.pt")["model"])
    assert _fixed_batch_loss(cfg, model) < 0.8 * before

    assert (out / "corr_4.png").is_file() and (out / "corr_8.png").is_file()
    assert any((out / "tb").iterdir())
    state = torch.load(out / "backbone.pth", weights_only=True)
    result = torchvision.models.resnet18().load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    trained = load_checkpoint(out / "last.pt")["model"]
    assert torch.equal(state["layer4.1.conv2.weight"], trained["backbone.layer4.1.conv2.weight"])


class Killed(Exception):
    pass


def _kill_after_saving(monkeypatch, step: int) -> None:
    import btcxr.engine.run as run_mod

    real = run_mod.save_checkpoint

    def save_then_die(path, state):
        real(path, state)
        if Path(path).name == "last.pt" and state["step"] == step:
            raise Killed

    monkeypatch.setattr(run_mod, "save_checkpoint", save_then_die)


RESUME = ["optim.epochs=2", "optim.batch_size=8", "model.projector=[32,16]", "checkpoint_every_steps=2",
          "monitor_every=3"]  # 4 steps/epoch; monitor rows at steps 0, 3, 6 and 8


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "last.pt")["model"]


def _losses(run: Path) -> list[tuple[int, float, float]]:
    return [(r["step"], r["loss"], r["lr_weights"]) for r in read_metrics(run, "train")]


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory) -> Path:
    return make_unlabeled_cache(tmp_path_factory.mktemp("small"), n=40, size=32)  # 35 train images


@pytest.fixture(scope="module")
def straight_run(small_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    torch.set_num_threads(1)
    run_mod.pretrain(tiny(small_cache, *RESUME), out)
    return out


@pytest.mark.parametrize("kill_at", [4, 2], ids=["after-epoch-1", "mid-epoch-1"])
def test_killed_and_resumed_run_equals_the_straight_run(small_cache, tmp_path, monkeypatch, straight_run,
                                                        kill_at):
    out = tmp_path / "run"
    cfg = tiny(small_cache, *RESUME)
    _kill_after_saving(monkeypatch, kill_at)
    with pytest.raises(Killed):
        run_mod.pretrain(cfg, out)
    assert load_checkpoint(out / "last.pt")["step"] == kill_at
    monkeypatch.undo()
    run_mod.pretrain(cfg, out, resume=True)
    assert _losses(out) == _losses(straight_run)
    monitors = read_metrics(straight_run, "monitor")
    assert [r["step"] for r in monitors] == [0, 3, 6, 8]
    assert read_metrics(out, "monitor") == monitors  # every monitor row once, bit-identical
    a, b = _weights(out), _weights(straight_run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    opt_a = load_checkpoint(out / "last.pt")["optimizer"]["state"]
    opt_b = load_checkpoint(straight_run / "last.pt")["optimizer"]["state"]
    assert all(torch.equal(opt_a[k]["mu"], opt_b[k]["mu"]) for k in opt_a)


def test_a_changed_config_is_refused_and_a_missing_checkpoint_cannot_be_resumed(small_cache, tmp_path,
                                                                                straight_run):
    with pytest.raises(BtcxrError, match=r"another config \(lambd: 0.0051 in the run, 0.01 now"):
        run_mod.pretrain(tiny(small_cache, *RESUME, "lambd=0.01"), straight_run)
    with pytest.raises(BtcxrError, match="nothing to resume"):
        run_mod.pretrain(tiny(small_cache, *RESUME), tmp_path / "empty", resume=True)


def test_finished_run_found_again_only_rewrites_the_backbone(small_cache, straight_run):
    before = _weights(straight_run)
    (straight_run / "backbone.pth").unlink()
    path = run_mod.pretrain(tiny(small_cache, *RESUME, "data.workers=1"), straight_run)  # may change
    assert path == straight_run / "backbone.pth" and path.is_file()
    after = _weights(straight_run)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(small_cache, tmp_path,
                                                                                monkeypatch):
    real = train_mod.barlow_twins_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:
            return terms._replace(loss=terms.loss * float("nan"))
        return terms

    monkeypatch.setattr(train_mod, "barlow_twins_loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(BtcxrError, match=r"non-finite loss \(nan\) at step 4 .*last good state \(step 2\)"):
        run_mod.pretrain(tiny(small_cache, *RESUME), out)
    assert load_checkpoint(out / "last.pt")["step"] == 2
    assert [r["step"] for r in read_metrics(out, "train")] == [1, 2, 3]


def test_paper_config_holds_the_paper_recipe():
    cfg = load_config(PretrainConfig, PAPER, ["data.cache=/data/cache/nih224"])
    assert (cfg.model.arch, cfg.model.init, cfg.model.projector) == ("resnet50", "imagenet", [8192, 8192, 8192])
    assert (cfg.optim.batch_size, cfg.optim.epochs, cfg.model.size, cfg.views.policy, cfg.amp) == (768, 800, 224, "paper", "bf16")
    o = cfg.optim
    assert (o.lr_weights, o.lr_biases, o.weight_decay, o.momentum, o.eta) == (0.2, 0.0048, 1e-6, 0.9, 0.001)
    assert (o.warmup_epochs, o.final_lr_ratio, cfg.lambd) == (10, 0.001, 0.0051)
    with pytest.raises(BtcxrError, match="views.policy"):
        load_config(PretrainConfig, PAPER, ["views.policy=fancy"])


def test_a_missing_cache_is_named_before_any_model_is_built(tmp_path):
    cfg = load_config(PretrainConfig, PAPER)  # the placeholder cache path, ImageNet init (never reached)
    with pytest.raises(BtcxrError, match="/path/to/cache/nih224: not a prepared cache"):
        run_mod.pretrain(cfg, tmp_path / "run")


# --------------------------------------------------------------------------- backbone inits it can read
def _bn_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    return {k: (torch.randn_like(v) if v.is_floating_point() else v) for k, v in model.state_dict().items()}


def test_backbone_inits_torchvision_barlow_twins_layouts_and_imagenet_file(tmp_path, monkeypatch):
    reference = _bn_state(torchvision.models.resnet18())
    no_fc = {k: v for k, v in reference.items() if not k.startswith("fc.")}

    def same(model):
        got = model.state_dict()
        return all(torch.equal(got[k], v) for k, v in no_fc.items())

    # a plain torchvision state dict (with fc)
    torch.save(reference, tmp_path / "tv.pth")
    assert same(build_resnet("resnet18", init=str(tmp_path / "tv.pth")))
    # the original Barlow Twins release: resnet50.pth = backbone state dict without fc ...
    torch.save(no_fc, tmp_path / "bt_backbone.pth")
    assert same(build_resnet("resnet18", init=str(tmp_path / "bt_backbone.pth")))
    # ... and its training checkpoint.pth: DDP keys module.backbone.*, plus projector and bn
    ckpt = {"epoch": 3, "model": {**{f"module.backbone.{k}": v for k, v in no_fc.items()},
                                  "module.projector.0.weight": torch.zeros(8, 512),
                                  "module.bn.running_mean": torch.zeros(8)}, "optimizer": {}}
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    assert same(build_resnet("resnet18", init=str(tmp_path / "checkpoint.pth")))
    # ImageNet weights from the torch hub cache (what --init-weights or an offline cluster provides)
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(reference, hub / "resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert same(build_resnet("resnet18", init="imagenet"))
    assert same(build_resnet("resnet18", init="imagenet", weights_file=tmp_path / "tv.pth"))
    with pytest.raises(BtcxrError, match="does not fit"):
        build_resnet("resnet34", init=str(tmp_path / "tv.pth"))


def test_run_from_a_weights_file_with_views_made_on_the_device(cache, tmp_path):
    """model.init=imagenet read from a file (--init-weights), views.on_gpu (here on the CPU), channels_last."""
    reference = _bn_state(torchvision.models.resnet18())
    torch.save(reference, tmp_path / "imagenet.pth")
    over = ["optim.epochs=2", "optim.batch_size=32", "model.projector=[16]", "model.init=imagenet", "channels_last=true",
            f"model.weights_file={tmp_path / 'imagenet.pth'}", "views.on_gpu=true", "views.policy=paper"]
    model = train_mod.build_model(tiny(cache, *over))
    assert torch.equal(model.backbone.conv1.weight, reference["conv1.weight"])
    assert [type(m).__name__ for m in model.projector] == ["Linear"]  # widths [16]: one layer
    runs = [run_mod.pretrain(tiny(cache, *over), tmp_path / name).parent for name in ("a", "b")]
    rows = read_metrics(runs[0], "train")
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
    assert [r["loss"] for r in rows] == [r["loss"] for r in read_metrics(runs[1], "train")]  # seeded draws
    trained = torch.load(runs[0] / "backbone.pth", weights_only=True)["conv1.weight"]
    assert not torch.equal(trained, reference["conv1.weight"])
    assert torch.allclose(trained, reference["conv1.weight"], rtol=0.05, atol=0.05)  # two small LARS steps


def test_intermediate_backbones_at_the_chosen_steps_start_with_the_init(small_cache, tmp_path):
    out = tmp_path / "run"
    run_mod.pretrain(tiny(small_cache, *RESUME, "backbone_steps=[0,3,8]"), out)
    steps = {p.name: load_checkpoint(p) for p in out.glob("backbone_step*.pth")}
    assert set(steps) == {"backbone_step0.pth", "backbone_step3.pth", "backbone_step8.pth"}
    torch.manual_seed(0)  # the run's seed: step 0 is the untrained init itself
    init = build_resnet("resnet18", init="random").state_dict()
    assert torch.equal(steps["backbone_step0.pth"]["conv1.weight"], init["conv1.weight"])
    final = load_checkpoint(out / "backbone.pth")
    assert all(torch.equal(final[k], steps["backbone_step8.pth"][k]) for k in final)  # the last step
    assert not torch.equal(steps["backbone_step3.pth"]["conv1.weight"], init["conv1.weight"])
