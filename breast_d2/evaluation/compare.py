"""Paired comparison of two FROC runs on the same cases: CPM difference with a bootstrap CI.

Both runs are matched with the same hit criterion, then the cases are resampled with
replacement (seeded); every resample is applied to both runs (paired), and the 95% interval
is the 2.5th-97.5th percentile of ``CPM(A) - CPM(B)`` over the resamples, for the step and the
interpolated CPM (see :mod:`.froc`). Plain NumPy, no detectron2.
"""
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .candidates import FROCInputError
from .froc import _percentiles, bootstrap_weights, check_froc_params, cpm_readings
from .io import load_candidates_json, load_cases_json, read_froc_json, subset_cases
from .matching import Candidates
from .params import FROCParams

__all__ = ["compare_froc", "load_run", "format_compare_line"]

logger = logging.getLogger(__name__)


def load_run(
    path: str, ground_truth: Optional[str] = None, case_ids: Optional[Sequence[str]] = None
) -> Tuple[List[Dict[str, Any]], List[Mapping[str, Any]]]:
    """Candidates and evaluated ground-truth cases of one run.

    Args:
        path: a candidates JSON file, or an evaluation folder holding ``froc.json`` (its
            ``case_ids`` and ``inputs``) and ``candidates.json`` (or the candidates recorded
            in ``inputs``).
        ground_truth: ``cases.json``; default for a folder: its recorded ``inputs.ground_truth``.
        case_ids: cases evaluated for a candidates file (default: every ground-truth case);
            a folder evaluates its own ``case_ids``.

    Returns:
        ``(candidates, cases)``.

    Raises:
        FROCInputError: missing or malformed files (one line naming the file).
    """
    if os.path.isdir(path):
        res = read_froc_json(os.path.join(path, "froc.json"))
        if not isinstance(res, dict) or not isinstance(res.get("case_ids"), list):
            raise FROCInputError(f"{path}/froc.json is not a FROC result of this tool")
        inputs = res.get("inputs") or {}
        gt_path = ground_truth or inputs.get("ground_truth")
        if not gt_path:
            raise FROCInputError(f"{path}/froc.json records no ground truth: pass --ground-truth")
        cand_path = os.path.join(path, "candidates.json")
        if not os.path.exists(cand_path):
            cand_path = inputs.get("candidates") or cand_path
        cases = subset_cases(load_cases_json(gt_path), res["case_ids"])
        return load_candidates_json(cand_path), cases
    if not ground_truth:
        raise FROCInputError(f"{path}: a candidates file needs --ground-truth")
    cases = load_cases_json(ground_truth)
    if case_ids is not None:
        cases = subset_cases(cases, case_ids)
    return load_candidates_json(path), cases


def _check_same_cases(
    cases_a: Sequence[Mapping[str, Any]], cases_b: Sequence[Mapping[str, Any]]
) -> None:
    """Refuse two runs whose evaluated cases or ground-truth boxes differ (one line)."""
    a = {c["case_id"]: c["boxes"] for c in cases_a}
    b = {c["case_id"]: c["boxes"] for c in cases_b}
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        first = f"{only_a[0]!r} only in A" if only_a else f"{only_b[0]!r} only in B"
        raise FROCInputError(
            f"the two runs are evaluated on different cases ({len(a)} vs {len(b)} cases; "
            f"{first}; {len(only_a)} only in A, {len(only_b)} only in B)"
        )
    differ = [c for c in sorted(a) if np.asarray(a[c], float).tolist() != np.asarray(
        b[c], float).tolist()]
    if differ:
        raise FROCInputError(
            f"the two runs' ground truth differs: case {differ[0]!r} has other mass boxes "
            f"({len(differ)} cases differ)"
        )


def compare_froc(
    candidates_a: Candidates,
    candidates_b: Candidates,
    cases_a: Sequence[Mapping[str, Any]],
    cases_b: Optional[Sequence[Mapping[str, Any]]] = None,
    hit: str = FROCParams.hit,
    iou_thresh: float = FROCParams.iou_thresh,
    duplicates: str = FROCParams.duplicates,
    bootstrap: int = FROCParams.bootstrap,
    seed: int = 0,
) -> Dict[str, Any]:
    """Paired case-level bootstrap of ``CPM(A) - CPM(B)``.

    Args:
        candidates_a, candidates_b: the two runs' candidates (as :func:`compute_froc`).
        cases_a: ground-truth cases evaluated for A (``cases.json`` entries).
        cases_b: those of B (default: ``cases_a``); must be the same cases with the same boxes.
        hit, iou_thresh, duplicates: matching, the same for both runs.
        bootstrap: case resamples (>= 1); the same resamples for both runs.
        seed: seed of the resamples.

    Returns:
        The ``compare.json`` dict: ``num_cases``, ``num_lesions``, ``params``, ``bootstrap``
        (``resamples``, ``seed``), ``a`` and ``b`` (``cpm``, ``cpm_interp``), ``difference``
        (``cpm`` = CPM(A) - CPM(B), ``ci95`` [lo, hi], ``cpm_interp``, ``ci95_interp``),
        ``case_ids``.

    Raises:
        FROCInputError: bad parameters, ``bootstrap`` < 1, or runs on different cases or
            different ground truth.
    """
    check_froc_params(hit, iou_thresh, duplicates, bootstrap)
    if bootstrap < 1:
        raise FROCInputError("a paired comparison needs --bootstrap >= 1 resamples")
    _check_same_cases(cases_a, cases_b if cases_b is not None else cases_a)
    case_ids = sorted(c["case_id"] for c in cases_a)
    n = len(case_ids)
    if n == 0:
        raise FROCInputError("no cases to evaluate")
    weights = np.vstack([np.ones((1, n), np.int64), bootstrap_weights(n, bootstrap, seed)])
    params = {"hit": hit, "iou_thresh": float(iou_thresh), "duplicates": duplicates}
    a_step, a_interp = cpm_readings(candidates_a, cases_a, weights, **params)
    b_step, b_interp = cpm_readings(candidates_b, cases_a, weights, **params)
    diff = np.stack([a_step - b_step, a_interp - b_interp], axis=1)  # [1 + B, 2]
    ci = _percentiles(diff[1:])  # [2, 2]: (lo, hi) x (step, interp)
    return {
        "num_cases": n,
        "num_lesions": int(sum(len(c["boxes"]) for c in cases_a)),
        "params": params,
        "bootstrap": {"resamples": int(bootstrap), "seed": int(seed), "paired": True},
        "a": {"cpm": float(a_step[0]), "cpm_interp": float(a_interp[0])},
        "b": {"cpm": float(b_step[0]), "cpm_interp": float(b_interp[0])},
        "difference": {
            "cpm": float(diff[0, 0]),
            "ci95": ci[:, 0].tolist(),
            "cpm_interp": float(diff[0, 1]),
            "ci95_interp": ci[:, 1].tolist(),
        },
        "case_ids": case_ids,
    }


def format_compare_line(result: Mapping[str, Any]) -> str:
    """One-line summary: both CPMs, their difference and its 95% interval (step CPM)."""
    d = result["difference"]
    lo, hi = d["ci95"]
    return (
        f"CPM A {result['a']['cpm']:.3f}, B {result['b']['cpm']:.3f}, A - B {d['cpm']:+.3f} "
        f"(95% CI {lo:+.3f} to {hi:+.3f}; interp. {d['cpm_interp']:+.3f}); "
        f"{result['num_cases']} cases, {result['bootstrap']['resamples']} paired resamples, "
        f"seed {result['bootstrap']['seed']}"
    )
