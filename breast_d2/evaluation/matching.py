"""Match 3D candidates to ground-truth masses (plain NumPy, no detectron2).

A candidate *hits* a mass of the same case by ``hit="iou3d"`` (3D IoU > ``iou_thresh``,
strictly), ``"iou2d"`` (the boxes share a slice and their in-plane IoU > ``iou_thresh``; a
candidate's cross-section is the same on all its slices, so this is the 2D IoU on any shared
slice) or ``"center"`` (candidate centre inside the mass box, ``x0 <= c < x1`` per axis).

A mass counts once, detected at the highest score among the candidates hitting it.
``duplicates="ignore"`` (LUNA16): a candidate hitting any mass is never a false positive.
``duplicates="fp"`` (nnDetection, COCO): only the top-scoring hit of each mass is a true positive
(ties broken by candidate box), every other candidate is a false positive. Unlike COCO's
one-to-one matching, one candidate that is the top hit of two masses detects both.

Boxes are ``x0, y0, z0, x1, y1, z1`` in half-open voxel indices (docs/DATA_FORMAT.md).
"""
import logging
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np

from .candidates import CandidateArrays, FROCInputError, chunked_pairs, is_real_number
from .params import FROCParams

__all__ = [
    "HIT_CRITERIA",
    "DUPLICATE_MODES",
    "Candidates",
    "as_candidate_arrays",
    "ground_truth_arrays",
    "candidate_case_index",
    "match_candidates",
    "box_iou3d",
]

logger = logging.getLogger(__name__)

HIT_CRITERIA = ("iou3d", "iou2d", "center")
DUPLICATE_MODES = ("ignore", "fp")

Candidates = Union[CandidateArrays, Sequence[Mapping[str, Any]]]


def as_candidate_arrays(candidates: Candidates) -> CandidateArrays:
    """``candidates`` itself, or the candidates JSON list validated and converted."""
    if isinstance(candidates, CandidateArrays):
        return candidates
    return CandidateArrays.from_dicts(candidates)


