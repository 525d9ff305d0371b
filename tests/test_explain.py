"""Ablation-CAM and friends on a tiny random-weight Faster R-CNN: equal to pytorch-grad-cam, the formula,
the cut forward pass, the CLI's files. Everything runs on the CPU in seconds (160 px, ResNet-18, few
proposals, a handful of ablated channels)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_grad_cam import AblationCAM as PackageAblationCAM
from pytorch_grad_cam.ablation_layer import AblationLayer
from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

from btcxr.detect.config import ModelConfig
from btcxr.detect.model import build_detector, detector_checkpoint
from btcxr.engine.checkpoint import save_checkpoint
from btcxr.errors import BtcxrError
from btcxr.explain.ablation import AblationCAM, channels_to_ablate
from btcxr.explain.base import TargetLayer, box_targets, get_module, resolve_layer, select_boxes
from btcxr.explain.forward import SplitDetector
from btcxr.explain.fpn import UpsampledConv3x3, fpn_forward, fpn_from_level, fpn_is_linear
from btcxr.explain.methods import EigenCAM, GradCAM, build_cam
from btcxr.explain.targets import FasterRCNNBoxTarget, target_scores

SIZE = 160


def tiny_detector(size: int = SIZE, seed: int = 0, few_proposals: bool = True) -> torch.nn.Module:
    """Random ResNet-18 FPN detector whose class scores are peaked enough to give confident boxes."""
    torch.manual_seed(seed)
    model = build_detector(ModelConfig(arch="resnet18", init="random", size=size)).eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(20)
    if few_proposals:  # 50 proposals instead of 1000: the box head dominates the cost at this size
        model.rpn._pre_nms_top_n["testing"] = 100
        model.rpn._post_nms_top_n["testing"] = 50
    return model


def smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.rand(1, 1, h, w, generator=g), 9, 1, 4)[0]


@pytest.fixture(scope="module")
def model():
    return tiny_detector()


@pytest.fixture(scope="module")
def image():
    return smooth_image(128, SIZE)  # sides multiples of 32: no padding, grad-cam's frame is ours


# ------------------------------------------------------------------------------------------ targets
def _output(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
            "scores": torch.tensor(scores, dtype=torch.float32)}


def test_box_target_is_gradcams_score_when_the_closest_box_has_the_class():
    out = _output([[10, 10, 50, 50], [12, 10, 52, 50], [100, 100, 140, 140]], [3, 5, 3], [0.9, 0.6, 0.8])
    for label, box in [(3, [10, 10, 50, 50]), (5, [13, 10, 52, 50]), (3, [101, 99, 139, 141])]:
        ours = FasterRCNNBoxTarget(label, box)(out)
        ref = FasterRCNNBoxScoreTarget([label], [np.asarray(box, np.float32)])(out)
        assert float(ours) == pytest.approx(float(ref[0]))
        assert float(ours) > 1.0
    # the closest detection has another class: grad-cam scores 0, we take the class's own detection
    box = np.asarray([12, 10, 52, 50], np.float32)
    assert float(FasterRCNNBoxScoreTarget([3], [box])(out)[0]) == 0.0
    iou = (38 * 40) / (40 * 40 + 40 * 40 - 38 * 40)
    assert float(FasterRCNNBoxTarget(3, box)(out)) == pytest.approx(iou + 0.9)
    assert float(FasterRCNNBoxTarget(7, box)(out)) == 0.0  # no detection of the class
    empty = _output(np.zeros((0, 4)), [], [])
    assert target_scores([FasterRCNNBoxTarget(3, box)], [out, empty]).shape == (2, 1)


# ------------------------------------------------------------------------------------------ layers
def test_layer_names_resolve_and_unknown_names_list_the_valid_ones(model):
    assert resolve_layer(model, "layer3") == resolve_layer(model, "backbone.body.layer3")
    assert resolve_layer(model, "backbone.fpn.layer_blocks.2").name == "fpn.2"
    assert resolve_layer(model, "fpn.pool").level == "pool"
    assert resolve_layer(model, "backbone.body.layer3.1").kind == "module"
    with pytest.raises(BtcxrError, match=r"unknown target layer 'layer9'.*layer1, layer2, layer3, layer4, "
                                         r"fpn\.0.*fpn\.pool, fpn"):
        AblationCAM(model, "layer9")
    with pytest.raises(BtcxrError, match="gradcam cannot use layer 'fpn'"):
        GradCAM(model, "fpn")
    with pytest.raises(BtcxrError, match="--ratio"):
        build_cam("ablation", model, "layer3", ratio=0.0)


# ------------------------------------------------------------------------------------------ FPN update
@pytest.mark.parametrize("factor", [2, 4, 8])
def test_conv_of_upsampled_map_at_coarse_resolution(factor):
    torch.manual_seed(factor)
    x = torch.randn(2, 5, 4, 6)
    weight = torch.randn(7, 5, 3, 3)
    expected = F.conv2d(F.interpolate(x, scale_factor=factor, mode="nearest"), weight, padding=1)
    out = torch.zeros_like(expected)
    UpsampledConv3x3(weight, factor).add_to(out, x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_fpn_update_from_a_level_equals_torchvision_fpn(model, level):
    fpn = model.backbone.fpn
    assert fpn_is_linear(fpn)
    torch.manual_seed(level)
    channels = [64, 128, 256, 512]
    old_in = OrderedDict((str(i), torch.randn(1, c, 32 // 2**i, 40 // 2**i)) for i, c in enumerate(channels))
    with torch.no_grad():
        old, top_down = fpn_forward(fpn, old_in)
        for key, value in fpn(old_in).items():
            assert torch.equal(old[key], value)  # the copy of torchvision's forward is exact
        new_in = OrderedDict((k, v.repeat(3, 1, 1, 1)) for k, v in old_in.items())
        for i in range(level, 4):
            new_in[str(i)] = new_in[str(i)] + torch.randn_like(new_in[str(i)])
        updated = fpn_from_level(fpn, new_in, level, old, top_down)
        expected = fpn(new_in)
    assert list(updated) == list(expected) == ["0", "1", "2", "3", "pool"]
    for key in expected:
        torch.testing.assert_close(updated[key], expected[key], rtol=1e-4, atol=1e-4)
    # only some outputs asked for (the box-local mode): those alone come back, equal to the full update
    kept = fpn_from_level(fpn, new_in, level, old, top_down, keep=["0", "3"])
    assert list(kept) == ["0", "3"]
    for key in kept:
        torch.testing.assert_close(kept[key], updated[key], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ cut forward
def _scores_of(outputs, targets):
    return target_scores(targets, outputs).numpy()


@pytest.mark.parametrize("layer", ["layer3", "layer2", "fpn.0", "fpn.3"])
def test_cut_forward_equals_whole_model_with_the_layer_replaced(model, image, layer):
    """Our second-half-only pass gives the outputs of the whole model whose layer outputs the ablated copy
    (the hook path, which is how pytorch-grad-cam swaps a layer)."""
    fast = SplitDetector(model, resolve_layer(model, layer))
    out = fast.first_pass(image)
    with torch.no_grad():
        whole = model([image])[0]
    torch.testing.assert_close(out["scores"], whole["scores"])
    path = resolve_layer(model, layer).module_path
    slow = SplitDetector(model, TargetLayer(name=path, kind="module", module_path=path))
    slow.first_pass(image)
    targets = box_targets(out, select_boxes(out, 0.0, 4))
    channels = [0, 5, 17, 40]
    np.testing.assert_allclose(_scores_of(fast.ablated_outputs(channels), targets),
                               _scores_of(slow.ablated_outputs(channels), targets), rtol=1e-4, atol=1e-4)
    if layer == "layer3":
        assert fast._fpn_level == 2  # the linear FPN update was used


def test_cut_forward_all_fpn_levels(model, image):
    fast = SplitDetector(model, resolve_layer(model, "fpn"))
    out = fast.first_pass(image)
    assert fast.num_channels == 5 * 256 and fast.activation.shape[0] == 5 * 256
    targets = box_targets(out, select_boxes(out, 0.0, 3))
    channels = [3, 256 + 9, 4 * 256 + 1]  # levels 0, 1 and pool

    def ablate(_module, _inputs, features):
        features = OrderedDict((k, v.clone()) for k, v in features.items())  # already one copy per channel
        for i, ch in enumerate(channels):
            features[list(features)[ch // 256]][i, ch % 256] = 0
        return features

    handle = model.backbone.register_forward_hook(ablate)
    try:
        with torch.no_grad():
            expected = model([image] * len(channels))
    finally:
        handle.remove()
    np.testing.assert_allclose(_scores_of(fast.ablated_outputs(channels), targets), _scores_of(expected, targets),
                               rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ box-local mode
def _zeroing(k: int):
    """A forward hook that sets channel k of the module's output to zero (the ablation, done plainly)."""
    def zero(_module, _inputs, output):
        output = output.clone()
        output[:, k] = 0
        return output

    return zero


