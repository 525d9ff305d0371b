"""`btcxr reproduce`: the experiment grid, sharding, the ImageNet fallback, the plan, and the demo pipeline end
to end."""

import dataclasses
import json
import pickle
from pathlib import Path

import pandas as pd
import pytest
import torch

from btcxr.config_files import CONFIG_DIR
from btcxr.engine.checkpoint import load_checkpoint
from btcxr.engine.runlog import read_metrics
from btcxr.errors import BtcxrError
from btcxr.experiment import data_stage, grids, pretrain_stage, report_stage, results
from btcxr.experiment import local as launcher
from btcxr.experiment.markers import DONE, Role
from btcxr.experiment.plan import Plan
from btcxr.experiment.spec import DetectionRun, Experiment, detection_grid, load_experiment, shard
from btcxr.experiment.stages import make_plan, upstream_pending

CONFIGS = CONFIG_DIR / "experiments"


@pytest.mark.parametrize("name", ["demo", "synthetic", "paper"])
def test_shipped_experiments_load_and_their_stage_configs_exist(name):
    exp = load_experiment(CONFIGS / f"{name}.yaml")
    for section in (exp.pretrain, exp.finetune, exp.probe):
        assert (CONFIGS / section.config).is_file()
    paper_rule = [r for r in detection_grid(exp) if r.rule == "paper"]
    assert len(paper_rule) == len(exp.inits) * len(exp.sizes) * len(exp.fractions) * len(exp.seeds)


def test_shards_partition_the_grid():
    exp = Experiment(fractions=[0.1, 1.0], seeds=[0, 1, 2])
    grid = detection_grid(exp)
    parts = [shard(grid, i, 4) for i in range(4)]
    assert sorted(r.run_id for p in parts for r in p) == sorted(r.run_id for r in grid)
    assert len({r.run_id for r in grid}) == len(grid) == 18
    with pytest.raises(BtcxrError, match="shard 4/4"):
        shard(grid, 4, 4)


