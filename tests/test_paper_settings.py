"""The paper's settings (docs/paper.md): the packaged paper configs build the authors' MMDetection detector
where torchvision can hold it, the batch-norm rule trains affine weights and never moves statistics, the
subclasses that stand in for MMDetection behave as it does, and the probe can pick its epoch on test.

Every number asserted here is written from the authors' files (mmdetection/Mytrain/config_vindr_resnet50_*.py
and MMDetection 2.28's faster_rcnn_r50_fpn.py / coco_detection.py), never read back from our configs.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pytest
import torch
from test_detect_model import _random_resnet18_state
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign, roi_align

from btcxr.config import load_config
from btcxr.config_files import CONFIG_DIR
from btcxr.detect.config import FinetuneConfig, ModelConfig
from btcxr.detect.model import (
    ExactAnchorGenerator,
    FrozenStatsBatchNorm2d,
    LevelRoIAlign,
    MinIoUMatcher,
    build_detector,
    detector_checkpoint,
    load_detector,
    resolve_model_config,
)
from btcxr.engine.checkpoint import save_checkpoint
from btcxr.errors import BtcxrError

SMALL = {"arch": "resnet18", "size": 64, "fpn_channels": 16, "box_head_dim": 32}
TARGET = [{"boxes": torch.tensor([[10.0, 12.0, 40.0, 44.0]]), "labels": torch.tensor([3])}]


def _resnet18_file(tmp_path, seed: int = 0):
    """A resnet18 state dict with non-default BN statistics and affine weights (a 'pretrained' init)."""
    path = tmp_path / f"r18_{seed}.pth"
    torch.save(_random_resnet18_state(seed), path)
    return path


def _train_step(model: FasterRCNN, lr: float = 0.5) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    torch.manual_seed(0)
    loss = sum(model([torch.rand(1, 64, 56)], TARGET).values())
    loss.backward()
    opt.step()


# ----------------------------------------------------------------------------------------------- batch norm
def test_frozen_stats_trains_affine_weights_of_layers_2_to_4_and_never_moves_statistics(tmp_path):
    cfg = ModelConfig(init=str(_resnet18_file(tmp_path)), norm="frozen_stats", **SMALL)
    model = build_detector(cfg)
    body = model.backbone.body
    norms = {n: m for n, m in body.named_modules() if isinstance(m, FrozenStatsBatchNorm2d)}
    assert len(norms) == 20 and not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in body.modules())
    before = {k: v.clone() for k, v in body.state_dict().items()}
    _train_step(model)
    after = body.state_dict()
    for name in norms:
        for stat in ("running_mean", "running_var"):
            assert torch.equal(before[f"{name}.{stat}"], after[f"{name}.{stat}"]), f"{name}.{stat}"
        trained = name.startswith(("layer2", "layer3", "layer4"))
        for affine in ("weight", "bias"):
            key = f"{name}.{affine}"
            assert norms[name].weight.requires_grad == trained
            assert torch.equal(before[key], after[key]) != trained, key
    for key in before:  # the stem and layer1 (frozen_stages=1) do not move at all
        if key.startswith(("conv1", "bn1", "layer1")):
            assert torch.equal(before[key], after[key]), key


def test_frozen_stats_normalises_as_batchnorm_in_eval_mode_whatever_the_mode():
    torch.manual_seed(0)
    reference = torch.nn.BatchNorm2d(6)
    with torch.no_grad():
        reference.running_mean.uniform_(-1, 1)
        reference.running_var.uniform_(0.5, 2)
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-0.5, 0.5)
    layer = FrozenStatsBatchNorm2d(6)
    layer.load_state_dict(reference.state_dict())  # BatchNorm2d's keys, num_batches_tracked dropped
    x = torch.randn(4, 6, 5, 5) * 3 + 1
    expected = reference.eval()(x)
    for mode in (True, False):
        layer.train(mode)
        assert torch.allclose(layer(x), expected, atol=1e-5)
    assert torch.equal(layer.running_mean, reference.running_mean)
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]


def test_frozen_stats_survive_syncbn_conversion(tmp_path):
    init = str(_resnet18_file(tmp_path))
    stats = build_detector(ModelConfig(init=init, norm="frozen_stats", **SMALL))
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(stats)
    assert sum(isinstance(m, FrozenStatsBatchNorm2d) for m in converted.modules()) == 20
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
    # The same conversion does turn ordinary batch norm into SyncBatchNorm (what norm=bn gets under DDP).
    bn = torch.nn.SyncBatchNorm.convert_sync_batchnorm(build_detector(ModelConfig(init=init, norm="bn", **SMALL)))
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in bn.modules()) == 20


def test_frozen_stats_checkpoint_reloads_with_identical_outputs(tmp_path, monkeypatch):
    cfg = ModelConfig(init=str(_resnet18_file(tmp_path, 1)), norm="frozen_stats", **SMALL)
    model = build_detector(cfg)
    _train_step(model)  # affine weights now differ from the init file
    model.eval()
    save_checkpoint(tmp_path / "best.pt", detector_checkpoint(model, cfg, epoch=3))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    loaded, meta = load_detector(tmp_path / "best.pt")
    assert meta["detector"]["norm"] == "frozen_stats"
    assert sum(isinstance(m, FrozenStatsBatchNorm2d) for m in loaded.modules()) == 20
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key
    x = [torch.rand(1, 64, 48), torch.rand(1, 40, 64)]
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_pretrained_norm_is_what_auto_gives_a_pretrained_init_only():
    paper = ModelConfig(pretrained_norm="frozen_stats")
    assert resolve_model_config(paper).norm == "frozen_stats"
    assert resolve_model_config(dataclasses.replace(paper, init="random")).norm == "bn"
    assert resolve_model_config(ModelConfig()).norm == "frozen"  # the default stays torchvision's


# ----------------------------------------------------------------------------------------------- paper configs
@pytest.mark.parametrize("size", [224, 640])
def test_paper_configs_build_the_authors_detector(size):
    cfg = load_config(FinetuneConfig, CONFIG_DIR / "finetune" / f"paper_{size}.yaml")
    resolved = resolve_model_config(cfg.model)
    # lr_config: CosineAnnealing (mmcv's by_epoch=True), linear warm-up 500 iterations from 0.001, min_lr 1e-4
    assert (cfg.optim.cosine_by, cfg.optim.warmup_iters, cfg.optim.warmup_factor, cfg.optim.final_lr) == (
        "epoch", 500, 0.001, 1e-4)
    # frozen_stages=1, norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True
    assert (resolved.trainable_layers, resolved.norm) == (3, "frozen_stats")
    assert resolve_model_config(dataclasses.replace(cfg.model, init="random")).norm == "bn"
    model = build_detector(dataclasses.replace(cfg.model, init="random"))  # the heads do not depend on init
    rpn, roi = model.rpn, model.roi_heads
    # Resize img_scale=(size, size), keep_ratio=True; Pad size_divisor=32; mean/std of img_norm_cfg / 255.
    assert (model.transform.min_size, model.transform.max_size, model.transform.size_divisible) == ((size,), size, 32)
    assert np.allclose(model.transform.image_mean, np.array([123.675, 116.28, 103.53]) / 255)
    assert np.allclose(model.transform.image_std, np.array([58.395, 57.12, 57.375]) / 255)
    # AnchorGenerator scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]
    generator = rpn.anchor_generator
    assert isinstance(generator, ExactAnchorGenerator)
    assert generator.sizes == tuple((8 * s,) for s in (4, 8, 16, 32, 64))
    assert generator.aspect_ratios == ((0.5, 1.0, 2.0),) * 5 and generator.strides == (4, 8, 16, 32, 64)
    # train_cfg.rpn: MaxIoUAssigner(0.7, 0.3, min_pos_iou=0.3, match_low_quality), RandomSampler(256, 0.5)
    assert isinstance(rpn.proposal_matcher, MinIoUMatcher)
    assert (rpn.proposal_matcher.high_threshold, rpn.proposal_matcher.low_threshold) == (0.7, 0.3)
    assert rpn.proposal_matcher.min_pos_iou == 0.3 and rpn.proposal_matcher.allow_low_quality_matches
    assert (rpn.fg_bg_sampler.batch_size_per_image, rpn.fg_bg_sampler.positive_fraction) == (256, 0.5)
    # rpn_proposal: nms_pre 2000, max_per_img 1000; test_cfg.rpn: 1000 / 1000; nms iou 0.7
    assert rpn._pre_nms_top_n == {"training": 2000, "testing": 1000}
    assert rpn._post_nms_top_n == {"training": 1000, "testing": 1000}
    assert rpn.nms_thresh == 0.7
    # DeltaXYWHBBoxCoder target_stds: RPN [1, 1, 1, 1], R-CNN [0.1, 0.1, 0.2, 0.2] (weights = 1 / std)
    assert rpn.box_coder.weights == (1.0, 1.0, 1.0, 1.0)
    assert np.allclose(roi.box_coder.weights, [1 / 0.1, 1 / 0.1, 1 / 0.2, 1 / 0.2])
    # train_cfg.rcnn: MaxIoUAssigner(0.5, 0.5, no low-quality matches), RandomSampler(512, 0.25)
    assert (roi.proposal_matcher.high_threshold, roi.proposal_matcher.low_threshold) == (0.5, 0.5)
    assert not roi.proposal_matcher.allow_low_quality_matches
    assert (roi.fg_bg_sampler.batch_size_per_image, roi.fg_bg_sampler.positive_fraction) == (512, 0.25)
    # test_cfg.rcnn: score_thr 0.05, nms iou 0.5, max_per_img 100
    assert (roi.score_thresh, roi.nms_thresh, roi.detections_per_img) == (0.05, 0.5, 100)
    # RoIAlign(output_size=7, sampling_ratio=0) (mmcv: aligned=True) on strides 4..32; Shared2FC 1024; FPN 256
    pool = roi.box_roi_pool
    assert isinstance(pool, LevelRoIAlign) and pool.aligned
    assert (pool.output_size, pool.sampling_ratio, pool.featmap_names) == ((7, 7), 0, ["0", "1", "2", "3"])
    assert roi.box_head.fc6.out_features == roi.box_head.fc7.out_features == 1024
    assert model.backbone.out_channels == 256 and roi.box_predictor.cls_score.out_features == 15


def test_default_detector_keeps_torchvisions_settings():
    """Without the paper's values the detector is torchvision's FasterRCNN as before (same numbers)."""
    ours = build_detector(ModelConfig(arch="resnet18", init="random", size=128))
    ref = FasterRCNN(ours.backbone, num_classes=15)
    for a, b in ((ours.rpn, ref.rpn), (ours.roi_heads, ref.roi_heads)):
        assert type(a.proposal_matcher) is Matcher and vars(a.proposal_matcher) == vars(b.proposal_matcher)
        assert vars(a.fg_bg_sampler) == vars(b.fg_bg_sampler) and a.box_coder.weights == b.box_coder.weights
        assert (a.score_thresh, a.nms_thresh) == (b.score_thresh, b.nms_thresh)
    assert ours.rpn._pre_nms_top_n == ref.rpn._pre_nms_top_n and ours.rpn._post_nms_top_n == ref.rpn._post_nms_top_n
    assert ours.roi_heads.detections_per_img == ref.roi_heads.detections_per_img
    assert type(ours.rpn.anchor_generator) is AnchorGenerator
    assert ours.rpn.anchor_generator.sizes == ref.rpn.anchor_generator.sizes
    assert type(ours.roi_heads.box_roi_pool) is MultiScaleRoIAlign
    assert ours.roi_heads.box_roi_pool.sampling_ratio == ref.roi_heads.box_roi_pool.sampling_ratio == 2


def test_a_finetune_run_with_every_paper_model_setting_keeps_init_statistics_in_best_pt(tmp_path):
    """The loop (train, val AP50, best.pt, test scored from best.pt) with all paper model settings on a tiny
    model: the statistics stored in best.pt are still the init file's, the affine weights moved."""
    from test_finetune import tiny_config, write_square_cache

    from btcxr.detect.train import finetune

    init = _resnet18_file(tmp_path, 2)
    cache = write_square_cache(tmp_path / "c", {"train": 8, "val": 4, "test": 4})
    paper = {"model.init": str(init), "model.pretrained_norm": "frozen_stats", "model.head_init": "mmdet",
             "model.anchor_grid": "exact", "model.rpn_min_pos_iou": 0.3, "model.rpn_post_nms_top_n_train": 1000,
             "model.roi_sampling_ratio": 0, "model.roi_aligned": "true", "optim.epochs": 1, "model.fpn_channels": 16,
             "model.box_head_dim": 32}
    best = finetune(tiny_config(cache, **paper), tmp_path / "run")
    model, meta = load_detector(best)
    assert meta["detector"]["norm"] == "frozen_stats" and meta["detector"]["trainable_layers"] == 3
    assert (tmp_path / "run" / "test_metrics.json").is_file()
    source = torch.load(init, weights_only=True)
    body = model.backbone.body.state_dict()
    kept = [k for k in source if "running_" in k or (k.startswith(("conv1", "bn1", "layer1")) and k in body)]
    assert len(kept) == 2 * 20 + 15  # the statistics of the 20 BNs; stem + layer1: 5 convs, 5 BN weight + bias
    for key in kept:
        assert torch.equal(body[key], source[key]), key
    assert not torch.equal(body["layer2.0.bn1.weight"], source["layer2.0.bn1.weight"])


