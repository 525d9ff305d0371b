"""The public API (btcxr/api.py, docs/api.md): a light `import btcxr`; backbones from every checkpoint layout
we accept, tensor for tensor; a Detector whose predict() gives `btcxr predict`'s numbers for every kind of
image; evaluate() for any class list, equal to evaluate_detections for VinDr, with errors that name the
frame, row and value; the documentation's example run as written."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import test_metrics as tm  # the metrics tests' real-VinDr data helpers (a module: its tests are not collected)
import torch
import torchvision
from fixtures_cache import gradient_image, write_dicom
from PIL import Image
from torch import nn

import btcxr
from btcxr.backbones import LOADABLE_ARCHS, build_resnet, infer_arch
from btcxr.data.classes import NO_FINDING, VINDR_CLASSES
from btcxr.detect.config import ModelConfig
from btcxr.detect.metrics import evaluate_detections
from btcxr.detect.model import build_detector, detector_checkpoint
from btcxr.detect.predictions import read_predictions_csv, write_predictions
from btcxr.engine.checkpoint import save_checkpoint
from btcxr.errors import BtcxrError

ROOT = Path(__file__).resolve().parents[1]
BOX = ["x_min", "y_min", "x_max", "y_max"]
SIZE = 64


def tiny_detector_checkpoint(path: Path, init: str = "random", seed: int = 0) -> Path:
    """The untrained resnet18 detector of tests/test_predict.py (fixed seed: many low-score boxes)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="resnet18", init=init, size=SIZE, fpn_channels=16, box_head_dim=32)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, detector_checkpoint(build_detector(cfg), cfg, epoch=3))
    return path


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """Non-default batch-norm statistics and affine weights, so a dropped or reset tensor is noticed."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.num_batches_tracked.fill_(7)
    return model


def assert_same_backbone(model: nn.Module, source: dict[str, torch.Tensor]) -> None:
    """Every tensor of the loaded ResNet equals the source's (fc and batch counters aside)."""
    def body(state):
        return {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}

    got, want = body(model.state_dict()), body(source)
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


