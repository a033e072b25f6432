"""Synthetic DCE-MRI phantom cohort: the embedded default data of breast_d2.

Each case imitates one examination of the reference protocol (Duke-Breast-Cancer-MRI): axial prone
fat-suppressed T1-weighted gradient echo, matrix 320 x 320, FOV 320 mm (1 mm pixels), 96 slices of
1.4 mm, one pre-contrast and eight post-contrast phases. Smaller ``matrix`` / ``slices`` keep the
physical field of view and slab (pixel = fov / matrix, slice = 134.4 mm / slices), so a
128 x 128 x 32 case is a realistic low-resolution version of the same anatomy.

A case contains two breasts (half-ellipsoids hanging anteriorly, i.e. towards row 0), skin, fat,
textured fibroglandular tissue with background parenchymal enhancement graded by BI-RADS
(:mod:`.bpe`), 0-3 masses (benign or malignant; smooth, irregular or spiculated; homogeneous,
heterogeneous or rim enhancement; type I / II / III kinetics), and inside the breasts findings that
are not targets (:mod:`.findings`: foci, intramammary lymph nodes, vessels, non-mass enhancement,
cysts). Outside the breasts: the pectoral muscle, chest wall, lungs, heart, great vessels, internal
mammary and lateral thoracic vessels and axillary lymph nodes, which enhance early and strongly:
what the breast mask has to remove. Images get a smooth multiplicative coil bias field, in some
cases a fat-suppression failure and motion of the pre-contrast phase, a slice profile along z and
Rician noise (:mod:`.acquisition`, :mod:`.motion`). docs/PHANTOM.md lists the published figure
behind each feature and what a cohort measures (:mod:`.measure`, ``tools/phantom_stats.py``).

Arrays are NumPy in SimpleITK order ``[Z, Y, X]`` (slice, row, column); row 0 is anterior. Physical
coordinates (mm) are LPS with identity direction: ``x = origin_x + column * sx`` etc., the volume
centred on (0, 0, 0), so column 0 is the patient's right. Boxes follow docs/DATA_FORMAT.md:
``[x0, y0, z0, x1, y1, z1]`` half-open voxel indices.

On disk (:func:`write_cohort`) the cohort uses the input layout of docs/DATA_FORMAT.md::

    OUT/IMAGES/<case_id>/<case_id>_<phase:04d>.nii.gz   int16, arbitrary MR units (0 .. ~1500)
    OUT/MASKS/<case_id>.nii.gz                           uint8 breast mask (both breasts + skin)
    OUT/LABELS/<case_id>.nii.gz                          uint8 lesion labels (lesion i has value i)
    OUT/boxes.csv                                        Duke Annotation_Boxes (1-based, inclusive)
    OUT/phantom.json                                     parameters, phase times, per-case lesions
    OUT/.phantom/                                        resume bookkeeping (parameters, records)

The package has one module per concern, in dependency order:

- :mod:`.anatomy`: voxel grid, smooth random fields, thorax, breasts, heart, vessels (tissue map);
- :mod:`.kinetics`: phase times, per-tissue intensities, enhancement curves;
- :mod:`.bpe`: background parenchymal enhancement (BI-RADS category, pattern, measured fraction);
- :mod:`.lesions`: masses (the targets) and axillary lymph nodes (distractors);
- :mod:`.findings`: foci, intramammary nodes, vessels, non-mass enhancement, cysts (not targets);
- :mod:`.motion` and :mod:`.acquisition`: coil bias, fat saturation, motion of the pre-contrast
  phase, the signal of each phase, slice profile, Rician noise;
- :mod:`.case`: :func:`make_case` and :class:`PhantomCase`;
- :mod:`.cohort`: :func:`write_case`, :func:`write_cohort` (NIfTI, resume);
- :mod:`.measure`: a cohort's figures against their published anchors (docs/PHANTOM.md);
- :mod:`.layouts`: the same cases written as the Duke TCIA and MAMA-MIA downloads (imported on
  its own: ``from breast_d2.data.phantom.layouts import write_duke_layout``).
"""

import logging

from ..boxes import label_boxes
from .anatomy import TISSUES
from .case import PhantomCase, case_id_for, make_case
from .cohort import BOXES_CSV_HEADER, GENERATOR_VERSION, CohortSummary, write_case, write_cohort
from .kinetics import phase_times
from .lesions import Lesion

# Also importable from here, as before the split (tests and older code use them); new code imports
# them from their modules: the tissue classes, run_case_jobs and the helpers the layouts share.
from .anatomy import AIR, BLOOD, BONE, CHEST, FAT, FGT, LUNG, MASS, MEDIAST  # noqa: F401
from .anatomy import BVESSEL, CYST, FOCUS, IMNODE, MUSCLE, MYO, NME, NODE, SKIN  # noqa: F401
from .case import _check_int, _check_params  # noqa: F401
from .cohort import _STATE_DIR, _case_record, _prepare_out_dir, _to_int16  # noqa: F401
from .cohort import _write_nifti, run_case_jobs  # noqa: F401

__all__ = [
    "GENERATOR_VERSION",
    "TISSUES",
    "BOXES_CSV_HEADER",
    "Lesion",
    "PhantomCase",
    "CohortSummary",
    "case_id_for",
    "phase_times",
    "make_case",
    "label_boxes",  # re-exported: its home is boxes.py (component and box helpers)
    "write_case",
    "write_cohort",
]

logger = logging.getLogger(__name__)
