"""Faster R-CNN + FPN builder: every init lands exactly in the backbone, freezing is real, inputs are
normalised as documented, checkpoints rebuild without downloads."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d

from btcxr.backbones import DEFAULT_IMAGENET, backbone_state_dict
from btcxr.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from btcxr.detect.config import ModelConfig
from btcxr.detect.model import build_detector, detector_checkpoint, load_detector
from btcxr.engine.checkpoint import save_checkpoint
from btcxr.errors import BtcxrError

SMALL = {"arch": "resnet18", "size": 64, "fpn_channels": 16, "box_head_dim": 32}



def _random_resnet18_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # non-default BN statistics, so a dropped or reset buffer is noticed
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model.state_dict()


def _assert_body_equals(model, source: dict[str, torch.Tensor]) -> None:
    body = model.backbone.body.state_dict()
    expected = {k: v for k, v in source.items() if not k.startswith("fc.") and "num_batches_tracked" not in k}
    body = {k: v for k, v in body.items() if "num_batches_tracked" not in k}
    assert set(body) == set(expected)
    for key, value in expected.items():
        assert torch.equal(body[key], value), key


def test_imagenet_init_from_torch_home_loads_exactly(tmp_path, monkeypatch):
    state = _random_resnet18_state(1)
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(state, hub / "resnet18-f37072fd.pth")  # the file name in the url of resnet18's V1 weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = build_detector(ModelConfig(init="imagenet", imagenet_weights=DEFAULT_IMAGENET["resnet18"], **SMALL))
    _assert_body_equals(model, state)


def test_imagenet_init_from_weights_file_freezes_stem_layer1_and_batchnorm(tmp_path):
    state = _random_resnet18_state(2)
    torch.save(state, tmp_path / "in.pth")
    model = build_detector(ModelConfig(init="imagenet", weights_file=str(tmp_path / "in.pth"), **SMALL))
    _assert_body_equals(model, state)
    body = model.backbone.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in body.modules()) == 20  # every BN of resnet18
    trainable = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
    frozen = {n.split(".")[0] for n, p in body.named_parameters() if not p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    assert frozen == {"conv1", "layer1"}  # FrozenBatchNorm2d has no parameters at all
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())


def test_frozen_parts_do_not_change_in_a_training_step(tmp_path):
    torch.save(_random_resnet18_state(3), tmp_path / "bb.pth")
    model = build_detector(ModelConfig(init=str(tmp_path / "bb.pth"), **SMALL))
    before = {k: v.clone() for k, v in model.backbone.body.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    target = [{"boxes": torch.tensor([[10.0, 12.0, 40.0, 44.0]]), "labels": torch.tensor([3])}]
    loss = sum(model([torch.rand(1, 64, 56)], target).values())
    loss.backward()
    opt.step()
    after = model.backbone.body.state_dict()
    for key in before:
        if key.startswith(("conv1", "bn1", "layer1")) or "running_" in key:
            assert torch.equal(before[key], after[key]), key  # frozen weights and frozen BN statistics
    assert not torch.equal(before["layer4.1.conv2.weight"], after["layer4.1.conv2.weight"])


def test_backbone_pth_and_barlow_twins_checkpoint_load_exactly(tmp_path):
    state = _random_resnet18_state(4)
    source = torchvision.models.resnet18(weights=None)
    source.load_state_dict(state)
    torch.save(backbone_state_dict(source), tmp_path / "backbone.pth")
    _assert_body_equals(build_detector(ModelConfig(init=str(tmp_path / "backbone.pth"), **SMALL)), state)

    # The original Barlow Twins training checkpoint: DDP "module." prefix, backbone + projector + bn.
    bt = {f"module.backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    bt["module.projector.0.weight"] = torch.randn(16, 512)
    bt["module.bn.running_mean"] = torch.zeros(16)
    torch.save({"epoch": 800, "model": bt, "optimizer": {"state": {}, "param_groups": []}},
               tmp_path / "checkpoint.pth")
    _assert_body_equals(build_detector(ModelConfig(init=str(tmp_path / "checkpoint.pth"), **SMALL)), state)


def test_random_init_trains_everything_with_batchnorm():
    model = build_detector(ModelConfig(init="random", **SMALL))
    body = model.backbone.body
    assert all(p.requires_grad for p in body.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    # torchvision's explicit choice is honoured: frozen BN and 3 stages even for a random init.
    model = build_detector(ModelConfig(init="random", norm="frozen", trainable_layers=3, **SMALL))
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.body.modules())
    assert not model.backbone.body.conv1.weight.requires_grad


def test_wrong_architecture_backbone_is_a_clear_error(tmp_path):
    torch.save(_random_resnet18_state(5), tmp_path / "r18.pth")
    with pytest.raises(BtcxrError, match=r"r18\.pth does not fit"):
        build_detector(ModelConfig(init=str(tmp_path / "r18.pth"), arch="resnet50", size=64))


def test_architecture_matches_the_paper():
    model = build_detector(ModelConfig(arch="resnet18", init="random", size=640))
    assert model.roi_heads.box_predictor.cls_score.out_features == 15  # background + 14 findings
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 15 * 4
    assert model.backbone.out_channels == 256
    assert model.roi_heads.box_head.fc6.out_features == 1024
    assert model.roi_heads.box_head.fc6.in_features == 256 * 7 * 7
    assert list(model.roi_heads.box_roi_pool.output_size) == [7, 7]
    assert model.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert model.rpn.anchor_generator.aspect_ratios == ((0.5, 1.0, 2.0),) * 5
    features = model.backbone(torch.rand(1, 3, 64, 64))
    assert list(features) == ["0", "1", "2", "3", "pool"]  # strides 4, 8, 16, 32 and the max-pool level
    assert [f.shape[-1] for f in features.values()] == [16, 8, 4, 2, 1]


def test_input_transform_resizes_longest_side_pads_to_32_and_normalises_gray():
    model = build_detector(ModelConfig(arch="resnet18", init="random", size=640)).eval()
    image = torch.rand(1, 500, 333)
    batch, _ = model.transform([image])
    # 500 -> 640, 333 -> floor(333 * 1.28) = 426, padded up to a multiple of 32: 448.
    assert batch.image_sizes == [(640, 426)]
    assert tuple(batch.tensors.shape) == (1, 3, 640, 448)
    # An image already at the size setting is not resampled: the output is exactly (v - mean_c) / std_c.
    exact = torch.rand(1, 640, 320)
    batch, _ = model.transform([exact])
    for c in range(3):
        expected = (exact[0] - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(batch.tensors[0, c, :, :320], expected, atol=1e-6)
    assert torch.count_nonzero(batch.tensors[0, :, :, 320:]) == 0  # zero padding


def test_load_detector_rebuilds_without_download(tmp_path, monkeypatch):
    state = _random_resnet18_state(6)
    torch.save(state, tmp_path / "in.pth")
    cfg = ModelConfig(init="imagenet", weights_file=str(tmp_path / "in.pth"), **SMALL)
    model = build_detector(cfg).eval()
    save_checkpoint(tmp_path / "best.pt", detector_checkpoint(model, cfg, epoch=7))
    (tmp_path / "in.pth").unlink()  # the init file is gone and the hub is empty: nothing may be fetched
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    loaded, meta = load_detector(tmp_path / "best.pt")
    assert meta["epoch"] == 7 and meta["detector"]["norm"] == "frozen" and meta["detector"]["trainable_layers"] == 3
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key
    x = [torch.rand(1, 64, 48)]
    with torch.no_grad():
        a, b = model(x)[0], loaded(x)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_load_detector_refuses_other_checkpoints(tmp_path):
    torch.save(_random_resnet18_state(7), tmp_path / "resnet.pth")
    with pytest.raises(BtcxrError, match="not a detector checkpoint"):
        load_detector(tmp_path / "resnet.pth")


def test_boxes_are_decoded_in_float32_under_bf16_autocast():
    # torchvision decodes boxes in the dtype of the regression outputs: without the fp32 hooks, bf16
    # autocast rounds proposals and detections to 2 px at 256..512 px (bf16 keeps 8 significant bits).
    torch.manual_seed(0)
    model = build_detector(ModelConfig(**{**SMALL, "size": 512}, init="random", box_score_thresh=0.0)).eval()
    image = torch.rand(1, 512, 384)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        boxes = model([image])[0]["boxes"]
        objectness, deltas = model.rpn.head([torch.rand(1, 16, 8, 8)])
    assert boxes.dtype == torch.float32 and len(boxes) > 0
    assert objectness[0].dtype == deltas[0].dtype == torch.float32
    # coordinates between 256 and 512 are not all on the 2-px bf16 grid
    big = boxes[(boxes >= 256) & (boxes < 512)]
    assert len(big) > 0 and bool(((big / 2) != (big / 2).round()).any())


def test_pretraining_and_finetuning_normalise_a_gray_image_the_same_way():
    """The transfer path: a cache image reaches the pre-training backbone (ssl.views.model_input, from uint8)
    and the detector's body (its transform, from the dataset's float in [0, 1]) as the same tensor."""
    from btcxr.data.datasets import to_unit_float
    from btcxr.pretrain.views import model_input

    gray = torch.randint(0, 256, (1, 1, 64, 32), dtype=torch.uint8)
    pretrain_input = model_input(gray)
    model = build_detector(ModelConfig(arch="resnet18", init="random", size=64)).eval()
    batch, _ = model.transform([to_unit_float(gray[0])])
    assert torch.allclose(batch.tensors[0, :, :, :32], pretrain_input[0], atol=1e-6)