# ----------------------------------------------------------------------------------------------- MMDetection parts
def test_exact_anchors_are_unrounded_and_on_the_true_strides():
    sizes, ratios = tuple((8 * s,) for s in (4, 8, 16, 32, 64)), ((0.5, 1.0, 2.0),) * 5
    image = ImageList(torch.zeros(1, 3, 224, 224), [(224, 224)])
    features = [torch.zeros(1, 1, 224 // s, 224 // s) for s in (4, 8, 16, 32)] + [torch.zeros(1, 1, 4, 4)]
    exact = ExactAnchorGenerator(sizes, ratios)(image, features)[0]
    rounded = AnchorGenerator(sizes, ratios)(image, features)[0]
    counts = [3 * f.shape[-1] * f.shape[-2] for f in features]
    pool_exact, pool_tv = exact[-counts[-1]:], rounded[-counts[-1]:]
    # MMDetection: centres k * 64; torchvision: 224 // 4 = 56 px apart on the max-pool level.
    centres = lambda a: sorted({round(float(v), 3) for v in (a[:, 0] + a[:, 2]) / 2})  # noqa: E731
    assert centres(pool_exact) == [0.0, 64.0, 128.0, 192.0]
    assert centres(pool_tv) == [0.0, 56.0, 112.0, 168.0]
    # The first cell of level 0: ratio 0.5 (h / w) at base size 32 is w = 32 * sqrt(2), h = 32 / sqrt(2).
    w, h = 32 * math.sqrt(2), 32 / math.sqrt(2)
    assert torch.allclose(exact[0], torch.tensor([-w / 2, -h / 2, w / 2, h / 2]), atol=1e-5)
    assert torch.equal(rounded[0], torch.tensor([-23.0, -11.0, 23.0, 11.0]))
    # Levels 0-3 lie on the same grid in both; only the rounding differs (square anchors are whole already).
    square = slice(1, counts[0], 3)
    assert torch.equal(exact[square], rounded[square])


def test_exact_anchors_stay_float32_under_bf16_autocast():
    sizes, ratios = tuple((8 * s,) for s in (4, 8, 16, 32, 64)), ((0.5, 1.0, 2.0),) * 5
    image = ImageList(torch.zeros(1, 3, 640, 640), [(640, 640)])
    features = [torch.zeros(1, 1, 640 // s, 640 // s, dtype=torch.bfloat16) for s in (4, 8, 16, 32, 64)]
    generator = ExactAnchorGenerator(sizes, ratios)
    anchors = generator(image, features)[0]
    assert anchors.dtype == torch.float32
    assert torch.equal(anchors, generator(image, [f.float() for f in features])[0])
    # torchvision's generator follows the feature dtype (bf16: 8 significant bits).
    assert AnchorGenerator(sizes, ratios)(image, features)[0].dtype == torch.bfloat16


def test_min_pos_iou_drops_low_quality_matches_below_it():
    iou = torch.tensor([[0.20, 0.10, 0.00, 0.05],    # gt 0: its best anchor (0) reaches only 0.2
                        [0.00, 0.45, 0.50, 0.10]])   # gt 1: its best anchor (2) reaches 0.5
    tv = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
    ours = MinIoUMatcher(0.7, 0.3, 0.3)(iou)
    below, between = Matcher.BELOW_LOW_THRESHOLD, Matcher.BETWEEN_THRESHOLDS
    assert tv.tolist() == [0, between, 1, below]  # torchvision: gt 0 gets anchor 0 at IoU 0.2
    assert ours.tolist() == [below, between, 1, below]  # min_pos_iou 0.3: it does not
    torch.manual_seed(0)
    random_iou = torch.rand(5, 40) * 0.8
    assert torch.equal(MinIoUMatcher(0.7, 0.3, 0.0)(random_iou),
                       Matcher(0.7, 0.3, allow_low_quality_matches=True)(random_iou))


def _features(size: int = 128, channels: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {str(i): torch.randn(1, channels, size // s, size // s) for i, s in enumerate((4, 8, 16, 32))}


def test_level_roi_align_pools_each_box_on_its_fpn_level():
    x = _features()
    # sqrt(area) 30, 80, 120, 300 px -> levels 0, 0, 1, 2 (floor(log2(s / 56)), clamped to 0..3)
    boxes = [torch.tensor([[10.0, 10.0, 40.0, 40.0], [5.0, 20.0, 85.0, 100.0], [0.0, 0.0, 120.0, 120.0],
                           [0.0, 0.0, 128.0, 703.125]])]
    shapes = [(128, 128)]
    legacy = LevelRoIAlign(sampling_ratio=2, aligned=False)(x, boxes, shapes)
    reference = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(x, boxes, shapes)
    assert torch.allclose(legacy, reference, atol=1e-6)
    aligned = LevelRoIAlign(sampling_ratio=0, aligned=True)(x, boxes, shapes)
    for i, (level, stride) in enumerate(((0, 4), (0, 4), (1, 8), (2, 16))):
        roi = torch.cat([torch.zeros(1, 1), boxes[0][i:i + 1]], dim=1)
        expected = roi_align(x[str(level)], roi, 7, spatial_scale=1 / stride, sampling_ratio=0, aligned=True)
        assert torch.allclose(aligned[i:i + 1], expected, atol=1e-6), i
    assert not torch.allclose(aligned, legacy, atol=1e-3)


def test_mmdet_head_init_is_xavier_and_small_normals():
    torch.manual_seed(0)
    model = build_detector(ModelConfig(init="random", head_init="mmdet", **SMALL))
    predictor, head = model.roi_heads.box_predictor, model.roi_heads.box_head
    assert abs(predictor.cls_score.weight.std().item() - 0.01) < 0.002
    assert abs(predictor.bbox_pred.weight.std().item() - 0.001) < 0.0002
    for layer in (predictor.cls_score, predictor.bbox_pred, head.fc6, head.fc7):
        assert torch.count_nonzero(layer.bias) == 0
    for layer in (head.fc6, head.fc7, model.backbone.fpn.inner_blocks[0][0]):
        fan_out, fan_in = layer.weight.shape[0], layer.weight[0].numel()
        bound = math.sqrt(6 / (fan_in + fan_out))  # Xavier uniform
        assert 0.95 * bound < layer.weight.abs().max().item() <= bound
    # torchvision's own FPN init (kaiming_uniform a=1) stays below the Xavier bound of this 64 -> 16 conv.
    torch.manual_seed(0)
    tv = build_detector(ModelConfig(init="random", **SMALL)).backbone.fpn.inner_blocks[0][0].weight
    assert tv.abs().max().item() <= math.sqrt(3 / 64) < 0.95 * math.sqrt(6 / (64 + 16))


# ----------------------------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("override, field", [
    ("model.norm=frozenstats", "model.norm"),
    ("model.pretrained_norm=bn", "model.pretrained_norm"),
    ("model.head_init=detectron", "model.head_init"),
    ("model.anchor_grid=mmdet", "model.anchor_grid"),
    ("model.anchor_sizes=[32, 64]", "model.anchor_sizes"),
    ("model.anchor_ratios=[0.0, 1.0]", "model.anchor_ratios"),
    ("model.rpn_box_weights=[1.0, 1.0, 1.0]", "model.rpn_box_weights"),
    ("model.box_reg_weights=[10.0, 10.0, 5.0, -5.0]", "model.box_reg_weights"),
    ("model.rpn_min_pos_iou=1.5", "model.rpn_min_pos_iou"),
    ("model.rpn_fg_iou_thresh=0.2", "model.rpn_bg_iou_thresh"),
    ("model.box_bg_iou_thresh=0.6", "model.box_bg_iou_thresh"),
    ("model.rpn_positive_fraction=-0.1", "model.rpn_positive_fraction"),
    ("model.box_positive_fraction=2", "model.box_positive_fraction"),
    ("model.rpn_nms_thresh=1.2", "model.rpn_nms_thresh"),
    ("model.box_nms_thresh=-1", "model.box_nms_thresh"),
    ("model.rpn_pre_nms_top_n_train=0", "model.rpn_pre_nms_top_n_train"),
    ("model.rpn_post_nms_top_n_test=0", "model.rpn_post_nms_top_n_test"),
    ("model.roi_sampling_ratio=-1", "model.roi_sampling_ratio"),
    ("model.roi_aligned=maybe", "model.roi_aligned"),
])
def test_a_wrong_detector_setting_names_its_field(override, field):
    with pytest.raises(BtcxrError, match=field.replace(".", r"\.")):
        load_config(FinetuneConfig, CONFIG_DIR / "finetune" / "paper_640.yaml", [override])


def test_a_wrong_probe_selection_split_names_its_field():
    from btcxr.classify.config import ProbeConfig

    with pytest.raises(BtcxrError, match=r"probe\.select_on must be one of val, test, got 'train'"):
        load_config(ProbeConfig, CONFIG_DIR / "probe" / "paper.yaml", ["probe.select_on=train"])


# ----------------------------------------------------------------------------------------------- probe selection
def test_probe_can_pick_its_epoch_on_test_as_the_authors_did(tmp_path, monkeypatch, caplog):
    """Val means say epoch 3, test means say epoch 1: select_on=test keeps epoch 1 and warns."""
    from test_probe import demo_cfg, make_nih_cache

    import btcxr.classify.train as train
    from btcxr.classify.metrics import AurocReport

    cache = make_nih_cache(tmp_path / "cache", n=(24, 12, 12))
    scripted = {"val": iter([0.6, 0.7, 0.9]), "test": iter([0.8, 0.5, 0.6])}
    real = train.auroc_report
    calls: list[str] = []

    def fake(targets, scores, labels, split="", quiet=False):
        calls.append(split)
        report = real(targets, scores, labels, split=split, quiet=quiet)
        if len(calls) <= 6:  # the three epochs, val then test each
            return AurocReport(report.per_label, next(scripted[split]), report.excluded)
        return report

    monkeypatch.setattr(train, "auroc_report", fake)
    cfg = demo_cfg(cache, "optim.epochs=3", "model.size=32", "optim.batch_size=8", "probe.select_on=test")
    with caplog.at_level(logging.WARNING, logger="btcxr.classify.train"):
        results = train.probe(cfg, tmp_path / "run")
    assert calls[:6] == ["val", "test"] * 3
    assert results["selected_epoch"] == 1 and results["select_on"] == "test"
    assert results["test_mean_auroc_per_epoch"] == [0.8, 0.5, 0.6]
    assert results["val_mean_auroc_per_epoch"] == [0.6, 0.7, 0.9]
    assert results["selection"] == "best mean AUROC on the test split"
    assert any("select_on=test" in r.getMessage() and "overstates" in r.getMessage() for r in caplog.records)
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["epoch"] == 1


# ------------------------------------------------------------------- schedules stepped once an epoch
def test_probe_epoch_cosine_equals_torch_cosine_annealing_stepped_per_epoch():
    """The authors' evaluate.py: CosineAnnealingLR(T_max=epochs), scheduler.step() after every epoch."""
    from btcxr.classify.config import OptimConfig
    from btcxr.classify.train import lr_factors

    epochs, steps_per_epoch = 30, 7
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    reference = []
    for _ in range(epochs):
        reference += [opt.param_groups[0]["lr"]] * steps_per_epoch
        opt.step()
        sched.step()
    ours = lr_factors(OptimConfig(epochs=epochs, cosine_by="epoch"), steps_per_epoch)
    assert np.allclose(ours[:len(reference)], reference, rtol=0, atol=1e-12)
    per_step = lr_factors(OptimConfig(epochs=epochs), steps_per_epoch)
    assert not np.allclose(per_step[:len(reference)], reference, atol=1e-3)  # the default moves every step


def test_detector_epoch_cosine_is_mmcv_cosine_annealing_with_linear_warmup():
    """mmcv 1.x LrUpdaterHook(by_epoch=True) + CosineAnnealing(min_lr=1e-4), warmup='linear' over 500
    iterations with warmup_ratio=0.001, written out from its definition."""
    from btcxr.detect.engine import lr_for_steps

    lr, final, epochs, per_epoch, warmup, ratio = 0.005, 1e-4, 50, 97, 500, 0.001
    ours = lr_for_steps(lr, epochs * per_epoch, warmup, ratio, final, per_epoch, "epoch")
    for it in (0, 1, 96, 97, 250, 499, 500, 501, 2000, epochs * per_epoch - 1):
        epoch = it // per_epoch
        regular = final + 0.5 * (lr - final) * (1 + math.cos(math.pi * epoch / epochs))
        expected = regular * (1 - (1 - it / warmup) * (1 - ratio)) if it < warmup else regular
        assert ours[it] == pytest.approx(expected, rel=1e-12, abs=0), it
    assert ours[0] == pytest.approx(lr * ratio) and ours[-1] > final  # never quite reaches min_lr
    with pytest.raises(BtcxrError, match="cosine_by"):
        load_config(FinetuneConfig, CONFIG_DIR / "finetune" / "paper_640.yaml", ["optim.cosine_by=week"])
