"""Duke layout: what each case of a Duke-Breast-Cancer-MRI-like download looks like.

:func:`duke_case_plan` decides (from the index alone) the dynamic series' description family,
the number of post-contrast phases, the file numbering, the T1 grid and the breast mask of a case;
:func:`_case_series` lists its series with the SeriesNumber / SeriesDescription real scanners
use.
"""

import logging
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .common import _GE, _SIEMENS

__all__ = [
    "DUKE_COLLECTION",
    "DUKE_FAMILIES",
    "DUKE_MAPPING_NAME",
    "MAPPING_COLUMNS",
    "NBIA_COLUMNS",
    "DukeCasePlan",
    "duke_case_id",
    "duke_case_plan",
]

logger = logging.getLogger(__name__)

DUKE_COLLECTION = "Duke-Breast-Cancer-MRI"
DUKE_MAPPING_NAME = "Breast-Cancer-MRI-filepath_filename-mapping"
#: Columns of TCIA's filepath mapping table, in file order.
MAPPING_COLUMNS = ("original_path_and_filename", "classic_path", "descriptive_path")
#: Columns of the NBIA ``metadata.csv`` of a manifest folder, in file order.
NBIA_COLUMNS = (
    "Series UID",
    "Collection",
    "3rd Party Analysis",
    "Data Description URI",
    "Subject ID",
    "Study UID",
    "Study Description",
    "Study Date",
    "Series Description",
    "Manufacturer",
    "Modality",
    "SOP Class Name",
    "SOP Class UID",
    "Number of Images",
    "File Size",
    "File Location",
    "Download Timestamp",
)
#: Dynamic-series description families, cycled over the cases (the last one may be map-only).
DUKE_FAMILIES = ("ax_dyn", "ax_3d_dyn", "vibrant_multiphase", "fl3d_dynviews")
_ORDINALS = ("1st", "2nd", "3rd", "4th")


@dataclass(frozen=True)
class DukeCasePlan:
    """How case ``index`` of a Duke-layout phantom is acquired and named.

    Attributes:
        index: cohort index (the phantom's ``make_case`` index: same anatomy as ``PH{index:04d}``).
        case_id: ``Breast_MRI_{index + 1:03d}``.
        family: the dynamic series' description family, one of :data:`DUKE_FAMILIES`, or
            ``"map_only"`` (descriptions no rule can match; only the series map resolves it).
        num_post: post-contrast phases (2..4).
        reversed_numbers: file number ``f`` holds the position-sorted slice ``z = Z - f``
            (``1-001.dcm`` is the highest slice position) instead of ``z = f - 1``.
        t1_same_grid: the non-fat-sat T1 is on the dynamic grid (else on another matrix and
            slice count, same field of view).
        seg_mask: ``None`` (no breast mask, like most Duke cases), ``"same_grid"``, or
            ``"other_grid"`` (other spacing and the y axis flipped: direction ``-1``).
        manufacturer: ``GE MEDICAL SYSTEMS`` or ``SIEMENS``.
    """

    index: int
    case_id: str
    family: str
    num_post: int
    reversed_numbers: bool
    t1_same_grid: bool
    seg_mask: Optional[str]
    manufacturer: str


def duke_case_id(index: int) -> str:
    """Duke case id of a cohort index: ``0 -> "Breast_MRI_001"``."""
    return f"Breast_MRI_{index + 1:03d}"


def duke_case_plan(index: int, num_cases: int) -> DukeCasePlan:
    """The plan of case ``index`` in a cohort of ``num_cases`` (deterministic, no seed).

    Families cycle over :data:`DUKE_FAMILIES` (the last case is ``"map_only"`` when
    ``num_cases >= 4``), post-contrast phases cycle 2, 3, 4, every third case (index 2, 5, ...)
    numbers its files against position, even cases have the T1 on the dynamic grid, and even cases
    have a breast mask (on another grid for index 2, 6, ...).
    """
    map_only = num_cases >= 4 and index == num_cases - 1
    family = "map_only" if map_only else DUKE_FAMILIES[index % len(DUKE_FAMILIES)]
    seg = None if index % 2 else ("other_grid" if index % 4 == 2 else "same_grid")
    return DukeCasePlan(
        index=index,
        case_id=duke_case_id(index),
        family=family,
        num_post=2 + index % 3,
        reversed_numbers=index % 3 == 2,
        t1_same_grid=index % 2 == 0,
        seg_mask=seg,
        manufacturer=_SIEMENS if family == "fl3d_dynviews" else _GE,
    )


@dataclass(frozen=True)
class _Series:
    """One DICOM series of a Duke case (before writing).

    ``role``: ``localizer``, ``T1``, ``pre``, ``post_k`` or ``multiphase``; ``phases``: the phantom
    phases it holds (one, or all for the multiphase series).
    """

    role: str
    number: int
    description: str
    phases: Tuple[int, ...] = ()


def _dynamic_series(plan: DukeCasePlan) -> List[_Series]:
    """The dynamic series of a case: SeriesNumber and SeriesDescription as the real scanners."""
    n = plan.num_post
    posts = [f"post_{k}" for k in range(1, n + 1)]
    if plan.family == "vibrant_multiphase":  # one series holds every phase
        return [_Series("multiphase", 5, "Ax Vibrant MultiPhase", tuple(range(n + 1)))]
    if plan.family == "ax_dyn":
        names = ["ax dyn pre"] + [f"ax dyn {_ORDINALS[k]} pass" for k in range(n)]
        numbers = list(range(3, 4 + n))
    elif plan.family == "ax_3d_dyn":
        names = ["ax 3d dyn"] + [f"Ph{k}/ax 3d dyn" for k in range(1, n + 1)]
        numbers = [6] + [100 * (k + 6) for k in range(1, n + 1)]  # 6, 700, 800, ...
    elif plan.family == "fl3d_dynviews":
        names = ["t1_fl3d_tra_dynVIEWS_spair_ pre"]
        names += [f"t1_fl3d_tra_dynVIEWS_spair {_ORDINALS[k]} pass" for k in range(n)]
        numbers = list(range(6, 7 + n))
    else:  # map_only: one description for all, series numbers not in phase order
        names = ["ax 3d"] * (n + 1)
        numbers = [10 + (p + 1) % (n + 1) for p in range(n + 1)]
    return [
        _Series(role, num, name, (p,))
        for p, (role, num, name) in enumerate(zip(["pre"] + posts, numbers, names))
    ]


def _case_series(plan: DukeCasePlan) -> List[_Series]:
    siemens = plan.manufacturer == _SIEMENS
    loc = _Series("localizer", 1, "loc" if siemens or plan.family == "map_only" else "3 Plane Loc")
    t1 = _Series("T1", 4 if siemens else 2, "ax t1 tse c" if plan.index % 4 == 1 else "ax t1")
    return [loc, t1] + _dynamic_series(plan)
