"""Fine-tuning: boxes survive the cache <-> original round trip, batches group by aspect ratio, a tiny run
learns (AP50 far above an untrained model's), an interrupted run resumes to the same weights, and bad
input reaches the user as a clear error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import DistributedSampler

from btcxr.config import load_config
from btcxr.config_files import CONFIG_DIR
from btcxr.data.datasets import VindrDetection
from btcxr.detect.config import FinetuneConfig, ModelConfig
from btcxr.detect.evaluate_checkpoint import evaluate_checkpoint
from btcxr.detect.model import build_detector, detector_checkpoint
from btcxr.detect.sampler import GroupedBatchSampler, aspect_ratio_groups
from btcxr.detect.train import finetune
from btcxr.detect.transforms import RandomHorizontalFlip, eval_transform, to_original_frame
from btcxr.engine.checkpoint import load_checkpoint, save_checkpoint
from btcxr.engine.runlog import read_metrics
from btcxr.errors import BtcxrError

BOX = ["x_min", "y_min", "x_max", "y_max"]



def write_square_cache(root: Path, n: dict[str, int], size: int = 64, n_neg: int = 2, seed: int = 0) -> Path:
    """A VinDr-format cache (btcxr.data.cache_format): one bright square ("Aortic enlargement", class 0)
    on noise per image, plus `n_neg` all-normal images per part. Originals are 200x160 or 150x200 px, so
    the cache scale differs per orientation; annotations.csv holds the boxes in the original frame."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    manifest, ann = [], []
    for split, count in n.items():
        for i in range(count + n_neg):
            image_id = f"{split}{i:03d}"
            orig_w, orig_h = (200, 160) if i % 2 else (150, 200)
            scale = size / max(orig_w, orig_h)
            w, h = round(orig_w * scale), round(orig_h * scale)
            img = np.clip(rng.normal(70, 20, (h, w)), 0, 255)
            if i < count:
                side = rng.uniform(0.25, 0.4) * size
                x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
                img[round(y0):round(y0 + side), round(x0):round(x0 + side)] = 230
                ann.append([image_id, 0, "Aortic enlargement", x0 / scale, y0 / scale, (x0 + side) / scale,
                            (y0 + side) / scale, 1.0])
                labels = "Aortic enlargement"
            else:
                ann.append([image_id, 14, "No finding", None, None, None, None, 1.0])
                labels = "No finding"
            Image.fromarray(img.astype(np.uint8)).save(root / "images" / f"{image_id}.png")
            manifest.append([image_id, f"images/{image_id}.png", "", split, labels, orig_w, orig_h, scale])
    pd.DataFrame(manifest, columns=["image_id", "file", "patient_id", "split", "labels", "orig_width",
                                    "orig_height", "scale"]).to_csv(root / "manifest.csv", index=False)
    pd.DataFrame(ann, columns=["image_id", "class_id", "class_name", *BOX, "score"]).to_csv(
        root / "annotations.csv", index=False)
    (root / "prepare.json").write_text(json.dumps({"dataset": "vindr", "size": size}))
    return root


def tiny_config(cache: Path, **overrides) -> FinetuneConfig:
    values = {
        "data.cache": str(cache), "data.workers": 0, "data.test_split": "test",
        "model.arch": "resnet18", "model.init": "random", "model.size": 64, "model.fpn_channels": 32,
        "model.box_head_dim": 128, "model.rpn_batch_size_per_image": 64, "model.box_batch_size_per_image": 32,
        "optim.batch_size": 4, "optim.epochs": 8, "optim.lr": 0.01, "optim.warmup_iters": 5,
        "optim.final_lr": 0.001, "optim.clip_grad": 10.0, "tensorboard": False, "log_every": 2,
    } | overrides
    return load_config(FinetuneConfig, None, [f"{k}={v}" for k, v in values.items()])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ------------------------------------------------------------------------------------------- frames
