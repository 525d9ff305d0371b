"""The shared machinery: configs, atomic checkpoints, RNG capture, schedules, metrics log, backbones."""

import json
import math
import random
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torchvision

from btcxr.backbones import DEFAULT_IMAGENET, backbone_state_dict, build_resnet
from btcxr.config import load_config, save_config
from btcxr.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from btcxr.engine.runlog import MetricsLog, read_metrics
from btcxr.engine.schedule import warmup_cosine
from btcxr.errors import BtcxrError


@dataclass
class _Optim:
    lr: float = 0.1
    betas: tuple[float, ...] = (0.9, 0.99)


@dataclass
class _Cfg:
    name: str = "x"
    epochs: int = 3
    optim: _Optim = field(default_factory=_Optim)
    init: str | None = None


def test_config_yaml_overrides_and_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\noptim:\n  lr: 1\n")
    cfg = load_config(_Cfg, path, ["optim.betas=[0.5, 0.6]", "init=imagenet"])
    assert cfg == _Cfg(epochs=7, optim=_Optim(lr=1.0, betas=(0.5, 0.6)), init="imagenet")
    assert isinstance(cfg.optim.lr, float)
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(_Cfg, tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize("override, message", [
    (["epochs=abc"], "epochs must be int"),
    (["optim.momentum=1"], "unknown config key optim.momentum"),
    (["epochs"], "key.sub=value"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(BtcxrError, match=message):
        load_config(_Cfg, None, override)


def test_checkpoint_is_atomic_and_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"w": torch.ones(3), "step": 5})
    assert load_checkpoint(path)["step"] == 5

    def broken_save(obj, f):
        f.write(b"partial")
        raise RuntimeError("killed")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"w": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left behind


def test_checkpoint_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BtcxrError, match="bad.pt"):
        load_checkpoint(bad)
    with pytest.raises(BtcxrError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    first = (random.random(), np.random.rand(), torch.rand(2).tolist())
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(2).tolist()) == first


def test_warmup_cosine_schedule():
    lr = warmup_cosine(peak=1.0, total_steps=110, warmup_steps=10, final=0.001, warmup_start=0.0)
    assert len(lr) == 110
    assert lr[0] == 0.0 and lr[5] == pytest.approx(0.5)
    assert lr[10] == pytest.approx(1.0) and lr[-1] == pytest.approx(0.001)
    k = 60 - 10  # half-way through the cosine
    assert lr[60] == pytest.approx(0.001 + 0.5 * 0.999 * (1 + math.cos(math.pi * k / 99)))
    assert np.all(np.diff(lr[10:]) <= 0)


def test_metrics_log_writes_jsonl_and_tensorboard(tmp_path):
    log = MetricsLog(tmp_path)
    log.log(1, loss=torch.tensor(2.5), lr=0.1)
    log.log(2, phase="val", ap50=0.3)
    log.close()
    rows = read_metrics(tmp_path)
    assert rows[0] == {"phase": "train", "step": 1, "loss": 2.5, "lr": 0.1}
    assert read_metrics(tmp_path, "val") == [{"phase": "val", "step": 2, "ap50": 0.3}]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])["ap50"] == 0.3
    assert any((tmp_path / "tb").iterdir())


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith("fc."))


def test_backbone_reads_barlow_twins_and_torchvision_layouts(tmp_path):
    torch.manual_seed(0)
    source = build_resnet("resnet18", "random")
    state = backbone_state_dict(source)
    # Original Barlow Twins training checkpoint: DDP + backbone prefixes, projector and bn heads.
    bt = {"model": {f"module.backbone.{k}": v for k, v in state.items()}
          | {"module.projector.0.weight": torch.zeros(8, 512), "module.bn.running_mean": torch.zeros(8)}}
    torch.save(bt, tmp_path / "checkpoint.pth")
    assert _same_weights(build_resnet("resnet18", str(tmp_path / "checkpoint.pth")), source)
    # A plain torchvision state dict with fc.
    plain = torchvision.models.resnet18()
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    assert _same_weights(build_resnet("resnet18", str(tmp_path / "plain.pth")), plain)
    # What backbone.pth holds loads into torchvision with only fc missing.
    missing = torchvision.models.resnet18().load_state_dict(state, strict=False)
    assert sorted(missing.missing_keys) == ["fc.bias", "fc.weight"] and not missing.unexpected_keys


def test_backbone_of_the_wrong_arch_is_refused(tmp_path):
    torch.save(backbone_state_dict(build_resnet("resnet18", "random")), tmp_path / "r18.pth")
    with pytest.raises(BtcxrError, match=r"r18.pth does not fit this resnet50.*missing.*another shape"):
        build_resnet("resnet50", str(tmp_path / "r18.pth"))


def test_imagenet_init_uses_torchvision_weights_enum_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.get_model_weights("resnet18")[DEFAULT_IMAGENET["resnet18"]]
    local = torchvision.models.resnet18()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(local.state_dict(), tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1])
    assert _same_weights(build_resnet("resnet18", "imagenet"), local)
    # The same weights given as a file, as on an offline cluster.
    torch.save(local.state_dict(), tmp_path / "in1k.pth")
    assert _same_weights(build_resnet("resnet18", "imagenet", weights_file=tmp_path / "in1k.pth"), local)
