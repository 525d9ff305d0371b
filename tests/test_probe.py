"""`btcxr probe`: AUROC per label, frozen vs fine-tuned backbones, val-based selection, end to end."""

from __future__ import annotations

import json
import math
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

from btcxr.classify.config import ProbeConfig
from btcxr.classify.metrics import AurocReport, auroc_report
from btcxr.classify.model import ProbeModel, build_probe_model
from btcxr.config import load_config
from btcxr.config_files import CONFIG_DIR
from btcxr.data.cache_format import MANIFEST_COLUMNS
from btcxr.data.classes import NIH_LABELS
from btcxr.errors import BtcxrError

DEMO = CONFIG_DIR / "probe" / "demo.yaml"
PAPER = CONFIG_DIR / "probe" / "paper.yaml"



def _phantom(rng: np.random.Generator, square: bool, band: bool, size: int = 64) -> np.ndarray:
    """Noise on a gradient; Atelectasis = a bright square (1/4 of the side) anywhere, Effusion = a bright
    bottom band."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = 60 + 40 * xx / size + rng.normal(0, 12, (size, size))
    if square:
        side = size // 4
        x0, y0 = rng.integers(0, size - side, 2)
        img[y0:y0 + side, x0:x0 + side] = 240
    if band:
        img[-size // 4:, :] += 90
    return np.clip(img, 0, 255).astype(np.uint8)


def make_nih_cache(root: Path, n: tuple[int, int, int] = (80, 40, 40), seed: int = 0,
                   test_copies_val: bool = False, dataset: str = "nih", labels: bool = True) -> Path:
    """A cache as `btcxr prepare nih` writes it (images/*.png, manifest.csv, prepare.json), labels drawn
    into the pixels. test_copies_val: the test split holds the val images again, in the same order."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for split, count in zip(("train", "val", "test"), n):
        if split == "test" and test_copies_val:
            val = [r for r in rows if r["split"] == "val"]
            rows += [{**r, "image_id": "t" + r["image_id"], "split": "test"} for r in val]
            continue
        for i in range(count):
            square, band = rng.random() < 0.4, rng.random() < 0.4
            image_id = f"{split}_{i:04d}.png"
            Image.fromarray(_phantom(rng, square, band)).save(root / "images" / image_id)
            drawn = (("Atelectasis", square), ("Effusion", band))
            names = [name for name, on in drawn if on] or ["No Finding"]
            rows.append({"image_id": image_id, "file": f"images/{image_id}", "patient_id": str(len(rows)),
                         "split": split, "labels": "|".join(names) if labels else "", "orig_width": 64,
                         "orig_height": 64, "scale": 1.0})
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(root / "manifest.csv", index=False)
    (root / "prepare.json").write_text(json.dumps({"dataset": dataset, "size": 64, "bits": 8}))
    return root


def make_nih_download(root: Path, n_train_val: int = 120, n_test: int = 40, size: int = 128, seed: int = 0) -> Path:
    """The official NIH layout (images/, Data_Entry_2017_v2020.csv, train_val_list.txt, test_list.txt)
    with the drawn labels above, one patient an image."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n_train_val + n_test):
        square, band = rng.random() < 0.4, rng.random() < 0.4
        image_id = f"{i + 1:08d}_000.png"
        Image.fromarray(_phantom(rng, square, band, size)).save(root / "images" / image_id)
        names = [name for name, on in (("Atelectasis", square), ("Effusion", band)) if on] or ["No Finding"]
        rows.append({"Image Index": image_id, "Finding Labels": "|".join(names), "Follow-up #": 0,
                     "Patient ID": i + 1, "Patient Age": 50, "Patient Gender": "F", "View Position": "PA",
                     "OriginalImage[Width": size, "Height]": size, "OriginalImagePixelSpacing[x": 0.143,
                     "y]": 0.143})
    entry = pd.DataFrame(rows)
    entry.to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    names = entry["Image Index"].tolist()
    (root / "train_val_list.txt").write_text("\n".join(names[:n_train_val]) + "\n")
    (root / "test_list.txt").write_text("\n".join(names[n_train_val:]) + "\n")
    return root


@pytest.fixture(scope="module")
def nih_cache(tmp_path_factory) -> Path:
    """Written by `btcxr prepare nih` (the real producer of the format) from the drawn NIH layout."""
    from btcxr.cli import main

    base = tmp_path_factory.mktemp("nih")
    root = make_nih_download(base / "download")
    assert main(["-q", "prepare", "nih", "--root", str(root), "--out", str(base / "cache"), "--size", "64",
                 "--val-fraction", "0.34", "--workers", "1"]) == 0
    return base / "cache"


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory) -> Path:
    """For the tests of the loop's mechanics, which need no accuracy: few images, run at 32 px."""
    return make_nih_cache(tmp_path_factory.mktemp("nih_small") / "cache", n=(24, 12, 12), seed=1)


def demo_cfg(cache: Path, *overrides: str) -> ProbeConfig:
    return load_config(ProbeConfig, DEMO, [f"data.cache={cache}", "tensorboard=false", *overrides])


# ----------------------------------------------------------------------------------------------- AUROC
def _mann_whitney_auc(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC as the probability that a positive outscores a negative (ties count half), pair by pair."""
    pos, neg = s[y == 1], s[y == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_by_hand_with_a_single_class_label(caplog):
    labels = ["A", "B", "C"]
    y = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 1, 1], [1, 0, 1], [0, 0, 1]])
    s = np.array([[0.9, 0.2, 0.5], [0.1, 0.6, 0.1], [0.4, 0.5, 0.3], [0.4, 0.7, 0.9], [0.8, 0.1, 0.2],
                  [0.3, 0.9, 0.4]])
    with caplog.at_level("WARNING"):
        report = auroc_report(y, s, labels, split="val")
    # A: positives 0.9, 0.4, 0.8 vs negatives 0.1, 0.4, 0.3: 3 + (1 + 0.5 + 1) + 3 = 8.5 of 9 pairs;
    # B: positives 0.5, 0.7 vs negatives 0.2, 0.6, 0.1, 0.9: 2 + 3 = 5 of 8 pairs.
    assert report.per_label["A"] == pytest.approx(8.5 / 9)
    assert report.per_label["B"] == pytest.approx(5 / 8)
    assert math.isnan(report.per_label["C"]) and report.excluded == ("C",)
    assert report.mean == pytest.approx((8.5 / 9 + 5 / 8) / 2)
    assert "C" in caplog.text and "'val'" in caplog.text
    assert report.as_json() == {"mean_auroc": pytest.approx((8.5 / 9 + 5 / 8) / 2),
                                "auroc": {"A": pytest.approx(8.5 / 9), "B": 0.625, "C": None},
                                "excluded_labels": ["C"]}


def test_auroc_matches_pairwise_definition_and_sklearn_on_random_data():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = (rng.random((50, 15)) < 0.3).astype(np.float32)
    y[:, 7] = 0  # a label absent from the split
    s = np.round(rng.random((50, 15)) + 0.5 * y, 1)  # rounded: ties happen
    report = auroc_report(y, s, NIH_LABELS)
    for j, name in enumerate(NIH_LABELS):
        if j == 7:
            assert math.isnan(report.per_label[name])
        else:
            assert report.per_label[name] == pytest.approx(_mann_whitney_auc(y[:, j], s[:, j]))
            assert report.per_label[name] == pytest.approx(roc_auc_score(y[:, j], s[:, j]))
    expected = np.mean([_mann_whitney_auc(y[:, j], s[:, j]) for j in range(15) if j != 7])
    assert report.mean == pytest.approx(expected)


# --------------------------------------------------------------------------------------- frozen / finetune
def _one_epoch(model: ProbeModel, frozen: bool) -> None:
    from btcxr.classify.train import _optimizer, train_one_epoch

    cfg = ProbeConfig()
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.rand(4, 1, 32, 32, generator=gen), (torch.rand(4, 15, generator=gen) < 0.3).float())
               for _ in range(3)]
    optimizer = _optimizer(model, cfg, frozen)
    train_one_epoch(model, iter(batches), optimizer, torch.nn.BCEWithLogitsLoss(), np.ones(3), amp="none",
                    head_only=False)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_frozen_backbone_keeps_weights_and_batchnorm_statistics():
    torch.manual_seed(0)
    model = ProbeModel(torchvision.models.resnet18(num_classes=1), 512, frozen=True)
    model.backbone.fc = torch.nn.Identity()
    before, head_before = _snapshot(model.backbone), _snapshot(model.head)
    _one_epoch(model, frozen=True)
    after = _snapshot(model.backbone)
    assert before.keys() == after.keys() and any("running_mean" in k for k in after)
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert not model.backbone.training  # .train() must not switch a frozen backbone's BN to batch statistics
    assert not torch.equal(head_before["weight"], model.head.weight)


def test_finetuned_backbone_changes_weights_and_batchnorm_statistics():
    torch.manual_seed(0)
    model = ProbeModel(torchvision.models.resnet18(num_classes=1), 512, frozen=False)
    model.backbone.fc = torch.nn.Identity()
    before = _snapshot(model.backbone)
    _one_epoch(model, frozen=False)
    after = _snapshot(model.backbone)
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])
    assert not torch.equal(before["layer4.1.conv2.weight"], after["layer4.1.conv2.weight"])
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])
    assert not torch.equal(before["layer4.1.bn2.running_var"], after["layer4.1.bn2.running_var"])


def test_model_normalises_the_gray_channel_with_imagenet_statistics():
    backbone = torch.nn.Flatten()  # identity on pixels: features are the normalised input itself
    model = ProbeModel(backbone, 3 * 2 * 2, frozen=True)
    gray = torch.full((1, 1, 2, 2), 0.5)
    feats = model.features(gray).view(3, 2, 2)
    for c, (m, s) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        assert torch.allclose(feats[c], torch.full((2, 2), (0.5 - m) / s))


# ----------------------------------------------------------------------------------------------- selection
def test_selection_uses_val_and_scores_test_once_with_the_selected_epoch(tmp_path, monkeypatch):
    """Val means are scripted so epoch 2 wins; the test split (the val images again) must then be scored
    exactly once, with epoch 2's model: its scores equal epoch 2's val scores, not the last epoch's."""
    import btcxr.classify.train as train

    cache = make_nih_cache(tmp_path / "cache", n=(24, 12, 0), test_copies_val=True)
    scripted = iter([0.6, 0.9, 0.7])
    calls: list[tuple[str, np.ndarray]] = []
    real = train.auroc_report

    def fake(targets, scores, labels, split="", quiet=False):
        calls.append((split, scores.copy()))
        report = real(targets, scores, labels, split=split, quiet=quiet)
        if split == "val" and len(calls) <= 3:
            return AurocReport(report.per_label, next(scripted), report.excluded)
        return report

    monkeypatch.setattr(train, "auroc_report", fake)
    cfg = demo_cfg(cache, "optim.epochs=3", "model.size=32", "optim.batch_size=8")
    results = train.probe(cfg, tmp_path / "run")
    assert results["selected_epoch"] == 2
    assert results["val_mean_auroc_per_epoch"] == [0.6, 0.9, 0.7]
    tests = [scores for split, scores in calls if split == "test"]
    assert len(tests) == 1
    val_epochs = [scores for split, scores in calls[:3]]
    np.testing.assert_allclose(tests[0], val_epochs[1], rtol=0, atol=1e-6)
    assert not np.allclose(tests[0], val_epochs[2], rtol=0, atol=1e-6)
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["epoch"] == 2


# ----------------------------------------------------------------------------------------------- end to end
def test_linear_probe_on_random_features_learns_drawn_labels(nih_cache, tmp_path):
    from btcxr.cli import main

    out = tmp_path / "run"
    assert main(["probe", "--config", str(DEMO), f"data.cache={nih_cache}", "optim.epochs=20",
                 "--backbone", "random", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"backbone", "arch", "mode", "fraction", "seed", "selected_epoch", "labels",
                            "n_images", "val", "test", "val_mean_auroc_per_epoch", "cached_features"}
    assert results["backbone"] == "random" and results["mode"] == "freeze" and results["cached_features"]
    manifest = pd.read_csv(nih_cache / "manifest.csv")
    assert results["n_images"] == manifest["split"].value_counts().to_dict()
    assert results["n_images"]["test"] == 40 and results["n_images"]["val"] >= 30
    history = results["val_mean_auroc_per_epoch"]
    assert results["selected_epoch"] == 1 + int(np.argmax(history))
    assert results["val"]["mean_auroc"] == pytest.approx(max(history))
    drawn = ("Atelectasis", "Effusion", "No Finding")
    assert set(results["test"]["excluded_labels"]) == set(NIH_LABELS) - set(drawn)
    for name in drawn:
        assert results["test"]["auroc"][name] > 0.75, name
    test = results["test"]
    assert test["mean_auroc"] == pytest.approx(np.mean([test["auroc"][n] for n in drawn]))
    assert results["test"]["mean_auroc"] > 0.8

    table = (out / "results.md").read_text()
    assert f"| Val AUROC (epoch {results['selected_epoch']}) | Test AUROC |" in table
    assert f"| Atelectasis | {results['val']['auroc']['Atelectasis']:.4f} | " \
           f"{results['test']['auroc']['Atelectasis']:.4f} |" in table
    assert "| Hernia | n/a | n/a |" in table
    assert f"| **Mean** | **{results['val']['mean_auroc']:.4f}** | **{test['mean_auroc']:.4f}** |" in table
    from btcxr.engine.runlog import read_metrics

    val_rows = read_metrics(out, "val")
    assert [r["mean_auroc"] for r in val_rows] == pytest.approx(history)
    assert (out / "config.yaml").is_file() and (out / "last.pt").is_file()
    best = torch.load(out / "best.pt", weights_only=True)
    assert set(best["head"]) == {"weight", "bias"} and "backbone" not in best  # frozen: the head only


def test_finetune_run_stores_the_selected_backbone(small_cache, tmp_path):
    from btcxr.classify.train import probe

    cfg = demo_cfg(small_cache, "probe.mode=finetune", "optim.epochs=1", "model.size=32")
    results = probe(cfg, tmp_path / "run")
    assert results["mode"] == "finetune" and not results["cached_features"]
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert "layer4.1.bn2.running_var" in best["backbone"]


def test_label_fraction_trains_on_the_nested_subset(small_cache, tmp_path):
    from btcxr.classify.train import probe
    from btcxr.data.splits import label_fraction_ids

    cfg = demo_cfg(small_cache, "data.fraction=0.25", "optim.epochs=1", "model.size=32")
    results = probe(cfg, tmp_path / "run")
    assert results["n_images"]["train"] == len(label_fraction_ids(small_cache, 0.25, 0)) == 6
    assert results["n_images"]["val"] == 12 and results["fraction"] == 0.25


@pytest.mark.parametrize("mode", ["freeze", "finetune"])
def test_resume_after_an_interruption_gives_the_same_results(small_cache, tmp_path, monkeypatch, mode):
    """Killed after epoch 1 of 2 and resumed: the same numbers as an uninterrupted run (the fine-tuned
    backbone, the optimizer's momentum and the per-epoch shuffles and crops are all restored)."""
    import btcxr.classify.train as train

    def cfg():
        return demo_cfg(small_cache, "optim.epochs=2", "model.size=32", "optim.batch_size=8",
                        f"probe.mode={mode}")

    full = train.probe(cfg(), tmp_path / "full")
    real, count = train.train_one_epoch, []

    def interrupted(*args, **kwargs):
        count.append(1)
        if len(count) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.probe(cfg(), tmp_path / "cut")
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(train, "train_one_epoch", real)
    resumed = train.probe(cfg(), tmp_path / "cut", resume=True)
    assert resumed["val_mean_auroc_per_epoch"] == pytest.approx(full["val_mean_auroc_per_epoch"], abs=1e-6)
    assert resumed["test"]["auroc"] == pytest.approx(full["test"]["auroc"], abs=1e-6)
    assert full["val_mean_auroc_per_epoch"][0] != pytest.approx(full["val_mean_auroc_per_epoch"][1], abs=1e-6)


class SpyScaler(torch.amp.GradScaler):
    """A disabled scaler (the CPU's) that records what the loop hands it."""

    def __init__(self) -> None:
        super().__init__("cpu", enabled=False)
        self.calls: list[tuple[str, object]] = []

    def scale(self, outputs):
        self.calls.append(("scale", outputs))
        return super().scale(outputs)

    def step(self, optimizer, *args, **kwargs):
        self.calls.append(("step", optimizer))
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.calls.append(("update", None))
        return super().update(new_scale)


def test_the_fp16_step_goes_through_the_gradient_scaler(small_cache, tmp_path, monkeypatch):
    """amp: fp16 autocasts the fine-tuned backbone, so its loss must be scaled (docs/engine.md): every step
    scales the loss and steps the optimizer through the run's scaler (a plain loss.backward() underflows
    fp16 gradients on a GPU)."""
    import btcxr.classify.train as train

    made: list[tuple[SpyScaler, str]] = []

    def spy(device: torch.device, amp: str) -> SpyScaler:
        made.append((SpyScaler(), amp))
        return made[-1][0]

    monkeypatch.setattr(train, "grad_scaler", spy, raising=False)
    cfg = demo_cfg(small_cache, "amp=fp16", "probe.mode=finetune", "optim.epochs=2", "model.size=32",
                   "optim.batch_size=8", "log_every=1")
    train.probe(cfg, tmp_path / "run")
    assert [amp for _, amp in made] == ["fp16"]  # one scaler for the run, asked for the run's amp
    calls = made[0][0].calls
    steps = 2 * 3  # 24 train images in batches of 8, two epochs
    assert [name for name, _ in calls] == ["scale", "step", "update"] * steps
    losses = [arg for name, arg in calls if name == "scale"]
    assert all(isinstance(x, torch.Tensor) and x.ndim == 0 and x.requires_grad for x in losses)
    assert all(isinstance(arg, torch.optim.SGD) for name, arg in calls if name == "step")
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["scaler"] == {}  # resumed with the run


def test_a_cpu_run_resumes_with_a_live_scaler(small_cache, tmp_path, monkeypatch):
    """device may change on resume: a run begun on the CPU (its disabled scaler saved nothing) resumes
    where fp16 scales the loss (a GPU; a live CPU scaler here), starting from the default scale."""
    import btcxr.classify.train as train

    cfg = demo_cfg(small_cache, "amp=fp16", "probe.mode=finetune", "optim.epochs=2", "model.size=32",
                   "optim.batch_size=8")
    real, calls = train.train_one_epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.probe(cfg, tmp_path / "run")
    monkeypatch.setattr(train, "train_one_epoch", real)
    monkeypatch.setattr(train, "grad_scaler", lambda device, amp: torch.amp.GradScaler("cpu", init_scale=2.0**8))
    train.probe(cfg, tmp_path / "run", resume=True)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["scaler"]["scale"] == 2.0**8


# ---------------------------------------------------------------------------------------- errors and inits
def test_vindr_or_unlabeled_cache_is_refused(tmp_path):
    from btcxr.classify.train import probe

    vindr = make_nih_cache(tmp_path / "vindr", n=(4, 2, 2), dataset="vindr")
    with pytest.raises(BtcxrError, match="vindr"):
        probe(demo_cfg(vindr), tmp_path / "r1")
    unlabeled = make_nih_cache(tmp_path / "plain", n=(4, 2, 2), labels=False)
    with pytest.raises(BtcxrError, match=r"manifest\.csv: every labels field is empty"):
        probe(demo_cfg(unlabeled), tmp_path / "r2")
    with pytest.raises(BtcxrError, match="data.cache"):
        probe(load_config(ProbeConfig, DEMO), tmp_path / "r3")


def test_backbone_of_another_arch_is_refused(small_cache, tmp_path):
    from btcxr.classify.train import probe

    path = tmp_path / "backbone.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(BtcxrError, match=r"backbone\.pth does not fit"):
        probe(demo_cfg(small_cache, "model.arch=resnet34", f"model.init={path}"), tmp_path / "run")
    with pytest.raises(BtcxrError, match="--init-weights"):
        probe(demo_cfg(small_cache, f"model.init={path}", f"model.weights_file={path}"), tmp_path / "run")


def test_imagenet_backbone_from_an_offline_weights_file(tmp_path):
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(reference.state_dict(), path)
    model = build_probe_model("resnet18", "imagenet", frozen=True, init_weights=str(path))
    assert torch.equal(model.backbone.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert torch.equal(model.backbone.bn1.running_var, reference.bn1.running_var)


def test_paper_config_holds_the_published_recipe():
    cfg = load_config(ProbeConfig, PAPER)
    assert (cfg.model.arch, cfg.model.size) == ("resnet50", 224)
    assert (cfg.optim.epochs, cfg.optim.batch_size) == (30, 64)
    assert (cfg.optim.lr_head, cfg.optim.momentum, cfg.optim.weight_decay) == (0.5, 0.9, 1e-6)
    assert cfg.probe.mode == "freeze" and cfg.probe.cache_features
    with pytest.raises(BtcxrError, match="probe.mode"):
        load_config(ProbeConfig, PAPER, ["probe.mode=linear"])