def test_boxes_round_trip_between_cache_model_and_original_frames(tmp_path):
    cache = write_square_cache(tmp_path / "c", {"train": 6}, size=64)
    truth = pd.read_csv(cache / "annotations.csv").set_index("image_id")
    for model_size in (64, 96, 48):  # equal to, above and below the cache size
        data = VindrDetection(cache, "train", transform=eval_transform(model_size))
        for k in range(len(data)):
            image, target = data[k]
            assert max(image.shape[-2:]) == model_size
            back = to_original_frame(target["boxes"], image.shape[-2:], target["orig_size"])
            np.testing.assert_allclose(back.numpy()[0], truth.loc[target["image_id"], BOX].to_numpy(float),
                                       rtol=1e-5)
            assert math.isclose(target["scale"], model_size / max(target["orig_size"]), rel_tol=1e-9)


def test_horizontal_flip_moves_boxes_with_the_pixels(tmp_path):
    cache = write_square_cache(tmp_path / "c", {"train": 4}, size=64)
    image, target = VindrDetection(cache, "train")[1]
    flipped, ftarget = RandomHorizontalFlip(1.0)(image, target)
    x0, y0, x1, y1 = (round(v) for v in ftarget["boxes"][0].tolist())
    inside = flipped[0, y0 + 1:y1 - 1, x0 + 1:x1 - 1]
    assert inside.min() > 0.85  # the bright square (230/255) is where the flipped box says
    assert torch.equal(flipped.flip(-1), image)
    w = image.shape[-1]
    assert torch.allclose(ftarget["boxes"][0], torch.tensor([w - target["boxes"][0, 2], target["boxes"][0, 1],
                                                             w - target["boxes"][0, 0], target["boxes"][0, 3]]))


def test_grouped_batches_share_an_aspect_group_and_have_a_fixed_count():
    aspects = [0.75] * 13 + [1.25] * 11
    groups = aspect_ratio_groups(aspects, k=3)
    assert len(set(groups[:13])) == 1 and len(set(groups[13:])) == 1 and groups[0] != groups[13]
    counts = []
    for rank in range(2):
        sampler = DistributedSampler(range(24), num_replicas=2, rank=rank, shuffle=True, seed=0)
        batches = GroupedBatchSampler(sampler, groups, batch_size=4)
        for epoch in range(3):
            batches.set_epoch(epoch)
            out = list(batches)
            counts.append(len(out))
            assert all(len(b) == 4 for b in out) and len(out) == len(batches) == 3
            mixed = sum(len({groups[i] for i in b}) > 1 for b in out)
            assert mixed <= 1  # only the leftovers at the end may mix groups
            assert len({i for b in out for i in b}) == 12  # no index twice within an epoch
    assert set(counts) == {3}  # every rank, every epoch: DDP needs equal iteration counts