def ground_truth_arrays(
    cases: Sequence[Mapping[str, Any]],
) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Validate ground-truth cases and return them as arrays.

    Args:
        cases: ``{"case_id": str, "boxes": [[x0, y0, z0, x1, y1, z1], ...]}`` (``cases.json``
            entries; a case without masses has ``"boxes": []``).

    Returns:
        ``(case_ids sorted, gt_case [G] int64, gt_boxes [G, 6] float64)``; ``gt_case`` indexes
        ``case_ids`` and is non-decreasing.

    Raises:
        FROCInputError: naming the case that is malformed or appears twice.
    """
    if not isinstance(cases, (list, tuple)):
        raise FROCInputError(f"ground truth cases must be a list, got {type(cases).__name__}")
    by_id: Dict[str, np.ndarray] = {}
    for i, case in enumerate(cases):
        if not isinstance(case, Mapping) or not isinstance(case.get("case_id"), str):
            raise FROCInputError(f"ground-truth case #{i} has no string 'case_id'")
        cid = case["case_id"]
        if cid in by_id:
            raise FROCInputError(f"ground-truth case {cid!r} appears twice")
        by_id[cid] = _case_boxes(case, cid)
    case_ids = sorted(by_id)
    boxes = [by_id[c] for c in case_ids]
    gt_case = np.repeat(np.arange(len(case_ids)), [len(b) for b in boxes]).astype(np.int64)
    gt_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 6))
    return case_ids, gt_case, gt_boxes


def _case_boxes(case: Mapping[str, Any], cid: str) -> np.ndarray:
    if "boxes" not in case:  # a lesion-free case says "boxes": [], it never omits the key
        raise FROCInputError(f"ground-truth case {cid!r} has no 'boxes' (use [] for no masses)")
    raw = case["boxes"]
    try:
        if not isinstance(raw, (list, tuple)):
            raise TypeError
        if not all(isinstance(b, (list, tuple)) and all(map(is_real_number, b)) for b in raw):
            raise TypeError  # np.array would take "0.5" or true as numbers
        boxes = np.array(raw, dtype=np.float64).reshape(-1, 6) if len(raw) else np.zeros((0, 6))
        if len(boxes) != len(raw):
            raise ValueError
    except (TypeError, ValueError):
        raise FROCInputError(
            f"ground-truth case {cid!r}: boxes must be a list of [x0, y0, z0, x1, y1, z1], "
            f"got {raw!r:.100}"
        ) from None
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 3:] <= boxes[:, :3]).any(axis=1)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise FROCInputError(
            f"ground-truth case {cid!r}: box #{k} {boxes[k].tolist()} is malformed "
            "(expected finite x0, y0, z0, x1, y1, z1 with every max > min)"
        )
    return boxes


def candidate_case_index(cands: CandidateArrays, case_ids: List[str]) -> np.ndarray:
    """[M] int64 index of each candidate's case in ``case_ids``.

    Raises:
        FROCInputError: naming the first candidate whose case is not in ``case_ids``.
    """
    lookup = {c: i for i, c in enumerate(case_ids)}
    table = np.array([lookup.get(c, -1) for c in cands.case_ids], dtype=np.int64)
    cand_case = table[cands.case_index] if len(cands) else np.zeros(0, np.int64)
    if (cand_case < 0).any():
        i = int(np.flatnonzero(cand_case < 0)[0])
        name = cands.case_ids[cands.case_index[i]]
        raise FROCInputError(
            f"candidate #{i} (case {name!r}): case is not among the evaluated ground-truth cases"
        )
    return cand_case


def box_iou3d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3D IoU of boxes ``a`` and ``b`` ``[..., 6]`` (x0, y0, z0, x1, y1, z1, half-open voxel
    boxes, each non-empty), pair by pair with broadcasting: ``[...]`` float."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    inter = np.clip(np.minimum(a[..., 3:], b[..., 3:]) - np.maximum(a[..., :3], b[..., :3]),
                    0.0, None).prod(axis=-1)  # fmt: skip
    union = (a[..., 3:] - a[..., :3]).prod(axis=-1) + (b[..., 3:] - b[..., :3]).prod(axis=-1)
    return inter / (union - inter)


def _hits(a: np.ndarray, b: np.ndarray, hit: str, thresh: float) -> np.ndarray:
    """Whether candidate boxes a [P, 6] hit mass boxes b [P, 6] (half-open voxel boxes)."""
    if hit == "center":
        c = (a[:, :3] + a[:, 3:]) / 2.0
        return ((b[:, :3] <= c) & (c < b[:, 3:])).all(axis=1)
    if hit == "iou3d":
        return box_iou3d(a, b) > thresh
    ext = np.clip(np.minimum(a[:, 3:], b[:, 3:]) - np.maximum(a[:, :3], b[:, :3]), 0.0, None)
    da, db = a[:, 3:] - a[:, :3], b[:, 3:] - b[:, :3]
    inter = ext[:, 0] * ext[:, 1]
    union = da[:, 0] * da[:, 1] + db[:, 0] * db[:, 1] - inter
    return (ext[:, 2] > 0) & (inter / union > thresh)


def match_candidates(
    cand_case: np.ndarray,
    cand_boxes: np.ndarray,
    cand_scores: np.ndarray,
    gt_case: np.ndarray,
    gt_boxes: np.ndarray,
    num_cases: int,
    *,
    hit: str = FROCParams.hit,
    iou_thresh: float = FROCParams.iou_thresh,
    duplicates: str = FROCParams.duplicates,
) -> Tuple[np.ndarray, np.ndarray]:
    """Match candidates to masses of the same case.

    Args:
        cand_case: [M] int, case index of each candidate.
        cand_boxes: [M, 6] as x0, y0, z0, x1, y1, z1, half-open voxel indices.
        cand_scores: [M] float.
        gt_case: [G] int, case index of each mass, non-decreasing.
        gt_boxes: [G, 6] like ``cand_boxes``.
        num_cases: number of case indices.
        hit, iou_thresh, duplicates: see the module docstring.

    Returns:
        ``(is_fp [M] bool, lesion_score [G] float)``: whether each candidate is a false positive,
        and the score at which each mass is detected (``-inf`` when missed).
    """
    if hit not in HIT_CRITERIA:
        raise ValueError(f"hit must be one of {HIT_CRITERIA}, got {hit!r}")
    if duplicates not in DUPLICATE_MODES:
        raise ValueError(f"duplicates must be one of {DUPLICATE_MODES}, got {duplicates!r}")
    m = cand_scores.shape[0]
    gcount = np.bincount(gt_case, minlength=num_cases)
    gstart = np.cumsum(gcount) - gcount
    hit_c, hit_g = [], []
    # Every candidate against the masses of its case: a window [gstart, gstart + gcount).
    for c, g in chunked_pairs(np.arange(m), gstart[cand_case], gcount[cand_case]):
        ok = _hits(cand_boxes[c], gt_boxes[g], hit, iou_thresh)
        hit_c.append(c[ok])
        hit_g.append(g[ok])
    hit_c = np.concatenate(hit_c) if hit_c else np.zeros(0, np.int64)
    hit_g = np.concatenate(hit_g) if hit_g else np.zeros(0, np.int64)

    lesion_score = np.full(gt_case.shape[0], -np.inf)
    np.maximum.at(lesion_score, hit_g, cand_scores[hit_c])
    if duplicates == "ignore":
        is_fp = np.ones(m, dtype=bool)
        is_fp[hit_c] = False
        return is_fp, lesion_score
    # Top hit per mass: sort hit pairs by (mass, -score, box) and take the first of each mass.
    b = cand_boxes[hit_c]
    order = np.lexsort(tuple(b[:, k] for k in range(5, -1, -1)) + (-cand_scores[hit_c], hit_g))
    hit_c, hit_g = hit_c[order], hit_g[order]
    first = np.r_[True, hit_g[1:] != hit_g[:-1]] if hit_g.size else np.zeros(0, bool)
    is_fp = np.ones(m, dtype=bool)
    is_fp[hit_c[first]] = False
    return is_fp, lesion_score
