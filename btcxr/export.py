"""Export a fine-tuned detector for use outside btcxr (docs/export.md).

Four formats:

* ``torchscript``: the whole detector scripted (torch.jit), preprocessing and post-processing included;
* ``onnx``: the whole detector as an ONNX graph for one fixed input, 1 x size x size (torchvision's
  TorchScript-based exporter, ``dynamo=False``: the torch.export-based one stops at the data-dependent
  NMS of torchvision's detector);
* ``state_dict`` / ``safetensors``: the detector's backbone as a plain torchvision ResNet state dict
  (``resnet50()`` with ``fc = nn.Identity()`` loads it with strict=True).

Both detector formats take one gray image, float32 [1, H, W] in [0, 1] (3-channel input also works),
longest side = the export size, and return (boxes [N, 4] in the pixels of that input, scores [N] in
descending order, class_ids [N] int64 VinDr class ids 0..13). The expansion to three channels and the
ImageNet normalisation happen inside the model. Each file carries that contract as JSON metadata.

Every export is checked before it is kept: the file is written under a temporary name, read back with the
runtime a consumer would use (torch.jit.load, onnxruntime, torch.load / safetensors into a stock
torchvision ResNet) and run on a synthetic radiograph at the export size next to the PyTorch model. A file
that disagrees beyond the tolerances below is deleted and the export fails.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from btcxr.data.classes import VINDR_CLASSES
from btcxr.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from btcxr.engine.io import atomic_output
from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx", "state_dict", "safetensors")
DETECTOR_FORMATS = ("torchscript", "onnx")
MIN_SIZE, MAX_SIZE = 32, 4096  # the detector pads to multiples of 32; 4096 is beyond any radiograph setting
ONNX_OPSET = 17  # RoIAlign with aligned=True (the paper configs) needs opset >= 16
EXPORT_EXTRA = "pip install 'btcxr[export]'"
METADATA_KEY = "btcxr"  # the ONNX metadata_props key and the safetensors metadata key of the JSON
TORCHSCRIPT_METADATA = "btcxr.json"  # the _extra_files entry of the TorchScript archive
INPUT_NAME, OUTPUT_NAMES = "image", ("boxes", "scores", "class_ids")

# Tolerances of the verification. ONNX Runtime's float32 kernels sum in another order than PyTorch's: on a
# ResNet-50 FPN the scores differed by up to 2e-5 and the boxes by up to 3.8e-5 of the input side (0.024 px
# at 640 px, 0.0014 px at 128 px). Boxes may differ by 2e-4 of the export size (0.128 px at 640 px: 5x the
# largest difference measured, a fraction of a pixel, while real export bugs -- a wrong normalisation,
# anchor or resize -- move boxes by pixels), scores by 5e-4 (25x the largest difference measured; score
# thresholds are 0.05 and up), class ids not at all. Backbone features: 1e-4 of
# their largest magnitude (frozen batch norm and BatchNorm2d round differently). TorchScript runs PyTorch's
# own kernels and matches exactly.
BOX_ATOL_PER_PX = 2e-4
SCORE_ATOL = 5e-4
FEATURE_RTOL = 1e-4
MAX_CUTOFF_SWAPS = 2  # detections per side allowed to differ at the score threshold / detection cap
VERIFY_SEED = 20240501
VERIFY_FINDINGS = ["Cardiomegaly", "Nodule/Mass", "Pleural effusion", "Consolidation"]


@dataclass
class ExportReport:
    """What `export` wrote and how the file compared with the PyTorch model."""

    path: Path
    format: str
    size: int
    metadata: dict[str, Any]
    checks: list[dict[str, Any]] = field(default_factory=list)  # one per verification input

    def summary(self) -> str:
        lines = [f"{self.format} -> {self.path} ({self.path.stat().st_size / 2**20:.1f} MiB)"]
        for check in self.checks:
            if "detections" in check:
                lines.append(
                    f"  verified on a {check['input']}: {check['detections']} detection(s) matched, "
                    f"max |box diff| {check['max_box_diff']:.2g} px (tolerance {check['box_tolerance']:.2g}), "
                    f"max |score diff| {check['max_score_diff']:.2g} (tolerance {check['score_tolerance']:.2g}), "
                    f"class ids equal" + (f", {check['at_cutoff']} at the score/count cut-off unmatched"
                                          if check["at_cutoff"] else ""))
            else:
                lines.append(f"  verified on a {check['input']}: strict load into torchvision "
                             f"{check['arch']}, max |layer4 diff| {check['max_feature_diff']:.2g} "
                             f"(tolerance {check['feature_tolerance']:.2g})")
        return "\n".join(lines)


class ExportedDetector(nn.Module):
    """The detector behind the interface of the TorchScript and ONNX files: one image in,
    (boxes, scores, class_ids) out (see the module docstring)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if torch.jit.is_scripting():
            detections = self.detector([image])[1]  # scripted torchvision detectors return (losses, detections)
        else:
            detections = self.detector([image])
        out = detections[0]
        return out["boxes"], out["scores"], out["labels"] - 1


