"""Post-processing of predicted breast masks: largest components, hole filling, dilation in mm.

Masks are boolean, either one slice ``[Y, X]`` or a case ``[Z, Y, X]``. Connected components
are taken in the array's own dimensionality (3D for a case, so that a spurious blob in one slice
is judged against the whole breast); hole filling and dilation are always per slice (in-plane),
because slices are thick and a hole "open" through the top slice is still a hole.
"""
import logging
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

__all__ = ["keep_large_components", "fill_holes", "dilate_mm", "postprocess_mask"]

logger = logging.getLogger(__name__)


def keep_large_components(mask: np.ndarray, min_fraction: float = 0.1) -> np.ndarray:
    """Keep the largest connected component and every component at least ``min_fraction`` of it.

    The two breasts may be separate components, hence a fraction rather than only the largest.

    Args:
        mask: bool ``[Y, X]`` or ``[Z, Y, X]``; face connectivity.
        min_fraction: in [0, 1]; 1.0 keeps only the largest component (and ties), 0 keeps all.

    Returns:
        bool array of the same shape.
    """
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1
    return np.isin(labels, keep)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes of every slice (in-plane) of a bool ``[Y, X]`` or ``[Z, Y, X]`` mask."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim == 2:
        return ndimage.binary_fill_holes(mask)
    return np.stack([ndimage.binary_fill_holes(s) for s in mask]) if len(mask) else mask.copy()


def _disk(radius_x: float, radius_y: float) -> np.ndarray:
    rx, ry = int(np.floor(radius_x)), int(np.floor(radius_y))
    yy, xx = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    return (xx / max(radius_x, 1e-6)) ** 2 + (yy / max(radius_y, 1e-6)) ** 2 <= 1.0


def dilate_mm(
    mask: np.ndarray, mm: float, spacing_xy: Sequence[float] = (1.0, 1.0)
) -> np.ndarray:
    """Dilate every slice in-plane by ``mm`` millimetres with an elliptical structuring element.

    Args:
        mask: bool ``[Y, X]`` or ``[Z, Y, X]``.
        mm: dilation radius in mm; <= 0 returns a copy.
        spacing_xy: pixel spacing ``(sx, sy)`` in mm (column, row), as in cases.json.

    Returns:
        bool array of the same shape.
    """
    mask = np.asarray(mask, dtype=bool)
    if mm <= 0:
        return mask.copy()
    se = _disk(mm / float(spacing_xy[0]), mm / float(spacing_xy[1]))
    if mask.ndim == 3:
        se = se[None]  # no dilation across slices
    return ndimage.binary_dilation(mask, structure=se)


def postprocess_mask(
    mask: np.ndarray,
    min_fraction: Optional[float] = 0.1,
    fill: bool = True,
    dilation_mm: float = 0.0,
    spacing_xy: Sequence[float] = (1.0, 1.0),
) -> np.ndarray:
    """Components (``min_fraction``; None skips), hole filling, then dilation, in that order."""
    out = np.asarray(mask, dtype=bool)
    if min_fraction is not None:
        out = keep_large_components(out, min_fraction)
    if fill:
        out = fill_holes(out)
    return dilate_mm(out, dilation_mm, spacing_xy)
