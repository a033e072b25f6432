"""FROC analysis of 3D candidates against ground-truth masses (plain NumPy, no detectron2).

Definitions (LUNA16 style, see the FROC issue):

- A candidate *hits* a mass by ``hit="iou3d"`` (3D IoU > ``iou_thresh``, strictly), ``"iou2d"``
  (the boxes share a slice and their in-plane IoU > ``iou_thresh``; a candidate's cross-section
  is the same on all its slices, so this is the 2D IoU on any shared slice) or ``"center"``
  (candidate centre inside the mass box, ``x0 <= c < x1`` per axis).
- A mass counts once, detected at the highest score among the candidates hitting it.
  ``duplicates="ignore"`` (LUNA16): a candidate hitting any mass is never a false positive.
  ``duplicates="fp"`` (nnDetection, COCO): only the top-scoring hit of each mass is a true
  positive (ties broken by candidate box), every other candidate is a false positive. Unlike
  COCO's one-to-one matching, one candidate that is the top hit of two masses detects both.
- Curve: thresholds sweep the distinct candidate scores; sensitivity = detected masses / masses,
  FP per case = false positives with score >= threshold / evaluated cases (cases without masses
  or without candidates included).
- ``sensitivity_at[f]``: highest sensitivity on the curve with FP per case <= f (0 if none);
  ``threshold_at[f]``: the highest threshold that reaches it. ``cpm``: mean over the seven LUNA16
  rates. ``*_interp``: the same read off the linearly interpolated curve starting at (0, 0), as
  LUNA16/nnDetection do (``np.interp`` semantics: constant beyond the last point).
- 95% CI: percentile bootstrap over cases (resampled with replacement, seeded).

Sensitivities are fractions in [0, 1]; NaN (``null`` in JSON) when there are no masses.
"""
import csv
import io
import json
import logging
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..utils import write_atomic, write_json_atomic
from .candidates import CandidateArrays, FROCInputError, _pairs_chunked, is_real_number

__all__ = [
    "FP_RATES",
    "CPM_RATES",
    "HIT_CRITERIA",
    "FROCInputError",
    "rate_key",
    "check_froc_params",
    "compute_froc",
    "match_candidates",
    "curve_sensitivity",
    "aggregate_folds",
    "evaluate_fold_dirs",
    "load_candidates_json",
    "load_cases_json",
    "subset_cases",
    "save_froc",
    "write_json_atomic",
    "format_froc_table",
    "format_folds_table",
]

logger = logging.getLogger(__name__)

# FP-per-case rates reported; 3.4 is the study's headline operating point.
FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 3.4, 4.0, 8.0)
# The seven LUNA16 rates averaged by the competition performance metric (CPM).
CPM_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
HIT_CRITERIA = ("iou3d", "iou2d", "center")
DUPLICATE_MODES = ("ignore", "fp")
# Common FP grid (1/16 .. 16 per case, 12 points per octave) for CI bands and fold averages.
FP_GRID = tuple(np.round(2.0 ** (np.arange(-48, 49) / 12.0), 12).tolist())
# Bootstrap rows x events materialised at once.
_BOOT_CELLS = 4_000_000

Candidates = Union[CandidateArrays, Sequence[Mapping[str, Any]]]


def rate_key(rate: float) -> str:
    """JSON/metric key of an FP rate: 0.125 -> "0.125", 1.0 -> "1", 3.4 -> "3.4"."""
    return f"{rate:g}"


# ----------------------------------------------------------------------------- ground truth


def _ground_truth_arrays(
    cases: Sequence[Mapping[str, Any]],
) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Validate cases and return ``(sorted case_ids, gt_case [G], gt_boxes [G, 6])``.

    ``gt_case`` indexes the sorted ``case_ids`` and is non-decreasing.
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


def subset_cases(
    cases: Sequence[Mapping[str, Any]], case_ids: Sequence[str]
) -> List[Mapping[str, Any]]:
    """The entries of ``cases`` named in ``case_ids`` (in ``case_ids`` order).

    Raises:
        FROCInputError: when a case id is not in ``cases``.
    """
    by_id = {c.get("case_id"): c for c in cases if isinstance(c, Mapping)}
    missing = [c for c in case_ids if c not in by_id]
    if missing:
        raise FROCInputError(
            f"case {missing[0]!r} is not in the ground truth ({len(missing)} missing)"
        )
    return [by_id[c] for c in dict.fromkeys(case_ids)]


