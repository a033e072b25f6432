"""FROC of 3D candidates: the curve, rates, CPM, LUNA16 interpolation and bootstrap (plain NumPy).

Definitions (LUNA16 style, see the FROC issue):

- Hits and duplicates: :mod:`~breast_d2.evaluation.matching` (``hit="iou3d"``, ``"iou2d"`` or
  ``"center"``; ``duplicates="ignore"`` as LUNA16 or ``"fp"`` as nnDetection/COCO). A mass
  counts once, detected at the highest score among the candidates hitting it.
- Curve: thresholds sweep the distinct candidate scores; sensitivity = detected masses / masses,
  FP per case = false positives with score >= threshold / evaluated cases (cases without masses
  or without candidates included).
- ``sensitivity_at[f]``: highest sensitivity on the curve with FP per case <= f (0 if none);
  ``threshold_at[f]``: the highest threshold that reaches it. ``cpm``: mean over the seven LUNA16
  rates. ``*_interp``: the same read off the linearly interpolated curve starting at (0, 0), as
  LUNA16/nnDetection do (``np.interp`` semantics: constant beyond the last point).
- 95% CI: percentile bootstrap over cases (resampled with replacement, seeded).
- ``sensitivity_by_size``: the same readings for the masses of each size band
  (:mod:`.sizes`: < 10, 10-20, 20-50, > 50 mm), FP per case still the whole cohort's.

Sensitivities are fractions in [0, 1]; NaN (``null`` in JSON) when there are no masses.

This module is also the FROC package's front door: it re-exports the matching
(:mod:`.matching`), file (:mod:`.io`), fold (:mod:`.folds`) and table (:mod:`.tables`)
functions that users import from ``breast_d2.evaluation.froc``.
"""
import logging
import math
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .candidates import FROCInputError, is_real_number
from .io import load_candidates_json, load_cases_json, save_froc, subset_cases
from .matching import (
    DUPLICATE_MODES,
    HIT_CRITERIA,
    Candidates,
    as_candidate_arrays,
    candidate_case_index,
    ground_truth_arrays,
    match_candidates,
)
from .params import FROCParams
from .sizes import SIZE_BANDS, lesion_sizes_mm, size_band_index
from .tables import format_folds_table, format_froc_table

if TYPE_CHECKING:  # re-exported lazily by __getattr__ below (folds.py imports this module)
    from .folds import aggregate_folds, evaluate_fold_dirs

__all__ = [
    "FP_RATES",
    "CPM_RATES",
    "FP_GRID",
    "SIZE_BANDS",
    "HIT_CRITERIA",
    "DUPLICATE_MODES",
    "FROCParams",
    "FROCInputError",
    "rate_key",
    "check_froc_params",
    "compute_froc",
    "bootstrap_weights",
    "cpm_readings",
    "match_candidates",
    "curve_sensitivity",
    "aggregate_folds",
    "evaluate_fold_dirs",
    "load_candidates_json",
    "load_cases_json",
    "subset_cases",
    "save_froc",
    "format_froc_table",
    "format_folds_table",
]

logger = logging.getLogger(__name__)

# FP-per-case rates reported; 3.4 is the study's headline operating point.
FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 3.4, 4.0, 8.0)
# The seven LUNA16 rates averaged by the competition performance metric (CPM).
CPM_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
# Common FP grid (1/16 .. 16 per case, 12 points per octave) for CI bands and fold averages.
FP_GRID = tuple(np.round(2.0 ** (np.arange(-48, 49) / 12.0), 12).tolist())
# Bootstrap rows x events materialised at once.
_BOOT_CELLS = 4_000_000


