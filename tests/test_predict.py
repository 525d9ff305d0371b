"""`btcxr predict`: files and folders in, boxes in ORIGINAL pixels out, overlays, Kaggle submission, no
patient tags anywhere, unreadable files named or skipped and counted."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from fixtures_cache import FAKE_PATIENT_ID, FAKE_PATIENT_NAME, gradient_image, write_dicom
from PIL import Image

from btcxr.data.images import read_image, resize_longest
from btcxr.detect.config import ModelConfig
from btcxr.detect.model import build_detector, detector_checkpoint
from btcxr.detect.predict import find_images, predict_files
from btcxr.detect.predictions import read_predictions_csv, read_submission
from btcxr.engine.checkpoint import save_checkpoint
from btcxr.errors import BtcxrError

BOX = ["x_min", "y_min", "x_max", "y_max"]
SIZE = 64



@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained detector (fixed seed): its many low-score boxes exercise every output path."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch="resnet18", init="random", size=SIZE, fpn_channels=16, box_head_dim=32)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, detector_checkpoint(build_detector(cfg), cfg, epoch=3))
    return path


@pytest.fixture
def images(tmp_path):
    """A folder tree: a DICOM with fake patient tags, a PNG and a JPEG in a subfolder, a non-image file."""
    root = tmp_path / "in"
    write_dicom(root / "scan001.dcm", gradient_image(150, 200, 1, np.uint16))
    Image.fromarray(gradient_image(230, 180, 2)).save(root / "chest.png")
    (root / "sub").mkdir()
    Image.fromarray(gradient_image(100, 90, 3)).convert("RGB").save(root / "sub" / "other.jpg", quality=95)
    (root / "sub" / "notes.txt").write_text("not an image")
    return root


def test_boxes_come_back_in_original_pixels(checkpoint, images, tmp_path):
    report = predict_files(checkpoint, [images], tmp_path / "out", workers=0, overlays=False)
    assert report.images == 3 and report.skipped == 0
    pred = read_predictions_csv(tmp_path / "out" / "predictions.csv")
    assert set(pred["image_id"]) == {"scan001", "chest", "other"}
    assert (pred["score"] >= 0.05).all() and pred["class_id"].between(0, 13).all()

    # Independent reference: resize_longest to the model size, run the model, scale by original/size.
    from btcxr.detect.model import load_detector

    model, _ = load_detector(checkpoint)
    for image_id, file in (("scan001", images / "scan001.dcm"), ("chest", images / "chest.png")):
        radiograph = read_image(file)
        pixels, scale = resize_longest(radiograph.pixels, SIZE)
        with torch.no_grad():
            out = model([torch.from_numpy(pixels.astype(np.float32) / 255)[None]])[0]
        keep = out["scores"] >= 0.05
        expected = out["boxes"][keep].numpy() / scale
        got = pred[pred["image_id"] == image_id].sort_values("score", ascending=False)
        assert len(got) == int(keep.sum())
        np.testing.assert_allclose(got[BOX].to_numpy(), expected, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(got["score"].to_numpy(), out["scores"][keep].numpy(), rtol=1e-6)
        # within the original image, and (original > model size) beyond the model's frame
        assert (got["x_max"] <= radiograph.orig_width + 1e-3).all()
        assert (got["y_max"] <= radiograph.orig_height + 1e-3).all()
        assert got[["x_max", "y_max"]].to_numpy().max() > SIZE

    info = pd.read_csv(tmp_path / "out" / "images.csv").set_index("image_id")
    assert tuple(info.loc["scan001", ["orig_width", "orig_height"]]) == (150, 200)
    assert info["boxes"].to_dict() == pred["image_id"].value_counts().to_dict()


def test_overlays_submission_and_no_patient_tags(checkpoint, images, tmp_path):
    out = tmp_path / "out"
    predict_files(checkpoint, [images], out, workers=0, submission=True, overlay_thr=0.0, batch_size=2)
    overlay = np.asarray(Image.open(out / "overlays" / "scan001.png"))
    assert overlay.shape == (200, 150, 3)  # drawn at the original size (below the 1024 px cap)
    gray = overlay[..., 0] == overlay[..., 1]
    assert (~gray).sum() > 100  # coloured boxes and labels were drawn
    assert {p.stem for p in (out / "overlays").iterdir()} == {"scan001", "chest", "other"}

    sub = read_submission(out / "submission.csv")
    pred = read_predictions_csv(out / "predictions.csv")
    assert list(pd.read_csv(out / "submission.csv")["image_id"]) == ["chest", "scan001", "other"]  # sorted paths
    nf = sub[sub["class_id"] == 14].set_index("image_id")["score"]
    top = pred.groupby("image_id")["score"].max()
    np.testing.assert_allclose(nf.loc[top.index].to_numpy(), 1 - top.to_numpy(), rtol=1e-9)
    assert len(sub[sub["class_id"] != 14]) == len(pred)
    coco = json.loads((out / "predictions.coco.json").read_text())   # the same boxes as COCO results
    assert len(coco) == len(pred) > 0
    assert [(c["image_id"], c["category_id"] - 1) for c in coco] == list(zip(pred["image_id"], pred["class_id"]))
    np.testing.assert_allclose([c["bbox"] for c in coco], np.c_[pred[["x_min", "y_min"]].to_numpy(),
                               pred[["x_max", "y_max"]].to_numpy() - pred[["x_min", "y_min"]].to_numpy()])

    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in (FAKE_PATIENT_NAME, FAKE_PATIENT_ID, "Fakepatient", "19010203"):
                assert secret.encode() not in data, (path, secret)


def test_unreadable_files_are_named_or_skipped_and_counted(checkpoint, images, tmp_path):
    bad = images / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(BtcxrError, match="broken.png"):
        predict_files(checkpoint, [images], tmp_path / "strict", workers=0, overlays=False)
    report = predict_files(checkpoint, [images], tmp_path / "lenient", workers=0, overlays=False,
                           on_error="skip")
    assert report.images == 3 and report.skipped == 1
    errors = pd.read_csv(tmp_path / "lenient" / "errors.csv")
    assert list(errors["file"]) == [str(bad)]
    with pytest.raises(BtcxrError, match="does not exist"):
        predict_files(checkpoint, [tmp_path / "missing.dcm"], tmp_path / "x", workers=0)


def test_image_ids_stay_unique_across_folders(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(gradient_image(40, 40, 0)).save(tmp_path / folder / "same.png")
    Image.fromarray(gradient_image(40, 40, 0)).save(tmp_path / "a" / "unique.PNG")
    files, ids = find_images([tmp_path])
    assert sorted(ids) == ["a__same", "b__same", "unique"]
    files, ids = find_images([tmp_path / "a" / "same.png", tmp_path / "a"])  # the same file once
    assert ids == ["same", "unique"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(BtcxrError, match="no images"):
        find_images([tmp_path / "empty"])


def test_command_line(checkpoint, images, tmp_path, capsys):
    from btcxr.cli import main

    code = main(["predict", "--checkpoint", str(checkpoint), str(images / "chest.png"), "--out",
                 str(tmp_path / "cli"), "--device", "cpu", "--workers", "0", "--no-overlays", "--score-thr", "0.06"])
    assert code == 0
    pred = pd.read_csv(tmp_path / "cli" / "predictions.csv")
    assert set(pred["image_id"]) <= {"chest"} and (pred["score"] >= 0.06).all()
    assert not (tmp_path / "cli" / "overlays").exists()
    assert "1 image(s)" in capsys.readouterr().out
    code = main(["predict", "--checkpoint", str(images / "chest.png"), str(images), "--out", str(tmp_path / "e")])
    assert code == 2 and "chest.png" in capsys.readouterr().err