def export(checkpoint: str | Path, out: str | Path, fmt: str, size: int | None = None,
           device: str = "cpu") -> ExportReport:
    """Export the detector of `checkpoint` (best.pt / last.pt of `btcxr finetune`) to `out` as `fmt`,
    verified; see the module docstring. `size`: longest input side (default: the checkpoint's)."""
    from btcxr.engine.runtime import resolve_device

    if fmt not in FORMATS:
        raise BtcxrError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if size is not None and not MIN_SIZE <= size <= MAX_SIZE:
        raise BtcxrError(f"--size {size} for {checkpoint}: the input size must be {MIN_SIZE}..{MAX_SIZE} px "
                         "(the detector downsamples by 32)")
    out, checkpoint = Path(out), Path(checkpoint)
    if out.exists() and out.resolve() == checkpoint.resolve():
        raise BtcxrError(f"--out {out} is the checkpoint itself; choose another file")
    if out.is_dir():
        raise BtcxrError(f"--out {out} is a folder; give a file name")
    _require_extra(fmt)
    dev = resolve_device(device)

    model, meta = _load(checkpoint, size, dev)
    size = int(model.transform.max_size)
    metadata = export_metadata(meta, fmt, size, checkpoint)
    report = ExportReport(out, fmt, size, metadata)
    writer = {"torchscript": _write_torchscript, "onnx": _write_onnx, "state_dict": _write_backbone,
              "safetensors": _write_backbone}[fmt]
    made = next((p for p in [out.parent, *out.parent.parents] if p.exists()), None)
    try:
        with _quiet_export_warnings(), _exact_float32():
            writer(model, out, fmt, metadata, dev, report)
    except BaseException:
        _remove_empty_folders(out.parent, made)  # a failed export leaves nothing, not even its folder
        raise
    return report


def _remove_empty_folders(folder: Path, existing: Path | None) -> None:
    """Remove `folder` and its parents up to (not including) `existing`, the ones atomic_output made."""
    while existing is not None and folder != existing and folder.is_dir():
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


# ------------------------------------------------------------------------------------------------------
# Loading, metadata, verification inputs


def _require_extra(fmt: str) -> None:
    """The optional packages a format needs, or an error that names the extra that brings them."""
    needs = {"onnx": ("onnx", "onnxruntime"), "safetensors": ("safetensors",)}.get(fmt, ())
    for name in needs:
        try:
            __import__(name)
        except ImportError as exc:
            raise BtcxrError(f"--format {fmt} needs the Python package {name!r}, which is not installed: "
                             f"{EXPORT_EXTRA}") from exc


