"""Per-case 3D evaluation: slice detections -> 3D candidates -> FROC (LUNA16-style CPM).

Modules, in the order of the pipeline: ``candidates`` (3D merging), ``matching`` (candidate-mass
hits), ``froc`` (curve, CPM, bootstrap), ``folds`` (per-fold and pooled), ``io`` (files),
``tables`` and ``plots`` (markdown and figures), ``params`` (the defaults).
``candidates`` and ``froc`` are plain NumPy and usable without detectron2 (the standalone
``tools/froc.py``); ``BreastFROCEvaluator`` adapts them to detectron2 and is imported lazily so
that importing this package does not import detectron2's evaluation stack.
"""
import logging

from .candidates import (
    CandidateArrays,
    FROCInputError,
    detections_to_arrays,
    merge_slice_arrays,
    merge_slice_detections,
)
from .folds import aggregate_folds, evaluate_fold_dirs
from .froc import CPM_RATES, FP_RATES, compute_froc
from .io import load_candidates_json, load_cases_json, save_froc
from .params import FROCParams

__all__ = [
    "BreastFROCEvaluator",
    "CandidateArrays",
    "FROCInputError",
    "detections_to_arrays",
    "merge_slice_arrays",
    "merge_slice_detections",
    "CPM_RATES",
    "FP_RATES",
    "FROCParams",
    "aggregate_folds",
    "compute_froc",
    "evaluate_fold_dirs",
    "load_candidates_json",
    "load_cases_json",
    "save_froc",
]

logger = logging.getLogger(__name__)


def __getattr__(name: str):
    # Lazy: the evaluator pulls in detectron2.evaluation (and torch); the maths do not need it.
    if name == "BreastFROCEvaluator":
        from .evaluator import BreastFROCEvaluator

        return BreastFROCEvaluator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