def test_experiment_errors_name_the_setting(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("inits: {random: random}\nbaseline: imagenet\n")
    with pytest.raises(BtcxrError, match="baseline 'imagenet' is not one of the inits"):
        load_experiment(bad)
    with pytest.raises(BtcxrError, match=r"fractions must lie in \(0, 1\]"):
        load_experiment(CONFIGS / "demo.yaml", ["fractions=[0, 1.0]"])


def _no_imagenet(monkeypatch):
    def offline(arch, name):
        raise BtcxrError(f"cannot load ImageNet weights {name} (no network) (hint)")

    monkeypatch.setattr("btcxr.backbones._imagenet_state", offline)


# The earlier synthetic.yaml: ImageNet, ours and random, ImageNet the baseline, random the fallback.
RANDOM_FALLBACK = ["inits={imagenet: imagenet, btcxr: btcxr, random: random}", "baseline=imagenet",
                   "imagenet_fallback=random", "localisation.inits=[imagenet, btcxr]"]


def test_imagenet_fallback_drops_duplicate_init_and_moves_the_baseline(monkeypatch, tmp_path):
    _no_imagenet(monkeypatch)
    plan = make_plan(CONFIGS / "synthetic.yaml", RANDOM_FALLBACK, tmp_path, arch_names={"resnet18"})
    assert plan.inits == {"btcxr": "btcxr", "random": "random"}
    assert plan.baseline == "random"
    assert "ImageNet weights could not be loaded" in plan.notes[-2]   # after the experiment's own notes
    assert all(r.init != "imagenet" for r in grids.detection_runs(plan))


def test_shipped_synthetic_experiment_has_every_arm_offline(monkeypatch, tmp_path):
    """What the README's tables rest on: 4 arms with the positive control, >= 3 seeds that each pre-train
    their own arms, a fraction at or below 10 % and the probe curve, with the stand-in in place of ImageNet."""
    _no_imagenet(monkeypatch)
    # planned as a launcher does: the stand-in's data and pre-training are noted as to do, not run
    plan = make_plan(CONFIGS / "synthetic.yaml", (), tmp_path, arch_names={"resnet18"})
    exp = plan.exp
    assert upstream_pending(plan) == {"data", "pretrain"} and not (tmp_path / "data").exists()
    assert plan.inits == {"random": "random", "imagenet": "imagenet", "btcxr": "btcxr", "supervised": "supervised"}
    assert plan.imagenet_replaced is None and "stand-in" in plan.notes[-2]
    # every seed pre-trains its own stand-in, ours and positive control (issue 23)
    assert exp.pretrain_per_seed and [p.name for p in plan.pretrainings] == [
        f"{name}_seed{s}" for s in exp.seeds for name in ("pretrain_natural", "pretrain", "pretrain_supervised")]
    assert "Seeds replicate whole arms" in plan.notes[-1]
    assert len(exp.seeds) >= 3 and min(exp.fractions) <= 0.1 and exp.probe.curve_fraction
    runs = [r.run for r in grids.detection_runs(plan)]
    assert {r.rule for r in runs} == {"paper"} and len(runs) == 4 * 2 * 4


def test_shipped_methods_experiment_is_the_synthetic_protocol_with_every_method(monkeypatch, tmp_path):
    """synthetic-methods.yaml: synthetic.yaml's data, seeds, positive control and fine-tuning (at 10 %), with
    VICReg, SimCLR and BYOL pre-trained exactly as ours is (same start, cache, epochs, views and optimizer)
    except for the method, its heads and its own settings; once per arm, to fit the CPU budget."""
    _no_imagenet(monkeypatch)
    base = make_plan(CONFIGS / "synthetic.yaml", (), tmp_path / "a", arch_names={"resnet18"})
    plan = make_plan(CONFIGS / "synthetic-methods.yaml", (), tmp_path / "b", arch_names={"resnet18"})
    exp = plan.exp
    assert plan.inits == {**base.inits, "vicreg": "vicreg", "simclr": "simclr", "byol": "byol"}
    assert plan.baseline == base.baseline and "supervised" in plan.inits
    for key in ("seeds", "sizes", "rules", "data", "finetune", "supervised"):
        assert getattr(exp, key) == getattr(base.exp, key), key
    assert not exp.pretrain_per_seed
    assert exp.fractions == [0.1] and 0.1 in base.exp.fractions  # the fraction where the benchmark sees transfer
    names = ("pretrain_natural", "pretrain", "pretrain_vicreg", "pretrain_simclr", "pretrain_byol", "pretrain_supervised")
    assert [p.name for p in plan.pretrainings] == list(names)
    units = {p.name: p.cfg for p in plan.pretrainings}
    ours = units["pretrain"]
    assert ours.model.init.endswith("pretrain_natural/backbone.pth")
    for method in ("vicreg", "simclr", "byol"):
        cfg = units[f"pretrain_{method}"]
        assert cfg.method == method and cfg.seed == ours.seed
        for key in ("model.init", "data.cache", "optim", "views", "model.size", "model.arch"):
            a, b = cfg, ours
            for part in key.split("."):
                a, b = getattr(a, part), getattr(b, part)
            assert a == b, (method, key)
    runs = [r.run for r in grids.detection_runs(plan)]
    assert len(runs) == 7 * 1 * 4
    # the paper's grid with every method: it loads and names each method's packaged recipe
    paper = load_experiment(CONFIGS / "paper-methods.yaml")
    assert {"vicreg", "simclr", "byol", "btcxr", "supervised", "imagenet", "random"} == set(paper.inits.values())
    assert [paper.vicreg.config, paper.simclr.config, paper.byol.config] == [
        "../pretrain/vicreg.yaml", "../pretrain/simclr.yaml", "../pretrain/byol.yaml"]


def test_imagenet_fallback_replaces_when_random_is_not_compared(monkeypatch, tmp_path):
    _no_imagenet(monkeypatch)
    overrides = [*RANDOM_FALLBACK, "inits={imagenet: imagenet, btcxr: btcxr}"]
    plan = make_plan(CONFIGS / "synthetic.yaml", overrides, tmp_path, arch_names={"resnet18"})
    assert plan.inits == {"imagenet": "random", "btcxr": "btcxr"} and plan.baseline == "imagenet"
    with pytest.raises(BtcxrError, match="imagenet_fallback"):
        make_plan(CONFIGS / "synthetic.yaml", [*overrides, "imagenet_fallback=null"], tmp_path, arch_names={"resnet18"})


# ------------------------------------------------------------------------------------------ the plan
def test_the_plan_is_immutable_and_pickles_whole(tmp_path):
    plan = make_plan(CONFIGS / "demo.yaml", (), tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.baseline = "btcxr"
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.runs = ()
    with pytest.raises(TypeError):
        plan.inits["imagenet"] = "imagenet"          # a FrozenDict: no item assignment
    with pytest.raises(AttributeError):
        plan.backbones.update({"btcxr": tmp_path})   # ... and none of dict's mutators
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.runs[0].key = "other"
    assert isinstance(plan.runs, tuple) and isinstance(plan.notes, tuple)
    assert [r.run_id for r in plan.runs] == ["det_random_s128_f1_seed0", "det_btcxr_s128_f1_seed0",
                                             "probe_random_f1_seed0", "probe_btcxr_f1_seed0"]
    assert plan.backbones == {"btcxr": tmp_path / "pretrain" / "backbone.pth"}
    assert pickle.loads(pickle.dumps(plan)) == plan   # what submitit hands each SLURM job
    assert not any(tmp_path.iterdir())               # planning writes nothing


def test_the_stages_work_from_the_plan_they_are_given(tmp_path, monkeypatch):
    """Once planned, the experiment file may change or vanish: the stages read the plan only."""
    exp_path = _fake_experiment(tmp_path)
    plan = make_plan(exp_path, (), tmp_path / "out")
    exp_path.unlink()
    monkeypatch.setattr("btcxr.experiment.stages.load_experiment", _must_not_plan)
    fake = FakeFinetune()
    monkeypatch.setattr("btcxr.detect.train.finetune", fake)
    for run in grids.grid_runs(plan).values():
        run()
    assert sorted(name for name, _ in fake.calls) == sorted(r.run_id for r in plan.runs)
    assert report_stage.write_report(plan).is_file() and len(pd.read_csv(tmp_path / "out" / "results.csv")) == 8


def _must_not_plan(*args, **kwargs):
    raise AssertionError("the plan was computed again")


# ------------------------------------------------------------------ orchestration, with fake stages
def _fake_experiment(tmp_path, **extra):
    """Detection only, on an existing cache and backbone file, so the stages can be faked."""
    (tmp_path / "cache").mkdir()
    backbone = tmp_path / "backbone.pth"
    backbone.write_bytes(b"weights")
    lines = [f"data: {{vindr_cache: {tmp_path / 'cache'}}}", f"pretrain: {{backbone: {backbone}}}",
             f"finetune: {{config: {CONFIGS.parent / 'finetune' / 'demo.yaml'}}}",
             "inits: {random: random, btcxr: btcxr}", "baseline: random", "sizes: [96]",
             "fractions: [0.5, 1.0]", "seeds: [0, 1]", "probe: {enabled: false}", "localisation: {enabled: false}"]
    path = tmp_path / "exp.yaml"
    path.write_text("\n".join(lines + [f"{k}: {v}" for k, v in extra.items()]) + "\n")
    return path


class FakeFinetune:
    """Writes what a finished fine-tuning run leaves behind; can be told to die part-way through a run."""

    def __init__(self, die_on: str | None = None):
        self.calls: list[tuple[str, bool]] = []
        self.die_on = die_on

    def __call__(self, cfg, out_dir, resume=False):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.calls.append((out.name, resume))
        (out / "last.pt").write_bytes(b"state")
        if out.name == self.die_on:
            self.die_on = None
            raise RuntimeError("killed")
        ap = 0.2 + 0.1 * (cfg.model.init != "random") + 0.05 * cfg.seed + 0.1 * cfg.data.fraction
        (out / "test_metrics.json").write_text(json.dumps(
            {"map50": ap, "map50_ci": [ap - 0.05, ap + 0.05], "map": ap / 2, "map50_voc": ap,
             "kaggle_map40": ap, "per_class_ap50": {"Cardiomegaly": ap}}))
        (out / "metrics.jsonl").write_text(json.dumps({"phase": "epoch", "step": 1, "epoch": 1, "loss": 1.0,
                                                       "val_ap50": ap}) + "\n")
        (out / "best.pt").write_bytes(b"weights")
        return out / "best.pt"


@pytest.fixture
def finished(tmp_path, monkeypatch):
    """A fake experiment whose whole grid has run once: (experiment file, output folder, fake finetune)."""
    exp_path = _fake_experiment(tmp_path)
    out = tmp_path / "out"
    fake = FakeFinetune()
    monkeypatch.setattr("btcxr.detect.train.finetune", fake)
    launcher.reproduce(exp_path, out=out)
    fake.calls.clear()
    return exp_path, out, fake


def test_shards_resume_and_never_redo_a_finished_run(tmp_path, monkeypatch):
    exp_path = _fake_experiment(tmp_path)
    out = tmp_path / "out"
    fake = FakeFinetune(die_on="det_random_s96_f1_seed1")
    monkeypatch.setattr("btcxr.detect.train.finetune", fake)

    assert launcher.reproduce(exp_path, out=out, shard_index=1, shard_count=2) is None  # half the grid is missing
    assert len(pd.read_csv(out / "results.csv")) == 4 and not (out / "report").exists()
    with pytest.raises(RuntimeError, match="killed"):  # shard 0 dies in the middle of its last run
        launcher.reproduce(exp_path, out=out, shard_index=0, shard_count=2)
    index = launcher.reproduce(exp_path, out=out, shard_index=0, shard_count=2)
    assert index is not None and index.exists()
    ran = [name for name, _ in fake.calls]
    assert len(ran) == 9 and ran.count("det_random_s96_f1_seed1") == 2   # 8 runs, one of them twice
    assert fake.calls[-1] == ("det_random_s96_f1_seed1", True)           # ... and resumed the second time

    results = pd.read_csv(out / "results.csv")
    assert len(results) == 8 and set(results["status"]) == {"done"}
    row = results[results["run_id"] == "det_btcxr_s96_f0.5_seed1"].iloc[0]
    assert row["map50"] == pytest.approx(0.2 + 0.1 + 0.05 + 0.05)
    assert row["ap50/Cardiomegaly"] == pytest.approx(row["map50"])

    fake.calls.clear()
    assert launcher.reproduce(exp_path, out=out) == index          # everything finished: nothing is redone
    assert fake.calls == []
    html = index.read_text()
    assert "Detection: test mAP50" in html and "btcxr" in html


def test_a_changed_setting_reruns_only_the_runs_it_touches(finished):
    exp_path, out, fake = finished
    launcher.reproduce(exp_path, ["seeds=[0, 1, 2]"], out=out)
    assert sorted(name for name, _ in fake.calls) == sorted(
        f"det_{i}_s96_f{f}_seed2" for i in ("random", "btcxr") for f in ("0.5", "1"))


def test_report_lists_the_finetune_config_when_every_run_was_finished_earlier(tmp_path, monkeypatch):
    exp_path = _fake_experiment(tmp_path)
    out = tmp_path / "out"
    fake = FakeFinetune()

    def finetune_writing_config(cfg, out_dir, resume=False):
        (Path(out_dir) / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "config.yaml").write_text(f"seed: {cfg.seed}\n")
        return fake(cfg, out_dir, resume)

    monkeypatch.setattr("btcxr.detect.train.finetune", finetune_writing_config)
    launcher.reproduce(exp_path, out=out)
    fake.calls.clear()
    html = launcher.reproduce(exp_path, out=out).read_text()   # nothing redone, report rewritten
    assert fake.calls == []
    configs = html[html.index("<h2>Configs</h2>"):]
    assert "finetune: " in configs and "experiment: " in configs


def test_a_run_finished_with_other_settings_does_not_count_as_finished(tmp_path, monkeypatch):
    exp_path = _fake_experiment(tmp_path)
    out = tmp_path / "out"
    monkeypatch.setattr("btcxr.detect.train.finetune", FakeFinetune())
    launcher.reproduce(exp_path, out=out)
    stale = out / "runs" / "det_random_s96_f0.5_seed0" / DONE   # shard 0's run (grid index 0)
    stale.write_text(json.dumps({"fingerprint": "other-settings"}))
    # Shard 1 must not write the report while shard 0 has still to redo that run.
    assert launcher.reproduce(exp_path, out=out, shard_index=1, shard_count=2) is None
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 7 and "det_random_s96_f0.5_seed0" not in set(results["run_id"])


class FakeExplainSplit:
    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, checkpoints, cache, split, out, labels, **kwargs):
        self.calls.append(list(labels))
        Path(out, "localisation.json").write_text(json.dumps({"models": {k: {} for k in labels}}))


def _finished_detection_runs(plan: Plan, inits):
    for init in inits:
        run_dir = plan.out / "runs" / DetectionRun(init, max(plan.exp.sizes), max(plan.exp.fractions),
                                                    plan.exp.seeds[0]).run_id
        run_dir.mkdir(parents=True)
        (run_dir / DONE).write_text(json.dumps({"fingerprint": f"{init}-v1"}))
    return pd.DataFrame({"kind": ["detection"]})


def test_localisation_compares_the_init_that_stands_in_for_a_dropped_imagenet(monkeypatch, tmp_path):
    _no_imagenet(monkeypatch)
    # imagenet dropped, random is the baseline
    plan = make_plan(CONFIGS / "synthetic.yaml", RANDOM_FALLBACK, tmp_path, arch_names={"resnet18"})
    assert plan.exp.localisation.inits == ["imagenet", "btcxr"] and plan.renamed == {"imagenet": "random"}
    finished = _finished_detection_runs(plan, ["random", "btcxr"])
    fake = FakeExplainSplit()
    monkeypatch.setattr("btcxr.explain.run.explain_split", fake)
    summary, _ = results.run_localisation(plan, finished)
    assert fake.calls == [["random", "btcxr"]]   # two models: the report gets its side-by-side CAM grid
    assert set(summary["models"]) == {"random", "btcxr"}


def test_localisation_is_redone_when_a_detection_run_it_explains_was_redone(monkeypatch, tmp_path):
    plan = make_plan(CONFIGS / "demo.yaml", (), tmp_path)
    finished = _finished_detection_runs(plan, ["random", "btcxr"])
    fake = FakeExplainSplit()
    monkeypatch.setattr("btcxr.explain.run.explain_split", fake)
    results.run_localisation(plan, finished)
    results.run_localisation(plan, finished)
    assert len(fake.calls) == 1                  # same runs: not redone
    run_dir = tmp_path / "runs" / DetectionRun("btcxr", 128, 1.0, 0).run_id
    (run_dir / DONE).write_text(json.dumps({"fingerprint": "btcxr-v2"}))   # fine-tuned again, same path
    results.run_localisation(plan, finished)
    assert len(fake.calls) == 2


# ----------------------------------------------------------------------- the demo, every stage real
@pytest.mark.slow
def test_demo_pipeline_end_to_end(tmp_path, monkeypatch):
    """A smaller variant of `make demo`: synth, prepare, pretrain, finetune x2, evaluate, probe, explain,
    report."""

    out = tmp_path / "demo"
    overrides = ["data.synthetic={n_vindr: 70, n_nih: 60, size: 128, seed: 0, normal_fraction: 0.2}",
                 "data.cache_size=96", "sizes=[96]", "pretrain.overrides=[optim.epochs=1]",
                 "finetune.overrides=[optim.epochs=2]", "probe.overrides=[optim.epochs=2]",
                 "localisation.max_images=2", "localisation.ratio=0.05", "localisation.score_thr=0.0",
                 "cam_examples=1"]
    from btcxr.cli import main

    assert main(["demo", "--out", str(out), *overrides]) == 0
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["run_id"]) == ["det_btcxr_s96_f1_seed0", "det_random_s96_f1_seed0",
                                         "probe_btcxr_f1_seed0", "probe_random_f1_seed0"]
    det = results[results["kind"] == "detection"]
    assert det["map50"].between(0, 1).all() and results.loc[results["kind"] == "probe", "mean_auroc"].notna().all()
    assert (out / "pretrain" / "backbone.pth").exists()
    for run in det["run_dir"]:
        assert {"best.pt", "test_metrics.json", "test_predictions.csv", "config.yaml"} <= {
            p.name for p in Path(run).iterdir()}
    loc = json.loads((out / "localisation" / "localisation.json").read_text())
    assert set(loc["models"]) == {"random", "btcxr"}

    index = out / "report" / "index.html"
    html = index.read_text()
    assert "These numbers only exercise the pipeline" in html  # the demo says it is not a result
    for title in ("Summary", "Detection: test mAP50", "Label efficiency", "Per-class AP50", "Training curves",
                  "Ablation-CAM examples", "Localisation of the heatmaps", "NIH classification probe", "Configs",
                  "Versions"):
        assert f"<h2>{title}</h2>" in html
    import re

    images = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert images and all((index.parent / src).exists() for src in images)
    assert "results.md" in {p.name for p in index.parent.iterdir()}
    # the case browser next to the report, linked from it, with both runs and the localisation's heatmaps
    assert '<a href="../browse/index.html">the case browser</a>' in html
    site = (out / "browse" / "data" / "index.js").read_text()
    assert '"models":["random","btcxr"]' in site
    assert any((out / "browse" / "heatmaps").rglob("box0.png"))
    readers = pd.read_csv(out / "cache" / "vindr" / "readers.csv")  # each radiologist's boxes, for the browser
    assert {"image_id", "rad_id", "class_id", "x_min"} <= set(readers.columns) and readers["rad_id"].nunique() >= 3