def _load(checkpoint: Path, size: int | None, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The checkpoint's detector in eval mode, its input size set to `size` when given."""
    from btcxr.detect.model import load_detector

    model, meta = load_detector(checkpoint, device)
    if size is not None and size != model.transform.max_size:
        log.info("%s: exporting at %d px (trained at %d px)", checkpoint, size, model.transform.max_size)
        model.transform.min_size = (size,)
        model.transform.max_size = size
    return model, meta


def export_metadata(meta: dict[str, Any], fmt: str, size: int, checkpoint: Path) -> dict[str, Any]:
    """The JSON every exported file carries: what the file holds and what its consumer must do."""
    from btcxr import __version__
    from btcxr.engine.checkpoint import library_versions

    settings = meta["detector"]
    base = {
        "format": f"btcxr-{fmt}",
        "btcxr_version": __version__,
        "exported_with": library_versions(),  # btcxr, torch, torchvision, numpy of this export
        "versions": meta.get("versions", {}),  # ... and of the training run
        "source_checkpoint": checkpoint.name,
        "epoch": meta.get("epoch"),
        "arch": settings["arch"],
        "classes": list(meta.get("classes") or VINDR_CLASSES),
    }
    if fmt in DETECTOR_FORMATS:
        shape = [1, size, size] if fmt == "onnx" else [1, "H", "W"]
        return base | {
            "input": {
                "name": INPUT_NAME, "shape": shape, "dtype": "float32", "channels": 1, "pixel_range": [0.0, 1.0],
                "size": size,
                "resize": f"longest side to {size} px, aspect kept (btcxr resizes with Lanczos: "
                          "btcxr.data.images.resize_longest)",
                "padding": (f"fixed input {size}x{size}: pad the right/bottom of a non-square image with 0"
                            if fmt == "onnx" else "none needed: any H x W; the model resizes to the longest side "
                            f"{size} px itself (bilinear) when the input's longest side is not {size}"),
                "gray": "a 1-channel image is repeated to 3 channels inside the model (3-channel input is "
                        "accepted as is)",
            },
            "normalization": {"applied_by": "model", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                              "formula": "(x - mean[c]) / std[c] per channel, after the gray expansion"},
            "outputs": {
                "boxes": "float32 [N, 4] x_min, y_min, x_max, y_max in pixels of the model input",
                "scores": "float32 [N], descending",
                "class_ids": "int64 [N], index into classes (torchvision's label - 1)",
            },
            "box_frame": "model input (the resized image)",
            "to_original_pixels": "divide the box coordinates by scale = size / max(original_width, "
                                  "original_height) (the resize factor), then clip to the original image",
            "score_threshold": settings["box_score_thresh"],
            "nms_threshold": settings["box_nms_thresh"],
            "max_detections": settings["box_detections_per_img"],
            **({"onnx_opset": ONNX_OPSET} if fmt == "onnx" else {}),
        }
    return base | {
        "holds": f"the detector's backbone as a plain torchvision {settings['arch']} state dict without fc: "
                 f"torchvision.models.{settings['arch']}(weights=None) with fc = torch.nn.Identity() loads it "
                 "with strict=True",
        "input_normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "pixel_range": [0.0, 1.0],
                                "gray": "repeat the gray channel 3 times, then (x - mean[c]) / std[c]"},
        "size": size,
    }


def verification_image(height: int, width: int) -> torch.Tensor:
    """A synthetic PA radiograph with findings (btcxr.data.synthetic), quantised to 8 bits as `btcxr
    predict` feeds images: float32 [1, height, width] in [0, 1]. Not blank: the RPN and the box head see
    anatomy, edges and lesions, so the comparison covers real proposals and detections."""
    return torch.from_numpy(_verification_pixels(height, width).copy())[None]


@functools.lru_cache(maxsize=4)
def _verification_pixels(height: int, width: int) -> np.ndarray:
    from btcxr.data.synthetic.render import render_case

    case = render_case(np.random.SeedSequence(VERIFY_SEED), (height, width), VERIFY_FINDINGS)
    return (np.round(np.clip(case.image, 0, 1) * 255) / 255).astype(np.float32)


