"""`btcxr export`: TorchScript and ONNX files that give the PyTorch model's detections, backbone state dicts
that load strictly into stock torchvision, the metadata a consumer needs, the stock torchvision recipe of
docs/export.md run as written, and failures that leave no file."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from btcxr.data.images import resize_longest
from btcxr.detect.config import ModelConfig
from btcxr.detect.model import build_detector, detector_checkpoint, load_detector
from btcxr.engine.checkpoint import save_checkpoint
from btcxr.errors import BtcxrError
from btcxr.export import (
    BOX_ATOL_PER_PX,
    FORMATS,
    SCORE_ATOL,
    ExportedDetector,
    compare_detections,
    export,
    verification_image,
)

SIZE = 128  # ResNet-50 FPN at 128 px: real architecture, CPU-test speed
DOC = Path(__file__).resolve().parents[1] / "docs" / "export.md"
# The settings of configs/finetune/paper_*.yaml that are btcxr modules (TorchScript and ONNX must carry
# them), on a slim resnet18 so that they cost little.
PAPER_TINY = {"arch": "resnet18", "fpn_channels": 16, "box_head_dim": 32, "size": 96, "anchor_grid": "exact",
              "roi_aligned": True, "roi_sampling_ratio": 0, "norm": "frozen_stats", "rpn_min_pos_iou": 0.3}


def _jitter_batchnorm(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial frozen statistics and affine weights (a random init has mean 0, var 1, weight 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.rand(buf.shape, generator=gen) * 0.2 - 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=gen) * 0.5 + 0.75)


@pytest.fixture(scope="module")
def r50_checkpoint(tmp_path_factory) -> Path:
    """A ResNet-50 FPN detector with torchvision's settings (frozen batch norm, as pretrained inits get), but
    100 proposals per image instead of 1000: the box head's 12544 x 1024 layer on 1000 proposals is most of
    a CPU forward pass at 128 px."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch="resnet50", init="random", size=SIZE, norm="frozen", rpn_pre_nms_top_n_test=200,
                      rpn_post_nms_top_n_test=100)
    model = build_detector(cfg)
    _jitter_batchnorm(model, 0)
    path = tmp_path_factory.mktemp("r50") / "best.pt"
    save_checkpoint(path, detector_checkpoint(model, cfg, epoch=7))
    return path


@pytest.fixture(scope="module")
def r50_model(r50_checkpoint):
    return load_detector(r50_checkpoint)[0]


@pytest.fixture(scope="module")
def paper_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    cfg = ModelConfig(init="random", **PAPER_TINY)
    path = tmp_path_factory.mktemp("paper") / "best.pt"
    save_checkpoint(path, detector_checkpoint(build_detector(cfg), cfg, epoch=2))
    return path