def test_changed_settings_start_afresh_and_keep_the_old_run_aside(finished):
    exp_path, out, fake = finished
    launcher.reproduce(exp_path, ["finetune.overrides=[optim.epochs=3]"], out=out)
    assert len(fake.calls) == 8 and not any(resume for _, resume in fake.calls)  # fresh, not resumed
    assert len(list((out / "runs").glob("det_*.stale-*"))) == 8
    launcher.reproduce(exp_path, out=out)                                             # back to the first settings
    launcher.reproduce(exp_path, ["finetune.overrides=[optim.epochs=3]"], out=out)   # ... and again
    assert len(list((out / "runs").glob("det_*.stale-*"))) == 24


def test_a_new_backbone_reruns_only_the_runs_that_use_it(finished):
    exp_path, out, fake = finished
    (exp_path.parent / "backbone.pth").write_bytes(b"other weights")  # pre-training produced another backbone
    launcher.reproduce(exp_path, out=out)
    assert sorted(name for name, _ in fake.calls) == sorted(
        f"det_btcxr_s96_f{f}_seed{s}" for f in ("0.5", "1") for s in (0, 1))


# ------------------------------------------------------------- the paper's arms offline (issue 11)
class FakePretrain:
    """Records every pre-training (method, start, cache) and writes a backbone.pth that names it."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, cfg, out_dir, resume=False):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.calls.append({"run": out.name, "method": cfg.method, "init": cfg.model.init, "cache": cfg.data.cache})
        (out / "backbone.pth").write_text(out.name)
        return out / "backbone.pth"


def _offline_arms_experiment(tmp_path, **extra):
    """The four arms on faked stages: the stand-in, ours and the positive control pre-trained here."""
    exp_path = _fake_experiment(
        tmp_path, inits="{random: random, imagenet: imagenet, btcxr: btcxr, supervised: supervised}",
        imagenet_fallback="natural", baseline="random",
        cross_domain="{n: 6, size: 48, cache_size: 32, overrides: [optim.epochs=3]}",
        supervised="{overrides: [optim.epochs=5]}", **extra)
    text = exp_path.read_text().replace(f"pretrain: {{backbone: {tmp_path / 'backbone.pth'}}}",
                                        f"pretrain: {{config: {CONFIGS.parent / 'pretrain' / 'demo.yaml'}, "
                                        "overrides: [model.init=imagenet]}")
    text = text.replace(f"data: {{vindr_cache: {tmp_path / 'cache'}}}",
                        f"data: {{vindr_cache: {tmp_path / 'cache'}, nih_cache: {tmp_path / 'nih'}}}")
    exp_path.write_text(text)
    return exp_path


def test_offline_arms_stand_in_for_imagenet_and_add_the_positive_control(tmp_path, monkeypatch):
    _no_imagenet(monkeypatch)
    exp_path = _offline_arms_experiment(tmp_path, seeds="[0]", fractions="[1.0]")
    pre, fine, inits = FakePretrain(), FakeFinetune(), {}

    def finetune(cfg, out_dir, resume=False):
        inits[Path(out_dir).name] = cfg.model.init
        return fine(cfg, out_dir, resume)

    monkeypatch.setattr("btcxr.pretrain.run.pretrain", pre)
    monkeypatch.setattr("btcxr.detect.train.finetune", finetune)
    out = tmp_path / "out"
    index = launcher.reproduce(exp_path, out=out, workers=1)

    natural = str(out / "pretrain_natural" / "backbone.pth")
    runs = {c["run"]: c for c in pre.calls}
    assert set(runs) == {"pretrain_natural", "pretrain", "pretrain_supervised"}
    assert runs["pretrain_natural"] == {"run": "pretrain_natural", "method": "barlow_twins", "init": "random",
                                        "cache": str(out / "cache" / "natural")}
    assert len(list((out / "cache" / "natural" / "images").glob("*.png"))) == 6  # real pictures, prepared
    # the method and the positive control both start from the stand-in, on the NIH cache
    assert runs["pretrain"]["init"] == runs["pretrain_supervised"]["init"] == natural
    assert (runs["pretrain"]["method"], runs["pretrain_supervised"]["method"]) == ("barlow_twins", "supervised")
    assert runs["pretrain"]["cache"] == runs["pretrain_supervised"]["cache"] == str(tmp_path / "nih")

    assert inits == {"det_random_s96_f1_seed0": "random", "det_imagenet_s96_f1_seed0": natural,
                     "det_btcxr_s96_f1_seed0": str(out / "pretrain" / "backbone.pth"),
                     "det_supervised_s96_f1_seed0": str(out / "pretrain_supervised" / "backbone.pth")}
    html = index.read_text()
    assert "stand-in" in html and "supervised" in html

    pre.calls.clear()
    fine.calls.clear()
    assert launcher.reproduce(exp_path, out=out, workers=1) == index  # nothing is redone
    assert pre.calls == [] and fine.calls == []


def test_per_seed_pretraining_replicates_every_pretrained_arm_with_its_seed(tmp_path, monkeypatch):
    """pretrain_per_seed: each seed pre-trains the stand-in, ours and the positive control anew with its
    own seed, ours and the control start from that seed's stand-in, and each run fine-tunes its seed's."""
    _no_imagenet(monkeypatch)
    exp_path = _offline_arms_experiment(tmp_path, seeds="[3, 5]", fractions="[1.0]", pretrain_per_seed="true")
    seeds, inits = {}, {}
    pre, fine = FakePretrain(), FakeFinetune()

    def pretrain(cfg, out_dir, resume=False):
        seeds[Path(out_dir).name] = cfg.seed
        return pre(cfg, out_dir, resume)

    def finetune(cfg, out_dir, resume=False):
        inits[Path(out_dir).name] = (cfg.model.init, cfg.seed)
        return fine(cfg, out_dir, resume)

    monkeypatch.setattr("btcxr.pretrain.run.pretrain", pretrain)
    monkeypatch.setattr("btcxr.detect.train.finetune", finetune)
    out = tmp_path / "out"
    plan = make_plan(exp_path, (), out)
    assert [p.name for p in plan.pretrainings] == [f"{name}_seed{s}" for s in (3, 5) for name in
                                                   ("pretrain_natural", "pretrain", "pretrain_supervised")]
    assert "Seeds replicate whole arms" in plan.notes[-1] and "pre-training variance" in plan.notes[-1]
    index = launcher.reproduce(exp_path, out=out, workers=1)

    assert seeds == {p.name: p.seed for p in plan.pretrainings}  # each pre-trains with its own seed
    calls = {c["run"]: c for c in pre.calls}
    for s in (3, 5):
        natural = str(out / f"pretrain_natural_seed{s}" / "backbone.pth")
        assert calls[f"pretrain_natural_seed{s}"]["init"] == "random"
        assert calls[f"pretrain_seed{s}"]["init"] == calls[f"pretrain_supervised_seed{s}"]["init"] == natural
        assert inits[f"det_imagenet_s96_f1_seed{s}"] == (natural, s)
        assert inits[f"det_btcxr_s96_f1_seed{s}"] == (str(out / f"pretrain_seed{s}" / "backbone.pth"), s)
        assert inits[f"det_supervised_s96_f1_seed{s}"] == (str(out / f"pretrain_supervised_seed{s}" / "backbone.pth"), s)
        assert inits[f"det_random_s96_f1_seed{s}"] == ("random", s)
    # a seed's runs inherit that seed's pre-training in their fingerprint: only they redo when it changes
    keys = {r.run_id: r.key for r in plan.runs}
    assert keys["det_btcxr_s96_f1_seed3"] != keys["det_btcxr_s96_f1_seed5"]
    assert "Seeds replicate whole arms" in index.read_text()


def test_shared_pretraining_says_its_seeds_leave_pretraining_variance_out(monkeypatch, tmp_path):
    _no_imagenet(monkeypatch)
    plan = make_plan(_offline_arms_experiment(tmp_path), (), tmp_path / "out")
    assert [p.name for p in plan.pretrainings] == ["pretrain_natural", "pretrain", "pretrain_supervised"]
    assert all(p.seed is None for p in plan.pretrainings)
    assert "leave out the variance of pre-training" in plan.notes[-1]


def test_the_fine_tuning_rule_is_a_factor_of_the_grid(tmp_path, monkeypatch):
    exp_path = _fake_experiment(tmp_path, rules="[paper, all]", all_rule_fractions="[0.5]")
    fake, settings = FakeFinetune(), {}

    def finetune(cfg, out_dir, resume=False):
        settings[Path(out_dir).name] = (cfg.model.trainable_layers, cfg.model.norm)
        return fake(cfg, out_dir, resume)

    monkeypatch.setattr("btcxr.detect.train.finetune", finetune)
    launcher.reproduce(exp_path, out=tmp_path / "out")
    # the paper's rule everywhere; every layer and batch norm trained for the pre-trained init at 50 %
    assert settings["det_btcxr_s96_f0.5_seed0_all"] == settings["det_btcxr_s96_f0.5_seed1_all"] == (5, "bn")
    assert settings["det_btcxr_s96_f0.5_seed0"] == (None, "auto") and len(settings) == 8 + 2
    assert not any(name.startswith("det_random") and name.endswith("_all") for name in settings)
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    arm = results[results["init"] == "btcxr (all layers)"]
    assert sorted(arm["seed"]) == [0, 1] and set(arm["fraction"]) == {0.5} and set(arm["rule"]) == {"all"}
    html = (tmp_path / "out" / "report" / "index.html").read_text()
    assert "btcxr (all layers)" in html
    with pytest.raises(BtcxrError, match="rules must list some of paper, all"):
        load_experiment(exp_path, ["rules=[frozen]"])


def test_probe_curve_over_pre_training_steps_between_floor_and_ceiling(tmp_path, monkeypatch):
    exp_path = _fake_experiment(
        tmp_path, inits="{random: random, btcxr: btcxr, supervised: supervised}", seeds="[0]", fractions="[1.0]")
    text = exp_path.read_text().replace(
        f"pretrain: {{backbone: {tmp_path / 'backbone.pth'}}}",
        f"pretrain: {{config: {CONFIGS.parent / 'pretrain' / 'demo.yaml'}, overrides: ['backbone_steps=[0,2]']}}")
    text = text.replace("probe: {enabled: false}",
                        f"probe: {{enabled: true, config: {CONFIGS.parent / 'probe' / 'demo.yaml'}, "
                        "fractions: [1.0], curve_fraction: 1.0}")
    text = text.replace(f"data: {{vindr_cache: {tmp_path / 'cache'}}}",
                        f"data: {{vindr_cache: {tmp_path / 'cache'}, nih_cache: {tmp_path / 'nih'}}}")
    exp_path.write_text(text)

    def fake_pretrain(cfg, out_dir, resume=False):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for step in (*cfg.backbone_steps, "final"):
            (out / ("backbone.pth" if step == "final" else f"backbone_step{step}.pth")).write_text(f"{step}")
        return out / "backbone.pth"

    probed = []

    def fake_probe(cfg, out_dir, resume=False):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        probed.append((out.name, Path(cfg.model.init).name, cfg.probe.mode))
        step = Path(cfg.model.init).stem.removeprefix("backbone_step")
        auroc = 0.5 if cfg.model.init == "random" else 0.6 + 0.05 * (int(step) if step.isdigit() else 4)
        (out / "results.json").write_text(json.dumps({"fraction": cfg.data.fraction, "seed": cfg.seed,
                                                      "input_size": 64, "mode": cfg.probe.mode,
                                                      "test": {"mean_auroc": auroc}, "val": {"mean_auroc": auroc}}))
        return {}

    monkeypatch.setattr("btcxr.pretrain.run.pretrain", fake_pretrain)
    monkeypatch.setattr("btcxr.classify.train.probe", fake_probe)
    monkeypatch.setattr("btcxr.detect.train.finetune", FakeFinetune())
    index = launcher.reproduce(exp_path, out=tmp_path / "out")
    curve = sorted(p for p in probed if p[0].startswith("curve_"))
    assert curve == [("curve_btcxr_step0", "backbone_step0.pth", "freeze"),
                     ("curve_btcxr_step2", "backbone_step2.pth", "freeze"),
                     ("curve_supervised_step0", "backbone_step0.pth", "freeze"),
                     ("curve_supervised_step2", "backbone_step2.pth", "freeze")]
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    rows = results[results["kind"] == "probe_curve"].sort_values(["init", "step"])
    assert rows["step"].tolist() == [0, 2, 0, 2] and rows["mean_auroc"].tolist() == pytest.approx([0.6, 0.7] * 2)
    md = (tmp_path / "out" / "report" / "results.md").read_text()
    assert "NIH probe against pre-training steps" in index.read_text()
    assert (tmp_path / "out" / "report" / "figures" / "probe_curve.png").is_file()
    assert "| btcxr | 2 | 0.700 |" in md


@pytest.mark.slow
def test_every_arm_runs_for_real_offline(tmp_path, monkeypatch):
    """The paper's arms with no ImageNet weights, every stage real but tiny: the dead-leaves stand-in,
    Barlow Twins from it, the supervised positive control, both fine-tuning rules and the probe curve."""
    _no_imagenet(monkeypatch)
    out = tmp_path / "arms"
    overrides = ["data.synthetic={n_vindr: 48, n_nih: 48, size: 96, seed: 0, normal_fraction: 0.2}",
                 "data.cache_size=64", "data.pretrain_size=32", "sizes=[64]",
                 "inits={random: random, imagenet: imagenet, btcxr: btcxr, supervised: supervised}",
                 "imagenet_fallback=natural", "cross_domain={n: 24, size: 48, cache_size: 32, overrides: [optim.batch_size=8]}",
                 "pretrain.overrides=[optim.epochs=1, model.init=imagenet, 'backbone_steps=[0,1]']",
                 "finetune.overrides=[optim.epochs=1]", "probe.overrides=[optim.epochs=1]",
                 "probe.curve_fraction=1.0", "rules=[paper, all]", "localisation.enabled=false"]
    index = launcher.reproduce(CONFIGS / "demo.yaml", overrides, out=out, workers=1)
    results = pd.read_csv(out / "results.csv")
    det = results[results["kind"] == "detection"]
    assert sorted(det["init"]) == sorted(["random", "imagenet", "btcxr", "supervised", "imagenet (all layers)",
                                          "btcxr (all layers)", "supervised (all layers)"])
    assert det["map50"].between(0, 1).all()
    curve = results[results["kind"] == "probe_curve"]
    assert sorted(zip(curve["init"], curve["step"])) == [(i, s) for i in ("btcxr", "imagenet", "supervised")
                                                         for s in (0, 1)]
    natural = load_checkpoint(out / "pretrain_natural" / "backbone.pth")
    start = load_checkpoint(out / "pretrain" / "backbone_step0.pth")  # ours starts from the stand-in
    assert all(torch.equal(natural[k], start[k]) for k in natural)
    html = index.read_text()
    assert "stand-in" in html and "The positive control" in html and "NIH probe against pre-training steps" in html
    # the monitors of every pre-training (the stand-in's cache has no labels: no k-NN row there)
    assert "Pre-training monitors" in html and (out / "report" / "figures" / "monitors.png").is_file()
    monitors = {name: read_metrics(out / name, "monitor") for name in ("pretrain_natural", "pretrain", "pretrain_supervised")}
    assert all([r["step"] for r in rows][0] == 0 and len(rows) >= 2 for rows in monitors.values())
    assert "knn_mean_auroc" in monitors["pretrain"][-1] and "knn_mean_auroc" not in monitors["pretrain_natural"][-1]
    assert "| random init (floor) | - |" in (out / "report" / "results.md").read_text()  # on the NIH monitor set


def test_a_copied_experiment_file_finds_its_stage_configs_in_the_package(tmp_path):
    """`btcxr configs show experiments/demo > mine.yaml`: its `../pretrain/demo.yaml` has no folder next to it."""
    copy = tmp_path / "mine.yaml"
    copy.write_text((CONFIGS / "demo.yaml").read_text())
    plan = make_plan(copy, (), tmp_path)
    assert plan.config(plan.exp.pretrain.config, "pretrain") == CONFIG_DIR / "pretrain" / "demo.yaml"
    assert plan.config("finetune/demo", "finetune") == CONFIG_DIR / "finetune" / "demo.yaml"
    assert plan.config("", "probe") is None
    with pytest.raises(BtcxrError, match="nope.*Known probe configs"):
        plan.config("nope", "probe")


def test_paper_experiment_plans_the_papers_arms_on_the_papers_ground_truth(monkeypatch, tmp_path):
    """`reproduce --config paper`: ImageNet, BarlowTwins-CXR and random init at 224 and 640 px, 3 label
    fractions, 3 seeds, on a VinDr cache prepared with the paper's protocol."""
    import btcxr.data.cache as cache_mod

    prepared = []
    monkeypatch.setattr(cache_mod, "prepare", lambda settings: prepared.append(settings))
    monkeypatch.setattr(pretrain_stage, "imagenet_unavailable", lambda exp, archs: None)  # as where they load
    plan = make_plan(CONFIGS / "paper.yaml", [f"data.vindr_root={tmp_path / 'vindr'}",
                                              f"data.nih_root={tmp_path / 'nih'}"], tmp_path)
    data_stage.prepare_data(plan, Role(("data",)))
    vindr = next(s for s in prepared if s.dataset == "vindr")
    assert (vindr.protocol, vindr.size) == ("paper", 640)
    assert next(s for s in prepared if s.dataset == "nih").protocol == "btcxr"
    runs = [r.run for r in grids.detection_runs(plan)]
    assert {(r.init, r.size, r.fraction, r.seed) for r in runs} == {
        (i, s, f, seed) for i in ("imagenet", "btcxr", "random") for s in (224, 640)
        for f in (0.01, 0.1, 1.0) for seed in (0, 1, 2)}
    cfg = grids.detection_config(plan, next(r for r in runs if r.size == 224 and r.init == "btcxr"))
    assert cfg.model.size == 224 and cfg.data.cache == str(tmp_path / "cache" / "vindr")


