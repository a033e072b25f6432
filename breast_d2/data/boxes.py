"""Box conventions, the Duke ``Annotation_Boxes`` table, and lesions of label volumes as boxes.

Conventions (docs/DATA_FORMAT.md):

* Boxes are voxel indices, **half-open**: a 3D box ``[x0, y0, z0, x1, y1, z1]`` covers columns
  ``x0..x1-1``, rows ``y0..y1-1`` and slices ``z0..z1-1``; a 2D slice box ``[x0, y0, x1, y1]`` is
  detectron2's ``XYXY_ABS`` with the same edges. COCO files store ``[x, y, w, h]`` (XYWH).
* Duke's table is 1-based and inclusive, rows = y, columns = x, slices = z
  (:func:`duke_row_to_box`).
* Label volumes are ``[Z, Y, X]`` arrays; a lesion is a 3D connected component
  (:func:`label_lesions`), cut into per-slice boxes by :func:`slice_boxes_from_boxes` or
  :func:`slice_boxes_from_components`.

Every problem with the input raises :class:`~breast_d2.data.errors.CohortError`, whose one-line
message names the case, the file (or table line) and what is wrong.
"""
import logging
import math
import os
from typing import Dict, List, NamedTuple, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .errors import CohortError, PathLike, check_case_id
from .tables import iter_table, row_label

__all__ = [
    "BoxRow",
    "DUKE_COLUMNS",
    "duke_row_to_box",
    "box_to_duke_row",
    "box_to_coco_bbox",
    "coco_bbox_to_box",
    "read_box_rows",
    "read_boxes_csv",
    "check_box_in_volume",
    "box_on_slices",
    "merge_close_lesions",
    "label_components",
    "largest_component",
    "keep_large_components",
    "label_boxes",
    "label_lesions",
    "lesions_from_labels",
    "slice_boxes_from_boxes",
    "slice_boxes_from_components",
]

logger = logging.getLogger(__name__)

Box3D = List[int]  # [x0, y0, z0, x1, y1, z1], half-open voxel indices
Box2D = List[int]  # [x0, y0, x1, y1], half-open voxel indices (detectron2 XYXY_ABS)

#: Column names of the Duke-Breast-Cancer-MRI ``Annotation_Boxes`` table, in file order.
DUKE_COLUMNS = (
    "Patient ID",
    "Start Row",
    "End Row",
    "Start Column",
    "End Column",
    "Start Slice",
    "End Slice",
)


# ----------------------------------------------------------------------------- box conventions


def duke_row_to_box(
    start_row: int, end_row: int, start_col: int, end_col: int, start_slice: int, end_slice: int
) -> Box3D:
    """Duke ``Annotation_Boxes`` row (1-based, inclusive) -> half-open ``[x0, y0, z0, x1, y1, z1]``.

    Rows are y, columns x, slices z: ``[c0 - 1, r0 - 1, s0 - 1, c1, r1, s1]``.
    """
    return [start_col - 1, start_row - 1, start_slice - 1, end_col, end_row, end_slice]


def box_to_duke_row(box: Sequence[int]) -> Tuple[int, int, int, int, int, int]:
    """Inverse of :func:`duke_row_to_box`: ``(start_row, end_row, start_col, end_col, s0, s1)``."""
    x0, y0, z0, x1, y1, z1 = (int(v) for v in box)
    return (y0 + 1, y1, x0 + 1, x1, z0 + 1, z1)


def box_to_coco_bbox(box2d: Sequence[float]) -> List[float]:
    """Half-open ``[x0, y0, x1, y1]`` -> COCO ``[x0, y0, x1 - x0, y1 - y0]`` (XYWH)."""
    x0, y0, x1, y1 = box2d
    return [x0, y0, x1 - x0, y1 - y0]


def coco_bbox_to_box(bbox: Sequence[float]) -> List[float]:
    """COCO ``[x, y, w, h]`` -> half-open ``[x0, y0, x1, y1]``."""
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


class BoxRow(NamedTuple):
    """One row of a Duke box CSV: ``case_id``, half-open ``box`` and the 1-based ``line`` number."""

    case_id: str
    box: Box3D
    line: int


