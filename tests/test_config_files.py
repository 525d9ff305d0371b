"""Packaged configs: what a --config value resolves to, `btcxr configs` / `configs show`, and every command
that takes --config accepting a name."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import btcxr
from btcxr.cli import main
from btcxr.config import load_config
from btcxr.config_files import CONFIG_DIR, KINDS, packaged_config, packaged_configs, resolve_config
from btcxr.errors import BtcxrError
from btcxr.experiment.spec import load_experiment

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = ["experiments/demo", "experiments/paper", "experiments/synthetic", "experiments/synthetic-methods",
               "experiments/paper-methods"]


# ------------------------------------------------------------------------------------ what ships
def test_the_configs_live_in_the_package_and_the_clone_only_links_to_them():
    assert CONFIG_DIR == Path(btcxr.__file__).parent / "configs"
    root = REPO / "configs"
    assert root.is_symlink() and root.resolve() == CONFIG_DIR.resolve()   # one source of truth


def test_every_shipped_yaml_is_listed_with_a_one_line_description():
    on_disk = sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml"))
    listed = packaged_configs()
    assert sorted(listed) == on_disk and {"pretrain/paper", "experiments/demo", "finetune/paper_640"} <= set(listed)
    assert {name.split("/")[0] for name in listed} == set(KINDS)
    for name, description in listed.items():
        first = (CONFIG_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines()[0]
        assert first == f"# {description}" and len(description) > 20, name


# ------------------------------------------------------------------------------------ resolving
def test_a_packaged_name_with_or_without_kind_and_suffix():
    paper = CONFIG_DIR / "pretrain" / "paper.yaml"
    assert resolve_config("pretrain/paper") == paper
    assert resolve_config("pretrain/paper.yaml") == paper
    assert resolve_config("paper", "pretrain") == paper
    assert resolve_config("paper.yaml", "pretrain") == paper
    assert resolve_config("paper", "experiments") == CONFIG_DIR / "experiments" / "paper.yaml"
    assert resolve_config("paper", "probe") == CONFIG_DIR / "probe" / "paper.yaml"
    assert resolve_config("paper_640", "finetune") == CONFIG_DIR / "finetune" / "paper_640.yaml"
    assert resolve_config("synthetic", "experiments") == CONFIG_DIR / "experiments" / "synthetic.yaml"
    assert resolve_config("synthetic") == CONFIG_DIR / "experiments" / "synthetic.yaml"   # unique without a kind
    assert resolve_config("finetune/demo", "pretrain") == CONFIG_DIR / "finetune" / "demo.yaml"  # kind/name wins


def test_an_existing_file_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "pretrain" / "paper.yaml"
    mine.parent.mkdir()
    mine.write_text("epochs: 1\n")
    assert resolve_config("pretrain/paper.yaml", "pretrain") == Path("pretrain/paper.yaml")   # relative to cwd
    assert resolve_config(str(mine), "pretrain") == mine                                    # absolute
    assert resolve_config("pretrain/paper", "pretrain") == CONFIG_DIR / "pretrain" / "paper.yaml"  # a name


def test_stage_configs_resolve_next_to_the_experiment_file(tmp_path, monkeypatch):
    """How `btcxr reproduce` finds `../pretrain/demo.yaml`: relative to the experiment's folder, in the
    package and in a user's own tree, and the packaged file when a copied experiment stands alone."""
    monkeypatch.chdir(tmp_path)
    packaged = resolve_config("../pretrain/demo.yaml", "pretrain", base=CONFIG_DIR / "experiments")
    assert packaged.resolve() == (CONFIG_DIR / "pretrain" / "demo.yaml").resolve()

    own = tmp_path / "mine" / "pretrain" / "demo.yaml"
    own.parent.mkdir(parents=True)
    own.write_text("epochs: 1\n")
    (tmp_path / "mine" / "experiments").mkdir()
    found = resolve_config("../pretrain/demo.yaml", "pretrain", base=tmp_path / "mine" / "experiments")
    assert found.resolve() == own.resolve()

    alone = resolve_config("../pretrain/demo.yaml", "pretrain", base=tmp_path)
    assert alone == CONFIG_DIR / "pretrain" / "demo.yaml"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_stage_config_of_a_shipped_experiment_resolves(name):
    path = packaged_config(name)
    exp = load_experiment(path)
    for kind, section in (("pretrain", exp.pretrain), ("finetune", exp.finetune), ("probe", exp.probe)):
        found = resolve_config(section.config, kind, base=path.parent)
        assert found.resolve().parent == (CONFIG_DIR / kind).resolve(), (name, kind, found)


def test_an_unknown_name_lists_the_known_ones_of_its_kind_first():
    with pytest.raises(BtcxrError) as err:
        resolve_config("nope", "probe")
    text = str(err.value)
    assert text.startswith("config file nope does not exist (looked in .)") and "btcxr configs" in text
    assert text.index("probe/demo") < text.index("experiments/demo")
    assert all(name in text for name in packaged_configs())
    with pytest.raises(BtcxrError, match="Known probe configs: probe/demo, probe/paper;"):
        resolve_config("probe/nope.yaml")
    with pytest.raises(BtcxrError, match="paper_640 does not exist.*Known pretrain configs"):
        resolve_config("paper_640", "pretrain")   # a finetune name is not a pretrain one
    with pytest.raises(BtcxrError, match=r"looked in \. and /nowhere"):
        resolve_config("../pretrain/nope.yaml", "pretrain", base="/nowhere")


