"""The detector's forward pass cut in two at a target layer, for Ablation-CAM.

pytorch-grad-cam ablates a channel by swapping the target layer for a module that returns the edited
activations, then calls the whole model on a batch of copies of the image: every layer before the target
runs again for every copy. Here the first half (input transform and the layers up to the target) runs once
per image; the second half (the layers after it, the FPN, the RPN, the box head and torchvision's
postprocessing) runs on a batch of edited activations. Everything downstream, RPN proposals included, is
recomputed for each copy, as in pytorch-grad-cam, so the outputs are the same up to float rounding. For a
ResNet stage, the FPN levels finer than the stage's are updated from the first pass with the FPN's
linearity (fpn.fpn_from_level) instead of recomputed.

Supported cuts: a ResNet stage (`backbone.body.layerN`), one FPN output level, all FPN levels at once, and
any other module whose output is a tensor (the generic path swaps that output with a forward hook and
re-runs the whole model, like pytorch-grad-cam).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from pytorch_grad_cam.utils.reshape_transforms import fasterrcnn_reshape_transform
from torch import nn
from torchvision.models.detection.image_list import ImageList

from btcxr.errors import BtcxrError
from btcxr.explain.base import TargetLayer, get_module
from btcxr.explain.box_local import CandidateHeads
from btcxr.explain.fpn import UpsampledConv3x3, fpn_forward, fpn_from_level, fpn_is_linear

Output = dict[str, torch.Tensor]


def _repeat(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.expand(n, *t.shape[1:])


class SplitDetector:
    """Run `model` once on an image (`first_pass`), then re-run only what follows `layer` on copies of its
    activations with one channel each set to zero (`ablated_outputs`)."""

    def __init__(self, model: nn.Module, layer: TargetLayer) -> None:
        self.model = model
        self.layer = layer
        self.body = model.backbone.body
        self.fpn = model.backbone.fpn
        self._images: ImageList | None = None
        self._orig_size: tuple[int, int] | None = None
        self._body_out: OrderedDict[str, torch.Tensor] | None = None  # return-layer name -> (1, C, h, w)
        self._features: OrderedDict[str, torch.Tensor] | None = None  # FPN outputs
        self._act: torch.Tensor | OrderedDict[str, torch.Tensor] | None = None
        self._fpn_level: int | None = None  # FPN input level an edit changes first (fpn.fpn_from_level)
        self._top_down: list[torch.Tensor] = []
        self._fpn_convs: dict[int, UpsampledConv3x3] = {}
        self.proposals: torch.Tensor | None = None  # the first pass's RPN proposals (network input frame)

    # ------------------------------------------------------------------ first pass
    @torch.no_grad()
    def first_pass(self, image: torch.Tensor) -> Output:
        """The detector's output on `image` (as `model([image])[0]`), keeping the activations."""
        self._orig_size = tuple(image.shape[-2:])
        if self.layer.kind == "module":
            return self._first_pass_hooked(image)
        self._images, _ = self.model.transform([image])
        x = self._images.tensors
        body_out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name, module in self.body.named_children():
            x = module(x)
            if name == self.layer.stage:
                self._act = x
            if name in self.body.return_layers:
                body_out[self.body.return_layers[name]] = x
        self._body_out = body_out
        self._fpn_level = self._changed_fpn_level()
        if self._fpn_level is not None:
            self._features, self._top_down = fpn_forward(self.fpn, body_out)
        else:
            self._features = self.fpn(body_out)
        if self.layer.kind == "fpn":
            self._act = self._features if self.layer.level is None else self._features[self.layer.level]
        return self._heads(self._features, 1, keep_proposals=True)[0]

    def _first_pass_hooked(self, image: torch.Tensor) -> Output:
        module = get_module(self.model, self.layer.module_path)
        seen: list[object] = []

        def keep(_module, _inputs, output):
            seen.append(output)

        handle = module.register_forward_hook(keep)
        try:
            output = self.model([image])[0]
        finally:
            handle.remove()
        if len(seen) != 1 or not isinstance(seen[0], torch.Tensor) or seen[0].dim() != 4:
            raise BtcxrError(f"target layer {self.layer.name} must run once per image and output a "
                             f"(N, C, H, W) tensor (it ran {len(seen)} times); pick a block such as "
                             "backbone.body.layer3.5 or a convolution")
        self._act = seen[0]
        self._image = image
        return output

    def _changed_fpn_level(self) -> int | None:
        """Index of the first FPN input that an edit of the target stage changes, when the FPN can be
        updated from there (linear FPN, levels exactly 2x apart, not the finest level), else None."""
        if self.layer.kind != "body" or not fpn_is_linear(self.fpn):
            return None
        names = [name for name, _ in self.body.named_children()]
        later = names[names.index(self.layer.stage):]
        keys = list(self._body_out)
        returned = [self.body.return_layers[n] for n in later if n in self.body.return_layers]
        if not returned:
            return None
        level = keys.index(returned[0])
        shapes = [tuple(v.shape[-2:]) for v in self._body_out.values()]
        exact = all(fine == (2 * coarse[0], 2 * coarse[1]) for fine, coarse in zip(shapes, shapes[1:]))
        return level if level > 0 and exact else None

    # ------------------------------------------------------------------ what the CAM weighs
    @property
    def activation(self) -> torch.Tensor:
        """(C, h, w) activations the CAM weights multiply (all FPN levels: pytorch-grad-cam's
        fasterrcnn_reshape_transform, |A| of each level resized to the coarsest and concatenated)."""
        if isinstance(self._act, dict):
            return fasterrcnn_reshape_transform(self._act)[0]
        return self._act[0]

    @property
    def num_channels(self) -> int:
        if isinstance(self._act, dict):
            return sum(v.shape[1] for v in self._act.values())
        return self._act.shape[1]

    @property
    def features(self) -> OrderedDict[str, torch.Tensor]:
        """The first pass's FPN outputs (batch 1)."""
        return self._features

    @property
    def supports_box_local(self) -> bool:
        """Whether `ablated_outputs` can take box_local.CandidateHeads: a ResNet stage or one FPN level the box
        head pools from. The "pool" level only feeds the RPN, whose proposals the box-local mode keeps."""
        return self.layer.kind == "body" or (self.layer.kind == "fpn" and self.layer.level in ("0", "1", "2", "3"))

    def candidate_heads(self, targets) -> CandidateHeads:
        """The heads of the box-local mode for `targets`, on this image's first pass."""
        return CandidateHeads(self.model, self.proposals, self._features, tuple(self._images.image_sizes[0]),
                              self._orig_size, targets)

    # ------------------------------------------------------------------ second half
    @torch.no_grad()
    def ablated_outputs(self, channels: Sequence[int], heads: CandidateHeads | None = None) -> list[Output]:
        """Outputs of len(channels) copies of the image; copy i has channel channels[i] of the target
        layer's activations set to zero (Desai and Ramaswamy's ablation). heads: the detector's own RPN and
        RoI heads (None), or box_local.CandidateHeads, which also limit the FPN to the levels they read."""
        n = len(channels)
        run_heads = heads if heads is not None else self._heads
        device = next(iter(self._act.values())).device if isinstance(self._act, dict) else self._act.device
        rows = torch.arange(n, device=device)
        index = torch.as_tensor(list(channels), dtype=torch.long, device=device)
        if isinstance(self._act, dict):  # all FPN levels: channel k lives in level k // C_level
            return run_heads(self._ablate_levels(index), n)
        ablated = _repeat(self._act, n).clone()
        ablated[rows, index] = 0
        if self.layer.kind == "module":
            if heads is not None:
                raise BtcxrError(f"the box-local mode cannot cut at {self.layer.name}; use the exact mode")
            return self._rest_hooked(ablated)
        if self.layer.kind == "body" and self._fpn_level is not None:
            features = fpn_from_level(self.fpn, self._body_from(ablated), self._fpn_level, self._features,
                                      self._top_down, self._fpn_convs, heads.levels if heads else None)
        elif self.layer.kind == "body":
            features = self.fpn(self._body_from(ablated))
        else:
            features = self._features_with_level(ablated)
        return run_heads(features, n)

    def _body_from(self, ablated: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """The body's return-layer outputs when `stage` outputs `ablated` (earlier ones repeated)."""
        n = ablated.shape[0]
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        x, reached = ablated, False
        for name, module in self.body.named_children():
            if reached:
                x = module(x)
            elif name == self.layer.stage:
                reached = True
            if name in self.body.return_layers:
                key = self.body.return_layers[name]
                out[key] = x if reached else _repeat(self._body_out[key], n)
        return out

    def _features_with_level(self, ablated: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """FPN outputs with one level replaced; extra levels (torchvision's max-pool "pool" level, made from
        the last level) are rebuilt from the edited levels as the FPN builds them."""
        n = ablated.shape[0]
        level = self.layer.level
        features = OrderedDict((k, ablated if k == level else _repeat(v, n)) for k, v in self._features.items())
        extra = self.fpn.extra_blocks
        base_names = list(self._body_out.keys())
        if extra is None or level not in base_names:
            return features
        results = [features[k] for k in base_names]
        inputs = [_repeat(v, n) for v in self._body_out.values()]
        results, names = extra(results, inputs, list(base_names))
        return OrderedDict(zip(names, results))

    def _ablate_levels(self, index: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        n = len(index)
        out, start = OrderedDict(), 0
        for key, value in self._act.items():
            size = value.shape[1]
            copy = _repeat(value, n).clone()
            inside = (index >= start) & (index < start + size)
            rows = torch.nonzero(inside).flatten()
            copy[rows, index[rows] - start] = 0
            out[key] = copy
            start += size
        return out

    def _heads(self, features: OrderedDict[str, torch.Tensor], n: int, keep_proposals: bool = False
               ) -> list[Output]:
        """RPN, box head and postprocessing (GeneralizedRCNN.forward after the backbone) for n copies."""
        images = self._images
        if n > 1:
            images = ImageList(_repeat(images.tensors, n), list(images.image_sizes) * n)
        proposals, _ = self.model.rpn(images, features)
        if keep_proposals:
            self.proposals = proposals[0]
        detections, _ = self.model.roi_heads(features, proposals, images.image_sizes)
        return self.model.transform.postprocess(detections, images.image_sizes, [self._orig_size] * n)

    def _rest_hooked(self, ablated: torch.Tensor) -> list[Output]:
        module = get_module(self.model, self.layer.module_path)
        handle = module.register_forward_hook(lambda _m, _i, _o: ablated)
        try:
            return self.model([self._image] * ablated.shape[0])
        finally:
            handle.remove()
