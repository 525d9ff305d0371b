"""ResNet backbones from any init the toolkit supports, shared by pre-training, the probe and detection.

An init is one of:
- "imagenet": torchvision's weights enum (downloaded into $TORCH_HOME, or read from a file given as
  `weights_file` on offline clusters);
- "random": torchvision's default initialisation;
- a path: our `backbone.pth`, a pre-training checkpoint, the original Barlow Twins `resnet50.pth` or its
  training `checkpoint.pth`, or any torchvision ResNet state dict (with or without fc, with common prefixes).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn

from btcxr.engine.checkpoint import load_checkpoint
from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)

ARCHS = ("resnet18", "resnet34", "resnet50")
# The weights the paper starts from (IMAGENET1K_V2 for ResNet-50; V1 only exists for 18/34).
DEFAULT_IMAGENET = {"resnet18": "IMAGENET1K_V1", "resnet34": "IMAGENET1K_V1", "resnet50": "IMAGENET1K_V2"}
FEATURE_DIM = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
# Key prefixes found in checkpoints written by DDP, the Barlow Twins script, MMDetection and ourselves.
_PREFIXES = ("module.", "backbone.", "encoder.", "model.", "body.")


def build_resnet(arch: str = "resnet50", init: str = "imagenet", weights_file: str | Path | None = None,
                 imagenet_weights: str | None = None) -> nn.Module:
    """A torchvision ResNet with `fc` replaced by identity (outputs pooled features)."""
    if arch not in ARCHS:
        raise BtcxrError(f"unknown backbone arch {arch!r}; choose one of {', '.join(ARCHS)}")
    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = nn.Identity()
    if init == "random":
        return model
    if init == "imagenet" and weights_file:
        state, source = load_checkpoint(weights_file), str(weights_file)
    elif init == "imagenet":
        name = imagenet_weights or DEFAULT_IMAGENET[arch]
        state, source = _imagenet_state(arch, name), f"torchvision {arch} {name}"
    else:
        state, source = load_checkpoint(init), str(init)
    load_backbone_state(model, state, source, arch)
    return model


def _imagenet_state(arch: str, weights_name: str) -> dict[str, torch.Tensor]:
    enum = torchvision.models.get_model_weights(arch)
    if weights_name not in enum.__members__:
        raise BtcxrError(f"unknown ImageNet weights {weights_name!r} for {arch}; "
                         f"choose one of {', '.join(enum.__members__)}")
    weights = enum[weights_name]
    try:
        return weights.get_state_dict(progress=False)
    except Exception as exc:  # offline: URLError, socket errors, ...
        filename = weights.url.rsplit("/", 1)[-1]
        raise BtcxrError(
            f"cannot load ImageNet weights {weights} ({exc}). On an offline machine pass the file with "
            f"--init-weights FILE, or place {filename} in $TORCH_HOME/hub/checkpoints/"
        ) from exc


def extract_backbone_state(state: dict) -> dict[str, torch.Tensor]:
    """Find the ResNet weights inside any supported checkpoint layout and strip wrapper prefixes."""
    for key in ("backbone", "model", "state_dict"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        stripped = key
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if stripped.startswith(prefix):
                    stripped, changed = stripped[len(prefix):], True
        if stripped.startswith(("projector.", "bn.", "fc.", "head.", "classifier.")):
            continue  # heads of pre-training or classification, not part of the backbone
        out[stripped] = value
    return out


def load_backbone_state(model: nn.Module, state: dict, source: str, arch: str | None = None) -> None:
    """Load backbone weights into `model` strictly (fc excepted) and explain any mismatch."""
    weights = extract_backbone_state(state)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    # Body tensors the model has no place for: the file holds a deeper ResNet (e.g. resnet34 into resnet18),
    # which must not load "successfully" into the first blocks of each stage.
    foreign = [k for k in unexpected if k.startswith(("conv1.", "bn1.", "layer"))]
    if missing or wrong_shape or foreign:
        detail = []
        if foreign:
            detail.append(f"{len(foreign)} ResNet tensors this model has no place for (e.g. {foreign[0]}): "
                          "the file holds another architecture; set model.arch to the one it was trained as")
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if wrong_shape:
            k = wrong_shape[0]
            detail.append(f"{len(wrong_shape)} with another shape (e.g. {k}: file {tuple(weights[k].shape)}, "
                          f"model {tuple(expected[k].shape)})")
        raise BtcxrError(f"backbone file {source} does not fit this {arch or type(model).__name__} "
                         f"({len(expected)} tensors expected): {'; '.join(detail)}")
    if unexpected:
        log.info("%s: ignored %d tensors that are not part of the backbone (e.g. %s)", source, len(unexpected),
                 unexpected[0])
    model.load_state_dict({k: weights[k] for k in expected}, strict=False)


def backbone_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """torchvision ResNet keys without fc: `resnet50().load_state_dict(sd, strict=False)` misses only fc."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