# ----------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_tiny_finetune_learns_far_beyond_an_untrained_model(tmp_path):
    cache = write_square_cache(tmp_path / "c", {"train": 16, "val": 8, "test": 8})
    cfg = tiny_config(cache)
    best = finetune(cfg, tmp_path / "run")
    run = tmp_path / "run"

    # An untrained detector of the same build, scored by the same evaluation.
    torch.manual_seed(0)
    untrained = build_detector(cfg.model)
    save_checkpoint(tmp_path / "untrained.pt", detector_checkpoint(untrained, cfg.model))
    base = evaluate_checkpoint(tmp_path / "untrained.pt", cache, "val", tmp_path / "base", workers=0, bootstrap=0)

    epochs = read_metrics(run, phase="epoch")
    assert [r["epoch"] for r in epochs] == list(range(1, 9))
    best_val = max(r["val_ap50"] for r in epochs)
    ckpt = load_checkpoint(best)
    assert ckpt["metrics"]["val_ap50"] == best_val == ckpt["best_ap50"]
    assert base["map50"] < 0.1 and best_val > 0.5, (base["map50"], best_val)
    # the best epoch's val boxes and the val images, for the case browser's threshold (chosen on val)
    val_images = pd.read_csv(run / "val_images.csv")["image_id"].tolist()
    assert val_images == [f"val{i:03d}" for i in range(8)]
    val_pred = pd.read_csv(run / "val_predictions.csv")
    assert len(val_pred) == ckpt["metrics"]["val_predictions"] > 0 and set(val_pred["image_id"]) <= set(val_images)

    # The test part was scored with best.pt; check its boxes against the truth in ORIGINAL pixels
    # independently of the metric code: the top box of most images overlaps the square.
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["map50"] > 0.3 and test["sources"]["split"] == "test"
    pred = pd.read_csv(run / "test_predictions.csv")
    truth = pd.read_csv(cache / "annotations.csv").set_index("image_id")
    top = pred.sort_values("score", ascending=False).groupby("image_id").head(1).set_index("image_id")
    hits = [_iou(top.loc[i, BOX].to_numpy(float), truth.loc[i, BOX].to_numpy(float)) > 0.5 for i in top.index]
    assert sum(hits) >= 5 and set(top.index) <= {f"test{i:03d}" for i in range(8)}

    # Logged: loss components, the per-iteration lr of the paper's schedule, throughput.
    train = read_metrics(run, phase="train")
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "images_per_s"} <= set(train[0])
    steps_per_epoch = 4
    total = 8 * steps_per_epoch
    for rec in train:
        s = rec["step"] - 1  # logged after the step that used lr_values[s]
        if s < 5:
            expected = 0.01 * 0.001 + (0.01 - 0.01 * 0.001) * s / 5
        else:
            expected = 0.001 + 0.5 * (0.01 - 0.001) * (1 + math.cos(math.pi * (s - 5) / (total - 5 - 1)))
        assert math.isclose(rec["lr"], expected, rel_tol=1e-9), rec
    saved = (run / "config.yaml").read_text()
    assert "norm: bn" in saved and "trainable_layers: 5" in saved  # the automatic choices are recorded


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    cache = write_square_cache(tmp_path / "c", {"train": 8, "val": 2}, n_neg=0)
    cfg = tiny_config(cache, **{"optim.epochs": 2, "data.test_split": "''"})
    finetune(cfg, tmp_path / "a")

    import btcxr.detect.train as train_module

    real = train_module.train_one_epoch
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, tmp_path / "b")
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    monkeypatch.setattr(train_module, "train_one_epoch", real)
    finetune(cfg, tmp_path / "b")  # an existing run folder is resumed

    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [r["epoch"] for r in read_metrics(tmp_path / "b", phase="epoch")] == [1, 2]

    changed = tiny_config(cache, **{"optim.epochs": 2, "optim.lr": 0.02, "data.test_split": "''"})
    with pytest.raises(BtcxrError, match="optim.lr"):
        finetune(changed, tmp_path / "b")
    with pytest.raises(BtcxrError, match="nothing to resume"):
        finetune(cfg, tmp_path / "c_new", resume=True)


# ------------------------------------------------------------------------------------ two ranks (gloo)
NORMS = ("BatchNorm2d", "SyncBatchNorm", "CpuSyncBatchNorm", "FrozenBatchNorm2d", "FrozenStatsBatchNorm2d")


class _Inspected(Exception):
    pass


