"""Fusing the radiologists' boxes of VinDr-CXR into one reference set per image.

Methods (``--fusion`` strings, parsed by :func:`parse_fusion`):

* ``wbf``: Weighted Boxes Fusion (``ensemble_boxes.weighted_boxes_fusion``), what the Kaggle winners used.
  Each reader of an image is one "model"; all reader boxes have confidence 1.
* ``wbf-pooled``: the paper's ground truth. The same WBF, but every reader's boxes of an image pooled into
  ONE list (one "model") in the order of the annotation file's rows. With ``iou_thr=0.5`` this gives the
  authors' published val/test boxes within 1 px (docs/paper.md). WBF clusters greedily, so the result
  depends on the row order of the file; every fused score is 1 (one model), so ``skip_box_thr`` keeps all.
* ``nms``: non-maximum suppression (``ensemble_boxes.nms``) over the same per-reader lists.
* ``union``: every reader's boxes, unchanged.
* ``reader:R8``: one reader's boxes only; images that reader did not read are dropped.

The "No finding" rule: an image is negative when no fused box remains. It then gets exactly one row
with the label set's "No finding" class (14 for the Kaggle classes), NaN coordinates and score 1.0.
So every input image (for ``reader:R``, every image R read) appears in the output.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from btcxr.data.vindr import BOX_COLUMNS, check_boxes_inside, class_names, no_finding_id
from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)

FUSED_COLUMNS = ["image_id", "class_id", "class_name", "x_min", "y_min", "x_max", "y_max", "score"]
_METHODS = ("wbf", "wbf-pooled", "nms", "union")


@dataclass(frozen=True)
class FusionSpec:
    """A parsed fusion method: ``method`` in wbf/nms/union/reader; ``reader`` set for ``reader``."""

    method: str
    reader: str | None = None

    def __str__(self) -> str:
        return f"reader:{self.reader}" if self.method == "reader" else self.method


def parse_fusion(spec: str | FusionSpec) -> FusionSpec:
    """Parse ``wbf``, ``wbf-pooled``, ``nms``, ``union`` or ``reader:<rad_id>`` (e.g. ``reader:R8``)."""
    if isinstance(spec, FusionSpec):
        return spec
    text = str(spec).strip()
    low = text.lower()
    if low in _METHODS:
        return FusionSpec(low)
    if low.startswith("reader:") and text.split(":", 1)[1].strip():
        return FusionSpec("reader", text.split(":", 1)[1].strip())
    raise BtcxrError(f"unknown fusion method {spec!r}; expected wbf, wbf-pooled, nms, union or reader:<rad_id> "
                     "(e.g. reader:R8)")


def fuse_readers(
    ann: pd.DataFrame,
    spec: FusionSpec | str = "wbf",
    iou_thr: float = 0.4,
    skip_box_thr: float = 0.0,
    sizes: pd.DataFrame | None = None,
    label_set: str = "kaggle",
) -> pd.DataFrame:
    """Fuse the readers' boxes per image and class.

    ``ann``: the annotation table of :mod:`btcxr.data.vindr` (image_id, rad_id, class_id, x_min, y_min,
    x_max, y_max; "No finding" rows with NaN coordinates). Returns ``image_id, class_id, class_name,
    x_min, y_min, x_max, y_max, score`` in original pixels, images in order of first appearance in ``ann``.

    Normalisation: ensemble-boxes wants [0, 1] coordinates. With ``sizes`` (image_id, orig_width,
    orig_height) x is divided by the width and y by the height (boxes are first checked to lie inside,
    1 px tolerance, then clipped); without it both axes are divided by the image's largest box
    coordinate. Either is exact: IoU and weighted means are invariant to scaling each axis, so both
    give the same boxes (up to float32 rounding inside WBF).

    Score. WBF: with every input confidence 1 and ensemble-boxes' default ``conf_type='avg'`` the fused
    score is ``min(boxes in the cluster, readers) / readers of the image``: the share of readers who
    drew the finding there (1/3, 2/3 or 1 for VinDr's three readers). NMS, union, reader: 1.0.
    ``skip_box_thr`` drops fused boxes whose score is below it (0.5: keep WBF boxes at least two of
    three readers agree on). It is applied after fusion, because passing it to ensemble-boxes would
    filter the input confidences, which are all 1.

    Order matters to WBF's greedy clustering, so for ``wbf`` and ``nms`` it is fixed independently of the
    row order: readers in natural rad_id order (R1, R2, .., R10), each reader's boxes sorted by class,
    x_min, y_min, x_max, y_max. ``wbf-pooled`` keeps the row order of ``ann`` (the paper's rule). Boxes
    with zero area are dropped (counted in the log).
    """
    fusion = parse_fusion(spec)
    names = class_names(label_set)
    nf_id = no_finding_id(label_set)
    needed = ["image_id", "rad_id", "class_id", *BOX_COLUMNS]
    missing = [c for c in needed if c not in ann.columns]
    if missing:
        raise BtcxrError(f"annotation table lacks column(s) {', '.join(missing)}")
    if not 0.0 < iou_thr <= 1.0:
        raise BtcxrError(f"iou_thr must be in (0, 1], got {iou_thr}")
    class_id = ann["class_id"].to_numpy()
    if ((class_id < 0) | (class_id > nf_id)).any():
        raise BtcxrError(f"class_id outside 0..{nf_id} for the {label_set} label set")

    if fusion.method == "reader":
        readers = set(ann["rad_id"])
        if fusion.reader not in readers:
            raise BtcxrError(f"unknown reader {fusion.reader!r}; readers in the annotations: "
                             f"{', '.join(sorted(readers, key=_reader_key))}")
        n_images = ann["image_id"].nunique()
        ann = ann[ann["rad_id"] == fusion.reader]
        log.info("reader:%s read %d of %d images; the other %d are dropped", fusion.reader,
                 ann["image_id"].nunique(), n_images, n_images - ann["image_id"].nunique())

    image_order = np.asarray(pd.unique(ann["image_id"]), dtype=object)
    is_box = (ann["class_id"].to_numpy() != nf_id)
    coords_ok = ann[BOX_COLUMNS].notna().all(axis=1).to_numpy()
    if (is_box & ~coords_ok).any():
        bad = ann[is_box & ~coords_ok].iloc[0]
        raise BtcxrError(f"image {bad['image_id']}: a class {bad['class_id']} row by {bad['rad_id']} has no box")
    boxes = ann[is_box]
    area = (boxes["x_max"] - boxes["x_min"]) * (boxes["y_max"] - boxes["y_min"])
    if (area <= 0).any():
        log.warning("dropped %d boxes with zero or negative area", int((area <= 0).sum()))
        boxes = boxes[area > 0]
    if sizes is not None:
        check_boxes_inside(boxes, sizes, source="annotations")

    if fusion.method in ("union", "reader"):
        fused = boxes[["image_id", "class_id", *BOX_COLUMNS]].assign(score=1.0)
        if sizes is not None:  # inside within 1 px (checked above): clip, as WBF/NMS do
            wh = sizes.drop_duplicates("image_id").set_index("image_id")
            w = wh["orig_width"].reindex(fused["image_id"]).to_numpy(dtype=np.float64)
            h = wh["orig_height"].reindex(fused["image_id"]).to_numpy(dtype=np.float64)
            limit = {"x_min": w, "x_max": w, "y_min": h, "y_max": h}
            fused = fused.assign(**{c: np.clip(fused[c].to_numpy(), 0, lim) for c, lim in limit.items()})
    else:
        fused = _fuse_ensemble(ann, boxes, image_order, fusion.method, iou_thr, sizes)
    if skip_box_thr > 0:
        fused = fused[fused["score"] >= skip_box_thr]

    # The "No finding" rule: images without a fused box get one class-"No finding" row.
    negative = image_order[~pd.Index(image_order).isin(fused["image_id"].unique())]
    neg_rows = pd.DataFrame({"image_id": negative, "class_id": nf_id, "score": 1.0,
                             **{c: np.nan for c in BOX_COLUMNS}})
    out = pd.concat([fused, neg_rows], ignore_index=True) if len(neg_rows) else fused.reset_index(drop=True)
    position = pd.Categorical(out["image_id"], categories=image_order).codes
    out = out.iloc[np.argsort(position, kind="stable")].reset_index(drop=True)
    out["class_id"] = out["class_id"].astype(np.int64)
    out["class_name"] = np.asarray(names, dtype=object)[out["class_id"].to_numpy()]
    out["score"] = out["score"].astype(np.float64)
    for c in BOX_COLUMNS:
        out[c] = out[c].astype(np.float64)
    log.info("fusion %s: %d reader boxes on %d images -> %d boxes; %d images without a box (No finding)",
             fusion, len(boxes), len(image_order), len(out) - len(negative), len(negative))
    return out[FUSED_COLUMNS]


def _fuse_ensemble(
    ann: pd.DataFrame,
    boxes: pd.DataFrame,
    image_order: np.ndarray,
    method: str,
    iou_thr: float,
    sizes: pd.DataFrame | None,
) -> pd.DataFrame:
    """WBF (per reader or pooled) or NMS through ensemble-boxes, one call per image (it separates the
    classes itself)."""
    from ensemble_boxes import nms, weighted_boxes_fusion

    empty = pd.DataFrame({"image_id": pd.Series(dtype=object), "class_id": pd.Series(dtype=np.int64),
                          **{c: pd.Series(dtype=np.float64) for c in BOX_COLUMNS}, "score": pd.Series(dtype=np.float64)})
    if boxes.empty:
        return empty
    all_readers = sorted(pd.unique(ann["rad_id"]), key=_reader_key)
    rank = {r: i for i, r in enumerate(all_readers)}
    img_code = {img: i for i, img in enumerate(image_order)}

    # Readers of each image (with or without boxes): each is one "model" for ensemble-boxes, so that
    # WBF's score counts the readers who drew nothing there too.
    pairs = ann[["image_id", "rad_id"]].drop_duplicates()
    p_img = pairs["image_id"].map(img_code).to_numpy()
    p_rank = pairs["rad_id"].map(rank).to_numpy()
    order = np.lexsort((p_rank, p_img))
    p_img, p_rank = p_img[order], p_rank[order]
    p_starts = np.searchsorted(p_img, np.arange(len(image_order) + 1))

    b_img = boxes["image_id"].map(img_code).to_numpy()
    b_rank = boxes["rad_id"].map(rank).to_numpy()
    cls = boxes["class_id"].to_numpy()
    xyxy = boxes[BOX_COLUMNS].to_numpy(dtype=np.float64)
    if method == "wbf-pooled":  # image by image, each image's boxes in the row order of the file
        order = np.argsort(b_img, kind="stable")
    else:
        order = np.lexsort((xyxy[:, 3], xyxy[:, 2], xyxy[:, 1], xyxy[:, 0], cls, b_rank, b_img))
    b_img, b_rank, cls, xyxy = b_img[order], b_rank[order], cls[order], xyxy[order]

    # Per-box normalisation factors (x and y).
    if sizes is not None:
        wh = sizes.drop_duplicates("image_id").set_index("image_id")[["orig_width", "orig_height"]]
        img_ids = np.asarray(image_order, dtype=object)[b_img]
        fx = wh["orig_width"].reindex(img_ids).to_numpy(dtype=np.float64)
        fy = wh["orig_height"].reindex(img_ids).to_numpy(dtype=np.float64)
    else:
        # One factor per image, the largest box coordinate: WBF/NMS are invariant to a common scale.
        per_image = pd.Series(xyxy[:, 2:].max(axis=1)).groupby(b_img).transform("max").to_numpy()
        fx = fy = per_image
    norm = np.clip(xyxy / np.stack([fx, fy, fx, fy], axis=1), 0.0, 1.0)

    out_img, out_cls, out_box, out_score = [], [], [], []
    starts = np.flatnonzero(np.r_[True, b_img[1:] != b_img[:-1]])
    ends = np.r_[starts[1:], len(b_img)]
    for s, e in zip(starts, ends):
        code = b_img[s]
        if method == "wbf-pooled":  # every reader's boxes as one "model"
            groups = [slice(s, e)]
        else:  # one "model" per reader of the image, boxes or not
            readers = p_rank[p_starts[code]:p_starts[code + 1]]
            r_of_box = b_rank[s:e]
            groups = [slice(s + np.searchsorted(r_of_box, r, "left"), s + np.searchsorted(r_of_box, r, "right"))
                      for r in readers]
        box_list = [norm[g] for g in groups]
        score_list = [np.ones(g.stop - g.start) for g in groups]
        label_list = [cls[g] for g in groups]
        if method in ("wbf", "wbf-pooled"):
            fb, fs, fl = weighted_boxes_fusion(box_list, score_list, label_list, iou_thr=iou_thr, skip_box_thr=0.0)
        else:
            fb, fs, fl = nms(box_list, score_list, label_list, iou_thr=iou_thr)
        scale = np.array([fx[s], fy[s], fx[s], fy[s]])
        out_img.append(np.full(len(fb), code))
        out_cls.append(np.asarray(fl, dtype=np.int64))
        out_box.append(np.asarray(fb, dtype=np.float64).reshape(-1, 4) * scale)
        out_score.append(np.asarray(fs, dtype=np.float64))
    box = np.concatenate(out_box)
    return pd.DataFrame({
        "image_id": np.asarray(image_order, dtype=object)[np.concatenate(out_img)],
        "class_id": np.concatenate(out_cls),
        **{c: box[:, i] for i, c in enumerate(BOX_COLUMNS)},
        "score": np.concatenate(out_score),
    })


def _reader_key(rad_id: str) -> tuple:
    """Natural order: R2 before R10."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|\D+", str(rad_id)))
