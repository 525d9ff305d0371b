"""ResNet backbones from any init the toolkit supports, shared by pre-training, the probe and detection.

An init is one of:
- "imagenet": torchvision's weights enum (downloaded into $TORCH_HOME, or read from a file given as
  `weights_file` on offline clusters);
- "random": torchvision's default initialisation;
- a path: our `backbone.pth`, a pre-training checkpoint, the original Barlow Twins `resnet50.pth` or its
  training `checkpoint.pth`, or any torchvision ResNet state dict (with or without fc, with common prefixes):
  timm, solo-learn (`backbone.`), lightly (`nn.Sequential(*list(resnet.children())[:-1])`: keys `0.`, `1.`,
  `4.`..`7.`), MMDetection (`state_dict` with `backbone.`), the body of a btcxr or torchvision Faster R-CNN
  (`backbone.body.`, frozen batch norm without `num_batches_tracked`).

`load_resnet` reads any of these files into the torchvision ResNet its keys describe (`infer_arch`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
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
# lightly's backbone `nn.Sequential(*list(resnet.children())[:-1])`: child index -> torchvision name
# (2 relu, 3 maxpool and 8 avgpool hold no tensors; 9 is fc when the whole children() list was kept).
_SEQUENTIAL_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4",
                        "9": "fc"}
# Every torchvision ResNet `load_resnet` builds, by (bottleneck, blocks per stage, stage-1 width, groups).
RESNET_VARIANTS: dict[tuple[bool, tuple[int, ...], int, int], str] = {
    (False, (2, 2, 2, 2), 64, 1): "resnet18",
    (False, (3, 4, 6, 3), 64, 1): "resnet34",
    (True, (3, 4, 6, 3), 64, 1): "resnet50",
    (True, (3, 4, 23, 3), 64, 1): "resnet101",
    (True, (3, 8, 36, 3), 64, 1): "resnet152",
    (True, (3, 4, 6, 3), 128, 1): "wide_resnet50_2",
    (True, (3, 4, 23, 3), 128, 1): "wide_resnet101_2",
    (True, (3, 4, 6, 3), 128, 32): "resnext50_32x4d",
    (True, (3, 4, 23, 3), 256, 32): "resnext101_32x8d",
    (True, (3, 4, 23, 3), 256, 64): "resnext101_64x4d",
}
LOADABLE_ARCHS = tuple(RESNET_VARIANTS.values())


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
    """Find the ResNet weights inside any supported checkpoint layout and strip wrapper prefixes; a lightly
    `nn.Sequential` backbone's child indices become torchvision's names."""
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
        out[stripped] = value
    if _is_sequential_resnet(out):
        out = {_sequential_name(k): v for k, v in out.items()}
    heads = ("projector.", "bn.", "fc.", "head.", "classifier.")
    # heads of pre-training or classification, not part of the backbone
    return {k: v for k, v in out.items() if not k.startswith(heads)}


def _is_sequential_resnet(keys: Mapping[str, torch.Tensor]) -> bool:
    """The keys of a ResNet turned into nn.Sequential (lightly): a stem conv `0.weight` and blocks `4.0.`."""
    return "0.weight" in keys and any(re.match(r"4\.0\.conv1\.weight$", k) for k in keys)


def _sequential_name(key: str) -> str:
    head, _, rest = key.partition(".")
    return f"{_SEQUENTIAL_CHILDREN[head]}.{rest}" if head in _SEQUENTIAL_CHILDREN and rest else key


def infer_arch(weights: Mapping[str, torch.Tensor], source: str = "state dict") -> str:
    """The torchvision ResNet whose tensors `weights` (torchvision names, as `extract_backbone_state`
    returns them) are: block type and count per stage, stage-1 width and groups decide."""
    blocks: dict[int, int] = {}
    for key in weights:
        match = re.match(r"layer([1-4])\.(\d+)\.", key)
        if match:
            stage, index = int(match[1]), int(match[2])
            blocks[stage] = max(blocks.get(stage, 0), index + 1)
    if "conv1.weight" not in weights or sorted(blocks) != [1, 2, 3, 4] or "layer1.0.conv2.weight" not in weights:
        names = [k for k in weights if not k.endswith("num_batches_tracked")]
        shown = ", ".join(names[:5]) if names else "none"
        raise BtcxrError(f"{source} holds no ResNet this toolkit recognises ({len(names)} tensors; expected "
                         "torchvision names such as conv1.weight, layer1.0.conv1.weight, under an optional prefix "
                         f"backbone., module., model., body., or lightly's 0., 4.0.; found e.g. {shown})")
    bottleneck = "layer1.0.conv3.weight" in weights
    width = int(weights["layer1.0.conv1.weight"].shape[0])
    groups = max(1, width // max(1, int(weights["layer1.0.conv2.weight"].shape[1])))
    counts = tuple(blocks[i] for i in (1, 2, 3, 4))
    arch = RESNET_VARIANTS.get((bottleneck, counts, width, groups))
    if arch is None:
        raise BtcxrError(f"{source} holds a ResNet torchvision does not build ({'bottleneck' if bottleneck else 'basic'} "
                         f"blocks {counts}, stage-1 width {width}, {groups} group(s)); known: "
                         f"{', '.join(LOADABLE_ARCHS)}")
    return arch


def load_resnet(source: str | Path | Mapping, arch: str | None = None) -> tuple[nn.Module, str]:
    """A torchvision ResNet (fc = identity, train mode) holding the backbone weights of a checkpoint file or
    an in-memory state dict in any layout `extract_backbone_state` reads; `arch` None: `infer_arch`.

    Returns (model, arch). Every backbone tensor must be there with its shape (`num_batches_tracked` may be
    missing: frozen batch norm has none); tensors of other modules are ignored."""
    if isinstance(source, Mapping):
        state, name = dict(source), "state dict"
    else:
        state, name = load_checkpoint(source), str(source)
    weights = extract_backbone_state(state)
    arch = arch or infer_arch(weights, name)
    if arch not in LOADABLE_ARCHS:
        raise BtcxrError(f"unknown backbone arch {arch!r}; choose one of {', '.join(LOADABLE_ARCHS)}")
    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = nn.Identity()
    load_backbone_state(model, state, name, arch)
    return model, arch


def load_backbone_state(model: nn.Module, state: dict, source: str, arch: str | None = None) -> None:
    """Load backbone weights into `model` strictly (fc excepted) and explain any mismatch."""
    weights = extract_backbone_state(state)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    # Frozen batch norm (a detector's body) stores no num_batches_tracked: the model's own counter stays.
    missing = sorted(k for k in set(expected) - set(weights) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(weights) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    # Body tensors the model has no place for: the file holds a deeper ResNet (e.g. resnet34 into resnet18),
    # which must not load "successfully" into the first blocks of each stage.
    foreign = [k for k in unexpected if k.startswith(("conv1.", "bn1.", "layer"))
               and not k.endswith("num_batches_tracked")]
    if missing or wrong_shape or foreign:
        detail = []
        if foreign:
            detail.append(f"{len(foreign)} ResNet tensors this model has no place for (e.g. {foreign[0]}): "
                          "the file holds another architecture; set model.arch to the one it was trained as")
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
            unused = [k for k in unexpected if k not in foreign and not k.endswith("num_batches_tracked")]
            if unused:
                detail.append(f"{len(unused)} file tensors matched nothing (e.g. {', '.join(unused[:3])})")
        if wrong_shape:
            k = wrong_shape[0]
            detail.append(f"{len(wrong_shape)} with another shape (e.g. {k}: file {tuple(weights[k].shape)}, "
                          f"model {tuple(expected[k].shape)})")
        raise BtcxrError(f"backbone file {source} does not fit this {arch or type(model).__name__} "
                         f"({len(expected)} tensors expected): {'; '.join(detail)}")
    if unexpected:
        log.info("%s: ignored %d tensors that are not part of the backbone (e.g. %s)", source, len(unexpected),
                 unexpected[0])
    model.load_state_dict({k: weights[k] for k in expected if k in weights}, strict=False)


def backbone_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """torchvision ResNet keys without fc: `resnet50().load_state_dict(sd, strict=False)` misses only fc."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