# ----------------------------------------------------------------------------- matching


def _as_candidate_arrays(candidates: Candidates) -> CandidateArrays:
    if isinstance(candidates, CandidateArrays):
        return candidates
    return CandidateArrays.from_dicts(candidates)


def _hits(a: np.ndarray, b: np.ndarray, hit: str, thresh: float) -> np.ndarray:
    """Whether candidate boxes a [P, 6] hit mass boxes b [P, 6] (half-open voxel boxes)."""
    if hit == "center":
        c = (a[:, :3] + a[:, 3:]) / 2.0
        return ((b[:, :3] <= c) & (c < b[:, 3:])).all(axis=1)
    ext = np.clip(np.minimum(a[:, 3:], b[:, 3:]) - np.maximum(a[:, :3], b[:, :3]), 0.0, None)
    da, db = a[:, 3:] - a[:, :3], b[:, 3:] - b[:, :3]
    if hit == "iou3d":
        inter = ext.prod(axis=1)
        return inter / (da.prod(axis=1) + db.prod(axis=1) - inter) > thresh
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
    hit: str = "iou3d",
    iou_thresh: float = 0.5,
    duplicates: str = "ignore",
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
    for c, g in _pairs_chunked(np.arange(m), gstart[cand_case], gcount[cand_case]):
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


# ----------------------------------------------------------------------------- curve maths


def _max_fp_count(rate: float, num_cases: int) -> int:
    """Largest integer F with F / num_cases <= rate, evaluated exactly as the float division."""
    f = int(math.floor(rate * num_cases))
    while (f + 1) / num_cases <= rate:
        f += 1
    while f >= 0 and f / num_cases > rate:
        f -= 1
    return f


def _full_curve(
    all_scores: np.ndarray, fp_scores: np.ndarray, tp_scores: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(thresholds desc, FP counts, TP counts)`` at every distinct candidate score."""
    thresholds = np.unique(all_scores)[::-1]
    fp_sorted, tp_sorted = np.sort(fp_scores), np.sort(tp_scores)
    fp = fp_sorted.size - np.searchsorted(fp_sorted, thresholds, "left")
    tp = tp_sorted.size - np.searchsorted(tp_sorted, thresholds, "left")
    return thresholds, fp, tp


def _compress(tp: np.ndarray) -> np.ndarray:
    """Mask of curve points needed for exact step and linear-interpolation readings.

    Between two rises of sensitivity the curve is a horizontal run; only its last point (the
    corner before the next rise) and the rise points themselves are kept, plus the final point.
    """
    if tp.size == 0:
        return np.zeros(0, dtype=bool)
    rise = np.diff(np.r_[0, tp]) != 0
    before_rise = np.r_[np.diff(tp) != 0, True]
    return rise | before_rise


def _event_arrays(
    fp_scores: np.ndarray, fp_case: np.ndarray, tp_scores: np.ndarray, tp_case: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Events sorted by score desc: ``(case [E], is_fp [E], tie-group end indices [Q])``."""
    scores = np.r_[fp_scores, tp_scores]
    case = np.r_[fp_case, tp_case].astype(np.int64)
    is_fp = np.r_[np.ones(fp_scores.size, bool), np.zeros(tp_scores.size, bool)]
    order = np.argsort(-scores, kind="stable")
    scores, case, is_fp = scores[order], case[order], is_fp[order]
    ends = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True]) if scores.size else order
    return case, is_fp, ends