def _parse_row(values: Sequence[str], where: str) -> BoxRow:
    case_id = values[0].strip()
    check_case_id(case_id, where)
    ints = []
    for name, text in zip(DUKE_COLUMNS[1:], values[1:]):
        try:
            ints.append(int(text.strip()))
        except ValueError:
            raise CohortError(f"{where}case {case_id}: {name} {text!r} is not an integer") from None
    r0, r1, c0, c1, s0, s1 = ints
    for axis, lo, hi in (("Row", r0, r1), ("Column", c0, c1), ("Slice", s0, s1)):
        if lo < 1:
            raise CohortError(f"{where}case {case_id}: Start {axis} {lo} < 1 (indices are 1-based)")
        if lo > hi:
            raise CohortError(f"{where}case {case_id}: Start {axis} {lo} > End {axis} {hi}")
    return BoxRow(case_id, duke_row_to_box(*ints), 0)


def read_box_rows(path: PathLike) -> List[BoxRow]:
    """Read a Duke ``Annotation_Boxes`` table (``.xlsx`` as published, or ``.csv``) into rows.

    Columns ``Patient ID,Start Row,End Row,Start Column,End Column,Start Slice,End Slice``
    (any order, extra columns ignored; 1-based inclusive; rows = y, columns = x as the DICOM
    rows and columns, no flips; slices = z, which for a DICOM case is the *file number* of the
    dynamic series, see :mod:`breast_d2.data.dicom`). Several rows per patient = several lesions.
    Blank rows are skipped. A row repeated exactly (same patient and box) is kept once, with a
    warning naming both lines: a duplicate must not count as a second mass.

    Returns:
        list of :class:`BoxRow` in file order, with half-open ``[x0, y0, z0, x1, y1, z1]`` boxes
        and their line (CSV) or row (workbook) numbers.

    Raises:
        CohortError: ``"<path> line N: case X: <problem>"`` for a missing column, a non-integer,
            a start below 1 or above its end, or an invalid case id.
    """
    path = os.fspath(path)
    rows: List[BoxRow] = []
    first_line: Dict[Tuple[str, Tuple[int, ...]], int] = {}
    for number, cells in iter_table(path, DUKE_COLUMNS):
        where = f"{row_label(path, number)}: "
        row = _parse_row([cells[c] for c in DUKE_COLUMNS], where)._replace(line=number)
        key = (row.case_id, tuple(row.box))
        if key in first_line:
            logger.warning("%sduplicate of line %d (case %s, same box); kept once",
                           where, first_line[key], row.case_id)  # fmt: skip
            continue
        first_line[key] = number
        rows.append(row)
    return rows


def read_boxes_csv(path: PathLike) -> Dict[str, List[Box3D]]:
    """Read a Duke box table as ``{case_id: [[x0, y0, z0, x1, y1, z1], ...]}`` (half-open).

    Rows keep their file order per case. See :func:`read_box_rows` for the format and errors.
    """
    boxes: Dict[str, List[Box3D]] = {}
    for row in read_box_rows(path):
        boxes.setdefault(row.case_id, []).append(row.box)
    return boxes


def check_box_in_volume(box: Sequence[int], size_xyz: Sequence[int], where: str) -> None:
    """Raise a CohortError (prefixed with ``where``) if a half-open 3D box leaves the volume.

    Args:
        box: ``[x0, y0, z0, x1, y1, z1]`` half-open voxel indices.
        size_xyz: volume size ``(X, Y, Z)``.
        where: message prefix naming the case and file/line.
    """
    x0, y0, z0, x1, y1, z1 = box
    for name, lo, hi, n in (("Column", x0, x1, size_xyz[0]), ("Row", y0, y1, size_xyz[1]),
                            ("Slice", z0, z1, size_xyz[2])):  # fmt: skip
        if lo < 0 or hi > n or lo >= hi:
            raise CohortError(
                f"{where}box falls outside the volume: {name}s {lo + 1}..{hi} (1-based) but the "
                f"volume has {n} {name.lower()}s (size {list(size_xyz)} XYZ)"
            )