# ------------------------------------------------------------------------------------------------ import
def test_import_btcxr_is_light_and_exposes_the_api():
    code = ("import sys, btcxr; assert 'torch' not in sys.modules and 'pandas' not in sys.modules; "
            "print(btcxr.__version__, sorted(btcxr.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith(btcxr.__version__)
    for name in ("load_backbone", "load_detector", "evaluate", "explain", "__version__"):
        assert name in out and hasattr(btcxr, name)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        btcxr.nothing  # noqa: B018
    # btcxr.explain: the subpackage, bound by every `import btcxr.explain.x`, and the API function
    importlib.import_module("btcxr.explain.run")
    assert callable(btcxr.explain) and btcxr.explain.run.explain_images


# ------------------------------------------------------------------------------------------------ backbones
@pytest.fixture(scope="module")
def resnet50_state() -> dict[str, torch.Tensor]:
    return randomised(torchvision.models.resnet50(weights=None), 1).state_dict()


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return randomised(torchvision.models.resnet18(weights=None), 2)


def _layout(name: str, resnet18: nn.Module, resnet50_state: dict) -> tuple[object, dict[str, torch.Tensor]]:
    """(what the file holds in that library's own key naming, the ResNet state it must load as)."""
    r18 = resnet18.state_dict()
    no_fc18 = {k: v for k, v in r18.items() if not k.startswith("fc.")}
    if name == "ours":  # backbone.pth of btcxr pretrain
        return no_fc18, r18
    if name == "torchvision":
        return resnet50_state, resnet50_state
    if name == "timm":  # the same names as torchvision's; a head of another size
        return {**{k: v for k, v in resnet50_state.items() if not k.startswith("fc.")},
                "fc.weight": torch.zeros(11, 2048), "fc.bias": torch.zeros(11)}, resnet50_state
    if name == "solo-learn":
        return {"epoch": 99, "state_dict": {**{f"backbone.{k}": v for k, v in no_fc18.items()},
                                            "projector.0.weight": torch.zeros(32, 512),
                                            "classifier.weight": torch.zeros(10, 512),
                                            "momentum_backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}}, r18
    if name == "lightly":  # the lightly tutorials' backbone, saved as is
        return nn.Sequential(*list(resnet18.children())[:-1]).state_dict(), r18
    if name == "lightly-lightning":  # a Lightning module holding that backbone and a projection head
        sequential = nn.Sequential(*list(resnet18.children())[:-1]).state_dict()
        return {"state_dict": {**{f"backbone.{k}": v for k, v in sequential.items()},
                               "projection_head.layers.0.weight": torch.zeros(16, 512)}}, r18
    if name == "mmdetection":
        return {"meta": {"epoch": 12, "mmdet_version": "2.25.0"},
                "state_dict": {**{f"backbone.{k}": v for k, v in no_fc18.items()},
                               "neck.lateral_convs.0.conv.weight": torch.zeros(256, 64, 1, 1),
                               "rpn_head.rpn_conv.weight": torch.zeros(256, 256, 3, 3),
                               "roi_head.bbox_head.fc_cls.weight": torch.zeros(15, 1024)}}, r18
    raise AssertionError(name)


LAYOUTS = ["ours", "torchvision", "timm", "solo-learn", "lightly", "lightly-lightning", "mmdetection"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_backbone_layouts_load_tensor_for_tensor(layout, resnet18, resnet50_state, tmp_path):
    content, source = _layout(layout, resnet18, resnet50_state)
    torch.save(content, tmp_path / "file.pth")
    model = btcxr.load_backbone(tmp_path / "file.pth")
    assert type(model) is torchvision.models.ResNet and isinstance(model.fc, nn.Identity) and not model.training
    assert_same_backbone(model, source)
    arch = "resnet50" if "layer1.0.conv3.weight" in source else "resnet18"
    assert_same_backbone(btcxr.load_backbone(content, arch=arch), source)  # a state dict in memory


def test_lightly_backbone_is_also_an_init_for_pretraining_and_finetuning(resnet18, tmp_path):
    torch.save(nn.Sequential(*list(resnet18.children())[:-1]).state_dict(), tmp_path / "lightly.pth")
    assert_same_backbone(build_resnet("resnet18", init=str(tmp_path / "lightly.pth")), resnet18.state_dict())


def test_a_finetuned_detector_gives_back_its_backbone(resnet18, tmp_path):
    """btcxr best.pt fine-tuned from a pre-trained backbone: frozen batch norm, no num_batches_tracked."""
    torch.save(resnet18.state_dict(), tmp_path / "init.pth")
    cfg = ModelConfig(arch="resnet18", init=str(tmp_path / "init.pth"), size=SIZE, fpn_channels=16, box_head_dim=32)
    detector = build_detector(cfg)
    with torch.no_grad():  # "fine-tuned": the body differs from the init
        detector.backbone.body.layer4[1].conv2.weight.add_(1.0)
    save_checkpoint(tmp_path / "best.pt", detector_checkpoint(detector, cfg, epoch=1))
    body = detector.backbone.body.state_dict()
    assert not any(k.endswith("num_batches_tracked") for k in body)
    model = btcxr.load_backbone(tmp_path / "best.pt")
    assert_same_backbone(model, body)
    assert not torch.equal(model.layer4[1].conv2.weight, resnet18.layer4[1].conv2.weight)


def test_a_torchvision_detector_state_dict_gives_its_body():
    detector = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    state = detector.state_dict()
    body = {k[len("backbone.body."):]: v for k, v in state.items() if k.startswith("backbone.body.")}
    assert_same_backbone(btcxr.load_backbone(state), body)


@pytest.mark.parametrize("arch", LOADABLE_ARCHS)
def test_arch_is_inferred_from_names_and_shapes(arch):
    with torch.device("meta"):  # shapes only: no memory, no time
        state = getattr(torchvision.models, arch)(weights=None).state_dict()
    assert infer_arch(state) == arch


def test_unknown_layouts_are_named_with_their_keys(resnet18, tmp_path):
    vit = {"cls_token": torch.zeros(1, 1, 8), "blocks.0.attn.qkv.weight": torch.zeros(24, 8)}
    torch.save(vit, tmp_path / "vit.pth")
    with pytest.raises(BtcxrError, match=r"vit\.pth holds no ResNet.*cls_token, blocks\.0\.attn\.qkv\.weight"):
        btcxr.load_backbone(tmp_path / "vit.pth")
    # a ResNet under a prefix we do not know: with arch given, the unmatched keys are listed
    odd = {f"net.{k}": v for k, v in resnet18.state_dict().items()}
    with pytest.raises(BtcxrError, match=r"matched nothing \(e\.g\. net\.bn1"):
        btcxr.load_backbone(odd, arch="resnet18")
    with pytest.raises(BtcxrError, match=r"does not fit this resnet34"):
        btcxr.load_backbone(resnet18.state_dict(), arch="resnet34")
    with pytest.raises(BtcxrError, match="unknown backbone arch 'vgg16'"):
        btcxr.load_backbone(resnet18.state_dict(), arch="vgg16")


# ------------------------------------------------------------------------------------------------ detector
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_detector_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


@pytest.fixture(scope="module")
def detector(checkpoint):
    return btcxr.load_detector(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    Image.fromarray(gradient_image(230, 180, 2)).save(root / "chest.png")
    write_dicom(root / "scan001.dcm", gradient_image(150, 200, 1, np.uint16))
    Image.fromarray(gradient_image(100, 90, 3)).convert("RGB").save(root / "other.jpg", quality=95)
    Image.fromarray(gradient_image(120, 70, 4, np.uint16)).save(root / "deep.png")  # 16-bit PNG
    return root


def test_predict_gives_the_numbers_of_the_command_line(checkpoint, detector, images, tmp_path):
    from btcxr.cli import main

    files = [images / "chest.png", images / "scan001.dcm", images / "other.jpg"]
    assert main(["predict", "--checkpoint", str(checkpoint), *map(str, files), "--out", str(tmp_path / "cli"),
                 "--device", "cpu", "--workers", "0", "--no-overlays", "--score-thr", "0.06"]) == 0
    cli = read_predictions_csv(tmp_path / "cli" / "predictions.csv")
    api = detector.predict(files, score_thr=0.06)
    assert list(api.columns) == ["image_id", "class_id", "class_name", "score", *BOX]
    assert len(api) > 20 and set(api["image_id"]) == {"chest", "scan001", "other"}
    pd.testing.assert_frame_equal(api, cli, check_exact=True)
    # original pixels: beyond the model's 64 px frame, within each image
    assert api[["x_max", "y_max"]].to_numpy().max() > SIZE
    chest = api[api["image_id"] == "chest"]
    assert (chest["x_max"] <= 230).all() and (chest["y_max"] <= 180).all()
    assert api["class_id"].between(0, 13).all()
    assert (api["class_name"] == np.asarray(VINDR_CLASSES, dtype=object)[api["class_id"]]).all()
    # a folder is its images, named as `btcxr predict` names them
    assert set(detector.predict(images)["image_id"]) == {"chest", "scan001", "other", "deep"}


def _same_boxes(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert len(a) > 0
    pd.testing.assert_frame_equal(a.drop(columns="image_id"), b.drop(columns="image_id"), check_exact=True)


def test_every_kind_of_image_gives_the_boxes_of_its_file(detector, images):
    import pydicom

    by_file = {name: detector.predict(images / name) for name in ("chest.png", "scan001.dcm", "other.jpg", "deep.png")}
    gray = np.asarray(Image.open(images / "chest.png"))
    _same_boxes(detector.predict(Image.open(images / "chest.png")), by_file["chest.png"])
    _same_boxes(detector.predict(gray), by_file["chest.png"])
    _same_boxes(detector.predict(gray.astype(np.float32) / 255), by_file["chest.png"])
    _same_boxes(detector.predict(np.stack([gray] * 3, axis=-1)), by_file["chest.png"])
    _same_boxes(detector.predict(np.asarray(Image.open(images / "other.jpg"))), by_file["other.jpg"])
    _same_boxes(detector.predict(Image.open(images / "other.jpg")), by_file["other.jpg"])
    _same_boxes(detector.predict(np.asarray(Image.open(images / "deep.png"))), by_file["deep.png"])
    dataset = pydicom.dcmread(images / "scan001.dcm")
    _same_boxes(detector.predict(dataset), by_file["scan001.dcm"])
    assert "PatientName" in dataset  # the caller's dataset is left as it was

    both = detector.predict([gray, dataset])
    assert set(both["image_id"]) == {"image0", "image1"}
    named = detector.predict([gray, images / "scan001.dcm"], ids=["p1", "p2"])
    assert set(named["image_id"]) == {"p1", "p2"}
    assert detector.predict(gray, score_thr=1.0).empty


def test_predict_errors_name_the_input(detector, images, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(BtcxrError, match="broken.png"):
        detector.predict([images / "chest.png", tmp_path / "broken.png"])
    with pytest.raises(BtcxrError, match="image1: a dict is not an image"):
        detector.predict([np.zeros((8, 8), np.uint8), {"pixels": 1}])
    with pytest.raises(BtcxrError, match=r"image0: expected a 2-D grayscale array .* shape \(2, 8, 8, 8\)"):
        detector.predict(np.zeros((2, 8, 8, 8), np.uint8))
    with pytest.raises(BtcxrError, match="1 id"):
        detector.predict([images / "chest.png", images / "other.jpg"], ids=["x"])
    with pytest.raises(BtcxrError, match="same id 'chest'"):
        detector.predict([images / "chest.png", images / "chest.png"])
    with pytest.raises(BtcxrError, match="score_thr"):
        detector.predict(images / "chest.png", score_thr=2)
    with pytest.raises(BtcxrError, match="not a detector checkpoint"):
        torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "r.pth")
        btcxr.load_detector(tmp_path / "r.pth")
    with pytest.raises(BtcxrError, match="explain reads image files"):
        btcxr.explain(detector, [np.zeros((8, 8))], tmp_path / "x")


# ------------------------------------------------------------------------------------------------ evaluate
@pytest.fixture(scope="module")
def vindr_pair(vindr_train_csv) -> tuple[pd.DataFrame, pd.DataFrame]:
    raw = pd.read_csv(vindr_train_csv)
    gt = tm.real_gt(raw, 300, offset=40)
    return gt, tm.perturbed(raw, gt, seed=5)


def _assert_same_evaluation(got, reference) -> None:
    assert dict(got) == reference.metrics
    pd.testing.assert_frame_equal(got.per_class, reference.per_class, check_exact=True)


def test_vindr_default_equals_evaluate_detections(vindr_pair, tmp_path):
    gt, pred = vindr_pair
    reference = evaluate_detections(gt, pred, bootstrap=50, seed=2)
    _assert_same_evaluation(btcxr.evaluate(gt, pred, bootstrap=50, seed=2), reference)
    # the same from CSV files (GT as a cache's annotations.csv: class 14 rows with empty boxes) ...
    gt.assign(class_name=np.asarray([*VINDR_CLASSES, NO_FINDING], dtype=object)[gt["class_id"]]).to_csv(
        tmp_path / "annotations.csv", index=False)
    write_predictions(pred, tmp_path / "predictions.csv")
    _assert_same_evaluation(btcxr.evaluate(tmp_path / "annotations.csv", str(tmp_path / "predictions.csv"),
                                           bootstrap=50, seed=2), reference)
    # ... and with classes given by name instead of id, in either frame
    names = np.asarray([*VINDR_CLASSES, NO_FINDING], dtype=object)
    by_name_gt = gt.assign(class_name=names[gt["class_id"]]).drop(columns="class_id")
    by_name_pred = pred.assign(class_id=names[pred["class_id"]]).drop(columns="class_name")
    _assert_same_evaluation(btcxr.evaluate(by_name_gt, by_name_pred, bootstrap=50, seed=2), reference)


def test_any_class_list(vindr_pair):
    gt, pred = vindr_pair
    default = btcxr.evaluate(gt, pred, bootstrap=0)
    # one more class, absent from both frames: "No finding" becomes 15, every number stays
    extra = [*VINDR_CLASSES, "Rib fracture"]
    shift = {14: 15}
    longer = btcxr.evaluate(gt.replace({"class_id": shift}), pred.replace({"class_id": shift}), extra, bootstrap=0)
    for key in ("map50", "map", "map75", "map50_voc", "kaggle_map40"):
        assert longer[key] == pytest.approx(default[key], rel=1e-12, abs=1e-15), key
    assert longer["per_class_ap50"] == {**default["per_class_ap50"], "Rib fracture": None}
    assert list(longer.per_class["class_name"]) == [*extra, NO_FINDING]
    # the classes reversed, frames by name: the same APs under the same names
    names = np.asarray([*VINDR_CLASSES, NO_FINDING], dtype=object)
    rev = btcxr.evaluate(gt.assign(class_id=names[gt["class_id"]]), pred.assign(class_id=names[pred["class_id"]]),
                         classes=VINDR_CLASSES[::-1], bootstrap=0)
    assert rev["per_class_ap50"] == pytest.approx(default["per_class_ap50"], rel=1e-12)
    # two classes of one's own, by hand
    g = pd.DataFrame({"image_id": ["a", "a", "b"], "class_id": [0, 1, 2], "x_min": [0, 50, None],
                      "y_min": [0, 50, None], "x_max": [10, 60, None], "y_max": [10, 60, None]})
    p = pd.DataFrame({"image_id": ["a", "a", "b"], "class_id": [0, 0, 1], "score": [0.9, 0.8, 0.7],
                      "x_min": [0, 50, 0], "y_min": [0, 50, 0], "x_max": [10, 60, 5], "y_max": [10, 60, 5]})
    m = btcxr.evaluate(g, p, ["lesion", "tube"], bootstrap=0)
    assert m["per_class_ap50"] == pytest.approx({"lesion": 1.0, "tube": 0.0}) and m["map50"] == pytest.approx(0.5)
    assert m["counts"]["images_no_finding"] == 1 and m["counts"]["gt_boxes"] == 2


def test_evaluate_errors_name_frame_row_and_value(tmp_path):
    gt = pd.DataFrame({"image_id": ["a", "b"], "class_id": [0, 14], "x_min": [0, None], "y_min": [0, None],
                       "x_max": [10, None], "y_max": [10, None]})
    pred = pd.DataFrame({"image_id": ["a", "a", "b"], "class_id": [0, 17, 1], "score": [0.5, 0.5, 0.5],
                         "x_min": [0, 0, 0], "y_min": [0, 0, 0], "x_max": [5, 5, 5], "y_max": [5, 5, 5]})
    with pytest.raises(BtcxrError, match=r"^predictions: row 1, field 'class_id': class id outside 0\.\.14 .*got 17"):
        btcxr.evaluate(gt, pred)
    with pytest.raises(BtcxrError, match=r"^predictions: row 2, field 'class_id': unknown class name .*'Nodule'"):
        btcxr.evaluate(gt, pred.assign(class_id=[0, 3, "Nodule"]))
    with pytest.raises(BtcxrError, match=r"^ground truth: row 0, field 'class_name': unknown class name.*'nodule'"):
        btcxr.evaluate(gt.drop(columns="class_id").assign(class_name=["nodule", NO_FINDING]), pred)
    with pytest.raises(BtcxrError, match=r"^predictions: row 1, field 'class_name': class_name does not name"):
        btcxr.evaluate(gt, pred.assign(class_id=[0, 3, 1], class_name=["Aortic enlargement", "ILD", ""]))
    # check_predictions is applied: boxes and scores
    with pytest.raises(BtcxrError, match=r"^predictions: row 0, field 'x_max': x_max is smaller"):
        btcxr.evaluate(gt, pred.assign(class_id=0, x_max=[-1, 5, 5]))
    with pytest.raises(BtcxrError, match=r"^predictions: row 2, field 'score': not a finite number"):
        btcxr.evaluate(gt, pred.assign(class_id=0, score=[0.5, 0.5, np.inf]))
    with pytest.raises(BtcxrError, match=r"^ground truth: row 0, field 'y_max': value is empty"):
        btcxr.evaluate(gt.assign(y_max=[None, None]), pred.assign(class_id=0))
    # in a file: its line (header = 1)
    pred.assign(class_id=[0, 0, "Lung Opacityy"]).to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(BtcxrError, match=r"p\.csv: line 4, field 'class_id': unknown class name.*'Lung Opacityy'"):
        btcxr.evaluate(gt, tmp_path / "p.csv")
    with pytest.raises(BtcxrError, match=r"class id outside 0\.\.2 \(2 classes, 2 = No finding\), got 14"):
        btcxr.evaluate(gt, pred.assign(class_id=0), classes=["x", "y"])
    with pytest.raises(BtcxrError, match="listed twice"):
        btcxr.evaluate(gt, pred, classes=["x", "x"])
    # images outside the GT: an error, or skipped and counted
    far = pred.assign(class_id=0, image_id=["a", "a", "zzz"])
    with pytest.raises(BtcxrError, match="not in the ground truth, e.g. image_id 'zzz'"):
        btcxr.evaluate(gt, far)
    assert btcxr.evaluate(gt, far, lenient=True, bootstrap=0).skipped == 1
    # the library function itself names the frame instead of a bare ValueError
    with pytest.raises(BtcxrError, match=r"^predictions: row 1, field 'class_id'.*'ILD'"):
        evaluate_detections(gt, pred.assign(class_id=[0, "ILD", 1]), bootstrap=0)
    with pytest.raises(BtcxrError, match=r"^predictions: row 1, field 'class_id': expected a class id 0\.\.14 .*got 17$"):
        evaluate_detections(gt, pred, bootstrap=0)


# ------------------------------------------------------------------------------------------------ docs
def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_the_documented_example_runs_as_written(tmp_path, monkeypatch, capsys):
    # the files the example names
    tiny_detector_checkpoint(tmp_path / "best.pt")
    Image.fromarray(gradient_image(230, 180, 2)).save(tmp_path / "chest.png")
    write_dicom(tmp_path / "scan.dcm", gradient_image(150, 200, 1, np.uint16))
    pd.DataFrame({"image_id": ["chest", "chest", "scan"], "class_id": [3, 10, 14],
                  "class_name": ["Cardiomegaly", "Pleural effusion", NO_FINDING], "x_min": [60, 10, None],
                  "y_min": [80, 20, None], "x_max": [170, 60, None], "y_max": [150, 90, None]}
                 ).to_csv(tmp_path / "annotations.csv", index=False)
    resnet = randomised(torchvision.models.resnet18(weights=None), 3)
    torch.save(nn.Sequential(*list(resnet.children())[:-1]).state_dict(), tmp_path / "lightly_resnet18.pth")

    blocks = python_blocks((ROOT / "docs" / "api.md").read_text(encoding="utf-8"))
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)  # noqa: S102
    assert set(namespace["pred"]["image_id"]) == {"chest", "scan"}
    assert namespace["metrics"]["counts"]["gt_boxes"] == 2
    assert namespace["features"].shape == (2, 512)
    assert_same_backbone(namespace["backbone"], resnet.state_dict())
    assert (tmp_path / "heatmaps" / "boxes.csv").is_file() and namespace["summary"]["boxes"] == 1
    assert namespace["own"]["per_class_ap50"] == pytest.approx({"nodule": 1.0, "effusion": 0.0})
    assert "mAP50" in capsys.readouterr().out
    readme = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))   # the README's snippet too
    assert len(readme) == 1
    namespace = {}
    exec(compile(readme[0], "README.md", "exec"), namespace)  # noqa: S102
    assert set(namespace["pred"]["image_id"]) == {"chest", "scan"} and "map50" in namespace["metrics"]
    assert_same_backbone(namespace["backbone"], resnet.state_dict())
