"""Read a breast mask or label volume from another tool onto the voxel grid of a case's images.

Masks come as NIfTI, NRRD or 3D Slicer ``.seg.nrrd`` (the Duke-Breast-Cancer-MRI-Supplement
breast masks), often on another grid than the dynamic series: Slicer crops a segmentation to its
extent, and a mask drawn on another series has its own spacing and orientation. Such a mask is
resampled onto the images' grid **by physical (world, mm) position**, nearest neighbour, so label
values survive. A ``.seg.nrrd`` holding several segment layers reads as a vector image (one
component per layer); any non-zero component counts.

"Same grid" (no resampling) means: equal size, spacings within a relative 1e-3, direction
cosines within 1e-4 and origins closer than half a voxel along every axis; nearest-neighbour
resampling would give the same voxels there.
"""
import logging
import os
from typing import Tuple, Union

import numpy as np
import SimpleITK as sitk

from .errors import CohortError, one_line
from .readers import CaseGeometry, check_nifti_complete

__all__ = ["same_grid", "world_bounds", "read_mask_on_grid", "read_label_on_grid"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# Tolerances of same_grid (header rounding noise, not a real difference in geometry).
_SPACING_RTOL = 1e-3
_DIRECTION_ATOL = 1e-4
_ORIGIN_VOXELS = 0.5


def same_grid(a: CaseGeometry, b: CaseGeometry) -> bool:
    """True when two geometries describe the same voxels (tolerances in the module docstring)."""
    if a.size != b.size:
        return False
    if not np.allclose(a.spacing, b.spacing, rtol=_SPACING_RTOL, atol=0):
        return False
    if not np.allclose(a.direction, b.direction, rtol=0, atol=_DIRECTION_ATOL):
        return False
    # origin difference expressed in voxels of ``a`` along its own axes
    axes = np.asarray(a.direction, dtype=float).reshape(3, 3)
    shift = axes.T @ (np.asarray(b.origin) - np.asarray(a.origin)) / np.asarray(a.spacing)
    return bool(np.all(np.abs(shift) < _ORIGIN_VOXELS))


def world_bounds(geom: CaseGeometry) -> Tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world bounding box ``(min_xyz, max_xyz)`` in mm of a grid's voxel extent.

    The extent runs from the outer face of the first voxel to that of the last (voxel centres
    at index ``0..size-1``, each half a spacing wide on either side).
    """
    axes = np.asarray(geom.direction, dtype=float).reshape(3, 3)
    spacing, size = np.asarray(geom.spacing, float), np.asarray(geom.size, float)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
    index = corners * size - 0.5  # (-0.5 or size - 0.5) per axis
    world = np.asarray(geom.origin, float) + (index * spacing) @ axes.T
    return world.min(axis=0), world.max(axis=0)


def _read_image(path: str, case_id: str, kind: str) -> sitk.Image:
    """Read any ITK file; unreadable or truncated -> CohortError naming the case and file."""
    if not os.path.isfile(path):
        raise CohortError(f"case {case_id}: missing {kind} file {path}")
    if path.lower().endswith((".nii", ".nii.gz")):
        check_nifti_complete(path, case_id)  # SimpleITK reads a truncated NIfTI silently
    try:
        return sitk.ReadImage(path)
    except RuntimeError as e:
        message = one_line(e)
        raise CohortError(f"case {case_id}: unreadable {kind} file {path}: {message}") from None


def _to_3d(image: sitk.Image, path: str, case_id: str, kind: str, binary: bool) -> sitk.Image:
    """One 3D scalar image: segment layers (vector components, a 4th axis) combined as "any"."""
    dim, comps = image.GetDimension(), image.GetNumberOfComponentsPerPixel()
    if dim not in (3, 4) or (dim == 4 and comps != 1):
        raise CohortError(
            f"case {case_id}: {kind} {path} is {dim}D with {comps} component(s), expected a 3D "
            "volume (or segment layers of one)"
        )
    if dim == 3 and comps == 1:
        return image
    if not binary:
        raise CohortError(
            f"case {case_id}: {kind} {path} holds several segment layers; a label volume must "
            "be one 3D layer"
        )
    array = sitk.GetArrayViewFromImage(image)  # [L, Z, Y, X] or [Z, Y, X, L]
    layers_axis = 0 if dim == 4 else -1
    flat = sitk.GetImageFromArray(np.any(array != 0, axis=layers_axis).astype(np.uint8))
    if dim == 4:  # keep the first three axes' geometry
        direction = np.asarray(image.GetDirection()).reshape(4, 4)[:3, :3]
        flat.SetSpacing(image.GetSpacing()[:3])
        flat.SetOrigin(image.GetOrigin()[:3])
        flat.SetDirection(direction.ravel().tolist())
    else:
        flat.CopyInformation(image)
    logger.info("case %s: %s %s has %s segment layers, combined (any non-zero)",
                case_id, kind, path, array.shape[layers_axis])  # fmt: skip
    return flat


def _resample(image: sitk.Image, reference: CaseGeometry) -> sitk.Image:
    """Nearest-neighbour resampling onto ``reference`` by world position (identity transform)."""
    f = sitk.ResampleImageFilter()
    f.SetSize([int(v) for v in reference.size])
    f.SetOutputSpacing(reference.spacing)
    f.SetOutputOrigin(reference.origin)
    f.SetOutputDirection(reference.direction)
    f.SetInterpolator(sitk.sitkNearestNeighbor)
    f.SetDefaultPixelValue(0)
    f.SetOutputPixelType(image.GetPixelID())
    f.SetTransform(sitk.Transform())
    return f.Execute(image)


def _check_overlap(
    geom: CaseGeometry, reference: CaseGeometry, path: str, case_id: str, kind: str
) -> None:
    lo_a, hi_a = world_bounds(geom)
    lo_b, hi_b = world_bounds(reference)
    if np.any(hi_a <= lo_b) or np.any(hi_b <= lo_a):
        raise CohortError(
            f"case {case_id}: {kind} {path} does not overlap the images in space (world extent "
            f"{_mm_vector(lo_a)}..{_mm_vector(hi_a)} mm vs "
            f"{_mm_vector(lo_b)}..{_mm_vector(hi_b)} mm)"
        )


def _mm_vector(v: np.ndarray) -> str:
    return "[" + ", ".join(f"{x:.1f}" for x in v) + "]"


def _read_on_grid(
    path: PathLike, case_id: str, reference: CaseGeometry, kind: str, binary: bool
) -> np.ndarray:
    path = os.fspath(path)
    image = _to_3d(_read_image(path, case_id, kind), path, case_id, kind, binary)
    if binary and image.GetPixelID() != sitk.sitkUInt8:
        image = sitk.Cast(image != 0, sitk.sitkUInt8)
    geom = CaseGeometry.from_image(image)
    src_voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(image)))
    if binary and not src_voxels:
        logger.warning("case %s: %s %s is empty (no non-zero voxel)", case_id, kind, path)
    if same_grid(reference, geom):
        return sitk.GetArrayFromImage(image)
    _check_overlap(geom, reference, path, case_id, kind)
    array = sitk.GetArrayFromImage(_resample(image, reference))
    dst_voxels = int(np.count_nonzero(array))
    if src_voxels and not dst_voxels:
        raise CohortError(
            f"case {case_id}: no voxel of {kind} {path} lands inside the images' grid (the two "
            "do not overlap in space)"
        )
    # share of the mask's volume (mm^3) that lands inside the images' grid
    kept = (dst_voxels * np.prod(reference.spacing)) / max(src_voxels * np.prod(geom.spacing), 1e-9)
    logger.info("case %s: %s %s resampled from size %s spacing %s mm onto the images' grid "
                "(nearest neighbour; %.0f%% of its volume inside)", case_id, kind, path,
                list(geom.size), [round(s, 3) for s in geom.spacing],
                100 * kept if src_voxels else 100)  # fmt: skip
    if src_voxels and kept < 0.9:
        logger.warning("case %s: only %.0f%% of %s %s lies inside the images' grid",
                       case_id, 100 * kept, kind, path)  # fmt: skip
    return array


def read_mask_on_grid(
    path: PathLike, case_id: str, reference: CaseGeometry, kind: str = "mask"
) -> np.ndarray:
    """Read a breast mask (non-zero = breast) on the voxel grid of a case's images.

    Args:
        path: NIfTI, NRRD, 3D Slicer ``.seg.nrrd`` (labelmap or segment layers), MHA, ...
        case_id: for messages.
        reference: geometry of the case's images
            (:class:`~breast_d2.data.readers.CaseGeometry`, ``(x, y, z)`` order, mm).
        kind: names the file in messages.

    Returns:
        ``[Z, Y, X]`` uint8 of ``reference.shape_zyx``, 1 = breast, 0 = not.

    Raises:
        CohortError: unreadable or truncated file, not a 3D volume, or a mask that does not
            overlap the images in space (disjoint world extents, or no mask voxel landing
            inside the images' grid); one line naming the case and the file.
    """
    array = _read_on_grid(path, case_id, reference, kind, binary=True)
    return (array != 0).astype(np.uint8)


def read_label_on_grid(
    path: PathLike, case_id: str, reference: CaseGeometry, kind: str = "label volume"
) -> np.ndarray:
    """Like :func:`read_mask_on_grid`, but keep the label values (nearest neighbour).

    Returns:
        ``[Z, Y, X]`` array in the file's pixel type, of ``reference.shape_zyx``.

    Raises:
        CohortError: as :func:`read_mask_on_grid`, and for a file of several segment layers.
    """
    return _read_on_grid(path, case_id, reference, kind, binary=False)