def _fixed_proposal_outputs(model, image, layer: str, channels, proposals):
    """Reference for the box-local mode: the whole model with channel k of `layer` zeroed (a hook, one
    copy per channel) and the RPN replaced by the given proposals, through torchvision's own RoIHeads."""
    module = get_module(model, resolve_layer(model, layer).module_path)
    outputs = []
    for k in channels:
        handle = module.register_forward_hook(_zeroing(k))
        try:
            with torch.no_grad():
                images, _ = model.transform([image])
                features = model.backbone(images.tensors)
                detections, _ = model.roi_heads(features, [proposals], images.image_sizes)
                outputs += model.transform.postprocess(detections, images.image_sizes, [tuple(image.shape[-2:])])
        finally:
            handle.remove()
    return outputs


@pytest.mark.parametrize("layer", ["layer3", "fpn.0"])
def test_box_local_heads_equal_torchvision_heads_on_the_fixed_proposals(model, image, layer, monkeypatch):
    """With every proposal a candidate, the box-local pass is torchvision's RoIHeads on the unablated
    proposals; with the default candidates the targets' scores are the same (only far boxes are dropped)."""
    import btcxr.explain.box_local as box_local

    split = SplitDetector(model, resolve_layer(model, layer))
    out = split.first_pass(image)
    targets = box_targets(out, select_boxes(out, 0.0, 3))
    channels = [1, 7, 30]
    reference = _scores_of(_fixed_proposal_outputs(model, image, layer, channels, split.proposals), targets)
    default = split.candidate_heads(targets)
    assert 0 < len(default.candidates) < len(split.proposals)
    np.testing.assert_allclose(_scores_of(split.ablated_outputs(channels, default), targets), reference,
                               rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(box_local, "CANDIDATE_IOU", -1.0)
    every = split.candidate_heads(targets)
    assert len(every.candidates) == len(split.proposals)
    all_levels = model.roi_heads.box_roi_pool.map_levels([split.proposals]).flatten().tolist()
    assert every.levels == [str(i) for i in sorted(set(all_levels))]
    ablated = split.ablated_outputs(channels, every)
    whole = _fixed_proposal_outputs(model, image, layer, channels, split.proposals)
    for mine, theirs in zip(ablated, whole):
        torch.testing.assert_close(mine["scores"], theirs["scores"], rtol=1e-4, atol=1e-4)
        assert torch.equal(mine["labels"], theirs["labels"])
    # unablated: the candidate heads give the detector's own scores for its boxes
    np.testing.assert_allclose(_scores_of(default(split.features, 1), targets), _scores_of([out], targets),
                               rtol=1e-5, atol=1e-5)


def test_box_local_mode_reads_only_the_levels_of_its_candidates(model, image):
    split = SplitDetector(model, resolve_layer(model, "layer3"))
    out = split.first_pass(image)
    heads = split.candidate_heads(box_targets(out, select_boxes(out, 0.0, 1)))
    levels = set(model.roi_heads.box_roi_pool.map_levels([heads.candidates]).flatten().tolist())
    assert heads.levels == [str(i) for i in sorted(levels)]
    features = fpn_from_level(split.fpn, split._body_from(split._act.repeat(2, 1, 1, 1)), split._fpn_level,
                              split.features, split._top_down, keep=heads.levels)
    assert list(features) == heads.levels  # "pool" and unread levels are never computed


def test_box_mode_falls_back_to_exact_where_it_cannot_cut(model, image):
    path = "backbone.body.layer3.1"
    box = AblationCAM(model, path, ratio=0.03, batch_size=8, mode="box").explain(image, 0.0, 2)
    exact = AblationCAM(model, path, ratio=0.03, batch_size=8, mode="exact").explain(image, 0.0, 2)
    np.testing.assert_allclose(box.heatmaps, exact.heatmaps, atol=1e-6)
    with pytest.raises(BtcxrError, match="ablation-mode"):
        AblationCAM(model, "layer3", mode="fast")


def test_split_progress_logs_images_per_hour_and_time_left(caplog, monkeypatch):
    from btcxr.explain import run as explain_run

    clock = iter([0.0, 0.0, 30.0, 90.0, 120.0])
    monkeypatch.setattr(explain_run.time, "perf_counter", lambda: next(clock))
    rate = explain_run._Rate(total=4, split="test", every_s=60.0)  # start at t = 0
    with caplog.at_level("INFO", logger="btcxr.explain.run"):
        rate.report(0)   # nothing done yet: no rate
        rate.report(1)   # t = 30: under a minute since the last line
        rate.report(2)   # t = 90: 2 images in 90 s
        rate.report(4)   # t = 120: the end is always logged
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["explain test: 2 of 4 images, 80 images per hour, 1 min 30 s left",
                     "explain test: 4 of 4 images, 120 images per hour, 0 min 00 s left"]


# ------------------------------------------------------------------------------------------ Ablation-CAM
def test_channel_selection_is_gradcams():
    torch.manual_seed(1)
    act = torch.relu(torch.randn(64, 6, 8))
    act[7] = 0  # a dead channel, as ReLU layers have
    for ratio in (0.05, 0.25, 0.5, 1.0):
        with np.errstate(all="ignore"):
            expected = AblationLayer().activations_to_be_ablated(act.numpy(), ratio)
        chosen = channels_to_ablate(act, ratio)
        assert chosen.tolist() == sorted(set(np.asarray(expected).tolist()))
    assert len(channels_to_ablate(act, 0.25)) == 2 * 16  # best and worst quarters
    assert len(channels_to_ablate(act, 0.5)) == 64  # ratio 0.5 ablates every channel


def test_weights_are_the_relative_drop_of_the_box_score(model, image):
    cam = AblationCAM(model, "layer3", ratio=0.03, batch_size=8, mode="exact")
    out = cam.detect(image)
    targets = box_targets(out, select_boxes(out, 0.0, 2))
    weights = cam.weights(targets).numpy()  # (2, 256)
    chosen = channels_to_ablate(cam._split.activation, 0.03)
    assert len(chosen) == 2 * 7
    skipped = np.setdiff1d(np.arange(256), chosen)
    assert np.all(weights[:, skipped] == 0)
    y = np.array([float(t(out)) for t in targets])
    layer3 = model.backbone.body.layer3
    for k in chosen[:3]:
        handle = layer3.register_forward_hook(_zeroing(k))
        try:
            with torch.no_grad():
                ablated = model([image])[0]
        finally:
            handle.remove()
        y_k = np.array([float(t(ablated)) for t in targets])
        np.testing.assert_allclose(weights[:, k], (y - y_k) / y, rtol=1e-4, atol=1e-5)
    assert np.abs(weights).max() > 0


def test_ablation_cam_matches_the_grad_cam_package(model, image):
    ratio = 0.05  # pytorch-grad-cam's rule: 2 * int(256 * 0.05) = 24 channels, same ones in both
    ours = AblationCAM(model, "layer3", ratio=ratio, batch_size=16, mode="exact")
    explanation = ours.explain(image, score_thr=0.0, top_k=3)
    assert len(explanation) == 3
    targets = box_targets(ours._output, select_boxes(ours._output, 0.0, 3))
    package = PackageAblationCAM(model, [get_module(model, "backbone.body.layer3")], batch_size=16,
                                 ratio_channels_to_ablate=ratio)
    with np.errstate(divide="ignore", invalid="ignore"):  # its channel ranking divides dead channels by 0
        reference = np.concatenate([package(image[None], targets=[t]) for t in targets])
    stride = 16  # layer3's cells
    for mine, theirs in zip(explanation.heatmaps, reference):
        assert mine.shape == theirs.shape == (128, SIZE)
        assert mine.max() > 0.999 and mine.min() == pytest.approx(0.0, abs=1e-6)
        assert np.corrcoef(mine.ravel(), theirs.ravel())[0, 1] >= 0.99
        a = np.array(np.unravel_index(mine.argmax(), mine.shape))
        b = np.array(np.unravel_index(theirs.argmax(), theirs.shape))
        assert np.abs(a - b).max() <= stride
    # the maps differ between boxes: one shared pass, separate weights
    assert np.corrcoef(explanation.heatmaps[0].ravel(), explanation.heatmaps[1].ravel())[0, 1] < 0.999


def test_package_methods_give_maps_in_the_image_frame(model):
    img = smooth_image(120, SIZE, seed=3)  # 120 rows: padded to 128 inside the model
    grad = GradCAM(model, "layer3").explain(img, score_thr=0.0, top_k=2)
    eigen = EigenCAM(model, "fpn").explain(img, score_thr=0.0, top_k=2)
    for e in (grad, eigen):
        assert e.heatmaps.shape == (2, 120, SIZE)
        assert np.all(e.heatmaps.max(axis=(1, 2)) > 0.999) and np.all(e.heatmaps.min(axis=(1, 2)) == 0)
    assert np.array_equal(eigen.heatmaps[0], eigen.heatmaps[1])  # EigenCAM ignores the target
    assert not any(p.grad is not None for p in model.parameters())


# ------------------------------------------------------------------------------------------ CLI
def _checkpoint(path, seed: int, blind: bool = False):
    cfg = ModelConfig(arch="resnet18", init="random", size=128)
    model = tiny_detector(128, seed, few_proposals=False)
    if blind:  # background always wins: no detection at all
        with torch.no_grad():
            model.roi_heads.box_predictor.cls_score.bias[0] = 1000.0
    save_checkpoint(path, detector_checkpoint(model, cfg))
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {"seeing": _checkpoint(root / "seeing" / "best.pt", 0), "blind": _checkpoint(root / "blind.pt", 1, True)}


def test_cli_explains_png_and_dicom_side_by_side(tmp_path, checkpoints):
    from fixtures_cache import gradient_image, write_dicom

    from btcxr.cli import main
    from btcxr.detect.engine import predict_batch
    from btcxr.detect.model import load_detector

    Image.fromarray(gradient_image(100, 120, 1)).save(tmp_path / "chest1.png")
    write_dicom(tmp_path / "chest2.dcm", gradient_image(200, 256, 2, np.uint16))
    out = tmp_path / "out"
    argv = ["-q", "explain", "--checkpoint", str(checkpoints["seeing"]), "--checkpoint", str(checkpoints["blind"]),
            "--label", "Seeing", "--label", "Blind", str(tmp_path / "chest1.png"), str(tmp_path / "chest2.dcm"),
            "--out", str(out), "--ratio", "0.01", "--top-k", "2", "--batch-size", "4", "--score-thr", "0.3",
            "--device", "cpu"]
    assert main(argv) == 0
    boxes = pd.read_csv(out / "boxes.csv")
    skipped = pd.read_csv(out / "skipped.csv")
    assert sorted(skipped["image_id"]) == ["chest1", "chest2"] and set(skipped["model"]) == {"Blind"}
    assert skipped["reason"].str.contains("no detection with score >= 0.3").all()
    assert set(boxes["model"]) == {"Seeing"} and set(boxes["image_id"]) == {"chest1", "chest2"}
    assert (boxes.groupby("image_id").size() == 2).all()
    for figure in boxes["figure"]:
        assert (out / figure).is_file() and Image.open(out / figure).size[0] > 300
    assert (out / "grids" / "chest1.png").is_file() and (out / "grids" / "chest2.png").is_file()
    assert not (out / "localisation.json").exists()  # no ground truth given
    # boxes are the detector's, in ORIGINAL pixels (the DICOM is 200 x 256, the model sees 100 x 128)
    model, _ = load_detector(checkpoints["seeing"])
    from btcxr.data.images import read_image, resize_longest

    pixels, _ = resize_longest(read_image(tmp_path / "chest2.dcm").pixels, 128)
    result = predict_batch(model, [torch.from_numpy(pixels.astype(np.float32) / 255)[None]], [(256, 200)],
                           torch.device("cpu"))[0]
    top = np.argsort(-result["scores"], kind="stable")[:2]
    got = boxes[boxes["image_id"] == "chest2"].sort_values("box")
    np.testing.assert_allclose(got[["x_min", "y_min", "x_max", "y_max"]].to_numpy(), result["boxes"][top],
                               rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got["score"].to_numpy(), result["scores"][top], rtol=1e-5)


def test_cli_errors_are_clear(tmp_path, checkpoints, capsys):
    from btcxr.cli import main

    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(tmp_path / "a.png")
    assert main(["explain", "--checkpoint", str(tmp_path / "missing.pt"), str(tmp_path / "a.png"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err
    with pytest.raises(BtcxrError, match="missing.pt does not exist"):
        from btcxr.explain.run import explain_images

        explain_images([tmp_path / "missing.pt"], [tmp_path / "a.png"], tmp_path / "o")
    with pytest.raises(BtcxrError, match="unknown target layer 'layer7'"):
        explain_images([checkpoints["blind"]], [tmp_path / "a.png"], tmp_path / "o", layer="layer7")
    with pytest.raises(BtcxrError, match="one label per checkpoint"):
        explain_images([checkpoints["blind"]], [tmp_path / "a.png"], tmp_path / "o", labels=["x", "y"])
    summary = explain_images([checkpoints["blind"]], [tmp_path / "a.png"], tmp_path / "o", device="cpu")
    assert summary["boxes"] == 0 and summary["skipped"] == 1
    assert pd.read_csv(tmp_path / "o" / "skipped.csv")["image_id"].tolist() == ["a"]
    # one corrupt file among good ones: stops the run, or with --on-error skip is skipped and listed
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    argv = ["explain", "--checkpoint", str(checkpoints["blind"]), str(tmp_path / "a.png"), str(tmp_path / "b.png"),
            "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "stop")]) == 2
    assert "b.png" in capsys.readouterr().err and not (tmp_path / "stop").exists()
    assert main([*argv, "--out", str(tmp_path / "skip"), "--on-error", "skip"]) == 0
    skipped = pd.read_csv(tmp_path / "skip" / "skipped.csv").set_index("image_id")
    assert sorted(skipped.index) == ["a", "b"] and "b.png" in skipped.loc["b", "reason"]


def test_split_localisation_scores_true_positives(tmp_path, checkpoints):
    """A cache whose ground truth is the detector's own top boxes: every explained box is a true positive."""
    from fixtures_cache import make_vindr_kaggle

    from btcxr.data.cache import PrepareSettings, prepare
    from btcxr.data.classes import VINDR_CLASSES
    from btcxr.data.datasets import VindrDetection
    from btcxr.detect.model import load_detector
    from btcxr.explain.run import explain_split

    make_vindr_kaggle(tmp_path / "raw", n=6)
    cache = tmp_path / "cache"
    prepare(PrepareSettings("vindr", str(tmp_path / "raw"), str(cache), size=128, workers=1))
    data = VindrDetection(cache, "train")
    model, _ = load_detector(checkpoints["seeing"])
    rows = []
    for k in range(2):
        img, target = data[k]
        with torch.no_grad():
            det = model([img])[0]
        for box, label in zip(det["boxes"][:2], det["labels"][:2]):
            rows.append([target["image_id"], int(label) - 1, VINDR_CLASSES[int(label) - 1],
                         *(box / target["scale"]).tolist(), 1.0])
    pd.DataFrame(rows, columns=["image_id", "class_id", "class_name", "x_min", "y_min", "x_max", "y_max",
                                "score"]).to_csv(cache / "annotations.csv", index=False)
    out = tmp_path / "loc"
    summary = explain_split([checkpoints["seeing"], checkpoints["blind"]], cache, "train", out,
                            labels=["Seeing", "Blind"], score_thr=0.0, top_k=2, ratio=0.01, batch_size=4,
                            device="cpu", grid_images=1, n_boot=200)
    boxes = pd.read_csv(out / "boxes.csv", dtype={"image_id": str})
    assert summary["images"] == 2 and len(boxes) == 4
    assert (boxes["gt_iou"] > 0.999).all()
    assert boxes["energy_in_box"].between(0, 1).all() and boxes["pointing_game"].isin([0, 1]).all()
    seeing = summary["models"]["Seeing"]
    assert seeing["energy_in_box"]["n"] == 4 and seeing["counts"]["images"] == 2
    assert seeing["energy_in_box"]["mean"] == pytest.approx(boxes["energy_in_box"].mean())
    assert seeing["pointing_game"]["mean"] == pytest.approx(boxes["pointing_game"].mean())
    assert summary["models"]["Blind"]["energy_in_box"]["n"] == 0
    saved = __import__("json").loads((out / "localisation.json").read_text())
    assert saved["models"]["Seeing"]["energy_in_box"]["n"] == 4 and saved["layer"] == "layer3"
    assert "| Seeing | all | 4 |" in (out / "localisation.md").read_text()
    assert len(list((out / "grids").glob("*.png"))) == 1  # grid_images=1
    assert len(pd.read_csv(out / "skipped.csv")) == 2  # the blind model, both images
    # the same image given as a file with --cache: same boxes (original pixels) and the same scores
    from btcxr.explain.run import explain_images

    image_id = boxes["image_id"].iloc[0]
    single = explain_images([checkpoints["seeing"]], [cache / "images" / f"{image_id}.png"], tmp_path / "one",
                            labels=["Seeing"], cache=cache, score_thr=0.0, top_k=2, ratio=0.01, batch_size=4,
                            device="cpu", figures=False, n_boot=200)
    again = pd.read_csv(tmp_path / "one" / "boxes.csv", dtype={"image_id": str})
    before = boxes[(boxes["image_id"] == image_id) & (boxes["model"] == "Seeing")]
    columns = ["x_min", "y_min", "x_max", "y_max", "score", "gt_iou", "energy_in_box", "pointing_game"]
    np.testing.assert_allclose(again[columns].to_numpy(), before[columns].to_numpy(), rtol=1e-4, atol=1e-3)
    assert single["models"]["Seeing"]["energy_in_box"]["n"] == 2
