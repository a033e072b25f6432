"""3D merging of slice detections: hand examples, validation, and a brute-force cross-check."""
import itertools
import random

import numpy as np
import pytest

from breast_d2.evaluation.candidates import (
    CandidateArrays,
    FROCInputError,
    merge_slice_detections,
)


def _det(case, z, box, score=0.9):
    return {"case_id": case, "slice": z, "box": list(box), "score": score}


def test_single_detection_box_is_half_open_in_z():
    out = merge_slice_detections([_det("a", 7, [10, 20, 30, 40], 0.8)])
    assert out == [{"case_id": "a", "box": [10.0, 20.0, 7.0, 30.0, 40.0, 8.0], "score": 0.8,
                    "slices": 1}]


def test_gap_of_one_slice_is_bridged_two_are_not():
    box = [10, 10, 20, 20]
    bridged = merge_slice_detections([_det("a", 3, box, 0.5), _det("a", 5, box, 0.9)])
    assert len(bridged) == 1
    assert bridged[0]["box"] == [10.0, 10.0, 3.0, 20.0, 20.0, 6.0]
    assert bridged[0]["score"] == 0.9 and bridged[0]["slices"] == 2
    split = merge_slice_detections([_det("a", 3, box), _det("a", 6, box)])
    assert len(split) == 2
    assert len(merge_slice_detections([_det("a", 3, box), _det("a", 6, box)], slice_gap=2)) == 1
    assert len(merge_slice_detections([_det("a", 3, box), _det("a", 5, box)], slice_gap=0)) == 2


def test_no_linking_across_cases():
    box = [10, 10, 20, 20]
    out = merge_slice_detections([_det("b", 3, box), _det("a", 3, box), _det("a", 4, box)])
    assert [c["case_id"] for c in out] == ["a", "b"]
    assert [c["slices"] for c in out] == [2, 1]


def test_iou_below_threshold_not_linked():
    # IoU of [0,0,10,10] and [5,0,15,10] = 50 / 150 = 1/3.
    a, b = [0, 0, 10, 10], [5, 0, 15, 10]
    assert len(merge_slice_detections([_det("a", 0, a), _det("a", 1, b)], link_iou=0.3)) == 1
    assert len(merge_slice_detections([_det("a", 0, a), _det("a", 1, b)], link_iou=0.34)) == 2
    # Exactly at the threshold links (>=): IoU of [0,0,10,10] and [0,0,10,5] = 0.5.
    assert len(merge_slice_detections([_det("a", 0, a), _det("a", 1, [0, 0, 10, 5])],
                                      link_iou=0.5)) == 1


def test_chain_is_one_component_with_union_box_and_mean_score():
    dets = [
        _det("a", 0, [0, 0, 10, 10], 0.2),
        _det("a", 1, [2, 0, 12, 10], 0.4),
        _det("a", 2, [4, 0, 14, 10], 0.6),  # overlaps the first only through the chain
    ]
    out = merge_slice_detections(dets, score="mean", box_merge="union")
    assert len(out) == 1
    assert out[0]["box"] == [0.0, 0.0, 0.0, 14.0, 10.0, 3.0]
    assert out[0]["score"] == pytest.approx(0.4)
    assert out[0]["slices"] == 3


def test_same_slice_overlapping_boxes_merge():
    out = merge_slice_detections([_det("a", 4, [0, 0, 10, 10]), _det("a", 4, [1, 1, 11, 11])])
    assert len(out) == 1 and out[0]["slices"] == 1


def test_score_thresh_drops_first():
    dets = [_det("a", 0, [0, 0, 10, 10], 0.1), _det("a", 1, [0, 0, 10, 10], 0.6)]
    out = merge_slice_detections(dets, score="mean", score_thresh=0.5)
    assert len(out) == 1 and out[0]["score"] == 0.6 and out[0]["box"][2] == 1.0


