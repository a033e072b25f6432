"""MAMA-MIA layout: :func:`write_mama_mia_layout`, the phantom as the MAMA-MIA download.
"""

import contextlib
import logging
import os
from typing import Callable, Dict, List, Optional

import numpy as np
from scipy import ndimage

from ....fileio import atomic_folder, atomic_path, write_json_atomic
from ..case import PhantomCase, make_case
from ..cohort import (
    _STATE_DIR,
    CohortSummary,
    _case_record,
    _prepare_out_dir,
    _to_int16,
    _write_nifti,
)
from .common import (
    _GE,
    _SIEMENS,
    _csv_text,
    _generate_all,
    _hash_int,
    _layout_params,
    _load_record,
    _phantom_json,
    _summary,
    _write_text,
    _write_xlsx,
)

__all__ = [
    "MAMA_MIA_DATASETS",
    "mama_mia_case_id",
    "write_mama_mia_layout",
]

logger = logging.getLogger(__name__)

MAMA_MIA_DATASETS = ("DUKE", "ISPY1", "ISPY2", "NACT")


# ----------------------------------------------------------------------------------------------
# MAMA-MIA layout
# ----------------------------------------------------------------------------------------------
def mama_mia_case_id(index: int) -> str:
    """MAMA-MIA-style case id (upper case, as the image folder): ``DUKE_001``, ``ISPY1_1001``,
    ``ISPY2_100899``, ``NACT_01``, then ``DUKE_002`` ... (datasets cycle)."""
    n = index // len(MAMA_MIA_DATASETS)
    dataset = MAMA_MIA_DATASETS[index % len(MAMA_MIA_DATASETS)]
    number = {"DUKE": f"{n + 1:03d}", "ISPY1": str(1001 + n), "ISPY2": str(100899 + n)}
    return f"{dataset}_{number.get(dataset, f'{n + 1:02d}')}"


def _mama_paths(out_dir: str, index: int) -> Dict[str, str]:
    cid = mama_mia_case_id(index)
    low = cid.lower()
    return {
        "images": os.path.join(out_dir, "images", cid),
        "stem": low if index % 3 == 2 else cid,  # file names: sometimes lower case
        "expert": os.path.join(out_dir, "segmentations", "expert", f"{low}.nii.gz"),
        "automatic": os.path.join(out_dir, "segmentations", "automatic", f"{low}.nii.gz"),
        "info": os.path.join(out_dir, "patient_info_files", f"{low}.json"),
        "record": os.path.join(out_dir, _STATE_DIR, "cases", f"{cid}.json"),
    }


def _mama_info(index: int, case: PhantomCase, seed: int) -> Dict[str, object]:
    """patient_info_files/<id>.json content (a few clinical and imaging fields)."""
    cid = mama_mia_case_id(index)
    age = 30 + _hash_int(seed, index, "age") % 45
    return {
        "patient_id": cid,
        "clinical_data": {"age": age, "menopause": "post" if age >= 52 else "pre"},
        "imaging_data": {
            "dataset": cid.split("_")[0],
            "scanner_manufacturer": _SIEMENS if index % 2 else _GE,
            "field_strength": 3.0 if index % 2 else 1.5,
            "image_size": list(case.phases.shape[:0:-1]),
            "pixel_spacing": [round(v, 6) for v in case.spacing[:2]],
            "slice_thickness": round(case.spacing[2], 6),
            "num_phases": int(case.phases.shape[0]),
            "acquisition_times_s": list(case.phase_times_s),
        },
    }


def _write_mama_case(index: int, out_dir: str, params: Dict[str, object]) -> Dict[str, object]:
    """Worker job: make case ``index`` and write it in the MAMA-MIA layout; returns its record."""
    num_post = 2 + index % 4
    case = make_case(
        index,
        params["seed"],
        matrix=params["matrix"],
        slices=params["slices"],
        fov_mm=params["fov_mm"],
        num_phases=1 + num_post,
        phase_interval_s=params["phase_interval_s"],
    )
    cid, paths = mama_mia_case_id(index), _mama_paths(out_dir, index)
    tmp_dir = os.path.join(out_dir, _STATE_DIR, "tmp")  # the cohort writer removes it at the end
    # Expert: the phantom's lesion labels; automatic: a coarser (dilated) binary mask.
    auto = ndimage.binary_dilation(case.lesion_labels > 0, iterations=1).astype(np.uint8)
    with contextlib.ExitStack() as stack:  # every file of the case appears whole, record last
        images = stack.enter_context(atomic_folder(paths["images"], tmp_dir))
        for p, phase in enumerate(case.phases):
            name = f"{paths['stem']}_{p:04d}.nii.gz"
            _write_nifti(_to_int16(phase), os.path.join(images, name), case.spacing, case.origin)
        for key, array in (("expert", case.lesion_labels), ("automatic", auto)):
            tmp = stack.enter_context(atomic_path(paths[key], tmp_dir))
            _write_nifti(array, tmp, case.spacing, case.origin)
        info = _mama_info(index, case, params["seed"])
        write_json_atomic(stack.enter_context(atomic_path(paths["info"], tmp_dir)), info, indent=1)
        if os.path.exists(paths["record"]):
            os.remove(paths["record"])
    record = _case_record(case, index)
    record.update(
        {
            "case_id": cid,
            "phantom_case_id": case.case_id,
            "file_stem": paths["stem"],
            "num_phases": int(case.phases.shape[0]),
            "boxes": [list(lesion.box) for lesion in case.lesions],
            "clinical": info,
        }
    )
    write_json_atomic(paths["record"], record, indent=1)
    logger.info("%s: %d mass(es)", cid, len(case.lesions))
    return record