@pytest.fixture(scope="module")
def r50_onnx(r50_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "detector.onnx"
    return out, export(r50_checkpoint, out, "onnx")


@pytest.fixture(scope="module")
def r50_session(r50_onnx):
    import onnxruntime

    return onnxruntime.InferenceSession(str(r50_onnx[0]), providers=["CPUExecutionProvider"])


def _eager(model, image: torch.Tensor) -> tuple[np.ndarray, ...]:
    with torch.no_grad():
        return tuple(t.numpy() for t in ExportedDetector(model)(image))


def _match(expected, got) -> tuple[float, float]:
    """Pair each expected detection with the exported one of the same class and nearest box; the counts and
    class ids must agree. Returns (max box diff, max score diff) over the pairs."""
    (eb, es, ec), (gb, gs, gc) = expected, got
    assert len(eb) == len(gb) > 0
    free = np.ones(len(gb), dtype=bool)
    box_diff = score_diff = 0.0
    for i in range(len(eb)):
        candidates = np.flatnonzero(free & (gc == ec[i]))
        j = candidates[np.argmin(np.abs(gb[candidates] - eb[i]).max(axis=1))]
        free[j] = False
        box_diff = max(box_diff, float(np.abs(gb[j] - eb[i]).max()))
        score_diff = max(score_diff, abs(float(gs[j] - es[i])))
    return box_diff, score_diff


def test_onnx_matches_pytorch_and_carries_its_contract(r50_onnx, r50_session, r50_model):
    out, report = r50_onnx
    session = r50_session
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("image", [1, SIZE, SIZE])]
    meta = json.loads(session.get_modelmeta().custom_metadata_map["btcxr"])
    assert meta == report.metadata
    assert meta["input"]["size"] == SIZE and meta["input"]["channels"] == 1 and meta["input"]["pixel_range"] == [0, 1]
    assert meta["normalization"]["mean"] == [0.485, 0.456, 0.406] and meta["normalization"]["applied_by"] == "model"
    assert meta["classes"][0] == "Aortic enlargement" and len(meta["classes"]) == 14
    assert meta["score_threshold"] == 0.05 and meta["epoch"] == 7 and meta["source_checkpoint"] == "best.pt"

    (check,) = report.checks
    assert check["detections"] == check["expected"] == check["exported"] > 0
    assert check["max_box_diff"] <= BOX_ATOL_PER_PX * SIZE and check["max_score_diff"] <= SCORE_ATOL
    # Independently of the command's own check: the verification image and another radiograph.
    for image in (verification_image(SIZE, SIZE), _other_radiograph()):
        expected = _eager(r50_model, image)
        got = tuple(session.run(["boxes", "scores", "class_ids"], {"image": image.numpy()}))
        box_diff, score_diff = _match(expected, got)
        print(f"onnx vs pytorch at {SIZE} px: {len(got[0])} detections, max |box| {box_diff:.3g} px, "
              f"max |score| {score_diff:.3g}")
        assert box_diff <= BOX_ATOL_PER_PX * SIZE and score_diff <= SCORE_ATOL


def _other_radiograph(height: int = SIZE, width: int = SIZE) -> torch.Tensor:
    from btcxr.data.synthetic.render import render_case

    image = render_case(np.random.SeedSequence(7), (height, width), ["Pneumothorax", "Aortic enlargement"]).image
    return torch.from_numpy(np.round(image * 255).astype(np.float32) / 255)[None]


def test_torchscript_is_identical_to_eager_with_the_paper_modules(paper_checkpoint, tmp_path):
    out = tmp_path / "detector.pt"
    report = export(paper_checkpoint, out, "torchscript")
    assert [c["max_box_diff"] for c in report.checks] == [0.0, 0.0] and all(c["detections"] for c in report.checks)
    files = {"btcxr.json": ""}
    scripted = torch.jit.load(out, _extra_files=files)
    assert json.loads(files["btcxr.json"])["input"]["shape"] == [1, "H", "W"]
    model = load_detector(paper_checkpoint)[0]
    size = PAPER_TINY["size"]
    for image in (_other_radiograph(size, size), _other_radiograph(size, 70), _other_radiograph(50, 40)):
        expected = _eager(model, image)
        with torch.no_grad():
            got = [t.numpy() for t in scripted(image)]
        assert len(expected[0]) > 0
        for e, g in zip(expected, got):
            np.testing.assert_array_equal(g, e)  # the same kernels: bitwise
    assert not scripted(image)[0].requires_grad  # exported without autograd history


def test_onnx_of_the_paper_modules(paper_checkpoint, tmp_path):
    """Exact anchors and aligned RoIAlign (opset 16+) through the ONNX exporter, at another --size."""
    report = export(paper_checkpoint, tmp_path / "paper.onnx", "onnx", size=64)
    (check,) = report.checks
    assert report.size == 64 and report.metadata["input"]["shape"] == [1, 64, 64]
    assert check["detections"] > 0 and check["max_box_diff"] <= BOX_ATOL_PER_PX * 64
    print(f"paper modules onnx at 64 px: {check['detections']} detections, max |box| {check['max_box_diff']:.3g}")