def test_empty():
    assert merge_slice_detections([]) == []


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"case_id": "a", "slice": 1, "box": [5, 0, 5, 10], "score": 0.5}, "malformed box"),
        ({"case_id": "a", "slice": 1, "box": [0, 0, 10, 10], "score": float("nan")}, "score"),
        ({"case_id": "a", "slice": 1, "box": [0, 0, 10], "score": 0.5}, "4 numbers"),
        ({"case_id": "a", "slice": 1.5, "box": [0, 0, 10, 10], "score": 0.5}, "slice"),
        ({"case_id": "a", "box": [0, 0, 10, 10], "score": 0.5}, "'slice'"),
        ({"case_id": 3, "slice": 1, "box": [0, 0, 10, 10], "score": 0.5}, "string"),
    ],
)
def test_malformed_detection_is_named(bad, needle):
    dets = [_det("ok", 0, [0, 0, 10, 10]), bad]
    with pytest.raises(FROCInputError) as e:
        merge_slice_detections(dets)
    assert needle in str(e.value) and "#1" in str(e.value)


def test_candidate_arrays_round_trip_and_validation():
    cands = [{"case_id": "a", "box": [0, 0, 0, 4, 4, 2], "score": 0.5, "slices": 2}]
    arrays = CandidateArrays.from_dicts(cands)
    assert arrays.to_dicts() == [{"case_id": "a", "box": [0.0, 0.0, 0.0, 4.0, 4.0, 2.0],
                                  "score": 0.5, "slices": 2}]
    with pytest.raises(FROCInputError, match=r"candidate #1 \(case 'b'\).*malformed box"):
        CandidateArrays.from_dicts(cands + [{"case_id": "b", "box": [0, 0, 3, 4, 4, 3],
                                             "score": 0.1}])