def _mama_done(out_dir: str) -> Callable[[int, str], Optional[Dict]]:
    def is_done(index: int, cid: str) -> Optional[Dict[str, object]]:
        paths = _mama_paths(out_dir, index)
        record = _load_record(paths["record"])
        if record is None:
            return None
        images = [
            os.path.join(paths["images"], f"{paths['stem']}_{p:04d}.nii.gz")
            for p in range(record["num_phases"])
        ]
        files = images + [paths["expert"], paths["automatic"], paths["info"]]
        return record if all(os.path.isfile(f) for f in files) else None

    return is_done


_CLINICAL_COLUMNS = (
    "patient_id",
    "dataset",
    "age",
    "menopause",
    "manufacturer",
    "field_strength",
    "num_phases",
    "pixel_spacing",
    "slice_thickness",
)


def _clinical_row(record: Dict[str, object]) -> List[object]:
    """clinical_and_imaging_info.xlsx row (see ``_CLINICAL_COLUMNS``) of a case record."""
    c, im = record["clinical"]["clinical_data"], record["clinical"]["imaging_data"]
    spacing = "[" + ", ".join(str(v) for v in im["pixel_spacing"]) + "]"
    return [
        record["case_id"],
        im["dataset"],
        c["age"],
        c["menopause"],
        im["scanner_manufacturer"],
        im["field_strength"],
        im["num_phases"],
        spacing,
        im["slice_thickness"],
    ]


def write_mama_mia_layout(
    out_dir: str,
    num_cases: int,
    seed: int,
    matrix: int = 320,
    slices: int = 96,
    fov_mm: float = 320.0,
    phase_interval_s: float = 75.0,
    workers: int = 1,
    progress: Optional[Callable[[str, bool], None]] = None,
) -> CohortSummary:
    """Write (or finish) a phantom cohort in the MAMA-MIA download layout::

        OUT/images/<ID>/<ID or id>_000k.nii.gz   k = 0 pre, 1.. post (1 pre + 2..5 post), int16
        OUT/segmentations/expert/<id>.nii.gz     uint8 lesion labels (mass i has value i)
        OUT/segmentations/automatic/<id>.nii.gz  uint8 0/1, the masses dilated by one voxel
        OUT/clinical_and_imaging_info.xlsx       sheet dataset_info, one row per case
        OUT/patient_info_files/<id>.json
        OUT/train_test_splits.csv                train_split,test_split (test column shorter)
        OUT/phantom.json                         ground truth: boxes per case (not in MAMA-MIA)

    ``<ID>`` is upper case (:func:`mama_mia_case_id`), ``<id>`` lower case; every third case
    (index 2, 5, ...) names its image files in lower case. Every fifth case (index 4, 9, ...) is
    in the test split. Cases without a mass have an empty expert mask.

    Args:
        out_dir: new or empty folder, or a MAMA-MIA-layout phantom with the same parameters.
        num_cases: number of cases.
        seed: cohort seed.
        matrix, slices, fov_mm, phase_interval_s: see :func:`breast_d2.data.phantom.make_case`.
        workers: processes writing cases in parallel (the bytes do not depend on it).
        progress: called as ``progress(case_id, generated)`` after each case.

    Returns:
        CohortSummary.
    """
    params = _layout_params(
        "mama-mia", num_cases, seed, matrix, slices, fov_mm, phase_interval_s, workers
    )
    out_dir = os.path.abspath(out_dir)
    _prepare_out_dir(out_dir, params)
    ids = [mama_mia_case_id(i) for i in range(num_cases)]
    is_done = _mama_done(out_dir)
    records, generated = _generate_all(
        _write_mama_case, ids, is_done, out_dir, params, workers, progress
    )
    rows = [_clinical_row(r) for r in records]
    info = os.path.join(out_dir, "clinical_and_imaging_info.xlsx")
    _write_xlsx(info, "dataset_info", _CLINICAL_COLUMNS, rows)
    test = [cid for i, cid in enumerate(ids) if i % 5 == 4]
    train = [cid for i, cid in enumerate(ids) if i % 5 != 4]
    splits = [[a, test[i] if i < len(test) else ""] for i, a in enumerate(train)]
    text = _csv_text(("train_split", "test_split"), splits)
    _write_text(os.path.join(out_dir, "train_test_splits.csv"), text)
    doc = _phantom_json(params, records)
    doc["test_split"] = test
    write_json_atomic(os.path.join(out_dir, "phantom.json"), doc, indent=1)
    return _summary(out_dir, records, generated)
