"""Mass sizes in millimetres and the size bands of the FROC (plain NumPy).

The size of a mass is its largest extent in mm: ``max((x1 - x0) * sx, (y1 - y0) * sy,
(z1 - z0) * sz)`` from its ground-truth box (half-open voxel indices, so ``x1 - x0`` voxels
wide) and its case's ``"spacing": [sx, sy, sz]`` (mm per voxel along x, y, z) in
``cases.json``. Bands (:data:`SIZE_BANDS`): ``"<10"`` (size < 10 mm), ``"10-20"``
(10 <= size < 20), ``"20-50"`` (20 <= size <= 50) and ``">50"`` (size > 50).
"""
import logging
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np

from .candidates import FROCInputError, is_real_number

__all__ = ["SIZE_BANDS", "lesion_sizes_mm", "size_band_index"]

logger = logging.getLogger(__name__)

# Band name -> (lower, upper) in mm; the lower bound is included, the upper one excluded except
# for "20-50", which includes 50 so that ">50" means strictly more than 50 mm.
SIZE_BANDS = ("<10", "10-20", "20-50", ">50")


def _case_spacing(case: Mapping[str, Any]) -> Optional[np.ndarray]:
    """[3] spacing of a case in mm, None when the case has no ``"spacing"``."""
    if "spacing" not in case:
        return None
    sp = case["spacing"]
    ok = isinstance(sp, (list, tuple)) and len(sp) == 3 and all(map(is_real_number, sp))
    if ok:
        arr = np.asarray(sp, dtype=np.float64)
        if np.isfinite(arr).all() and (arr > 0).all():
            return arr
    raise FROCInputError(
        f"ground-truth case {case.get('case_id')!r}: spacing must be [sx, sy, sz] with finite "
        f"positive numbers (mm), got {sp!r:.100}"
    )


def lesion_sizes_mm(
    cases: Sequence[Mapping[str, Any]],
    case_ids: Sequence[str],
    gt_case: np.ndarray,
    gt_boxes: np.ndarray,
) -> Optional[np.ndarray]:
    """Largest extent in mm of every ground-truth mass.

    Args:
        cases: the ground-truth cases (``cases.json`` entries with ``"spacing"``).
        case_ids: [N] case ids that ``gt_case`` indexes (from ``ground_truth_arrays``).
        gt_case: [G] case index of each mass.
        gt_boxes: [G, 6] boxes ``x0, y0, z0, x1, y1, z1`` in half-open voxel indices.

    Returns:
        [G] sizes in mm, or None when no case has a ``"spacing"`` (sizes unknown).

    Raises:
        FROCInputError: a malformed spacing, or one case with a spacing and another without.
    """
    by_id = {c["case_id"]: c for c in cases}
    spacings: List[Optional[np.ndarray]] = [_case_spacing(by_id[c]) for c in case_ids]
    missing = [c for c, s in zip(case_ids, spacings) if s is None]
    if len(missing) == len(case_ids):
        logger.info("No case has a 'spacing': no sensitivity by mass size.")
        return None
    if missing:
        raise FROCInputError(
            f"ground-truth case {missing[0]!r} has no 'spacing' [sx, sy, sz] while other cases "
            f"have one ({len(missing)} without)"
        )
    table = np.array(spacings, dtype=np.float64).reshape(-1, 3)
    extent = (gt_boxes[:, 3:] - gt_boxes[:, :3]) * table[gt_case]
    return extent.max(axis=1) if extent.size else np.zeros(0)


def size_band_index(sizes_mm: np.ndarray) -> np.ndarray:
    """[G] index into :data:`SIZE_BANDS` of each size (mm), bands as in the module docstring."""
    sizes_mm = np.asarray(sizes_mm, dtype=np.float64)
    band = np.searchsorted([10.0, 20.0], sizes_mm, "right")  # 0: < 10, 1: [10, 20), 2: >= 20
    return np.where(sizes_mm > 50.0, 3, band).astype(np.int64)