def test_a_bare_name_of_several_kinds_needs_the_kind():
    with pytest.raises(BtcxrError, match="ambiguous: it could be experiments/paper, pretrain/paper or probe/paper"):
        resolve_config("paper")
    with pytest.raises(BtcxrError, match="'demo'.*ambiguous"):
        packaged_config("demo")
    with pytest.raises(ValueError, match="kind must be one of"):
        resolve_config("paper", "pretrian")


# ------------------------------------------------------------------------------------ btcxr configs
def test_configs_lists_every_name_with_its_description_aligned(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip() and "/" in line.split()[0]}
    listed = packaged_configs()
    assert set(lines) == set(listed)
    columns = {line.index(listed[name]) for name, line in lines.items()}
    assert len(columns) == 1                          # descriptions start in one column
    assert str(CONFIG_DIR) in out


def test_configs_show_prints_the_file_verbatim(capsys):
    assert main(["configs", "show", "pretrain/demo"]) == 0
    assert capsys.readouterr().out == (CONFIG_DIR / "pretrain" / "demo.yaml").read_text(encoding="utf-8")
    assert main(["configs", "show", "experiments/synthetic.yaml"]) == 0
    assert capsys.readouterr().out == (CONFIG_DIR / "experiments" / "synthetic.yaml").read_text(encoding="utf-8")


def test_configs_show_of_an_unknown_name_is_a_clear_error(capsys):
    assert main(["configs", "show", "pretrain/nope"]) == 2
    err = capsys.readouterr().err
    assert "'pretrain/nope'" in err and "pretrain/demo, pretrain/paper" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------ --config NAME
def test_training_commands_take_a_name(monkeypatch, tmp_path, capsys):
    """pretrain / probe / finetune --config paper reach their library function with the packaged file."""
    seen = {}

    def record(stage):
        def run(cfg, out, resume=False):
            seen[stage] = cfg
            (Path(out) / "results.md").parent.mkdir(parents=True, exist_ok=True)
            (Path(out) / "results.md").write_text("ok")
            return Path(out) / "best.pt"
        return run

    monkeypatch.setattr("btcxr.pretrain.run.pretrain", record("pretrain"))
    monkeypatch.setattr("btcxr.classify.train.probe", record("probe"))
    monkeypatch.setattr("btcxr.detect.train.finetune", record("finetune"))
    cache = tmp_path / "cache"
    cache.mkdir()
    assert main(["pretrain", "--config", "paper", "--cache", str(cache), "--out", str(tmp_path / "p")]) == 0
    assert main(["probe", "--config", "paper", f"data.cache={cache}", "--out", str(tmp_path / "c")]) == 0
    assert main(["finetune", "--config", "paper_224", "--cache", str(cache), "--out", str(tmp_path / "f")]) == 0
    assert (seen["pretrain"].name, seen["pretrain"].optim.batch_size, seen["pretrain"].optim.epochs) == ("paper", 768, 800)
    assert (seen["probe"].model.arch, seen["probe"].optim.epochs) == ("resnet50", 30)
    assert seen["finetune"].model.size == 224

    assert main(["finetune", "--config", "paper", "--out", str(tmp_path / "g")]) == 2
    assert "Known finetune configs: finetune/demo, finetune/paper_224, finetune/paper_640" in capsys.readouterr().err


def test_demo_and_reproduce_run_the_packaged_experiment(monkeypatch, tmp_path):
    calls = []

    def fake_reproduce(exp_path, overrides=(), out=None, **kwargs):
        calls.append(Path(exp_path))
        return Path(out or ".") / "report" / "index.html"

    monkeypatch.setattr("btcxr.experiment.local.reproduce", fake_reproduce)
    monkeypatch.chdir(tmp_path)   # an unrelated folder: nothing named configs/ here
    assert main(["demo", "--out", "d"]) == 0
    assert main(["reproduce", "--config", "synthetic", "--out", "s"]) == 0
    assert main(["reproduce", "--config", "paper", "--out", "p"]) == 0
    assert calls == [CONFIG_DIR / "experiments" / "demo.yaml", CONFIG_DIR / "experiments" / "synthetic.yaml",
                     CONFIG_DIR / "experiments" / "paper.yaml"]


@pytest.mark.parametrize("cls, old, new, read", [
    ("pretrain", "epochs=7", "optim.epochs", lambda c: c.optim.epochs == 7),
    ("pretrain", "batch_size=64", "optim.batch_size", lambda c: c.optim.batch_size == 64),
    ("pretrain", "data.num_workers=3", "data.workers", lambda c: c.data.workers == 3),
    ("pretrain", "views.size=96", "model.size", lambda c: c.model.size == 96),
    ("probe", "data.input_size=96", "model.size", lambda c: c.model.size == 96),
])
def test_old_config_keys_load_with_a_warning_naming_the_new_one(cls, old, new, read, caplog):
    """One vocabulary in every stage (optim.epochs, optim.batch_size, data.workers, model.size); configs and
    run folders written with the old keys keep working."""
    from btcxr.classify.config import ProbeConfig
    from btcxr.pretrain.config import PretrainConfig

    config_cls, name = {"pretrain": (PretrainConfig, "pretrain/demo"), "probe": (ProbeConfig, "probe/demo")}[cls]
    with caplog.at_level(logging.WARNING, logger="btcxr"):
        cfg = load_config(config_cls, resolve_config(name, "pretrain" if cls == "pretrain" else "probe"), [old])
    assert read(cfg)
    assert f"config key {old.split('=')[0]} moved to {new}" in caplog.text
