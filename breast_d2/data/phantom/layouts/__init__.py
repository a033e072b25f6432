"""The phantom cohort written as the public cohorts are downloaded: Duke TCIA and MAMA-MIA.

:func:`write_duke_layout` writes the phantom as a Duke-Breast-Cancer-MRI download from TCIA (NBIA
"descriptive" directory type) plus the files users keep beside it::

    OUT/manifest-<13 digits>/metadata.csv                   NBIA: one row per series
    OUT/manifest-<13 digits>/Duke-Breast-Cancer-MRI/Breast_MRI_NNN/
        MM-DD-YYYY-NA-<StudyDescription>-<5 digits>/         the study folder
            <SeriesNumber>.000000-<SeriesDescription>-<5 digits>/1-001.dcm ...
    OUT/Annotation_Boxes.xlsx                               Duke boxes (1-based, inclusive)
    OUT/Breast-Cancer-MRI-filepath_filename-mapping.xlsx    TCIA's series map (+ .csv on request)
    OUT/Segmentation_Masks_NRRD/Breast_MRI_NNN/Segmentation_Breast_MRI_NNN_Breast.seg.nrrd
    OUT/phantom.json                                        ground truth for tests (not in Duke)

Every case has a 3-plane localizer, a non-fat-sat T1 (on the dynamic grid or on another one) and
1 pre + 2-4 post-contrast dynamic series in one of four real description families (see
:func:`duke_case_plan`); some cases number their files against slice position, and with 4 or more
cases the last one can only be resolved by the series map. The dynamic series carry the phantom's
geometry (identity direction: axial) and its int16 phase images exactly.

:func:`write_mama_mia_layout` writes ``images/<ID>/<ID or id>_000k.nii.gz`` with mixed letter case,
``segmentations/expert`` and ``segmentations/automatic`` masks, ``clinical_and_imaging_info.xlsx``,
``patient_info_files/`` and ``train_test_splits.csv``.

Both reuse :func:`breast_d2.data.phantom.make_case` (same anatomy as case ``index`` of the NIfTI
layout, its first phases), write each case atomically (a temporary folder, then renames, then a
record that marks it finished), resume like :func:`breast_d2.data.phantom.write_cohort`, and give
the same bytes for the same seed whatever ``workers`` is.

Modules: :mod:`.duke_plan` (what each Duke case holds), :mod:`.dicom` (its images and DICOM
files), :mod:`.duke` (the Duke writer and its tables), :mod:`.mama_mia` (the MAMA-MIA writer) and
:mod:`.common` (identifiers, csv / xlsx tables and the resumable driver both writers share).
"""

import logging

from .duke import write_duke_layout
from .duke_plan import (
    DUKE_COLLECTION,
    DUKE_FAMILIES,
    DUKE_MAPPING_NAME,
    MAPPING_COLUMNS,
    NBIA_COLUMNS,
    DukeCasePlan,
    duke_case_id,
    duke_case_plan,
)
from .mama_mia import MAMA_MIA_DATASETS, mama_mia_case_id, write_mama_mia_layout

__all__ = [
    "DUKE_COLLECTION",
    "DUKE_FAMILIES",
    "DUKE_MAPPING_NAME",
    "MAPPING_COLUMNS",
    "NBIA_COLUMNS",
    "MAMA_MIA_DATASETS",
    "DukeCasePlan",
    "duke_case_id",
    "duke_case_plan",
    "mama_mia_case_id",
    "write_duke_layout",
    "write_mama_mia_layout",
]

logger = logging.getLogger(__name__)
