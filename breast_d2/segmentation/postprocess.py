"""Post-processing of predicted breast masks: largest components, hole filling, dilation in mm.

Masks are boolean, either one slice ``[Y, X]`` or a case ``[Z, Y, X]``. Connected components
are taken in the array's own dimensionality (3D for a case, so that a spurious blob in one slice
is judged against the whole breast); hole filling and dilation are always per slice (in-plane),
because slices are thick and a hole "open" through the top slice is still a hole.
"""
import logging
import math
from typing import Optional, Sequence

import cv2
import numpy as np
from scipy import ndimage

from ..data.boxes import keep_large_components

__all__ = ["keep_large_components", "fill_holes", "disk_mm", "dilate_mm", "postprocess_mask"]

logger = logging.getLogger(__name__)

_ONE_UP = 1.0 + 1e-9  # a distance equal to the radius but for float rounding counts as within


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes of every slice (in-plane) of a bool ``[Y, X]`` or ``[Z, Y, X]`` mask."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim == 2:
        return ndimage.binary_fill_holes(mask)
    return np.stack([ndimage.binary_fill_holes(s) for s in mask]) if len(mask) else mask.copy()


def disk_mm(mm: float, spacing_xy: Sequence[float] = (1.0, 1.0)) -> np.ndarray:
    """The in-plane ball of radius ``mm`` millimetres as a structuring element.

    Element ``[ry + dy, rx + dx]`` is True when ``(dx * sx) ** 2 + (dy * sy) ** 2 <= mm ** 2``:
    the centres of the two pixels lie within ``mm`` of each other in physical units. Distances
    equal to ``mm`` up to float rounding (relative 1e-9) count as within.

    Args:
        mm: radius in mm (>= 0).
        spacing_xy: pixel spacing ``(sx, sy)`` in mm (column, row), as in cases.json.

    Returns:
        bool ``[2 * ry + 1, 2 * rx + 1]`` with ``rx = floor(mm / sx)``, ``ry = floor(mm / sy)``.
    """
    sx, sy = (float(v) for v in spacing_xy[:2])
    if not (math.isfinite(mm) and mm >= 0):
        raise ValueError(f"dilation radius must be a finite number of mm >= 0, got {mm}")
    if not all(math.isfinite(v) and v > 0 for v in (sx, sy)):
        raise ValueError(f"pixel spacing must be positive mm, got {tuple(spacing_xy)}")
    rx, ry = int(math.floor(mm / sx * _ONE_UP)), int(math.floor(mm / sy * _ONE_UP))
    dy, dx = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    return (dx * sx) ** 2 + (dy * sy) ** 2 <= mm * mm * _ONE_UP


def dilate_mm(
    mask: np.ndarray, mm: float, spacing_xy: Sequence[float] = (1.0, 1.0)
) -> np.ndarray:
    """Dilate every slice in-plane by a Euclidean ball of radius ``mm`` millimetres.

    Pixel ``(y, x)`` is in the result when some mask pixel of the same slice lies within ``mm``
    of it, the distance taken between pixel centres in physical units (``spacing_xy``); see
    :func:`disk_mm`. A radius below the pixel spacing grows nothing along that axis. This is the
    one dilation of breast masks: ``tools/predict_breast_masks.py --dilate-mm``,
    ``INPUT.BREAST_MASK.DILATE_MM`` (the mapper) and :class:`~breast_d2.inference.CaseDetector`.

    Args:
        mask: ``[Y, X]`` or ``[Z, Y, X]``, non-zero = inside.
        mm: dilation radius in mm; <= 0 returns a copy.
        spacing_xy: pixel spacing ``(sx, sy)`` in mm (column, row), as in cases.json.

    Returns:
        bool array of the same shape (no dilation across slices).
    """
    mask = np.asarray(mask) != 0
    if mm <= 0:
        return mask
    kernel = disk_mm(mm, spacing_xy).astype(np.uint8)
    if kernel.size == 1:
        return mask
    # OpenCV's dilation with the exact disk: pixels outside the image never count as inside.
    slices = mask.reshape((-1,) + mask.shape[-2:]).view(np.uint8)
    out = np.stack([cv2.dilate(s, kernel) for s in slices]) if len(slices) else slices
    return out.reshape(mask.shape).astype(bool)


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
