"""Matching detections to ground-truth boxes and average precision, COCO and PASCAL VOC styles.

Hand-written (not pycocotools) because the evaluation must be fast on the full VinDr size and must
expose per-detection TP/FP flags for the bootstrap; tests check it against pycocotools' COCOeval and a
loop transcription of the VOC devkit.

Conventions, fixed here once for every metric:
- Boxes are `x_min, y_min, x_max, y_max` in (continuous) pixels; IoU = intersection / union with areas
  `(x_max - x_min) * (y_max - y_min)`, no "+1". This is pycocotools' convention, and the Kaggle VinBigData
  convention too: its description calls the "No finding" box `0 0 1 1` a one-pixel box, which is true only
  without the +1 of the 2010 MATLAB devkit (with it that box covers four pixels).
- Images are integers 0..n_images-1 (the caller sorts the image ids, as pycocotools sorts imgIds), classes
  are integers 0..n_classes-1.
- Detections with equal scores keep their input order (stable sorts, as pycocotools' mergesort and
  MATLAB's sort).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Built exactly as pycocotools.cocoeval.Params builds them, so the thresholds compare bit for bit.
COCO_IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
COCO_REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
# pycocotools never lets a match need IoU above this (so IoU 1.0 boxes match at threshold 1.0).
_COCO_MAX_IOU_THR = 1 - 1e-10


@dataclass(frozen=True)
class BoxSet:
    """Boxes of many images as flat arrays (one entry a box)."""

    image: np.ndarray  # int64 (N,) image index
    label: np.ndarray  # int64 (N,) class index
    boxes: np.ndarray  # float64 (N, 4) x_min, y_min, x_max, y_max
    score: np.ndarray | None = None  # float64 (N,), detections only

    def __len__(self) -> int:
        return len(self.image)

    def take(self, index: np.ndarray) -> BoxSet:
        return BoxSet(self.image[index], self.label[index], self.boxes[index],
                      None if self.score is None else self.score[index])


@dataclass(frozen=True)
class Matches:
    """Outcome of matching: one TP/FP flag per detection and IoU threshold, plus the GT it was scored against.

    `det` holds the detections that took part (after any max-detections cut), in the order that ties in
    score are broken by; `tp[t, i]` says whether det i is a true positive at `iou_thrs[t]`.
    """

    det: BoxSet
    tp: np.ndarray  # bool (T, n_det)
    gt_image: np.ndarray  # int64 (n_gt,)
    gt_label: np.ndarray  # int64 (n_gt,)
    iou_thrs: np.ndarray  # (T,)


def pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of a[i] with b[i] for (N, 4) arrays of x_min, y_min, x_max, y_max; 0 where the union is empty."""
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _group_key(image: np.ndarray, label: np.ndarray, n_classes: int) -> np.ndarray:
    return image.astype(np.int64) * n_classes + label.astype(np.int64)