def _verification_inputs(size: int, fmt: str) -> list[tuple[str, torch.Tensor]]:
    """Square size x size (the ONNX input); TorchScript also a portrait image of the same longest side."""
    inputs = [(f"{size}x{size} synthetic radiograph", verification_image(size, size))]
    if fmt == "torchscript":
        width = max(MIN_SIZE, round(size * 0.8))
        inputs.append((f"{size}x{width} (HxW) synthetic radiograph", verification_image(size, width)))
    return inputs


# ------------------------------------------------------------------------------------------------------
# TorchScript and ONNX


def _reference(model: nn.Module, image: torch.Tensor, device: torch.device) -> tuple[np.ndarray, ...]:
    with torch.no_grad():
        return tuple(t.cpu().numpy() for t in ExportedDetector(model)(image.to(device)))


def _write_torchscript(model: nn.Module, out: Path, fmt: str, metadata: dict[str, Any], device: torch.device,
                       report: ExportReport) -> None:
    try:  # scripted on the CPU: the file loads on any machine (torch.jit.load(map_location=...) moves it)
        frozen = copy.deepcopy(model).cpu().requires_grad_(False)  # outputs without autograd history
        scripted = torch.jit.script(ExportedDetector(frozen).eval())
    except Exception as exc:
        raise BtcxrError(f"cannot script the detector of {metadata['source_checkpoint']}: "
                         f"{str(exc).strip().splitlines()[0]}") from exc
    extra = {TORCHSCRIPT_METADATA: json.dumps(metadata, indent=1)}
    settings = _cutoffs(model)
    with atomic_output(out, "wb") as handle:
        torch.jit.save(scripted, handle, _extra_files=extra)
        handle.flush()
        files = {TORCHSCRIPT_METADATA: ""}
        loaded = torch.jit.load(handle.name, map_location=device, _extra_files=files)
        if json.loads(files[TORCHSCRIPT_METADATA]) != metadata:
            raise BtcxrError(f"{out}: the metadata read back from the TorchScript file differs")
        for name, image in _verification_inputs(report.size, fmt):
            with torch.no_grad():
                got = tuple(t.cpu().numpy() for t in loaded(image.to(device)))
            report.checks.append(compare_detections(_reference(model, image, device), got, report.size,
                                                    name, out, **settings))


def _write_onnx(model: nn.Module, out: Path, fmt: str, metadata: dict[str, Any], device: torch.device,
                report: ExportReport) -> None:
    import onnx
    import onnxruntime

    ((name, image),) = _verification_inputs(report.size, fmt)
    buffer = io.BytesIO()
    try:
        torch.onnx.export(ExportedDetector(model).eval(), (image.to(device),), buffer, dynamo=False,
                          opset_version=ONNX_OPSET, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          do_constant_folding=True)
    except Exception as exc:
        raise BtcxrError(f"ONNX export of {metadata['source_checkpoint']} failed: "
                         f"{str(exc).strip().splitlines()[0]}") from exc
    graph = onnx.load_from_string(buffer.getvalue())
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    graph.doc_string = (f"btcxr detector ({metadata['arch']} Faster R-CNN FPN); metadata_props['{METADATA_KEY}'] "
                        "holds the input contract as JSON")
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    with atomic_output(out, "wb") as handle:
        handle.write(graph.SerializeToString())
        handle.flush()
        try:
            session = onnxruntime.InferenceSession(handle.name, providers=providers)
            got = tuple(session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.numpy()}))
            stored = session.get_modelmeta().custom_metadata_map
        except Exception as exc:
            raise BtcxrError(f"{out}: ONNX Runtime cannot run the exported graph: "
                             f"{str(exc).strip().splitlines()[0]}") from exc
        if json.loads(stored.get(METADATA_KEY, "null")) != metadata:
            raise BtcxrError(f"{out}: the metadata read back from the ONNX file differs")
        report.checks.append(compare_detections(_reference(model, image, device), got, report.size, name, out,
                                                **_cutoffs(model)))