def test_backbone_loads_strictly_into_stock_torchvision(r50_checkpoint, r50_model, tmp_path):
    from btcxr.backbones import build_resnet

    pth = tmp_path / "backbone.pth"
    (check,) = export(r50_checkpoint, pth, "state_dict").checks
    assert check["max_feature_diff"] <= check["feature_tolerance"]
    plain = torch.load(pth, weights_only=True)
    resnet = torchvision.models.resnet50(weights=None)
    resnet.fc = torch.nn.Identity()
    assert list(plain) == list(resnet.state_dict())  # torchvision's keys and order, no fc
    resnet.load_state_dict(plain, strict=True)
    body = r50_model.backbone.body.state_dict()
    assert all(torch.equal(plain[k], body[k]) for k in body)
    assert {k for k in plain if k not in body} == {k for k in plain if k.endswith("num_batches_tracked")}
    # The same numbers as the detector's backbone, on a radiograph (frozen batch norm vs BatchNorm2d).
    x = torch.nn.functional.interpolate(_other_radiograph().expand(3, -1, -1)[None], size=(96, 96))
    with torch.no_grad():
        feats = resnet.eval()(x)
        expected = r50_model.backbone.body(x)["3"].mean(dim=(2, 3))
    np.testing.assert_allclose(feats.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    # btcxr reads the file back as an init.
    again = build_resnet("resnet50", str(pth))
    assert torch.equal(again.state_dict()["layer4.2.bn3.running_var"], plain["layer4.2.bn3.running_var"])


def test_backbone_as_safetensors_with_metadata(paper_checkpoint, tmp_path):
    import safetensors
    import safetensors.torch

    st, pth = tmp_path / "backbone.safetensors", tmp_path / "backbone.pth"
    (check,) = export(paper_checkpoint, st, "safetensors").checks
    assert check["max_feature_diff"] <= check["feature_tolerance"] and check["arch"] == "resnet18"
    stored = safetensors.torch.load_file(st)
    resnet = torchvision.models.resnet18(weights=None)
    resnet.fc = torch.nn.Identity()
    resnet.load_state_dict(stored, strict=True)
    body = load_detector(paper_checkpoint)[0].backbone.body.state_dict()
    assert all(torch.equal(stored[k], body[k]) for k in body)
    with safetensors.safe_open(st, framework="pt") as reader:
        meta = json.loads(reader.metadata()["btcxr"])
    assert meta["arch"] == "resnet18" and "strict=True" in meta["holds"] and meta["size"] == PAPER_TINY["size"]
    assert meta["input_normalization"]["mean"] == [0.485, 0.456, 0.406]
    export(paper_checkpoint, pth, "state_dict")
    plain = torch.load(pth, weights_only=True)
    assert list(plain) == list(resnet.state_dict()) and all(torch.equal(stored[k], plain[k]) for k in plain)


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_stock_torchvision_recipe_of_the_docs_gives_identical_boxes(r50_checkpoint, r50_model):
    (recipe,) = [b for b in _python_blocks(DOC.read_text()) if "def stock_detector" in b]
    namespace: dict = {}
    exec(compile(recipe, str(DOC), "exec"), namespace)  # the block as written
    stock = namespace["stock_detector"](str(r50_checkpoint))
    assert type(stock) is torchvision.models.detection.FasterRCNN
    assert type(stock.transform) is torchvision.models.detection.transform.GeneralizedRCNNTransform
    for image in (_other_radiograph(), _other_radiograph(SIZE, 90)):
        with torch.no_grad():
            out = r50_model([image])[0]
        boxes, scores, class_ids = namespace["detect"](stock, image)
        assert len(boxes) > 0
        assert torch.equal(boxes, out["boxes"]) and torch.equal(scores, out["scores"])
        assert torch.equal(class_ids, out["labels"] - 1)



def test_stock_torchvision_recipe_refuses_btcxr_only_settings(paper_checkpoint):
    """A paper-config detector (btcxr's anchors and RoIAlign) is refused, not silently different."""
    (recipe,) = [b for b in _python_blocks(DOC.read_text()) if "def stock_detector" in b]
    namespace: dict = {}
    exec(compile(recipe, str(DOC), "exec"), namespace)
    with pytest.raises(AssertionError):
        namespace["stock_detector"](str(paper_checkpoint))


def test_onnx_consumer_example_of_the_docs(r50_onnx, r50_model, tmp_path, monkeypatch):
    out, _ = r50_onnx
    (example,) = [b for b in _python_blocks(DOC.read_text()) if "onnxruntime.InferenceSession" in b]
    pixels = (_other_radiograph(200, 160)[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "chest.png")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "detector.onnx").symlink_to(out)
    namespace: dict = {}
    exec(compile(example, str(DOC), "exec"), namespace)
    # The same boxes as the PyTorch model on the same padded input, mapped with btcxr's resize factor.
    resized, scale = resize_longest(pixels, SIZE)
    padded = torch.zeros(1, SIZE, SIZE)
    padded[0, :resized.shape[0], :resized.shape[1]] = torch.from_numpy(resized.astype(np.float32) / 255)
    boxes, scores, _ = _eager(r50_model, padded)
    assert namespace["scale"] == scale and len(namespace["boxes"]) == len(boxes) > 0
    expected = boxes / scale
    expected[:, 0::2] = expected[:, 0::2].clip(0, 160)
    expected[:, 1::2] = expected[:, 1::2].clip(0, 200)
    got = namespace["boxes"]
    order_e, order_g = np.lexsort(expected.T[::-1]), np.lexsort(got.T[::-1])
    np.testing.assert_allclose(got[order_g], expected[order_e], atol=BOX_ATOL_PER_PX * SIZE / scale)
    assert all(name in namespace["meta"]["classes"] for name, _, _ in namespace["findings"])


def test_a_backbone_that_disagrees_is_an_error_and_leaves_no_file(paper_checkpoint, tmp_path, monkeypatch):
    import btcxr.export as module

    real = module.torchvision_backbone_state

    def swapped(*args):  # a conversion bug: a batch norm's mean and variance exchanged
        state = real(*args)
        bn = "layer3.0.bn1."
        state[bn + "running_mean"], state[bn + "running_var"] = state[bn + "running_var"], state[bn + "running_mean"]
        return state

    monkeypatch.setattr(module, "torchvision_backbone_state", swapped)
    out = tmp_path / "backbone.pth"
    with pytest.raises(BtcxrError, match=r"backbone\.pth: torchvision resnet18 with these weights disagrees"):
        export(paper_checkpoint, out, "state_dict")
    assert list(tmp_path.iterdir()) == []


def test_a_detector_that_disagrees_is_an_error_and_leaves_no_file(paper_checkpoint, tmp_path, monkeypatch):
    import btcxr.export as module

    real = module._reference

    def shifted(*args):
        boxes, scores, class_ids = real(*args)
        return boxes + 0.5, scores, class_ids

    monkeypatch.setattr(module, "_reference", shifted)
    out = tmp_path / "sub" / "detector.pt"
    with pytest.raises(BtcxrError, match=r"detector\.pt: the exported model disagrees .* not written"):
        export(paper_checkpoint, out, "torchscript")
    assert list(tmp_path.iterdir()) == []  # no file, no temporary file, not even the folder it made


def test_compare_detections_matches_by_class_and_box_not_position():
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 500, (6, 2))
    boxes = np.hstack([corner, corner + rng.uniform(5, 100, (6, 2))])
    scores = np.array([0.9, 0.8, 0.8, 0.5, 0.3, 0.06], dtype=np.float32)
    ids = np.array([3, 0, 0, 13, 3, 5])
    ref = (boxes, scores, ids)
    perm = [0, 2, 1, 3, 4, 5]  # a tie swapped
    result = compare_detections(ref, (boxes[perm] + 0.01, scores[perm] + 1e-5, ids[perm]), 640, "x", "f.onnx",
                                score_threshold=0.05)
    assert result["detections"] == 6 and result["max_box_diff"] == pytest.approx(0.01)
    with pytest.raises(BtcxrError, match="f.onnx"):  # a box 0.2 px off at 640 px
        compare_detections(ref, (boxes + np.array([0.2, 0, 0, 0]), scores, ids), 640, "x", "f.onnx")
    with pytest.raises(BtcxrError, match="f.onnx"):  # a score 0.001 off
        compare_detections(ref, (boxes, scores + np.float32(0.001), ids), 640, "x", "f.onnx")
    with pytest.raises(BtcxrError, match="2 without a partner"):  # another class (one on each side)
        compare_detections(ref, (boxes, scores, np.array([3, 0, 0, 13, 3, 6])), 640, "x", "f.onnx",
                           score_threshold=0.05)
    # A detection at the score threshold may be missing from the export; one well above it may not, and
    # neither may three at the threshold.
    def plus(n: int):
        extra = np.array([[10.0 + 60 * k, 10, 40 + 60 * k, 40] for k in range(n)])
        return np.vstack([boxes, extra]), np.append(scores, [0.05004] * n), np.append(ids, [5] * n)

    assert compare_detections(plus(1), ref, 640, "x", "f", score_threshold=0.05)["at_cutoff"] == 1
    with pytest.raises(BtcxrError, match="3 without a partner"):
        compare_detections(plus(3), ref, 640, "x", "f", score_threshold=0.05)
    with pytest.raises(BtcxrError, match="2 without a partner"):  # the 0.3 and 0.06 detections
        compare_detections(ref, (boxes[:4], scores[:4], ids[:4]), 640, "x", "f", score_threshold=0.05)