def _same_group_pairs(det_key: np.ndarray, gt_key_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (detection, gt) index pairs sharing a key, grouped by detection, gt in ascending index order.

    `gt_key_sorted` must be sorted; the returned gt indices point into it.
    """
    start = np.searchsorted(gt_key_sorted, det_key, side="left")
    count = np.searchsorted(gt_key_sorted, det_key, side="right") - start
    pair_det = np.repeat(np.arange(len(det_key)), count)
    first = np.repeat(np.cumsum(count) - count, count)
    pair_gt = np.repeat(start, count) + (np.arange(len(pair_det)) - first)
    return pair_det, pair_gt


def _segment_starts(sorted_ids: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]]) if len(sorted_ids) else sorted_ids


def _sort_gt(gt: BoxSet, n_classes: int) -> tuple[BoxSet, np.ndarray]:
    key = _group_key(gt.image, gt.label, n_classes)
    order = np.argsort(key, kind="stable")  # input order kept within an image-class group
    return gt.take(order), key[order]


def match_coco(gt: BoxSet, det: BoxSet, n_classes: int, iou_thrs: np.ndarray = COCO_IOU_THRS,
               max_dets: int = 100) -> Matches:
    """COCO matching (pycocotools' evaluateImg, area 'all', no crowd), vectorised over groups and thresholds.

    Per image and class: detections by descending score, cut to `max_dets` (pycocotools applies maxDets per
    image *and category* when useCats=1); each detection takes the unmatched GT with the highest IoU >= the
    threshold (ties: the later GT, as pycocotools' loop does).
    Detections come back sorted by (image, class, descending score): the order pycocotools concatenates
    them in before its stable sort by score.
    """
    iou_thrs = np.asarray(iou_thrs, dtype=np.float64)
    # Sort by image, then class, then descending score, each pass stable.
    order = np.argsort(-det.score, kind="stable")
    order = order[np.argsort(det.label[order], kind="stable")]
    order = order[np.argsort(det.image[order], kind="stable")]
    det = det.take(order)
    key = _group_key(det.image, det.label, n_classes)
    starts = _segment_starts(key)
    group_of = np.cumsum(np.r_[True, key[1:] != key[:-1]]) - 1 if len(key) else key
    rank = np.arange(len(key)) - starts[group_of] if len(key) else key
    keep = rank < max_dets
    det, key, rank = det.take(keep), key[keep], rank[keep]

    gt_sorted, gt_key = _sort_gt(gt, n_classes)
    pair_det, pair_gt = _same_group_pairs(key, gt_key)
    iou = pair_iou(det.boxes[pair_det], gt_sorted.boxes[pair_gt])
    thr = np.minimum(iou_thrs, _COCO_MAX_IOU_THR)
    useful = iou >= thr.min()  # a pair below every threshold can never match
    pair_det, pair_gt, iou = pair_det[useful], pair_gt[useful], iou[useful]

    n_t = len(thr)
    tp = np.zeros((n_t, len(det)), dtype=bool)
    gt_taken = np.zeros((n_t, len(gt_sorted)), dtype=bool)
    # Greedy matching is sequential only within a group: step through the score ranks, handling the
    # rank-r detection of every group at once (their GTs are disjoint).
    pair_rank = rank[pair_det]
    by_rank = np.argsort(pair_rank, kind="stable")  # keeps (det, gt) order inside a rank
    pair_det, pair_gt, iou, pair_rank = pair_det[by_rank], pair_gt[by_rank], iou[by_rank], pair_rank[by_rank]
    n_ranks = int(rank.max()) + 1 if len(rank) else 0
    bounds = np.searchsorted(pair_rank, np.arange(n_ranks + 1), side="left")
    for r in range(n_ranks):
        lo, hi = bounds[r], bounds[r + 1]
        if lo == hi:
            continue
        d, g, v = pair_det[lo:hi], pair_gt[lo:hi], iou[lo:hi]
        seg = _segment_starts(d)
        seg_of = np.cumsum(np.r_[True, d[1:] != d[:-1]]) - 1
        valid = (v[None, :] >= thr[:, None]) & ~gt_taken[:, g]
        masked = np.where(valid, v[None, :], -1.0)
        best = np.maximum.reduceat(masked, seg, axis=1)
        is_best = valid & (masked == best[:, seg_of])
        pos = np.where(is_best, np.arange(hi - lo)[None, :], -1)
        chosen = np.maximum.reduceat(pos, seg, axis=1)  # last of the best, as pycocotools
        t_idx, s_idx = np.nonzero(chosen >= 0)
        p = chosen[t_idx, s_idx]
        gt_taken[t_idx, g[p]] = True
        tp[t_idx, d[p]] = True
    return Matches(det=det, tp=tp, gt_image=gt_sorted.image, gt_label=gt_sorted.label, iou_thrs=iou_thrs)


def match_voc(gt: BoxSet, det: BoxSet, n_classes: int, iou_thr: float, strict: bool = False) -> Matches:
    """PASCAL VOC matching (VOCevaldet), vectorised; detections keep their input order.

    Detections are taken by descending score over all images; each one is compared with the GT box of
    its image and class that it overlaps most (ties: the first GT); it is a TP when that overlap reaches
    `iou_thr` (`>=` as the devkit; `>` with `strict`, as the Kaggle text "IoU > 0.4") and that GT is not
    already taken, else a FP (a second detection of a taken GT is a FP even if another GT was free).
    """
    gt_sorted, gt_key = _sort_gt(gt, n_classes)
    key = _group_key(det.image, det.label, n_classes)
    pair_det, pair_gt = _same_group_pairs(key, gt_key)
    iou = pair_iou(det.boxes[pair_det], gt_sorted.boxes[pair_gt])
    # Dropping pairs below the threshold leaves the best pair of a detection alone whenever it matters.
    useful = iou > iou_thr if strict else iou >= iou_thr
    pair_det, pair_gt, iou = pair_det[useful], pair_gt[useful], iou[useful]

    claim = np.full(len(det), -1, dtype=np.int64)
    if len(pair_det):
        seg = _segment_starts(pair_det)
        seg_of = np.cumsum(np.r_[True, pair_det[1:] != pair_det[:-1]]) - 1
        best = np.maximum.reduceat(iou, seg)
        pos = np.where(iou == best[seg_of], np.arange(len(iou)), len(iou))
        first = np.minimum.reduceat(pos, seg)  # first of the best, as MATLAB's max
        claim[pair_det[seg]] = pair_gt[first]
    rank = np.empty(len(det), dtype=np.int64)
    rank[np.argsort(-det.score, kind="stable")] = np.arange(len(det))
    claimers = np.flatnonzero(claim >= 0)
    claimers = claimers[np.lexsort((rank[claimers], claim[claimers]))]
    first_claim = claimers[_segment_starts(claim[claimers])]
    tp = np.zeros((1, len(det)), dtype=bool)
    tp[0, first_claim] = True
    return Matches(det=det, tp=tp, gt_image=gt_sorted.image, gt_label=gt_sorted.label,
                   iou_thrs=np.array([iou_thr], dtype=np.float64))


@dataclass(frozen=True)
class ClassRanking:
    """One class's detections sorted once by descending score, with the facts every AP variant needs."""

    image: np.ndarray  # int64 (n,) image of each ranked detection
    score: np.ndarray  # float64 (n,)
    tp: np.ndarray  # bool (T, n)
    gt_image: np.ndarray  # int64 (n_gt,) image of each GT box of the class


def rank_class(m: Matches, k: int) -> ClassRanking:
    """Detections of class k in descending score, ties in the order of `m.det` (stable sort)."""
    idx = np.flatnonzero(m.det.label == k)
    idx = idx[np.argsort(-m.det.score[idx], kind="stable")]
    return ClassRanking(image=m.det.image[idx], score=m.det.score[idx], tp=m.tp[:, idx],
                        gt_image=m.gt_image[m.gt_label == k])


def cumulative_counts(tp: np.ndarray, weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Running TP and FP totals along the last axis; `weight` repeats detections (bootstrap copies).

    A detection weighted w gives the same AP as w adjacent copies of it: inside a run of copies the
    interpolated precision is set by the run's last point, so the intermediate points are not needed.
    """
    tp_f = tp.astype(np.float64)
    if weight is None:
        tp_cum = np.cumsum(tp_f, axis=-1)
        return tp_cum, np.arange(1, tp.shape[-1] + 1, dtype=np.float64) - tp_cum
    tp_cum = np.cumsum(tp_f * weight, axis=-1)
    return tp_cum, np.cumsum(weight, axis=-1, dtype=np.float64) - tp_cum  # whole numbers: exact


def coco_precision(tp_cum: np.ndarray, fp_cum: np.ndarray, npos: np.ndarray,
                   rec_thrs: np.ndarray = COCO_REC_THRS) -> np.ndarray:
    """COCO 101-point interpolated precision, one row per curve: (rows, R); NaN rows where npos == 0.

    Transcribes pycocotools' accumulate: precision tp/(tp+fp+eps), made non-increasing from the right,
    read at the first point whose recall reaches each recall threshold (0 beyond the last point).
    """
    rows, n = tp_cum.shape
    out = np.zeros((rows, len(rec_thrs)))
    npos = np.asarray(npos, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rc = tp_cum / npos[:, None]
    pr = tp_cum / (fp_cum + tp_cum + np.spacing(1))
    env = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    for r in range(rows):  # np.searchsorted is 1-D; a loop over rows keeps the comparisons exact
        if npos[r] <= 0:
            out[r] = np.nan
            continue
        if n == 0:
            continue
        inds = np.searchsorted(rc[r], rec_thrs, side="left")
        hit = inds < n
        out[r, hit] = env[r, inds[hit]]
    return out


def voc_ap(tp_cum: np.ndarray, fp_cum: np.ndarray, npos: np.ndarray) -> np.ndarray:
    """PASCAL VOC 2010+ all-point interpolated AP per row; NaN where npos == 0.

    mrec = [0, rec, 1], mpre = [0, prec, 0], mpre made non-increasing from the right, AP = sum of
    (mrec[i+1] - mrec[i]) * mpre[i+1] (steps where recall does not change add zero).
    """
    npos = np.asarray(npos, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = tp_cum / npos[:, None]
    prec = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
    # With mrec/mpre padded as above, the first step uses the envelope at the first point and the last
    # step (to recall 1) has precision 0, so the sum runs over the points themselves, without copies.
    env = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
    step = np.diff(rec, axis=1, prepend=0.0)
    ap = np.einsum("ij,ij->i", step, env)
    return np.where(npos > 0, ap, np.nan)


def coco_ap_per_class(m: Matches, n_classes: int, rec_thrs: np.ndarray = COCO_REC_THRS
                      ) -> tuple[np.ndarray, np.ndarray]:
    """COCO AP per IoU threshold and class, (T, K) with NaN for classes without GT, and the precision
    curves (T, R, K) behind them."""
    n_t = len(m.iou_thrs)
    precision = np.full((n_t, len(rec_thrs), n_classes), np.nan)
    for k in range(n_classes):
        ranked = rank_class(m, k)
        tp_cum, fp_cum = cumulative_counts(ranked.tp)
        precision[:, :, k] = coco_precision(tp_cum, fp_cum, np.full(n_t, len(ranked.gt_image)), rec_thrs)
    return precision.mean(axis=1), precision


def voc_ap_per_class(m: Matches, n_classes: int) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """VOC all-point AP per class (K,), NaN without GT, and each class's (recall, precision) points."""
    ap = np.full(n_classes, np.nan)
    curves = []
    for k in range(n_classes):
        ranked = rank_class(m, k)
        tp_cum, fp_cum = cumulative_counts(ranked.tp)
        npos = len(ranked.gt_image)
        ap[k] = voc_ap(tp_cum, fp_cum, np.array([npos]))[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            rec = tp_cum[0] / npos if npos else np.zeros(tp_cum.shape[1])
        curves.append((rec, tp_cum[0] / np.maximum(tp_cum[0] + fp_cum[0], np.finfo(np.float64).eps)))
    return ap, curves