def _cutoffs(model: nn.Module) -> dict[str, float]:
    heads = model.roi_heads
    return {"score_threshold": float(heads.score_thresh), "max_detections": int(heads.detections_per_img)}


def compare_detections(expected: tuple[np.ndarray, ...], got: tuple[np.ndarray, ...], size: int, name: str,
                       path: str | Path, score_threshold: float = 0.0, max_detections: int = 0) -> dict[str, Any]:
    """Match exported detections to the PyTorch model's and check them against the tolerances.

    Each expected detection is paired with the unpaired exported one of the same class id and nearest box
    (tied scores may come out in another order, so positions are not compared). A detection without a
    partner is tolerated only at a cut-off, and at most MAX_CUTOFF_SWAPS of them per side: its score within
    SCORE_ATOL of the score threshold, or of the lowest score of a list cut at `max_detections` (a near tie
    there may keep another box). Anything else raises a BtcxrError naming `path`. Returns the measured
    differences.
    """
    (eb, es, ec), (gb, gs, gc) = ([np.asarray(a) for a in t] for t in (expected, got))
    eb, gb = eb.reshape(-1, 4).astype(np.float64), gb.reshape(-1, 4).astype(np.float64)
    box_tol = BOX_ATOL_PER_PX * size
    free = np.ones(len(gb), dtype=bool)
    pairs: list[tuple[int, int]] = []
    for i in range(len(eb)):
        candidates = np.flatnonzero(free & (gc == ec[i]))
        if len(candidates) == 0:
            continue
        dist = np.abs(gb[candidates] - eb[i]).max(axis=1) + np.abs(gs[candidates] - es[i])
        best = candidates[int(np.argmin(dist))]
        if np.abs(gb[best] - eb[i]).max() <= box_tol and abs(gs[best] - es[i]) <= SCORE_ATOL:
            pairs.append((i, best))
            free[best] = False

    def cutoff(scores: np.ndarray) -> float:
        full = max_detections > 0 and len(scores) >= max_detections
        return float(scores.min()) if full else score_threshold

    lines = {cutoff(es), cutoff(gs), score_threshold}
    paired_e = {i for i, _ in pairs}
    lone_e = [float(es[i]) for i in range(len(es)) if i not in paired_e]
    lone_g = [float(s) for s in gs[free]]
    unpaired = lone_e + lone_g
    stray = [s for s in unpaired if min(abs(s - line) for line in lines) > SCORE_ATOL]
    if max(len(lone_e), len(lone_g)) > MAX_CUTOFF_SWAPS:  # a near tie swaps a box or two, not more
        stray = unpaired
    box_diff = max((float(np.abs(gb[j] - eb[i]).max()) for i, j in pairs), default=0.0)
    score_diff = max((float(abs(gs[j] - es[i])) for i, j in pairs), default=0.0)
    if stray:
        raise BtcxrError(
            f"{path}: the exported model disagrees with the PyTorch model on a {name}: {len(es)} detection(s) "
            f"in PyTorch, {len(gs)} in the export, {len(stray)} without a partner within the tolerances "
            f"(boxes {box_tol:.2g} px, scores {SCORE_ATOL:g}; highest unmatched score {max(stray):.4f}); "
            "the file was not written")
    if len(es) == 0:
        log.warning("%s: no detection above the score threshold on the %s; only the empty outputs were compared",
                    path, name)
    return {"input": name, "detections": len(pairs), "at_cutoff": len(unpaired), "expected": len(es),
            "exported": len(gs), "max_box_diff": box_diff, "max_score_diff": score_diff,
            "box_tolerance": box_tol, "score_tolerance": SCORE_ATOL}


# ------------------------------------------------------------------------------------------------------
# Backbone as a torchvision state dict