def box_on_slices(
    box: Sequence[int], size_xyz: Sequence[int], file_numbers: Sequence[int], where: str
) -> Box3D:
    """Place a box whose slice range counts DICOM file numbers on the position-sorted volume.

    Duke's ``Annotation_Boxes`` give ``Start Slice..End Slice`` as file numbers of the dynamic
    series (``1-NNN.dcm``), which in some cases run against slice position. The box covers the
    volume slices whose files carry those numbers, whatever the sort order.

    Args:
        box: ``[x0, y0, z0, x1, y1, z1]`` half-open, z counted in file numbers (``z0 + 1`` ..
            ``z1`` are the 1-based file numbers of :func:`duke_row_to_box`).
        size_xyz: volume size ``(X, Y, Z)``.
        file_numbers: file number of each volume slice z (length Z).
        where: message prefix naming the case and table line.

    Returns:
        ``[x0, y0, z0', x1, y1, z1']`` half-open with z in volume slices.

    Raises:
        CohortError: the box leaves the grid in x/y, names file numbers the series lacks, or its
            files are not on consecutive slices.
    """
    x0, y0, z0, x1, y1, z1 = (int(v) for v in box)
    check_box_in_volume([x0, y0, 0, x1, y1, 1], [size_xyz[0], size_xyz[1], 1], where)
    numbers = np.asarray(file_numbers)
    zs = np.flatnonzero((numbers > z0) & (numbers <= z1))
    if len(zs) != z1 - z0:
        raise CohortError(
            f"{where}box falls outside the series: Slices {z0 + 1}..{z1} (file numbers) but the "
            f"series has file numbers {int(numbers.min())}..{int(numbers.max())}"
        )
    if zs[-1] - zs[0] + 1 != len(zs):
        raise CohortError(f"{where}files {z0 + 1}..{z1} are not on consecutive slices")
    return [x0, y0, int(zs[0]), x1, y1, int(zs[-1]) + 1]


# ----------------------------------------------------------------------------- lesions


