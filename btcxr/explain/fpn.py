"""torchvision's FPN re-run cheaply after a change to one of its inputs, using its linearity.

torchvision's FeaturePyramidNetwork is linear between its inputs and outputs (1x1 lateral convolutions,
nearest 2x upsampling, sums, 3x3 output convolutions, no norm or activation). When only the ResNet stage
feeding level j and the coarser ones change, the finer outputs change by the 3x3 output convolution of the
change of the top-down sum at level j, upsampled:

    P_l(new) = P_l(old) + conv3x3_nobias(upsample_{2^(j-l)}(td_j(new) - td_j(old)))      for l < j.

The convolution of a nearest-upsampled map is evaluated at the coarse resolution (each output phase sees
one or two coarse pixels per axis), which costs 4/9 of the fine-resolution convolution for a factor 2,
25/144 for 4 and 25/(9 * s^2) beyond. For Ablation-CAM at layer3 this removes most of the FPN's cost from
every ablated copy; the result equals the plain FPN up to float rounding (tests check both).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork


def _single_conv(block: nn.Module) -> nn.Conv2d | None:
    """The Conv2d a block consists of (torchvision wraps it in Conv2dNormActivation), else None."""
    if isinstance(block, nn.Conv2d):
        return block
    children = list(block.children())
    if len(children) == 1 and isinstance(children[0], nn.Conv2d):
        return children[0]
    return None


def fpn_is_linear(fpn: nn.Module) -> bool:
    """True for a torchvision FPN of plain convolutions (no norm, no activation), 3x3 stride-1 outputs."""
    if type(fpn) is not FeaturePyramidNetwork:
        return False
    for block in fpn.inner_blocks:
        conv = _single_conv(block)
        if conv is None or conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.groups != 1:
            return False
    for block in fpn.layer_blocks:
        conv = _single_conv(block)
        if (conv is None or conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1)
                or conv.dilation != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros"):
            return False
    return True


def fpn_forward(fpn: FeaturePyramidNetwork, x: OrderedDict[str, torch.Tensor]
                ) -> tuple[OrderedDict[str, torch.Tensor], list[torch.Tensor]]:
    """torchvision's FeaturePyramidNetwork.forward, also returning the top-down sums (one per input level)."""
    names = list(x.keys())
    values = list(x.values())
    last_inner = fpn.get_result_from_inner_blocks(values[-1], -1)
    top_down = [last_inner]
    results = [fpn.get_result_from_layer_blocks(last_inner, -1)]
    for idx in range(len(values) - 2, -1, -1):
        inner_lateral = fpn.get_result_from_inner_blocks(values[idx], idx)
        inner_top_down = F.interpolate(last_inner, size=inner_lateral.shape[-2:], mode="nearest")
        last_inner = inner_lateral + inner_top_down
        top_down.insert(0, last_inner)
        results.insert(0, fpn.get_result_from_layer_blocks(last_inner, idx))
    if fpn.extra_blocks is not None:
        results, names = fpn.extra_blocks(results, values, names)
    return OrderedDict(zip(names, results)), top_down