def _norms_worker(rank: int, world: int, port: int, cache: str, out: str) -> None:
    """finetune as torchrun would run it on two CPU processes, stopped at its first training pass: the
    norm layers of the model it trains, and (norm: bn) the running statistics after one step."""
    from fixtures_dist import join_gloo

    join_gloo(rank, world, port)
    try:
        import btcxr.detect.train as train

        real = train.train_one_epoch
        for norm in ("bn", "frozen_stats"):
            def inspect(model, *args, norm=norm, **kwargs):
                core = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
                record = {"norms": {n: sum(type(m).__name__ == n for m in core.modules()) for n in NORMS},
                          "trainable": {k: p.requires_grad for k, p in core.named_parameters()}}
                if norm == "bn":
                    real(model, *args, **{**kwargs, "max_steps": 1})
                    record["running_mean"] = core.backbone.body.bn1.running_mean.clone()
                torch.save(record, Path(out) / f"{norm}_rank{rank}.pt")
                raise _Inspected

            train.train_one_epoch = inspect
            cfg = tiny_config(Path(cache), **{"model.norm": norm, "device": "cpu", "optim.epochs": 1,
                                              "data.test_split": "''"})
            try:
                train.finetune(cfg, Path(out) / norm)
            except _Inspected:
                pass
        train.train_one_epoch = real
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_on_gloo_syncs_trainable_batch_norm_and_keeps_frozen_norms_frozen(tmp_path):
    """Under DDP every trainable BatchNorm2d of the detector (random init, norm: bn) becomes a synchronised
    one, on CPUs (gloo) as on GPUs, so both ranks hold the statistics of the global batch after a step;
    FrozenStatsBatchNorm2d (norm: frozen_stats) is no batch norm to convert and stays exactly as built."""
    import torch.multiprocessing as mp
    from fixtures_dist import free_port

    from btcxr.detect.model import resolve_model_config

    cache = write_square_cache(tmp_path / "c", {"train": 8, "val": 2}, n_neg=0)
    mp.spawn(_norms_worker, args=(2, free_port(), str(cache), str(tmp_path)), nprocs=2, join=True)
    got = {(norm, r): torch.load(tmp_path / f"{norm}_rank{r}.pt", weights_only=True)
           for norm in ("bn", "frozen_stats") for r in range(2)}
    for r in range(2):
        assert got["bn", r]["norms"] == {"BatchNorm2d": 0, "SyncBatchNorm": 0, "CpuSyncBatchNorm": 20,
                                         "FrozenBatchNorm2d": 0, "FrozenStatsBatchNorm2d": 0}
        assert got["frozen_stats", r]["norms"] == {"BatchNorm2d": 0, "SyncBatchNorm": 0, "CpuSyncBatchNorm": 0,
                                                   "FrozenBatchNorm2d": 0, "FrozenStatsBatchNorm2d": 20}
        for norm in ("bn", "frozen_stats"):
            single = build_detector(resolve_model_config(tiny_config(cache, **{"model.norm": norm}).model))
            assert got[norm, r]["trainable"] == {k: p.requires_grad for k, p in single.named_parameters()}
    # the statistics of the global batch, the same on both ranks (per-rank batch norm would differ)
    assert torch.equal(got["bn", 0]["running_mean"], got["bn", 1]["running_mean"])
    assert got["bn", 0]["running_mean"].abs().sum() > 0


# --------------------------------------------------------------------------------------- user errors
def test_user_errors_reach_the_command_line(tmp_path, capsys):
    from btcxr.cli import main

    cache = write_square_cache(tmp_path / "c", {"train": 4, "val": 2})
    demo = CONFIG_DIR / "finetune" / "demo.yaml"

    torch.save(torchvision_resnet18_state(), tmp_path / "r18.pth")
    code = main(["finetune", "--config", str(demo), f"data.cache={cache}", "model.arch=resnet50", "optim.batch_size=2",
                 "--backbone", str(tmp_path / "r18.pth"), "--out", str(tmp_path / "run1")])
    err = capsys.readouterr().err
    assert code == 2 and "r18.pth does not fit" in err and "Traceback" not in err

    (cache / "annotations.csv").unlink()
    code = main(["finetune", "--config", str(demo), f"data.cache={cache}", "--out", str(tmp_path / "run2")])
    err = capsys.readouterr().err
    assert code == 2 and "annotations.csv is missing" in err

    code = main(["finetune", "--config", str(demo), "--out", str(tmp_path / "run3")])
    assert code == 2 and "data.cache is not set" in capsys.readouterr().err


def torchvision_resnet18_state() -> dict[str, torch.Tensor]:
    return torchvision.models.resnet18(weights=None).state_dict()


