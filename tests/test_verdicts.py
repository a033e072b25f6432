"""Verdict files and tables, and each mass's 3D outcome (breast_d2/evaluation/verdicts.py)."""
import numpy as np
import pytest

from breast_d2.evaluation.candidates import CandidateArrays
from breast_d2.evaluation.froc import compute_froc
from breast_d2.evaluation.verdicts import (
    REPORT_FP_RATE,
    candidate_outcomes,
    reported,
    summarize_verdicts,
)

FROC = {"hit": "iou3d", "iou_thresh": 0.5, "duplicates": "ignore"}


def _random_fold(seed):
    """Cases with 0-3 masses and candidates near them (some hits, some off) plus clutter."""
    rng = np.random.default_rng(seed)
    cases, cands = [], []
    for c in range(12):
        cid = f"C{c:02d}"
        boxes = []
        for _ in range(rng.integers(0, 4)):
            x, y, z = rng.integers(0, 40, 3)
            boxes.append([int(x), int(y), int(z), int(x) + 6, int(y) + 6, int(z) + 4])
        cases.append({"case_id": cid, "boxes": boxes})
        for b in boxes:
            for _ in range(rng.integers(0, 3)):
                shift = rng.integers(-2, 3, 3) * [1, 1, 0]  # IoU 0.53 at (1, 1), below at 2
                cands.append({"case_id": cid, "box": [float(v) for v in
                                                      (np.array(b) + np.r_[shift, shift])],
                              "score": float(rng.random()), "slices": 1})
        for _ in range(rng.integers(0, 6)):
            x, y, z = rng.integers(0, 40, 3)
            cands.append({"case_id": cid, "box": [float(x), float(y), float(z), x + 5.0, y + 5.0,
                                                  z + 3.0],
                          "score": float(rng.random()), "slices": 1})
    return cases, cands


@pytest.mark.parametrize("seed", range(4))
def test_outcomes_add_up_to_the_froc(seed):
    # The masses hit at <= r FP per case are exactly the FROC's (step) sensitivity at r.
    cases, cands = _random_fold(seed)
    outcomes = candidate_outcomes(CandidateArrays.from_dicts(cands), cases, **FROC)
    froc = compute_froc(cands, cases, bootstrap=0, **FROC)
    assert len(outcomes) == froc["num_lesions"] > 0
    fps = [o["candidate_fp_per_case"] for o in outcomes.values()]
    assert any(f is None for f in fps) and any(f is not None for f in fps)  # the test can tell
    for rate, sens in froc["sensitivity_at"].items():
        hit = sum(f is not None and f <= float(rate) for f in fps)
        assert hit / len(fps) == pytest.approx(sens), rate


def test_outcome_of_each_mass():
    cases = [{"case_id": "A", "boxes": [[0, 0, 0, 10, 10, 4], [20, 20, 0, 26, 26, 4]]},
             {"case_id": "B", "boxes": [[30, 30, 0, 36, 36, 4]]}]
    cands = [
        {"case_id": "A", "box": [0, 0, 0, 10, 10, 4], "score": 0.9},  # hits mass 0
        {"case_id": "A", "box": [0, 0, 0, 10, 10, 3], "score": 0.95},  # hits it too, higher
        {"case_id": "A", "box": [20, 20, 0, 23, 23, 4], "score": 0.8},  # mass 1 at IoU 0.25
        {"case_id": "B", "box": [5, 5, 5, 8, 8, 8], "score": 0.97},  # FP
        {"case_id": "B", "box": [5, 5, 5, 8, 8, 8], "score": 0.6},  # FP
        {"case_id": "B", "box": [30, 30, 0, 36, 36, 4], "score": 0.5},  # hits B's mass 0
    ]
    out = candidate_outcomes(CandidateArrays.from_dicts(cands), cases, **FROC)
    assert out[("A", 0)] == {"candidate_score": 0.95, "candidate_fp_per_case": 0.5,
                             "candidate_best_iou": 1.0}  # one FP (0.97) above 0.95, 2 cases
    assert out[("A", 1)] == {"candidate_score": None, "candidate_fp_per_case": None,
                             "candidate_best_iou": 0.25}
    assert out[("B", 0)] == {"candidate_score": 0.5, "candidate_fp_per_case": 1.5,
                             "candidate_best_iou": 1.0}  # FPs 0.97, 0.8, 0.6; masses count per case
    assert set(out) == {("A", 0), ("A", 1), ("B", 0)}
    # A tie with a false positive counts that false positive (scores >= the hit's).
    cands[3]["score"] = 0.95
    out = candidate_outcomes(CandidateArrays.from_dicts(cands), cases, **FROC)
    assert out[("A", 0)]["candidate_fp_per_case"] == 0.5
    # A case without any candidate: best IoU 0.
    out = candidate_outcomes(CandidateArrays.from_dicts(cands[3:5]), cases, **FROC)
    assert out[("A", 0)] == {"candidate_score": None, "candidate_fp_per_case": None,
                             "candidate_best_iou": 0.0}


def _mass(case_id, verdict, fps=None, **extra):
    row = {"case_id": case_id, "lesion_index": 0, "slices": 3, "best_proposal_iou": 0.6,
           "slices_with_proposal": 1, "best_detection_score": 0.9, "best_centre_score": 0.9,
           "best_centre_iou": 0.6, "verdict": verdict, **extra}
    return row


def test_summary_counts_and_lists_the_masses_not_reported():
    with_3d = dict(candidate_score=0.9, candidate_best_iou=0.8)
    fold0 = {"fold": 0, "min_score": 0.5, "match_iou": 0.5, "masses": [
        _mass("A", "found", candidate_fp_per_case=0.2, **with_3d),
        _mass("B", "found", candidate_fp_per_case=None, candidate_score=None,
              candidate_best_iou=0.3),  # seen, lost in 3D
        _mass("C", "box off", candidate_fp_per_case=REPORT_FP_RATE, **with_3d),  # regrown
    ]}
    fold1 = {"fold": 1, "min_score": 0.5, "match_iou": 0.5, "masses": [
        _mass("D", "RPN", candidate_fp_per_case=5.0, **with_3d)]}
    text = summarize_verdicts([fold1, fold0])
    lines = text.splitlines()
    assert lines[0].split("|")[-2].strip() == f"reported (3D, <= {REPORT_FP_RATE:g} FP/case)"
    pooled = [c.strip() for c in next(x for x in lines if x.startswith("| pooled")).split("|")]
    assert pooled[2:-1] == ["4", "2", "1", "0", "1", "2"]
    listed = [x.split("|")[2].strip() for x in lines if x.startswith("| 0 ") or
              x.startswith("| 1 ")]
    assert listed[-3:] == ["B", "C", "D"]  # not found or not reported; A is both
    assert "no hit (best IoU 0.30)" in text and "3.40 (0.900)" in text
    assert reported(fold0["masses"][2]) and not reported(fold1["masses"][0])
    # Files without the 3D fields: the table as before.
    plain = {"fold": 2, "min_score": 0.5, "match_iou": 0.5, "masses": [_mass("E", "found")]}
    assert "reported" not in summarize_verdicts([plain])
