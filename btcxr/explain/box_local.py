"""Ablation-CAM's second half restricted to what the explained boxes' scores depend on (mode "box").

The exact mode (forward.SplitDetector with the detector's own heads) re-runs everything after the target
layer for every ablated copy: the FPN levels, the RPN over the whole image and the box head on its 1,000
proposals, although a box's target (targets.FasterRCNNBoxTarget) only reads the detections that overlap it.
Here, per ablated copy:
- the proposals are the unablated pass's (the RPN is not re-run);
- only the candidates are scored: proposals whose regressed box for a target's class overlaps that target
  (IoU >= CANDIDATE_IOU on the unablated features), so they can still become, or suppress, its match;
- only the FPN levels those candidates are pooled from are computed (the top-down path above them still
  runs: the levels depend on it);
- RoIAlign, the box head and torchvision's postprocessing (softmax, box decoding, score threshold, NMS,
  top-k) run on the candidates alone, with torchvision's own modules.

A candidate's class scores are exactly the exact mode's for the same proposal (the box head scores each RoI
on its own); what can differ is an ablation that moves the RPN's proposals, and NMS or top-k against a
proposal that is not a candidate. benchmarks/explain.py measures the agreement with the exact mode.

Hand-written because no library restricts a detector's heads to some proposals: pytorch-grad-cam always
runs the whole model, torchvision's RoIHeads always the whole proposal set.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import box_iou, roi_align

from btcxr.explain.targets import FasterRCNNBoxTarget

Output = dict[str, torch.Tensor]

# A candidate's regressed box must overlap a target this much on the unablated image. Below the target's
# own match threshold (IoU 0.5), so a box that an ablation moves into a match is still scored, and so are
# the same-class boxes that could suppress the match in NMS (which overlap it by more than 0.5).
CANDIDATE_IOU = 0.3


class CandidateHeads:
    """The box head and postprocessing of `model` for the candidates of `targets` among `proposals`.

    proposals: (m, 4) the unablated RPN proposals, in the network input frame (after model.transform);
    features: the unablated FPN outputs (batch 1); image_size / orig_size: (h, w) of the network input
    and of the image given to the detector.
    """

    def __init__(self, model: torch.nn.Module, proposals: torch.Tensor, features: dict[str, torch.Tensor],
                 image_size: tuple[int, int], orig_size: tuple[int, int],
                 targets: Sequence[FasterRCNNBoxTarget]) -> None:
        self.model = model
        self.heads = model.roi_heads
        self.pooler = self.heads.box_roi_pool
        self.image_size = tuple(image_size)
        self.orig_size = tuple(orig_size)  # the pooler's scales were set up by the detector's own first pass
        self.candidates = self._candidates(proposals, features, targets)
        used = sorted(set(self.pooler.map_levels([self.candidates]).flatten().tolist())) if len(self.candidates) else []
        self.levels = [self.pooler.featmap_names[int(i)] for i in used]  # the FPN outputs the heads read

    def _candidates(self, proposals: torch.Tensor, features: dict[str, torch.Tensor],
                    targets: Sequence[FasterRCNNBoxTarget]) -> torch.Tensor:
        """The proposals whose box for some target's class overlaps that target by CANDIDATE_IOU."""
        if not targets or not len(proposals):
            return proposals[:0]
        _, regression = self._score(features, proposals, 1)
        boxes = self.heads.box_coder.decode(regression, [proposals])  # (m, classes, 4)
        scale = proposals.new_tensor([self.image_size[1] / self.orig_size[1], self.image_size[0] / self.orig_size[0]] * 2)
        keep = torch.zeros(len(proposals), dtype=torch.bool, device=proposals.device)
        for target in targets:
            box = target.box.to(proposals) * scale  # the target lives in the original image's frame
            keep |= box_iou(box[None], boxes[:, target.label])[0] >= CANDIDATE_IOU
        return proposals[keep]

    def _score(self, features: dict[str, torch.Tensor], rois: torch.Tensor, n: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and box regression of the same `rois` on each of the n copies in `features`."""
        level = self.pooler.map_levels([rois]).long().flatten()
        sample = next(iter(features.values()))
        pooled = sample.new_zeros((n * len(rois), sample.shape[1], *self.pooler.output_size))
        copy = torch.arange(n, device=rois.device, dtype=rois.dtype).repeat_interleave(len(rois))
        tiled = torch.cat([copy[:, None], rois.repeat(n, 1)], dim=1)  # (n * m, 5): copy-major
        tiled_level = level.repeat(n)
        for index in sorted(set(level.tolist())):
            rows = torch.nonzero(tiled_level == index).flatten()
            feature = features[self.pooler.featmap_names[index]]
            shared = n > 1 and feature.stride(0) == 0  # a level the ablation leaves alone: pool it once
            part = roi_align(feature[:1] if shared else feature, tiled[rows[:len(rows) // n] if shared else rows],
                             self.pooler.output_size, spatial_scale=self.pooler.scales[index],
                             sampling_ratio=self.pooler.sampling_ratio)
            pooled[rows] = (part.repeat(n, 1, 1, 1) if shared else part).to(pooled.dtype)
        return self.heads.box_predictor(self.heads.box_head(pooled))

    @torch.no_grad()
    def __call__(self, features: dict[str, torch.Tensor], n: int) -> list[Output]:
        """The detections of n copies whose FPN outputs are `features` (at least the levels in `levels`),
        as `model(...)` returns them, restricted to the candidates."""
        if not len(self.candidates):
            none = self.candidates
            return [{"boxes": none, "scores": none[:, 0], "labels": none[:, 0].long()} for _ in range(n)]
        logits, regression = self._score(features, self.candidates, n)
        sizes = [self.image_size] * n
        boxes, scores, labels = self.heads.postprocess_detections(logits, regression, [self.candidates] * n, sizes)
        detections = [{"boxes": b, "scores": s, "labels": c} for b, s, c in zip(boxes, scores, labels)]
        return self.model.transform.postprocess(detections, sizes, [self.orig_size] * n)