def test_paper_configs_hold_the_paper_recipe():
    root = CONFIG_DIR / "finetune"
    for name, size in (("paper_640.yaml", 640), ("paper_224.yaml", 224)):
        cfg = load_config(FinetuneConfig, root / name)
        assert (cfg.model.arch, cfg.model.size) == ("resnet50", size)
        # The paper's ImageNet baseline: torchvision's first ResNet-50 weights (MMDetection's torchvision://resnet50).
        url = torchvision.models.get_model_weights("resnet50")[cfg.model.imagenet_weights].url
        assert url.endswith("/resnet50-0676ba61.pth")
        assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.005, 0.9, 1e-4)
        assert (cfg.optim.warmup_iters, cfg.optim.warmup_factor, cfg.optim.final_lr) == (500, 0.001, 1e-4)
        assert (cfg.optim.epochs, cfg.optim.batch_size, cfg.train.hflip) == (50, 32, 0.5)
        assert not cfg.data.include_negatives
    assert ModelConfig().trainable_layers is None  # resolved to 3 (pretrained) / 5 (random) at build time


def test_runs_on_a_cache_written_by_prepare(tmp_path):
    """The same loop over a real `btcxr prepare vindr` cache (Kaggle layout, WBF-fused readers, negatives)."""
    from fixtures_cache import make_vindr_kaggle

    from btcxr.data.cache import PrepareSettings, prepare
    from btcxr.data.cache_format import read_manifest

    make_vindr_kaggle(tmp_path / "kaggle", n=18)
    cache = tmp_path / "cache"
    prepare(PrepareSettings(dataset="vindr", root=str(tmp_path / "kaggle"), out=str(cache), size=64,
                            with_normals=True, workers=1))
    cfg = tiny_config(cache, **{"optim.epochs": 1, "optim.batch_size": 2, "data.include_negatives": True,
                                "data.eval_negatives": True})
    finetune(cfg, tmp_path / "run")
    manifest = read_manifest(cache).set_index("image_id")
    pred = pd.read_csv(tmp_path / "run" / "test_predictions.csv")
    test_ids = set(manifest.index[manifest["split"] == "test"])
    assert len(pred) and set(pred["image_id"]) <= test_ids
    size = manifest.loc[pred["image_id"]]
    assert (pred["x_max"].to_numpy() <= size["orig_width"].to_numpy() + 1e-3).all()
    assert (pred["y_max"].to_numpy() <= size["orig_height"].to_numpy() + 1e-3).all()
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert metrics["counts"]["images"] == len(test_ids)  # negatives scored too (data.eval_negatives)


def test_evaluate_command_scores_a_checkpoint_on_a_cache_part(tmp_path):
    from btcxr.cli import main
    from btcxr.detect.metrics import evaluate_detections
    from btcxr.detect.predictions import read_predictions_csv

    cache = write_square_cache(tmp_path / "c", {"train": 2, "test": 4}, n_neg=1)
    torch.manual_seed(0)
    model_cfg = ModelConfig(arch="resnet18", init="random", size=64, fpn_channels=16, box_head_dim=32)
    save_checkpoint(tmp_path / "best.pt", detector_checkpoint(build_detector(model_cfg), model_cfg))
    out = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(tmp_path / "best.pt"), "--cache", str(cache), "--split", "test",
                 "--out", str(out), "--workers", "0", "--bootstrap", "0", "--include-negatives", "yes"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    pred = read_predictions_csv(out / "predictions.csv")
    assert set(pred["image_id"]) <= {f"test{i:03d}" for i in range(5)} and len(pred) > 0
    gt = pd.read_csv(cache / "annotations.csv")
    gt = gt[gt["image_id"].str.startswith("test")]
    assert metrics["counts"]["images"] == 5  # the negative image is scored too
    assert metrics["map50"] == pytest.approx(evaluate_detections(gt, pred, bootstrap=0).metrics["map50"])
    assert metrics["sources"]["checkpoint"] == str(tmp_path / "best.pt")