def test_missing_export_extra_names_it(paper_checkpoint, tmp_path, monkeypatch, capsys):
    from btcxr.cli import main

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    monkeypatch.setitem(sys.modules, "safetensors", None)
    for fmt in ("onnx", "safetensors"):
        with pytest.raises(BtcxrError, match=re.escape("pip install 'btcxr[export]'")):
            export(paper_checkpoint, tmp_path / f"x.{fmt}", fmt)
    code = main(["export", "--checkpoint", str(paper_checkpoint), "--format", "onnx", "--out", str(tmp_path / "y")])
    assert code == 2 and "btcxr[export]" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_are_named(paper_checkpoint, tmp_path, capsys):
    from btcxr.cli import main

    backbone = tmp_path / "backbone.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), backbone)
    garbage = tmp_path / "broken.pt"
    garbage.write_bytes(b"PK\x03\x04 not a checkpoint")
    cases = [
        ([str(backbone), "--format", "onnx"], "backbone.pth is not a detector checkpoint"),
        ([str(garbage), "--format", "torchscript"], "broken.pt cannot be read"),
        ([str(tmp_path / "missing.pt"), "--format", "state_dict"], "missing.pt does not exist"),
        ([str(paper_checkpoint), "--format", "torchscript", "--size", "16"], "--size 16 for .*best.pt"),
        ([str(paper_checkpoint), "--format", "state_dict", "--out", str(paper_checkpoint)], "is the checkpoint itself"),
    ]
    for args, message in cases:
        argv = ["export", "--checkpoint", *args]
        argv += [] if "--out" in args else ["--out", str(tmp_path / "out" / "model")]
        assert main(argv) == 2
        assert re.search(message, capsys.readouterr().err), message
    assert not (tmp_path / "out").exists()
    assert paper_checkpoint.stat().st_size > 0


def test_command_line_reports_the_check(paper_checkpoint, tmp_path, capsys):
    from btcxr.cli import main
    from btcxr.commands.export import FORMATS as CLI_FORMATS

    assert CLI_FORMATS == FORMATS
    out = tmp_path / "resnet18.pth"
    assert main(["export", "--checkpoint", str(paper_checkpoint), "--format", "state_dict", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"state_dict -> {out}" in printed and "strict load into torchvision resnet18" in printed
    resnet = torchvision.models.resnet18(weights=None)
    resnet.fc = torch.nn.Identity()
    resnet.load_state_dict(torch.load(out, weights_only=True))