def test_report_notes_say_which_protocol_made_the_ground_truth(tmp_path):
    plan = make_plan(CONFIGS / "demo.yaml", (), tmp_path)
    assert report_stage.ground_truth_note(plan) == []          # the cache is not prepared yet
    plan.vindr_cache.mkdir(parents=True)
    (plan.vindr_cache / "prepare.json").write_text(json.dumps({"ground_truth": "the paper's protocol: x"}))
    assert report_stage.ground_truth_note(plan) == ["VinDr ground truth and split: the paper's protocol: x."]


@pytest.mark.slow
def test_results_are_a_function_of_the_config_whatever_the_workers(tmp_path, monkeypatch):
    """The same tiny experiment twice on one machine, with 1 and with 2 worker processes for synthesis and
    preparation: results.csv is the same, value for value (only the run folders' paths differ)."""
    _no_imagenet(monkeypatch)
    overrides = ["data.synthetic={n_vindr: 32, n_nih: 32, size: 64, seed: 0, normal_fraction: 0.3}",
                 "data.cache_size=64", "data.pretrain_size=32", "sizes=[64]", "inits={random: random, btcxr: btcxr}",
                 "baseline=random", "pretrain.overrides=[optim.epochs=1, optim.batch_size=8, model.init=random]",
                 "finetune.overrides=[optim.epochs=1]", "probe.overrides=[optim.epochs=1]", "seeds=[0]",
                 "fractions=[1.0]", "localisation.enabled=false"]
    tables = []
    for workers in (1, 2):
        out = tmp_path / f"workers{workers}"
        launcher.reproduce(CONFIGS / "demo.yaml", overrides, out=out, workers=workers)
        table = (out / "results.csv").read_text()
        assert "map50" in table and "mean_auroc" in table
        tables.append(table.replace(str(out), "OUT"))
    assert tables[0] == tables[1]
