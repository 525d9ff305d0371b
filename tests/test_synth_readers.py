"""The simulated radiologists: who reads, how they miss, add and jitter, and that fusing them helps."""

from __future__ import annotations

from collections import Counter

import numpy as np
from ensemble_boxes import weighted_boxes_fusion

from btcxr.data.synthetic.readers import READER_BY_ID, READERS, WORKLOAD, consensus, pick_readers, read
from btcxr.data.synthetic.render import Finding

SHAPE = (1000, 800)
TRUTH = Finding(3, "Cardiomegaly", (300.0, 500.0, 600.0, 750.0), conspicuity=1.0)
LANDMARKS = {"lung_R": (100.0, 150.0, 380.0, 800.0), "lung_L": (420.0, 150.0, 700.0, 800.0),
             "apex_R": (100.0, 150.0, 380.0, 350.0), "apex_L": (420.0, 150.0, 700.0, 350.0),
             "base_R": (100.0, 600.0, 380.0, 800.0), "base_L": (420.0, 600.0, 700.0, 800.0),
             "heart": (300.0, 500.0, 600.0, 750.0)}


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_seventeen_readers_picked_by_their_real_workload():
    assert [r.rad_id for r in READERS] == [f"R{i}" for i in range(1, 18)]
    rng = np.random.default_rng(0)
    picks = [pick_readers(rng) for _ in range(3000)]
    assert all(len(set(p)) == 3 and set(p) <= set(READER_BY_ID) for p in picks)
    counts = Counter(r for p in picks for r in p)
    # the three busiest real readers are the three busiest here
    assert {r for r, _ in counts.most_common(3)} == {"R8", "R9", "R10"}
    assert counts["R17"] < counts["R9"] / 4
    assert WORKLOAD["R9"] / WORKLOAD["R17"] > 7


def test_miss_add_and_jitter_rates_follow_each_reader():
    rng = np.random.default_rng(1)
    for reader in (READER_BY_ID["R9"], READER_BY_ID["R4"]):
        trials = 3000
        reports = [read(reader, [TRUTH], LANDMARKS, SHAPE, rng) for _ in range(trials)]
        found = [[a for a in r if a.class_name == "Cardiomegaly"] for r in reports]
        miss = np.mean([not f for f in found])
        expected = reader.miss * (1.6 - TRUTH.conspicuity)
        assert abs(miss - expected) < 4 * np.sqrt(expected * (1 - expected) / trials) + 0.01
        ious = [iou(f[0].box, TRUTH.box) for f in found if f]
        assert 0.6 < np.mean(ious) < 0.99  # boxes jitter, but stay on the finding
        normal = [read(reader, [], LANDMARKS, SHAPE, rng) for _ in range(trials)]
        added = np.mean([r[0].class_name != "No finding" for r in normal])
        assert abs(added - reader.add) < 4 * np.sqrt(reader.add * (1 - reader.add) / trials) + 0.01
        assert all(r[0].box is None for r in normal if r[0].class_name == "No finding")


def test_fusing_three_readers_beats_one():
    """Weighted Boxes Fusion of three readers lands closer to the drawn box than a single reader."""
    rng = np.random.default_rng(2)
    single, fused = [], []
    h, w = SHAPE
    for _ in range(400):
        readers = [READER_BY_ID[r] for r in pick_readers(rng)]
        boxes = [[a.box for a in read(rd, [TRUTH], {}, SHAPE, rng) if a.class_name == "Cardiomegaly"]
                 for rd in readers]
        if not all(boxes):
            continue
        norm = [[[b[0] / w, b[1] / h, b[2] / w, b[3] / h] for b in bs] for bs in boxes]
        fb, _, _ = weighted_boxes_fusion(norm, [[1.0] * len(b) for b in norm], [[0] * len(b) for b in norm],
                                         iou_thr=0.4, skip_box_thr=0.0)
        single.append(iou(boxes[0][0], TRUTH.box))
        fused.append(iou((fb[0][0] * w, fb[0][1] * h, fb[0][2] * w, fb[0][3] * h), TRUTH.box))
    assert len(single) > 200
    assert np.mean(fused) > np.mean(single) + 0.01


def test_consensus_is_the_drawn_boxes():
    rows = consensus([TRUTH], "R3")
    assert [(a.rad_id, a.class_name, a.box) for a in rows] == [("R3", "Cardiomegaly", TRUTH.box)]
    assert [(a.class_name, a.box, a.class_id) for a in consensus([], "R3")] == [("No finding", None, 14)]