def label_components(mask: np.ndarray, full_connectivity: bool = False) -> Tuple[np.ndarray, int]:
    """Connected components of the non-zero elements of a 2D or 3D array.

    Args:
        mask: ``[Y, X]`` or ``[Z, Y, X]``, non-zero = foreground.
        full_connectivity: False: elements touching by a face are neighbours (4 in 2D, 6 in 3D);
            True: also by an edge or a corner (8 in 2D, 26 in 3D).

    Returns:
        ``(labels, n)``: int32 array of ``mask``'s shape, 0 = background and 1..n the components
        numbered by their first element in raster order.
    """
    mask = np.asarray(mask) != 0
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim if full_connectivity else 1)
    labels, n = ndimage.label(mask, structure=structure)
    return labels.astype(np.int32, copy=False), int(n)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Bool mask of the largest face-connected component (the first in raster order on a tie)."""
    labels, n = label_components(mask)
    if n <= 1:
        return labels > 0
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def keep_large_components(mask: np.ndarray, min_fraction: float = 0.1) -> np.ndarray:
    """Keep the largest connected component and every component at least ``min_fraction`` of it.

    The two breasts may be separate components, hence a fraction rather than only the largest.

    Args:
        mask: bool ``[Y, X]`` or ``[Z, Y, X]``; face connectivity.
        min_fraction: in [0, 1]; 1.0 keeps only the largest component (and ties), 0 keeps all.

    Returns:
        bool array of the same shape.
    """
    labels, n = label_components(mask)
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1
    return np.isin(labels, keep)


def label_boxes(labels: np.ndarray) -> Dict[int, Tuple[int, int, int, int, int, int]]:
    """3D boxes of every label value.

    Args:
        labels: ``[Z, Y, X]`` integer label volume, 0 background.

    Returns:
        ``{value: (x0, y0, z0, x1, y1, z1)}``, half-open voxel indices of each value's extent,
        in increasing value order (values that do not occur are left out).
    """
    boxes = {}
    for i, sl in enumerate(ndimage.find_objects(labels.astype(np.int32, copy=False)), start=1):
        if sl is not None:
            boxes[i] = (sl[2].start, sl[1].start, sl[0].start, sl[2].stop, sl[1].stop, sl[0].stop)
    return boxes


def label_lesions(label_zyx: np.ndarray) -> Tuple[np.ndarray, List[Box3D]]:
    """Split a label volume into lesions: 3D connected components of its non-zero voxels.

    26-connectivity is used so that a lobulated mass whose lobes touch only at an edge or corner
    stays one lesion. Label values are ignored (two touching lesions with different values merge).

    Args:
        label_zyx: ``[Z, Y, X]`` array, non-zero = lesion.

    Returns:
        ``(components [Z, Y, X] int32 with 0 = background and i + 1 = lesion i, boxes)`` where
        ``boxes[i]`` is lesion i's half-open ``[x0, y0, z0, x1, y1, z1]``, ordered by first voxel
        in raster (z, y, x) order.
    """
    components, _ = label_components(label_zyx, full_connectivity=True)
    return components, [list(box) for box in label_boxes(components).values()]


def merge_close_lesions(
    components: np.ndarray,
    boxes: Sequence[Sequence[int]],
    spacing_xyz: Sequence[float],
    max_gap_mm: float,
) -> Tuple[np.ndarray, List[Box3D]]:
    """Merge lesions of :func:`label_lesions` that lie within ``max_gap_mm`` of each other.

    Expert masks of one tumour sometimes come in pieces (MAMA-MIA marks the primary tumour only).
    Two components join when the distance between their nearest voxel centres is at most
    ``max_gap_mm`` (physical mm, with the voxel spacing); merging is transitive.

    Args:
        components: ``[Z, Y, X]`` int32, lesion i = value i + 1.
        boxes: their half-open ``[x0, y0, z0, x1, y1, z1]`` boxes.
        spacing_xyz: voxel spacing ``(sx, sy, sz)`` in mm.
        max_gap_mm: 0 = no merging; ``inf`` = all components of the case form one lesion.

    Returns:
        ``(components, boxes)`` renumbered as :func:`label_lesions` numbers them.
    """
    n = len(boxes)
    if n < 2 or max_gap_mm <= 0:
        return components, [list(b) for b in boxes]
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    sampling = (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])
    for i in range(n):
        if math.isinf(max_gap_mm):
            parent[i] = 0
            continue
        # distances from lesion i inside its box grown by the gap (enough to see a neighbour)
        grow = [int(math.ceil(max_gap_mm / s)) for s in sampling]
        x0, y0, z0, x1, y1, z1 = boxes[i]
        lo = [max(0, v - g) for v, g in zip((z0, y0, x0), grow)]
        hi = [min(d, v + g) for v, g, d in zip((z1, y1, x1), grow, components.shape)]
        crop = components[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        dist = ndimage.distance_transform_edt(crop != i + 1, sampling=sampling)
        for j in np.unique(crop[(dist <= max_gap_mm) & (crop > 0)]):
            parent[root(int(j) - 1)] = root(i)
    lut = np.zeros(n + 1, np.int32)
    for i in range(n):
        lut[i + 1] = root(i) + 1
    merged = lut[components]
    # renumber 1.. by first voxel in raster (z, y, x) order, as label_lesions does
    ids, first = np.unique(merged.ravel(), return_index=True)
    order = [int(v) for _, v in sorted(zip(first[ids > 0], ids[ids > 0]))]
    lut = np.zeros(n + 1, np.int32)
    lut[order] = np.arange(1, len(order) + 1)
    merged = lut[merged]
    return merged, [list(box) for box in label_boxes(merged).values()]


def lesions_from_labels(label_zyx: np.ndarray) -> List[Box3D]:
    """Half-open 3D boxes ``[x0, y0, z0, x1, y1, z1]`` of the lesions of a label volume.

    See :func:`label_lesions`.
    """
    return label_lesions(label_zyx)[1]


SliceBoxes = List[List[Tuple[int, Box2D]]]  # per z: [(lesion_index, [x0, y0, x1, y1]), ...]


def slice_boxes_from_boxes(boxes: Sequence[Sequence[int]], num_slices: int) -> SliceBoxes:
    """2D boxes per slice from 3D boxes: every slice a box spans gets its x-y rectangle.

    Args:
        boxes: half-open ``[x0, y0, z0, x1, y1, z1]`` per lesion.
        num_slices: Z.

    Returns:
        list of length Z; entry z holds ``(lesion_index, [x0, y0, x1, y1])`` (half-open XYXY).
    """
    out: SliceBoxes = [[] for _ in range(num_slices)]
    for i, (x0, y0, z0, x1, y1, z1) in enumerate(boxes):
        for z in range(max(z0, 0), min(z1, num_slices)):
            out[z].append((i, [int(x0), int(y0), int(x1), int(y1)]))
    return out


def slice_boxes_from_components(
    components: np.ndarray, boxes: Sequence[Sequence[int]]
) -> SliceBoxes:
    """2D boxes per slice from a lesion's actual cross-section on each slice.

    Args:
        components: ``[Z, Y, X]`` from :func:`label_lesions` (lesion i has value i + 1).
        boxes: the matching 3D boxes from :func:`label_lesions`.

    Returns:
        as :func:`slice_boxes_from_boxes`; a slice inside a lesion's 3D box where the lesion has no
        voxel (possible with 26-connectivity) gets no box.
    """
    out: SliceBoxes = [[] for _ in range(components.shape[0])]
    for i, (x0, y0, z0, x1, y1, z1) in enumerate(boxes):
        sub = components[z0:z1, y0:y1, x0:x1] == i + 1
        for dz in range(sub.shape[0]):
            ys = np.flatnonzero(sub[dz].any(axis=1))
            xs = np.flatnonzero(sub[dz].any(axis=0))
            if len(ys):
                xa, ya = x0 + int(xs[0]), y0 + int(ys[0])
                out[z0 + dz].append((i, [xa, ya, x0 + int(xs[-1]) + 1, y0 + int(ys[-1]) + 1]))
    return out