def _brute_merge(dets, slice_gap, link_iou, box_merge="union"):
    """Plain union-find over all pairs; returns sorted (case, box, max score, n slices).
    ``box_merge="fused"``: each slice's member boxes are first replaced by their score-weighted
    mean (rounded to 9 decimals for the comparison)."""
    parent = list(range(len(dets)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
        return inter / (area(a) + area(b) - inter)

    for i, j in itertools.combinations(range(len(dets)), 2):
        a, b = dets[i], dets[j]
        if (a["case_id"] == b["case_id"] and abs(a["slice"] - b["slice"]) <= 1 + slice_gap
                and iou(a["box"], b["box"]) >= link_iou):
            parent[find(i)] = find(j)
    groups = {}
    for i in range(len(dets)):
        groups.setdefault(find(i), []).append(dets[i])
    out = []
    for members in groups.values():
        if box_merge == "fused":
            fused = []
            for z in sorted({m["slice"] for m in members}):
                on = [m for m in members if m["slice"] == z]
                w = sum(m["score"] for m in on)
                fused.append({"slice": z, "box": [round(sum(m["box"][k] * m["score"] for m in on)
                                                        / w, 9) for k in range(4)]})
            spans = fused
        else:
            spans = members
        box = [min(m["box"][0] for m in spans), min(m["box"][1] for m in spans),
               min(m["slice"] for m in members), max(m["box"][2] for m in spans),
               max(m["box"][3] for m in spans), max(m["slice"] for m in members) + 1]
        out.append((members[0]["case_id"], [float(v) for v in box],
                    max(m["score"] for m in members), len({m["slice"] for m in members})))
    return sorted(out)


@pytest.mark.parametrize("seed", range(4))
def test_random_against_brute_force_and_permutation(seed):
    rng = random.Random(seed)
    dets = []
    for _ in range(250):
        x0, y0 = rng.randint(0, 40), rng.randint(0, 40)
        dets.append(_det(rng.choice("abc"), rng.randint(0, 8),
                         [x0, y0, x0 + rng.randint(1, 15), y0 + rng.randint(1, 15)],
                         rng.choice([0.1, 0.5, 0.9, 0.3])))
    gap, thr = seed % 3, [0.3, 0.1, 0.5, 0.2][seed]
    out = merge_slice_detections(dets, slice_gap=gap, link_iou=thr, box_merge="union")
    got = sorted((c["case_id"], c["box"], c["score"], c["slices"]) for c in out)
    assert got == _brute_merge(dets, gap, thr)
    shuffled = dets[:]
    rng.shuffle(shuffled)
    assert merge_slice_detections(shuffled, slice_gap=gap, link_iou=thr,
                                  box_merge="union") == out
    # Output order: by case, then first slice.
    keys = [(c["case_id"], c["box"][2]) for c in out]
    assert keys == sorted(keys)


@pytest.mark.parametrize("seed", range(3))
def test_fused_boxes_against_brute_force(seed):
    rng = random.Random(100 + seed)
    dets = []
    for _ in range(200):
        x0, y0 = rng.randint(0, 30), rng.randint(0, 30)
        dets.append(_det(rng.choice("ab"), rng.randint(0, 6),
                         [x0, y0, x0 + rng.randint(2, 15), y0 + rng.randint(2, 15)],
                         rng.choice([0.1, 0.5, 0.9, 0.3])))
    out = merge_slice_detections(dets, link_iou=0.2, box_merge="fused")
    got = sorted((c["case_id"], [round(v, 9) for v in c["box"]], c["score"], c["slices"])
                 for c in out)
    assert got == _brute_merge(dets, 1, 0.2, box_merge="fused")
    union = merge_slice_detections(dets, link_iou=0.2, box_merge="union")
    # Same components; every fused box lies inside its union box.
    assert [(c["case_id"], c["score"], c["slices"]) for c in out] == \
        [(c["case_id"], c["score"], c["slices"]) for c in union]
    for f, u in zip(out, union):
        assert all(a >= b - 1e-9 for a, b in zip(f["box"][:3], u["box"][:3]))
        assert all(a <= b + 1e-9 for a, b in zip(f["box"][3:], u["box"][3:]))


def test_fused_duplicate_on_a_slice_does_not_widen_the_box():
    dets = [_det("a", 3, [10, 10, 20, 20], 0.9), _det("a", 3, [14, 10, 24, 20], 0.3),
            _det("a", 4, [10, 10, 20, 20], 0.9)]
    (union,) = merge_slice_detections(dets, box_merge="union")
    assert union["box"] == [10.0, 10.0, 3.0, 24.0, 20.0, 5.0]
    (fused,) = merge_slice_detections(dets, box_merge="fused")
    # Slice 3: (10 * 0.9 + 14 * 0.3) / 1.2 = 11, (20 * 0.9 + 24 * 0.3) / 1.2 = 21.
    assert fused["box"] == pytest.approx([10.0, 10.0, 3.0, 21.0, 20.0, 5.0])
    assert fused["score"] == 0.9 and fused["slices"] == 2
    # Zero scores: a plain mean.
    zero = [dict(d, score=0.0) for d in dets]
    (fz,) = merge_slice_detections(zero, box_merge="fused")
    assert fz["box"] == pytest.approx([10.0, 10.0, 3.0, 22.0, 20.0, 5.0])
    with pytest.raises(ValueError, match="box_merge"):
        merge_slice_detections(dets, box_merge="mean")


def test_large_chunked_pairs(monkeypatch):
    """Pair generation across several chunks gives the same components."""
    from breast_d2.evaluation import candidates as mod

    rng = np.random.default_rng(0)
    dets = []
    for z in range(30):
        for _ in range(20):
            x0, y0 = rng.integers(0, 60, size=2)
            dets.append(_det("a", z, [int(x0), int(y0), int(x0) + 20, int(y0) + 20], 0.5))
    ref = merge_slice_detections(dets)
    monkeypatch.setattr(mod, "_PAIR_CHUNK", 7)
    assert merge_slice_detections(dets) == ref
