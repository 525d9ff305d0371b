"""Bad input to the three training commands: each ends in exit code 2 and a message naming the file, key or
value, never a traceback, never a run that goes ahead on something it should have refused."""

from __future__ import annotations

import pytest
import torch
import torchvision
from test_finetune import write_square_cache
from test_pretrain import TINY, make_unlabeled_cache
from test_probe import make_nih_cache

from btcxr.cli import main
from btcxr.config_files import CONFIG_DIR


@pytest.fixture(scope="module")
def commands(tmp_path_factory) -> dict[str, list[str]]:
    base = tmp_path_factory.mktemp("bad")
    unlabeled = make_unlabeled_cache(base / "unlabeled", n=12, size=32)
    nih = make_nih_cache(base / "nih", n=(8, 4, 4), seed=1)
    vindr = write_square_cache(base / "vindr", {"train": 4, "val": 2})
    return {
        "pretrain": ["pretrain", "--config", str(CONFIG_DIR / "pretrain/demo.yaml"), f"data.cache={unlabeled}",
                     *TINY, "optim.epochs=1", "optim.batch_size=4", "model.projector=[16,8]"],
        "probe": ["probe", "--config", str(CONFIG_DIR / "probe/demo.yaml"), f"data.cache={nih}",
                  "tensorboard=false", "optim.epochs=1", "model.size=32"],
        "finetune": ["finetune", "--config", str(CONFIG_DIR / "finetune/demo.yaml"), f"data.cache={vindr}",
                     "tensorboard=false", "optim.epochs=1", "optim.batch_size=2", "model.size=64",
                     "model.fpn_channels=16", "model.box_head_dim=32", "data.test_split=''"],
    }


STAGES = ["pretrain", "probe", "finetune"]


def _fails(args: list[str], capsys, *expected: str) -> None:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    for text in expected:
        assert text in err, (text, err[-2000:])


@pytest.mark.parametrize("stage", STAGES)
def test_a_backbone_of_a_deeper_resnet_is_refused(stage, commands, tmp_path, capsys):
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    _fails([*commands[stage], "model.arch=resnet18", f"model.init={path}", "--out", str(tmp_path / "run")], capsys,
           "r34.pth does not fit", "another architecture")


@pytest.mark.parametrize("stage", STAGES)
def test_a_backbone_file_that_is_not_a_checkpoint_is_named(stage, commands, tmp_path, capsys):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a zip file")
    _fails([*commands[stage], f"model.init={path}", "--out", str(tmp_path / "run")], capsys,
           "garbage.pth cannot be read as a weights-only PyTorch file")


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("override,named", [("amp=fp8", "amp must be one of"), ("log_every=0", "log_every"),
                                            ("model.arch=resnet99", "model.arch"), ("nonsense=1", "nonsense"),
                                            ("seed=abc", "seed must be int"), ("device=tpu", "device=")])
def test_a_wrong_config_value_names_the_key(stage, override, named, commands, tmp_path, capsys):
    _fails([*commands[stage], override, "--out", str(tmp_path / "run")], capsys, named)


@pytest.mark.parametrize("stage", STAGES)
def test_a_missing_or_broken_config_file_is_named(stage, commands, tmp_path, capsys):
    args = commands[stage]
    missing = [*args[:2], str(tmp_path / "nope.yaml"), *args[3:], "--out", str(tmp_path / "r1")]
    _fails(missing, capsys, "nope.yaml does not exist")
    broken = tmp_path / "broken.yaml"
    broken.write_text("seed: [1,\n")
    _fails([*args[:2], str(broken), *args[3:], "--out", str(tmp_path / "r2")], capsys, "broken.yaml is not valid YAML")


@pytest.mark.parametrize("stage", STAGES)
def test_a_damaged_last_checkpoint_is_named_not_silently_restarted(stage, commands, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    _fails([*commands[stage], "--out", str(run)], capsys, "last.pt cannot be read")


@pytest.mark.parametrize("stage", STAGES)
def test_an_out_folder_that_is_a_file_is_named(stage, commands, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("x")
    _fails([*commands[stage], "--out", str(out)], capsys, f"run directory {out}")
