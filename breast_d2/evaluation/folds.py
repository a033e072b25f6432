"""Cross-validation FROC: per-fold results, their mean ± sd, and the FROC of all folds pooled.

Each fold is evaluated on its own validation cases (its ``froc.json``); the summary is the mean
and sample sd across folds of each fold's sensitivities and CPM, the mean of the folds' step
curves on the common FP grid (:data:`~breast_d2.evaluation.froc.FP_GRID`), and one FROC over
every fold's candidates and cases together (a case may be evaluated in one fold only).
"""
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .candidates import FROCInputError
from .froc import FP_GRID, compute_froc, curve_sensitivity
from .io import load_candidates_json, load_cases_json, read_froc_json, subset_cases
from .params import FROCParams

__all__ = ["aggregate_folds", "evaluate_fold_dirs"]

logger = logging.getLogger(__name__)


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
    bootstrap: int = FROCParams.bootstrap,
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
        res = read_froc_json(os.path.join(d, "froc.json"))
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
