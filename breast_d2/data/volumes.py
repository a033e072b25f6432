"""Kept for compatibility: the old home of the case readers, box conventions and channels.

This module was split; import from the new homes in new code. Everything in ``__all__`` (and the
type aliases) is re-exported here unchanged, so ``from breast_d2.data.volumes import ...`` keeps
working:

* :mod:`breast_d2.data.errors`: ``CohortError``, ``one_line``, ``check_case_id``, ``PathLike``
  (also re-exported by :mod:`breast_d2.data.readers`).
* :mod:`breast_d2.data.readers`: ``read_header``, ``check_nifti_complete``, ``CaseGeometry``,
  ``CaseVolume``, ``list_cases``, ``find_phase_sources``, ``iter_phase_images``,
  ``iter_source_images``, ``grid_misalignment_mm``, ``read_case_phases``, ``read_phases_from_dir``,
  ``read_volume``, ``find_case_volume``, ``NIFTI_SUFFIXES``.
* :mod:`breast_d2.data.boxes`: ``DUKE_COLUMNS``, ``BoxRow``, ``duke_row_to_box``,
  ``box_to_duke_row``, ``box_to_coco_bbox``, ``coco_bbox_to_box``, ``read_box_rows``,
  ``read_boxes_csv``, ``check_box_in_volume``, ``box_on_slices``, ``label_lesions``,
  ``merge_close_lesions``, ``lesions_from_labels``, ``slice_boxes_from_boxes``,
  ``slice_boxes_from_components``, ``Box3D``, ``Box2D``, ``SliceBoxes``.
* :mod:`breast_d2.data.channels`: ``parse_channels``, ``compose_channels``.
"""
import logging

from .boxes import (
    DUKE_COLUMNS,
    Box2D,  # noqa: F401
    Box3D,  # noqa: F401
    BoxRow,
    SliceBoxes,  # noqa: F401
    box_on_slices,
    box_to_coco_bbox,
    box_to_duke_row,
    check_box_in_volume,
    coco_bbox_to_box,
    duke_row_to_box,
    label_lesions,
    lesions_from_labels,
    merge_close_lesions,
    read_box_rows,
    read_boxes_csv,
    slice_boxes_from_boxes,
    slice_boxes_from_components,
)
from .channels import compose_channels, parse_channels
from .errors import (
    CohortError,
    PathLike,  # noqa: F401
    check_case_id,
    one_line,
)
from .readers import (
    NIFTI_SUFFIXES,  # noqa: F401
    CaseGeometry,
    CaseVolume,
    check_nifti_complete,
    find_case_volume,
    find_phase_sources,
    grid_misalignment_mm,
    iter_phase_images,
    iter_source_images,
    list_cases,
    read_case_phases,
    read_header,
    read_phases_from_dir,
    read_volume,
)

__all__ = [
    "CohortError",
    "one_line",
    "read_header",
    "check_nifti_complete",
    "CaseGeometry",
    "CaseVolume",
    "BoxRow",
    "DUKE_COLUMNS",
    "check_case_id",
    "list_cases",
    "find_phase_sources",
    "iter_phase_images",
    "iter_source_images",
    "grid_misalignment_mm",
    "read_case_phases",
    "read_phases_from_dir",
    "read_volume",
    "find_case_volume",
    "duke_row_to_box",
    "box_to_duke_row",
    "box_to_coco_bbox",
    "coco_bbox_to_box",
    "read_box_rows",
    "read_boxes_csv",
    "check_box_in_volume",
    "box_on_slices",
    "merge_close_lesions",
    "label_lesions",
    "lesions_from_labels",
    "slice_boxes_from_boxes",
    "slice_boxes_from_components",
    "parse_channels",
    "compose_channels",
]

logger = logging.getLogger(__name__)