def torchvision_backbone_state(model: nn.Module, arch: str) -> dict[str, torch.Tensor]:
    """The detector's ResNet body as the state dict of `torchvision.models.<arch>()` without fc.

    Frozen batch norm (torchvision's FrozenBatchNorm2d, and btcxr's frozen-statistics variant) stores no
    `num_batches_tracked`; ordinary BatchNorm2d does, so it is added as 0 (eval mode never reads it)."""
    import torchvision

    from btcxr.backbones import backbone_state_dict

    state = backbone_state_dict(model.backbone.body)
    reference = getattr(torchvision.models, arch)(weights=None).state_dict()
    for key in reference:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.tensor(0, dtype=torch.long)
    expected = [k for k in reference if not k.startswith("fc.")]
    if set(state) != set(expected):
        odd = sorted(set(state) ^ set(expected))
        raise BtcxrError(f"the detector's backbone does not map onto torchvision {arch}: {odd[:3]}")
    return {k: state[k].contiguous() for k in expected}


def _write_backbone(model: nn.Module, out: Path, fmt: str, metadata: dict[str, Any], device: torch.device,
                    report: ExportReport) -> None:
    arch = metadata["arch"]
    state = torchvision_backbone_state(model, arch)
    with atomic_output(out, "wb") as handle:
        if fmt == "safetensors":
            import safetensors.torch

            handle.write(safetensors.torch.save(state, metadata={METADATA_KEY: json.dumps(metadata),
                                                                 "format": "pt"}))
        else:
            torch.save(state, handle)
        handle.flush()
        if fmt == "safetensors":
            import safetensors

            loaded = safetensors.torch.load_file(handle.name)
            with safetensors.safe_open(handle.name, framework="pt") as reader:
                stored = reader.metadata() or {}
            if json.loads(stored.get(METADATA_KEY, "null")) != metadata:
                raise BtcxrError(f"{out}: the metadata read back from the safetensors file differs")
        else:
            loaded = torch.load(handle.name, map_location="cpu", weights_only=True)
        report.checks.append(_compare_backbone(model, loaded, arch, report.size, out, device))


def _compare_backbone(model: nn.Module, state: dict[str, torch.Tensor], arch: str, size: int, path: Path,
                      device: torch.device) -> dict[str, Any]:
    """Load `state` strictly into a stock torchvision ResNet and compare its layer4 features with the
    detector's backbone on the verification image."""
    import torchvision

    resnet = getattr(torchvision.models, arch)(weights=None)
    resnet.fc = nn.Identity()
    try:
        resnet.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BtcxrError(f"{path}: does not load into torchvision {arch} with strict=True: "
                         f"{str(exc).strip().splitlines()[0]}") from exc
    resnet.to(device).eval()
    name = f"{size}x{size} synthetic radiograph"
    image = verification_image(size, size).to(device)
    x = ((image.expand(3, -1, -1) - torch.tensor(IMAGENET_MEAN, device=device)[:, None, None])
         / torch.tensor(IMAGENET_STD, device=device)[:, None, None])[None]
    with torch.no_grad():
        expected = model.backbone.body(x)["3"]
        h = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        got = resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(h))))
    diff = float((got - expected).abs().max())
    tolerance = FEATURE_RTOL * max(1.0, float(expected.abs().max()))
    if not diff <= tolerance:
        raise BtcxrError(f"{path}: torchvision {arch} with these weights disagrees with the detector's backbone "
                         f"on a {name} (max |layer4 diff| {diff:.3g} > {tolerance:.3g}); the file was not written")
    return {"input": name, "arch": arch, "max_feature_diff": diff, "feature_tolerance": tolerance}


# ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_export_warnings() -> Iterator[None]:
    """torch.jit / torch.onnx warn about their own deprecation and about traced Python values that are
    constants of the fixed-size graph on purpose; the verification is what tells whether it worked."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        yield


@contextlib.contextmanager
def _exact_float32() -> Iterator[None]:
    """No TF32 on CUDA while exporting and comparing: TF32 convolutions differ from float32 by ~1e-3."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


__all__ = ["FORMATS", "ExportReport", "ExportedDetector", "compare_detections", "export", "export_metadata",
           "torchvision_backbone_state", "verification_image"]