def _weighted_readings(
    ev_case: np.ndarray,
    ev_fp: np.ndarray,
    ends: np.ndarray,
    weights: np.ndarray,
    lesions_per_case: np.ndarray,
    rates: Sequence[float],
) -> Tuple[np.ndarray, np.ndarray]:
    """Step and interpolated sensitivity at ``rates`` for each row of case ``weights``.

    Args:
        ev_case, ev_fp, ends: from :func:`_event_arrays`.
        weights: [B, N] non-negative integer weight of each case (1 = the data set itself; a
            bootstrap resample holds how often each case was drawn; rows sum to N).
        lesions_per_case: [N] number of masses of each case.
        rates: [R] FP-per-case rates.

    Returns:
        ``(step [B, R], interp [B, R])`` sensitivities (NaN for rows without masses).
    """
    b_all, n = weights.shape
    rates = np.asarray(rates, dtype=np.float64)
    fmax = np.array([_max_fp_count(r, n) for r in rates])
    step = np.zeros((b_all, rates.size))
    interp = np.zeros((b_all, rates.size))
    lesions = weights @ lesions_per_case.astype(np.float64)
    e = ev_case.size
    if e == 0:
        return _divide(step, lesions), _divide(interp, lesions)
    k = _initial_cut(ev_fp, int(fmax.max()))
    pending = np.arange(b_all)
    while pending.size:
        k = min(k, e)
        q = int(np.searchsorted(ends, k - 1, "right"))  # tie groups fully inside the first k
        k_cut = int(ends[q - 1]) + 1 if q else 0
        done = []
        rows_per_chunk = max(1, _BOOT_CELLS // max(k_cut, 1))
        for lo in range(0, pending.size, rows_per_chunk):
            rows = pending[lo : lo + rows_per_chunk]
            w = weights[rows][:, ev_case[:k_cut]].astype(np.float64)
            f_cum = np.cumsum(w * ev_fp[:k_cut], axis=1)[:, ends[:q]]
            t_cum = np.cumsum(w * ~ev_fp[:k_cut], axis=1)[:, ends[:q]]
            exact = np.full(rows.size, k_cut == e)
            if q:
                exact |= f_cum[:, -1] > fmax.max()
            ok = rows[exact]
            if ok.size:
                s, i = _read_rows(f_cum[exact], t_cum[exact], fmax, rates * n)
                step[ok], interp[ok] = s, i
            done.append(ok)
        pending = np.setdiff1d(pending, np.concatenate(done))
        k *= 2
    return _divide(step, lesions), _divide(interp, lesions)


def _initial_cut(ev_fp: np.ndarray, fmax: int) -> int:
    """Events to try first: a row is exact once its FP count passes ``fmax``, so only the top
    events matter; twice the unweighted need (+64) suffices for nearly every resample, the rest
    are retried with twice as many."""
    return int(np.searchsorted(np.cumsum(ev_fp), 2 * (fmax + 1) + 64)) + 1


def _read_rows(
    f_cum: np.ndarray, t_cum: np.ndarray, fmax: np.ndarray, fx: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Step and interpolated TP counts at FP limits (fmax integer, fx = rate * N) per row."""
    rows, q = f_cum.shape
    if q == 0:
        return np.zeros((rows, fmax.size)), np.zeros((rows, fmax.size))
    # Row-offset keys make one global searchsorted per rate (f_cum is non-decreasing per row).
    big = float(f_cum[:, -1].max()) + float(fmax.max()) + 2.0
    offset = np.arange(rows)[:, None] * big
    flat = (f_cum + offset).ravel()
    idx = np.searchsorted(flat, (fmax[None, :] + offset).ravel(), "right").reshape(rows, -1)
    idx -= np.arange(rows)[:, None] * q  # number of points with FP <= limit
    r = np.arange(rows)[:, None]
    j = idx - 1
    y0 = np.where(j >= 0, t_cum[r, np.maximum(j, 0)], 0.0)
    x0 = np.where(j >= 0, f_cum[r, np.maximum(j, 0)], 0.0)
    has_next = idx < q
    x1 = f_cum[r, np.minimum(idx, q - 1)]
    y1 = t_cum[r, np.minimum(idx, q - 1)]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.clip((fx[None, :] - x0) / (x1 - x0), 0.0, 1.0)
    interp = np.where(has_next, y0 + (y1 - y0) * frac, y0)
    return y0, interp


def _divide(counts: np.ndarray, lesions: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(lesions[:, None] > 0, counts / lesions[:, None], np.nan)


def curve_sensitivity(curve: Mapping[str, Sequence[float]], fps: Sequence[float]) -> np.ndarray:
    """Step reading of a stored curve: highest sensitivity with FP per case <= each of ``fps``.

    Args:
        curve: ``{"fp_per_case": [P], "sensitivity": [P]}`` as in ``froc.json`` (ascending).
        fps: [R] FP-per-case rates.

    Returns:
        [R] sensitivities (0 where no point qualifies).
    """
    fp = np.asarray(curve["fp_per_case"], dtype=np.float64)
    sens = np.array([np.nan if s is None else s for s in curve["sensitivity"]], dtype=np.float64)
    idx = np.searchsorted(fp, np.asarray(fps, dtype=np.float64), "right")
    return np.where(idx > 0, sens[np.maximum(idx - 1, 0)] if sens.size else 0.0, 0.0)


# ----------------------------------------------------------------------------- compute_froc


def check_froc_params(
    hit: str = "iou3d", iou_thresh: float = 0.5, duplicates: str = "ignore", bootstrap: int = 0
) -> None:
    """Validate FROC parameters; raise :class:`FROCInputError` naming the bad value.

    ``iou_thresh`` must be a finite number with ``0 <= iou_thresh < 1``: a hit needs IoU
    *strictly greater* than it, and IoU lies in [0, 1], so 0 means "any overlap", a negative
    value would count a candidate that does not even touch a mass as a hit, and 1 or more could
    never be exceeded. ``bootstrap`` must be an integer >= 0 (0: no confidence intervals).
    """
    if hit not in HIT_CRITERIA:
        raise FROCInputError(f"hit must be one of {HIT_CRITERIA}, got {hit!r}")
    if duplicates not in DUPLICATE_MODES:
        raise FROCInputError(f"duplicates must be one of {DUPLICATE_MODES}, got {duplicates!r}")
    if not is_real_number(iou_thresh) or not 0.0 <= float(iou_thresh) < 1.0:
        raise FROCInputError(
            f"IoU threshold (--iou / iou_thresh) must be a number with 0 <= t < 1 (a hit needs "
            f"IoU > t), got {iou_thresh!r}"
        )
    if not isinstance(bootstrap, (int, np.integer)) or isinstance(bootstrap, bool) or bootstrap < 0:
        raise FROCInputError(
            f"bootstrap resamples (--bootstrap) must be an integer >= 0, got {bootstrap!r}"
        )


def compute_froc(
    candidates: Candidates,
    ground_truth_cases: Sequence[Mapping[str, Any]],
    hit: str = "iou3d",
    iou_thresh: float = 0.5,
    duplicates: str = "ignore",
    bootstrap: int = 1000,
    seed: int = 0,
    rates: Sequence[float] = FP_RATES,
) -> Dict[str, Any]:
    """FROC of 3D candidates over the evaluated cases.

    Args:
        candidates: candidates JSON list (``{"case_id", "box": [x0, y0, z0, x1, y1, z1],
            "score"}``, half-open voxel indices) or :class:`CandidateArrays`.
        ground_truth_cases: the evaluated cases, ``{"case_id", "boxes": [[x0, y0, z0, x1, y1,
            z1], ...]}`` (``cases.json`` entries); every case counts in the FP denominator.
        hit: ``"iou3d"``, ``"iou2d"`` or ``"center"``.
        iou_thresh: a hit needs IoU strictly greater than this, 0 <= iou_thresh < 1 (checked
            even for ``"center"``, which does not use it).
        duplicates: ``"ignore"`` or ``"fp"``.
        bootstrap: number of case resamples for the 95% CI (0 = no CI).
        seed: seed of the bootstrap.
        rates: FP-per-case rates reported in ``sensitivity_at``.

    Returns:
        The ``froc.json`` dict: ``num_cases``, ``num_lesions``, ``num_candidates``, ``params``,
        ``curve`` (``thresholds`` desc, ``fp_per_case``, ``sensitivity``; corner points only),
        ``sensitivity_at``/``threshold_at``/``sensitivity_at_interp`` keyed by
        :func:`rate_key`, ``cpm``, ``cpm_interp``, ``ci95`` (None without bootstrap), ``case_ids``.

    Raises:
        FROCInputError: bad parameters (:func:`check_froc_params`), malformed candidates or
            ground truth, or a candidate of a case that is not among ``ground_truth_cases``.
    """
    check_froc_params(hit, iou_thresh, duplicates, bootstrap)
    cands = _as_candidate_arrays(candidates)
    case_ids, gt_case, gt_boxes = _ground_truth_arrays(ground_truth_cases)
    n = len(case_ids)
    if n == 0:
        raise FROCInputError("no cases to evaluate")
    cand_case = _map_cases(cands, case_ids)
    is_fp, lesion_score = match_candidates(
        cand_case,
        cands.boxes,
        cands.scores,
        gt_case,
        gt_boxes,
        n,
        hit=hit,
        iou_thresh=iou_thresh,
        duplicates=duplicates,
    )
    num_lesions = int(gt_case.size)
    if num_lesions == 0:
        logger.warning("No masses in the %d evaluated cases: sensitivities are NaN.", n)
    detected = np.isfinite(lesion_score)
    fp_scores, fp_case = cands.scores[is_fp], cand_case[is_fp]
    tp_scores, tp_case = lesion_score[detected], gt_case[detected]

    thresholds, fp, tp = _full_curve(cands.scores, fp_scores, tp_scores)
    keep = _compress(tp)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens_curve = tp[keep] / num_lesions if num_lesions else np.full(int(keep.sum()), np.nan)
    lesions_per_case = np.bincount(gt_case, minlength=n)
    events = _event_arrays(fp_scores, fp_case, tp_scores, tp_case)
    rates = tuple(float(r) for r in rates)
    all_rates = rates + CPM_RATES
    ones = np.ones((1, n), dtype=np.int64)
    step, interp = _weighted_readings(*events, ones, lesions_per_case, all_rates)
    r = len(rates)

    result: Dict[str, Any] = {
        "num_cases": n,
        "num_lesions": num_lesions,
        "num_candidates": len(cands),
        "num_false_positives": int(is_fp.sum()),
        "params": {"hit": hit, "iou_thresh": float(iou_thresh), "duplicates": duplicates},
        "curve": {
            "thresholds": thresholds[keep].tolist(),
            "fp_per_case": (fp[keep] / n).tolist(),
            "sensitivity": sens_curve.tolist(),
        },
        "sensitivity_at": _keyed(rates, step[0, :r]),
        "threshold_at": _keyed(rates, _thresholds_at(rates, n, thresholds, fp, tp)),
        "cpm": float(np.mean(step[0, r:])),
        "sensitivity_at_interp": _keyed(rates, interp[0, :r]),
        "cpm_interp": float(np.mean(interp[0, r:])),
        "ci95": None,
        "bootstrap": {"resamples": int(bootstrap), "seed": int(seed)},
        "case_ids": case_ids,
    }
    if bootstrap > 0:
        result["ci95"] = _bootstrap_ci(events, lesions_per_case, rates, bootstrap, seed)
    return result


def _map_cases(cands: CandidateArrays, case_ids: List[str]) -> np.ndarray:
    """[M] index of each candidate's case in ``case_ids``; error names the first stray one."""
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


def _thresholds_at(
    rates: Sequence[float], n: int, thresholds: np.ndarray, fp: np.ndarray, tp: np.ndarray
) -> List[Optional[float]]:
    """Highest threshold reaching the best sensitivity with FP per case <= rate (None: none)."""
    out: List[Optional[float]] = []
    for rate in rates:
        i = int(np.searchsorted(fp, _max_fp_count(rate, n), "right")) - 1
        if i < 0 or tp[i] == 0:
            out.append(None)
            continue
        first = int(np.searchsorted(tp, tp[i], "left"))  # tp is non-decreasing
        out.append(float(thresholds[first]))
    return out


def _bootstrap_ci(
    events: Tuple[np.ndarray, np.ndarray, np.ndarray],
    lesions_per_case: np.ndarray,
    rates: Tuple[float, ...],
    resamples: int,
    seed: int,
) -> Dict[str, Any]:
    n = lesions_per_case.size
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    flat = (draws + np.arange(resamples)[:, None] * n).ravel()
    weights = np.bincount(flat, minlength=resamples * n).reshape(resamples, n)
    all_rates = rates + CPM_RATES + FP_GRID
    step, interp = _weighted_readings(*events, weights, lesions_per_case, all_rates)
    r, c = len(rates), len(CPM_RATES)
    cpm = np.mean(step[:, r : r + c], axis=1)
    cpm_interp = np.mean(interp[:, r : r + c], axis=1)
    lo_hi = _percentiles(step[:, :r])
    lo_hi_interp = _percentiles(interp[:, :r])
    grid = _percentiles(step[:, r + c :])
    return {
        "sensitivity_at": _keyed(rates, lo_hi.T.tolist()),
        "cpm": _percentiles(cpm[:, None])[:, 0].tolist(),
        "sensitivity_at_interp": _keyed(rates, lo_hi_interp.T.tolist()),
        "cpm_interp": _percentiles(cpm_interp[:, None])[:, 0].tolist(),
        "curve": {
            "fp_per_case": list(FP_GRID),
            "lower": grid[0].tolist(),
            "upper": grid[1].tolist(),
        },
    }


def _percentiles(values: np.ndarray) -> np.ndarray:
    """[2, K] 2.5th and 97.5th percentiles over rows, ignoring NaN (NaN when all are)."""
    out = np.full((2, values.shape[1]), np.nan)
    ok = ~np.isnan(values).all(axis=0)
    if ok.any():
        out[:, ok] = np.nanpercentile(values[:, ok], [2.5, 97.5], axis=0)
    return out


def _keyed(rates: Sequence[float], values: Sequence[Any]) -> Dict[str, Any]:
    return {
        rate_key(r): float(v) if isinstance(v, (float, np.floating)) else v
        for r, v in zip(rates, values)
    }


# ----------------------------------------------------------------------------- folds


def aggregate_folds(
    results: Sequence[Mapping[str, Any]],
    names: Optional[Sequence[str]] = None,
    pooled: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Summarise per-fold FROC results (``froc.json`` dicts).

    Args:
        results: one :func:`compute_froc` result per fold.
        names: fold names (default ``fold0``, ``fold1``, ...).
        pooled: optional FROC over all folds' cases pooled, included as ``"pooled"``.

    Returns:
        ``{"folds": [{"name", "num_cases", "num_lesions", "sensitivity_at", "cpm",
        "cpm_interp"}], "mean_curve": {"fp_per_case", "sensitivity", "sd"} (mean across folds
        of each fold's step curve on the common FP grid), "mean": {...}, "sd": {...} (sample
        standard deviation, ddof=1; 0 for a single fold), "pooled"}``.
    """
    if not results:
        raise FROCInputError("no fold results to aggregate")
    names = list(names) if names is not None else [f"fold{k}" for k in range(len(results))]
    rates = list(results[0]["sensitivity_at"])
    folds = []
    grid_sens = []
    for name, res in zip(names, results):
        missing = [k for k in rates if k not in res["sensitivity_at"]]
        if missing:
            raise FROCInputError(f"{name}: no sensitivity at {missing[0]} FP per case")
        folds.append(
            {
                "name": name,
                "num_cases": res["num_cases"],
                "num_lesions": res["num_lesions"],
                "sensitivity_at": {k: _num(res["sensitivity_at"][k]) for k in rates},
                "cpm": _num(res["cpm"]),
                "cpm_interp": _num(res.get("cpm_interp")),
            }
        )
        grid_sens.append(curve_sensitivity(res["curve"], FP_GRID))
    table = np.array(
        [[f["sensitivity_at"][k] for k in rates] + [f["cpm"], f["cpm_interp"]] for f in folds],
        dtype=np.float64,
    )
    mean = table.mean(axis=0)
    sd = table.std(axis=0, ddof=1) if len(folds) > 1 else np.zeros_like(mean)
    grid_sens = np.array(grid_sens)
    grid_sd = grid_sens.std(axis=0, ddof=1) if len(folds) > 1 else np.zeros(len(FP_GRID))
    return {
        "folds": folds,
        "mean_curve": {
            "fp_per_case": list(FP_GRID),
            "sensitivity": grid_sens.mean(axis=0).tolist(),
            "sd": grid_sd.tolist(),
        },
        "fold_curves": [dict(r["curve"], name=n) for n, r in zip(names, results)],
        "mean": _summary(rates, mean),
        "sd": _summary(rates, sd),
        "pooled": dict(pooled) if pooled is not None else None,
    }


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _summary(rates: Sequence[str], row: np.ndarray) -> Dict[str, Any]:
    r = len(rates)
    return {
        "sensitivity_at": {k: float(v) for k, v in zip(rates, row[:r])},
        "cpm": float(row[r]),
        "cpm_interp": float(row[r + 1]),
    }


def evaluate_fold_dirs(
    fold_dirs: Sequence[str],
    ground_truth: Optional[str] = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> Dict[str, Any]:
    """Aggregate fold output folders and compute the FROC pooled over all their cases.

    Each folder holds ``froc.json`` (its ``case_ids``, ``params`` and ``inputs``) and the
    candidates, ``candidates.json`` in the folder or the path recorded in ``inputs``. Ground
    truth: ``ground_truth`` if given, else each fold's recorded ``inputs.ground_truth``.

    Returns:
        :func:`aggregate_folds` output with ``"pooled"`` set.

    Raises:
        FROCInputError: missing files, folds with different hit criteria, or a case evaluated in
            two folds.
    """
    results, names = [], []
    all_cands: List[Any] = []
    all_cases: List[Mapping[str, Any]] = []
    owner: Dict[str, str] = {}
    gt_cache: Dict[str, List[Mapping[str, Any]]] = {}
    for d in fold_dirs:
        res = _load_json(os.path.join(d, "froc.json"))
        if not isinstance(res, dict) or "case_ids" not in res or "curve" not in res:
            raise FROCInputError(f"{d}/froc.json is not a FROC result of this tool")
        if results and res.get("params") != results[0].get("params"):
            raise FROCInputError(
                f"{d}: FROC parameters {res.get('params')} differ from {fold_dirs[0]}'s "
                f"{results[0].get('params')}"
            )
        inputs = res.get("inputs") or {}
        gt_path = ground_truth or inputs.get("ground_truth")
        if not gt_path:
            raise FROCInputError(f"{d}/froc.json records no ground truth: pass --ground-truth")
        if gt_path not in gt_cache:
            gt_cache[gt_path] = load_cases_json(gt_path)
        for cid in res["case_ids"]:
            if cid in owner:
                raise FROCInputError(f"case {cid!r} is evaluated in both {owner[cid]} and {d}")
            owner[cid] = d
        all_cases.extend(subset_cases(gt_cache[gt_path], res["case_ids"]))
        cand_path = os.path.join(d, "candidates.json")
        if not os.path.exists(cand_path):
            cand_path = inputs.get("candidates") or cand_path
        all_cands.extend(load_candidates_json(cand_path))
        results.append(res)
        names.append(os.path.basename(os.path.normpath(d)))
    params = results[0].get("params", {})
    pooled = compute_froc(all_cands, all_cases, bootstrap=bootstrap, seed=seed, **params)
    return aggregate_folds(results, names=names, pooled=pooled)


# ----------------------------------------------------------------------------- files


def _load_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise FROCInputError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise FROCInputError(f"{path}: {e.strerror or e}") from None


def load_candidates_json(path: str, as_arrays: bool = False) -> Candidates:
    """Load and validate a candidates JSON file.

    Returns:
        The list of candidate dicts, or :class:`CandidateArrays` when ``as_arrays``.

    Raises:
        FROCInputError: unreadable file or a malformed entry (named with its index and case).
    """
    data = _load_json(path)
    try:
        arrays = CandidateArrays.from_dicts(data)
    except FROCInputError as e:
        raise FROCInputError(f"{path}: {e}") from None
    return arrays if as_arrays else data


def load_cases_json(path: str) -> List[Dict[str, Any]]:
    """Load and validate ``cases.json``; returns its ``"cases"`` list.

    Raises:
        FROCInputError: unreadable file, no ``"cases"`` list, or a malformed case (named).
    """
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise FROCInputError(f"{path}: expected {{\"cases\": [...]}} (the converter's cases.json)")
    try:
        _ground_truth_arrays(data["cases"])
    except FROCInputError as e:
        raise FROCInputError(f"{path}: {e}") from None
    return data["cases"]


def save_froc(
    result: Mapping[str, Any],
    output_dir: str,
    *,
    candidates: Optional[Candidates] = None,
    detections: Optional[Sequence[Mapping[str, Any]]] = None,
    plot: bool = True,
) -> List[str]:
    """Write ``froc.json``, ``froc.csv``, ``froc.png`` (and candidates/detections JSON if given).

    Returns:
        The paths written.
    """
    paths = [os.path.join(output_dir, n) for n in ("froc.json", "froc.csv")]
    write_json_atomic(paths[0], result, indent=1)
    write_atomic(paths[1], lambda f: f.write(_curve_csv(result["curve"])))
    if plot:
        from .plots import plot_froc  # matplotlib only when a figure is wanted

        paths.append(os.path.join(output_dir, "froc.png"))
        plot_froc(result, paths[-1])
    if candidates is not None:
        if isinstance(candidates, CandidateArrays):
            candidates = candidates.to_dicts()
        paths.append(os.path.join(output_dir, "candidates.json"))
        write_json_atomic(paths[-1], candidates)
    if detections is not None:
        paths.append(os.path.join(output_dir, "detections.json"))
        write_json_atomic(paths[-1], detections)
    return paths


def _curve_csv(curve: Mapping[str, Sequence[float]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["threshold", "fp_per_case", "sensitivity"])
    for row in zip(curve["thresholds"], curve["fp_per_case"], curve["sensitivity"]):
        writer.writerow(["" if v is None or v != v else repr(float(v)) for v in row])
    return buf.getvalue()


# ----------------------------------------------------------------------------- tables


def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or v != v else f"{v:.{digits}f}"


def format_froc_table(result: Mapping[str, Any]) -> str:
    """Markdown table of one FROC result: a row per FP rate, then CPM."""
    ci = result.get("ci95") or {}
    lines = [
        f"FROC: {result['num_cases']} cases, {result['num_lesions']} masses, "
        f"{result['num_candidates']} candidates ({result['params']['hit']}, "
        f"IoU > {result['params']['iou_thresh']:g}, duplicates {result['params']['duplicates']})",
        "",
        "| FP/case | Sensitivity | 95% CI | Threshold | Sens. (interp.) |",
        "|---:|---:|:---:|---:|---:|",
    ]
    for k, s in result["sensitivity_at"].items():
        lo_hi = (ci.get("sensitivity_at") or {}).get(k)
        ci_txt = f"{_fmt(lo_hi[0])}–{_fmt(lo_hi[1])}" if lo_hi else "n/a"
        lines.append(
            f"| {k} | {_fmt(s)} | {ci_txt} | {_fmt(result['threshold_at'].get(k), 4)} | "
            f"{_fmt(result['sensitivity_at_interp'].get(k))} |"
        )
    cpm_ci = ci.get("cpm")
    lines.append(
        f"| **CPM** | {_fmt(result['cpm'])} | "
        f"{f'{_fmt(cpm_ci[0])}–{_fmt(cpm_ci[1])}' if cpm_ci else 'n/a'} | | "
        f"{_fmt(result['cpm_interp'])} |"
    )
    return "\n".join(lines)


def format_folds_table(agg: Mapping[str, Any]) -> str:
    """Markdown table: a row per fold, mean ± sd across folds, and the pooled FROC."""
    rates = list(agg["folds"][0]["sensitivity_at"])
    head = "| Fold | Cases | Masses | " + " | ".join(f"sens@{k}" for k in rates) + " | CPM |"
    lines = [head, "|---|---:|---:|" + "---:|" * (len(rates) + 1)]
    for f in agg["folds"]:
        vals = [_fmt(f["sensitivity_at"][k]) for k in rates] + [_fmt(f["cpm"])]
        cells = [f["name"], str(f["num_cases"]), str(f["num_lesions"])] + vals
        lines.append("| " + " | ".join(cells) + " |")
    mean, sd = agg["mean"], agg["sd"]
    vals = [f"{_fmt(mean['sensitivity_at'][k])} ± {_fmt(sd['sensitivity_at'][k])}" for k in rates]
    vals.append(f"{_fmt(mean['cpm'])} ± {_fmt(sd['cpm'])}")
    n_cases = sum(f["num_cases"] for f in agg["folds"])
    n_les = sum(f["num_lesions"] for f in agg["folds"])
    lines.append(f"| mean ± sd | {n_cases} | {n_les} | " + " | ".join(vals) + " |")
    pooled = agg.get("pooled")
    if pooled:
        vals = [_fmt(pooled["sensitivity_at"][k]) for k in rates] + [_fmt(pooled["cpm"])]
        n_cases, n_les = pooled["num_cases"], pooled["num_lesions"]
        lines.append(f"| pooled | {n_cases} | {n_les} | {' | '.join(vals)} |")
    return "\n".join(lines)