def __getattr__(name: str) -> Any:
    # folds.py builds on this module, so its API is imported on first use (no import cycle).
    if name in ("aggregate_folds", "evaluate_fold_dirs"):
        from . import folds

        return getattr(folds, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def rate_key(rate: float) -> str:
    """JSON/metric key of an FP rate: 0.125 -> "0.125", 1.0 -> "1", 3.4 -> "3.4"."""
    return f"{rate:g}"


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
    hit: str = FROCParams.hit,
    iou_thresh: float = FROCParams.iou_thresh,
    duplicates: str = FROCParams.duplicates,
    bootstrap: int = 0,
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
    hit: str = FROCParams.hit,
    iou_thresh: float = FROCParams.iou_thresh,
    duplicates: str = FROCParams.duplicates,
    bootstrap: int = FROCParams.bootstrap,
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
        :func:`rate_key`, ``cpm``, ``cpm_interp``, ``ci95`` (None without bootstrap),
        ``case_ids``, and ``sensitivity_by_size``: ``{band: {"num_lesions", "sensitivity_at",
        "sensitivity_at_interp", "cpm", "cpm_interp", "curve"}}`` for the bands of
        :data:`~breast_d2.evaluation.sizes.SIZE_BANDS` (mass size = largest extent in mm from
        its box and the case's ``"spacing"``; a band's sensitivity at rate r uses the same
        score threshold, hence the cohort's FP per case, as the whole curve at r), or None
        when the cases have no ``"spacing"``.

    Raises:
        FROCInputError: bad parameters (:func:`check_froc_params`), malformed candidates or
            ground truth, or a candidate of a case that is not among ``ground_truth_cases``.
    """
    check_froc_params(hit, iou_thresh, duplicates, bootstrap)
    cands = as_candidate_arrays(candidates)
    case_ids, gt_case, gt_boxes = ground_truth_arrays(ground_truth_cases)
    n = len(case_ids)
    if n == 0:
        raise FROCInputError("no cases to evaluate")
    cand_case = candidate_case_index(cands, case_ids)
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
        "curve": _curve_dict(thresholds, fp, tp, num_lesions, n),
        "sensitivity_at": _keyed(rates, step[0, :r]),
        "threshold_at": _keyed(rates, _thresholds_at(rates, n, thresholds, fp, tp)),
        "cpm": float(np.mean(step[0, r:])),
        "sensitivity_at_interp": _keyed(rates, interp[0, :r]),
        "cpm_interp": float(np.mean(interp[0, r:])),
        "sensitivity_by_size": None,
        "ci95": None,
        "bootstrap": {"resamples": int(bootstrap), "seed": int(seed)},
        "case_ids": case_ids,
    }
    sizes = lesion_sizes_mm(ground_truth_cases, case_ids, gt_case, gt_boxes)
    if sizes is not None:
        by_size = _sensitivity_by_size(sizes, lesion_score, gt_case, cands.scores, fp_scores,
                                       fp_case, rates, n)
        result["sensitivity_by_size"] = by_size
    if bootstrap > 0:
        result["ci95"] = _bootstrap_ci(events, lesions_per_case, rates, bootstrap, seed)
    return result


def _curve_dict(
    thresholds: np.ndarray, fp: np.ndarray, tp: np.ndarray, num_lesions: int, n: int
) -> Dict[str, List[float]]:
    """``froc.json``'s curve from :func:`_full_curve` (corner points only; NaN: no masses)."""
    keep = _compress(tp)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = tp[keep] / num_lesions if num_lesions else np.full(int(keep.sum()), np.nan)
    return {
        "thresholds": thresholds[keep].tolist(),
        "fp_per_case": (fp[keep] / n).tolist(),
        "sensitivity": sens.tolist(),
    }


def _sensitivity_by_size(
    sizes: np.ndarray,
    lesion_score: np.ndarray,
    gt_case: np.ndarray,
    all_scores: np.ndarray,
    fp_scores: np.ndarray,
    fp_case: np.ndarray,
    rates: Tuple[float, ...],
    n: int,
) -> Dict[str, Dict[str, Any]]:
    """``froc.json``'s ``sensitivity_by_size``: the FROC of each size band's masses.

    A band's sensitivity is over its own masses, but the FP axis stays the whole cohort's: at
    rate r it is read at the same score threshold as the whole curve at r (every false positive
    of every case counts, whatever the size of the masses). Bands: :mod:`.sizes`.
    """
    band = size_band_index(sizes)
    all_rates = rates + CPM_RATES
    r = len(rates)
    ones = np.ones((1, n), dtype=np.int64)
    out: Dict[str, Dict[str, Any]] = {}
    for b, name in enumerate(SIZE_BANDS):
        in_band = band == b
        det = in_band & np.isfinite(lesion_score)
        tp_scores, tp_case = lesion_score[det], gt_case[det]
        per_case = np.bincount(gt_case[in_band], minlength=n)
        events = _event_arrays(fp_scores, fp_case, tp_scores, tp_case)
        step, interp = _weighted_readings(*events, ones, per_case, all_rates)
        curve = _full_curve(all_scores, fp_scores, tp_scores)
        out[name] = {
            "num_lesions": int(in_band.sum()),
            "sensitivity_at": _keyed(rates, step[0, :r]),
            "sensitivity_at_interp": _keyed(rates, interp[0, :r]),
            "cpm": float(np.mean(step[0, r:])),
            "cpm_interp": float(np.mean(interp[0, r:])),
            "curve": _curve_dict(*curve, int(in_band.sum()), n),
        }
    return out


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


def bootstrap_weights(num_cases: int, resamples: int, seed: int) -> np.ndarray:
    """[B, N] int64: how often each case is drawn in each case resample (with replacement).

    Row ``b`` is ``np.random.default_rng(seed).integers(0, N, (B, N))[b]`` counted per case, so
    the same seed gives the same resamples to every run on the same N cases (paired bootstrap).
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_cases, size=(resamples, num_cases))
    flat = (draws + np.arange(resamples)[:, None] * num_cases).ravel()
    return np.bincount(flat, minlength=resamples * num_cases).reshape(resamples, num_cases)


def cpm_readings(
    candidates: Candidates,
    ground_truth_cases: Sequence[Mapping[str, Any]],
    weights: np.ndarray,
    hit: str = FROCParams.hit,
    iou_thresh: float = FROCParams.iou_thresh,
    duplicates: str = FROCParams.duplicates,
) -> Tuple[np.ndarray, np.ndarray]:
    """Step and interpolated CPM for each row of case weights.

    Args:
        candidates, ground_truth_cases, hit, iou_thresh, duplicates: as :func:`compute_froc`.
        weights: [B, N] case weights in the order of the sorted case ids (a row of ones: the
            cases themselves; :func:`bootstrap_weights`: resamples).

    Returns:
        ``(cpm [B], cpm_interp [B])`` (NaN for rows without masses).
    """
    check_froc_params(hit, iou_thresh, duplicates)
    cands = as_candidate_arrays(candidates)
    case_ids, gt_case, gt_boxes = ground_truth_arrays(ground_truth_cases)
    n = len(case_ids)
    if weights.ndim != 2 or weights.shape[1] != n:
        raise ValueError(f"weights must be [B, {n}], got {list(weights.shape)}")
    cand_case = candidate_case_index(cands, case_ids)
    is_fp, lesion_score = match_candidates(
        cand_case, cands.boxes, cands.scores, gt_case, gt_boxes, n,
        hit=hit, iou_thresh=iou_thresh, duplicates=duplicates,
    )
    detected = np.isfinite(lesion_score)
    events = _event_arrays(
        cands.scores[is_fp], cand_case[is_fp], lesion_score[detected], gt_case[detected]
    )
    per_case = np.bincount(gt_case, minlength=n)
    step, interp = _weighted_readings(*events, weights, per_case, CPM_RATES)
    return step.mean(axis=1), interp.mean(axis=1)


def _bootstrap_ci(
    events: Tuple[np.ndarray, np.ndarray, np.ndarray],
    lesions_per_case: np.ndarray,
    rates: Tuple[float, ...],
    resamples: int,
    seed: int,
) -> Dict[str, Any]:
    weights = bootstrap_weights(lesions_per_case.size, resamples, seed)
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
