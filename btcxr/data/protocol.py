"""VinDr data protocols: how the radiologists' boxes become ground truth and how images are split.

* ``btcxr`` (default): WBF with one "model" per reader in a fixed reader and box order (``wbf``, IoU 0.4, as
  the Kaggle winners), and a seeded multi-label stratified 70/15/15 split. Its boxes do not depend on the
  order of the rows in train.csv, so two copies of the file that list the same rows give the same cache.
* ``paper``: the BarlowTwins-CXR paper's ground truth and split, exactly. WBF over every reader's boxes of
  an image pooled into one list in the file's row order (``wbf-pooled``), IoU 0.5, images without a
  finding dropped, the authors' val (659) and test (660) images as val and test, every other image with
  a finding as train. The id lists ship with the package (``paper_split/*.txt``, source in their header).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import pandas as pd

from btcxr.errors import BtcxrError


@dataclass(frozen=True)
class Protocol:
    fusion: str
    iou_thr: float


PROTOCOLS = {"btcxr": Protocol(fusion="wbf", iou_thr=0.4), "paper": Protocol(fusion="wbf-pooled", iou_thr=0.5)}
PAPER_SPLIT_FILE = "splits/vindr_paper.csv"


def check_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise BtcxrError(f"--protocol {name!r}: expected one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def paper_lists() -> dict[str, list[str]]:
    """The paper's VinDr val and test image ids, as shipped in btcxr/data/paper_split/."""
    folder = resources.files("btcxr.data").joinpath("paper_split")
    lists = {}
    for part in ("val", "test"):
        lines = folder.joinpath(f"{part}.txt").read_text(encoding="utf-8").splitlines()
        lists[part] = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    return lists


def paper_split(with_finding: list[str], lists: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """image_id, split: the listed ids as val/test, every other image of ``with_finding`` as train.

    Every listed id must be among ``with_finding`` (the caller drops missing images from the lists first):
    a listed image without a finding means the annotation file is not the one the paper used.
    """
    lists = paper_lists() if lists is None else lists
    have = set(with_finding)
    for part, ids in lists.items():
        absent = [i for i in ids if i not in have]
        if absent:
            raise BtcxrError(f"the paper's {part} split lists {len(absent)} image(s) that have no finding in these "
                             f"annotations (e.g. {absent[0]}): is this the Kaggle VinDr-CXR train.csv?")
    part_of = {i: part for part, ids in lists.items() for i in ids}
    frame = pd.DataFrame({"image_id": list(with_finding)})
    frame["split"] = frame["image_id"].map(part_of).fillna("train")
    return frame.sort_values("image_id", kind="stable").reset_index(drop=True)
