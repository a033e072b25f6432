"""Volume overlap metrics of the reference study: DSC, Jaccard and segmentation sensitivity.

Plain NumPy, no training framework. ``pred`` (A, the automatic segmentation) and ``gt``
(B, the ground truth) are boolean arrays of the same shape, normally a whole case ``[Z, Y, X]``.

Empty masks:

* DSC and Jaccard are 1.0 when both A and B are empty (perfect agreement) and 0.0 when exactly
  one of them is empty.
* Segmentation sensitivity |A∩B|/|B| is undefined when B is empty and returned as ``nan``;
  :func:`summarize` ignores nans (``nanmean``/``nanstd``).
"""
import logging
from typing import Dict, Iterable

import numpy as np

__all__ = ["dice", "jaccard", "seg_sensitivity", "overlap_metrics", "summarize", "METRIC_NAMES"]

logger = logging.getLogger(__name__)

METRIC_NAMES = ("dsc", "jaccard", "ss")


def _counts(pred: np.ndarray, gt: np.ndarray):
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs gt {gt.shape}")
    inter = int(np.count_nonzero(pred & gt))
    return inter, int(np.count_nonzero(pred)), int(np.count_nonzero(gt))


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """DSC = 2|A∩B| / (|A| + |B|); 1.0 when both are empty."""
    inter, a, b = _counts(pred, gt)
    return 1.0 if a + b == 0 else 2.0 * inter / (a + b)


def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """Jaccard = |A∩B| / (|A| + |B| - |A∩B|); 1.0 when both are empty."""
    inter, a, b = _counts(pred, gt)
    return 1.0 if a + b == 0 else inter / (a + b - inter)


def seg_sensitivity(pred: np.ndarray, gt: np.ndarray) -> float:
    """Segmentation sensitivity SS = |A∩B| / |B|; nan when B is empty."""
    inter, _, b = _counts(pred, gt)
    return float("nan") if b == 0 else inter / b


def overlap_metrics(pred: np.ndarray, gt: np.ndarray) -> Dict[str, float]:
    """``{"dsc", "jaccard", "ss"}`` of one volume (one pass over the arrays)."""
    inter, a, b = _counts(pred, gt)
    return {
        "dsc": 1.0 if a + b == 0 else 2.0 * inter / (a + b),
        "jaccard": 1.0 if a + b == 0 else inter / (a + b - inter),
        "ss": float("nan") if b == 0 else inter / b,
    }


def summarize(values: Iterable[float]) -> Dict[str, float]:
    """``{"mean", "sd", "n"}`` ignoring nans; sd is the sample sd (ddof=1), 0 for one value."""
    arr = np.asarray([v for v in values if not np.isnan(v)], dtype=float)
    if arr.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    sd = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "sd": sd, "n": int(arr.size)}