# Per axis, which of the 3 kernel taps land on which coarse offset, for the first phase of an upsampling
# factor ("lo": offsets -1, 0), its last phase ("hi": 0, +1) and the phases in between ("mid": 0).
_TAPS = {
    "lo": (-1, [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]),
    "hi": (0, [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
    "mid": (0, [[1.0, 1.0, 1.0]]),
}


def _phase_kinds(factor: int) -> list[tuple[str, slice]]:
    if factor == 1:
        raise ValueError("factor must be at least 2")
    kinds = [("lo", slice(0, 1)), ("hi", slice(factor - 1, factor))]
    if factor > 2:
        kinds.append(("mid", slice(1, factor - 1)))
    return kinds


class UpsampledConv3x3:
    """x -> conv2d(interpolate(x, scale_factor=factor, mode="nearest"), weight, padding=1), evaluated at x's
    resolution: output phase (a, b) of each factor x factor cell is a small convolution of x whose kernel
    sums the 3x3 taps that land on the same coarse pixel (precomputed once)."""

    def __init__(self, weight: torch.Tensor, factor: int) -> None:
        self.factor = factor
        self.phases = []
        for kind_y, rows in _phase_kinds(factor):
            lo_y, my = _TAPS[kind_y]
            for kind_x, cols in _phase_kinds(factor):
                lo_x, mx = _TAPS[kind_x]
                kernel = torch.einsum("oiyx,ay,bx->oiab", weight.detach(), weight.new_tensor(my),
                                      weight.new_tensor(mx)).contiguous()
                self.phases.append((rows, cols, lo_y, lo_x, kernel))

    def add_to(self, out: torch.Tensor, x: torch.Tensor) -> None:
        """out += the convolution of upsampled x, in place; out (N, C_out, h * f, w * f), x (N, C_in, h, w)."""
        n, _, h, w = x.shape
        f = self.factor
        padded = F.pad(x, (1, 1, 1, 1))
        out6 = out.view(n, out.shape[1], h, f, w, f)
        for rows, cols, lo_y, lo_x, kernel in self.phases:
            ky, kx = kernel.shape[-2:]
            window = padded[:, :, 1 + lo_y: 1 + lo_y + h + ky - 1, 1 + lo_x: 1 + lo_x + w + kx - 1]
            out6[:, :, :, rows, :, cols] += F.conv2d(window, kernel)[:, :, :, None, :, None]


def fpn_from_level(fpn: FeaturePyramidNetwork, inputs: OrderedDict[str, torch.Tensor], level: int,
                   old_features: OrderedDict[str, torch.Tensor], old_top_down: list[torch.Tensor],
                   convs: dict[int, UpsampledConv3x3] | None = None, keep: list[str] | None = None
                   ) -> OrderedDict[str, torch.Tensor]:
    """FPN outputs for a batch whose inputs changed at input level `level` and above only.

    inputs: the batch's FPN inputs (the levels below `level` may be stride-0 repeats of one image);
    old_features / old_top_down: `fpn_forward` of that one image before the change (batch 1);
    convs: a cache of the UpsampledConv3x3 of each finer level, filled on first use;
    keep: the outputs wanted (None: all of them, extra blocks included); the others are left out.
    """
    convs = {} if convs is None else convs
    names = list(inputs.keys())
    values = list(inputs.values())
    n = values[level].shape[0]
    wanted = set(names) if keep is None else set(keep)
    results: OrderedDict[str, torch.Tensor] = OrderedDict()
    last_inner = fpn.get_result_from_inner_blocks(values[-1], -1)
    if names[-1] in wanted:
        results[names[-1]] = fpn.get_result_from_layer_blocks(last_inner, -1)
    for idx in range(len(values) - 2, level - 1, -1):
        inner_lateral = fpn.get_result_from_inner_blocks(values[idx], idx)
        last_inner = inner_lateral + F.interpolate(last_inner, size=inner_lateral.shape[-2:], mode="nearest")
        if names[idx] in wanted:
            results[names[idx]] = fpn.get_result_from_layer_blocks(last_inner, idx)
    delta = last_inner - old_top_down[level]
    for idx in range(level - 1, -1, -1):
        if names[idx] not in wanted:
            continue
        factor = 2 ** (level - idx)
        old = old_features[names[idx]]
        if old.shape[-2:] != (delta.shape[-2] * factor, delta.shape[-1] * factor):
            raise ValueError("FPN levels are not exact factors of 2 apart")
        if idx not in convs:
            convs[idx] = UpsampledConv3x3(_single_conv(fpn.layer_blocks[idx]).weight, factor)
        new = old.repeat(n, 1, 1, 1)
        convs[idx].add_to(new, delta)
        results[names[idx]] = new
    ordered = OrderedDict((name, results[name]) for name in names if name in results)
    if keep is None and fpn.extra_blocks is not None:
        outputs, out_names = fpn.extra_blocks(list(ordered.values()), values, names)
        return OrderedDict(zip(out_names, outputs))
    return ordered
