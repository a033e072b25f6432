"""Duke layout: :func:`write_duke_layout`, the phantom as a Duke-Breast-Cancer-MRI download.

Each case (:mod:`.duke_plan`, :mod:`.dicom`) is written atomically with a record that marks it
finished; the cohort tables (NBIA ``metadata.csv``, ``Annotation_Boxes.xlsx``, TCIA's filepath
mapping, ``phantom.json``) are written from the records at the end, so a resumed run writes the
same bytes.
"""

import contextlib
import datetime
import logging
import os
from dataclasses import asdict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import SimpleITK as sitk

from ....fileio import atomic_folder, write_json_atomic
from ...boxes import DUKE_COLUMNS, box_to_duke_row
from ..case import PhantomCase, make_case
from ..cohort import _STATE_DIR, CohortSummary, _case_record, _prepare_out_dir
from .common import (
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
from .dicom import (
    _MR_STORAGE,
    _CaseContext,
    _mask_image,
    _Study,
    _study,
    _t1_image,
    _write_series,
    _Written,
)
from .duke_plan import (
    DUKE_COLLECTION,
    DUKE_MAPPING_NAME,
    MAPPING_COLUMNS,
    NBIA_COLUMNS,
    DukeCasePlan,
    _case_series,
    duke_case_id,
    duke_case_plan,
)

__all__ = [
    "write_duke_layout",
]

logger = logging.getLogger(__name__)

_DUKE_DOI = "https://doi.org/10.7937/TCIA.e3sv-re93"


def _seq_number(number: int, count: int) -> str:
    return f"{number:0{max(3, len(str(count)))}d}"


# ----------------------------------------------------------------------------------------------
# Duke: one case
# ----------------------------------------------------------------------------------------------
def _write_duke_case(index: int, out_dir: str, params: Dict[str, object]) -> Dict[str, object]:
    """Worker job: make case ``index`` and write it in the Duke layout; returns its record."""
    plan = duke_case_plan(index, params["num_cases"])
    case = make_case(
        index,
        params["seed"],
        matrix=params["matrix"],
        slices=params["slices"],
        fov_mm=params["fov_mm"],
        num_phases=1 + plan.num_post,
        phase_interval_s=params["phase_interval_s"],
    )
    study = _study(plan, params["seed"])
    paths = _duke_paths(out_dir, params, plan)
    tmp_dir = os.path.join(out_dir, _STATE_DIR, "tmp")  # the cohort writer removes it at the end
    ctx = _CaseContext(plan, study, case, params["seed"], _t1_image(case, plan.t1_same_grid))
    with contextlib.ExitStack() as stack:  # the case's folders appear whole, record last
        case_dir = stack.enter_context(atomic_folder(paths["case"], tmp_dir))
        written = [_write_series(ctx, s, case_dir) for s in _case_series(plan)]
        if plan.seg_mask:
            seg_dir = stack.enter_context(atomic_folder(os.path.dirname(paths["seg"]), tmp_dir))
            seg = os.path.join(seg_dir, os.path.basename(paths["seg"]))
            sitk.WriteImage(_mask_image(case, plan.seg_mask == "other_grid"), seg, True)
        record = _duke_record(plan, case, study, written, params)
        if os.path.exists(paths["record"]):
            os.remove(paths["record"])
    write_json_atomic(paths["record"], record, indent=1)
    logger.info("%s: %s, %d mass(es)", plan.case_id, plan.family, len(case.lesions))
    return record


def _duke_paths(out_dir: str, params: Dict[str, object], plan: DukeCasePlan) -> Dict[str, str]:
    cid = plan.case_id
    return {
        "case": os.path.join(out_dir, params["manifest"], DUKE_COLLECTION, cid),
        "seg": os.path.join(
            out_dir, "Segmentation_Masks_NRRD", cid, f"Segmentation_{cid}_Breast.seg.nrrd"
        ),
        "record": os.path.join(out_dir, _STATE_DIR, "cases", f"{cid}.json"),
    }


def _duke_boxes(case: PhantomCase, plan: DukeCasePlan) -> List[List[object]]:
    """Annotation_Boxes rows of a case: slices are FILE NUMBERS of the dynamic series."""
    nz = case.phases.shape[1]
    rows = []
    for lesion in case.lesions:
        r0, r1, c0, c1, s0, s1 = box_to_duke_row(lesion.box)
        if plan.reversed_numbers:  # files f <-> z = Z - f: slices z0..z1-1 are files Z-z1+1..Z-z0
            s0, s1 = nz - s1 + 1, nz - s0 + 1
        rows.append([plan.case_id, r0, r1, c0, c1, s0, s1])
    return rows


def _duke_record(plan, case, study, written: Sequence[_Written], params) -> Dict[str, object]:
    """JSON-ready record of a Duke case: ground truth, and the rows of the cohort tables."""
    cid = plan.case_id
    series, mapping, metadata = [], [], []
    for w in written:
        s = w.series
        series.append(
            {
                "role": s.role,
                "number": s.number,
                "description": s.description,
                "folder": w.folder,
                "uid": w.uid,
                "phases": list(s.phases),
                "num_images": w.num_images,
            }
        )
        location = f"./{DUKE_COLLECTION}/{cid}/{w.folder}"
        metadata.append(_nbia_row(plan, study, w, location, params))
        counts: Dict[str, int] = {}
        for seq, _number, _fname in w.files:
            counts[seq] = counts.get(seq, 0) + 1
        for seq, number, fname in w.files:
            stem = f"{cid}_{seq}_{_seq_number(number, counts[seq])}"
            original = f"DICOM_Images/{cid}/{seq}/{stem}.dcm"
            classic = f"{DUKE_COLLECTION}/{cid}/{study.uid}/{w.uid}/{fname}"
            mapping.append([original, classic, f"{DUKE_COLLECTION}/{cid}/{w.folder}/{fname}"])
    mapping.sort(key=lambda row: (_seq_key(row[0].split("/")[2]), row[0]))
    dyn = [w for w in written if w.series.role not in ("localizer", "T1")]
    record = _case_record(case, plan.index)
    record.update(
        {
            "case_id": cid,
            "phantom_case_id": case.case_id,
            "plan": asdict(plan),
            "map_only": plan.family == "map_only",
            "shape": list(case.phases.shape[:0:-1]),
            "spacing": list(case.spacing),
            "origin": list(case.origin),
            "phase_times_s": list(case.phase_times_s),
            "study_folder": study.folder,
            "study_uid": study.uid,
            "series": series,
            "dynamic_series": [w.folder for w in dyn],
            "boxes": [list(lesion.box) for lesion in case.lesions],
            "annotation_rows": _duke_boxes(case, plan),
            "mapping": mapping,
            "metadata": metadata,
        }
    )
    return record


def _seq_key(seq: str) -> Tuple[int, str]:
    """Order of mapping sequences: pre, post_1 .., T1."""
    return (0 if seq == "pre" else 2 if seq == "T1" else 1, seq)


def _nbia_row(plan, study: _Study, w: _Written, location: str, params) -> List[object]:
    return [
        w.uid,
        DUKE_COLLECTION,
        "NO",
        _DUKE_DOI,
        plan.case_id,
        study.uid,
        study.description,
        f"{study.date:%m-%d-%Y}",
        w.series.description,
        plan.manufacturer,
        "MR",
        "MR Image Storage",
        _MR_STORAGE,
        w.num_images,
        f"{w.file_size / 1e6:.2f} MB",
        location,
        params["download_timestamp"],
    ]


# ----------------------------------------------------------------------------------------------
# Duke layout
# ----------------------------------------------------------------------------------------------
def _manifest(seed: int) -> Tuple[str, str]:
    """Manifest folder name (``manifest-`` + a 13-digit epoch in ms) and its download stamp."""
    ms = 1_500_000_000_000 + _hash_int("manifest", seed) % 200_000_000_000
    stamp = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    return f"manifest-{ms}", stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}"


def _duke_done(out_dir: str, params) -> Callable[[int, str], Optional[Dict]]:
    def is_done(index: int, cid: str) -> Optional[Dict[str, object]]:
        plan = duke_case_plan(index, params["num_cases"])
        paths = _duke_paths(out_dir, params, plan)
        record = _load_record(paths["record"])
        if record is None or (plan.seg_mask and not os.path.isfile(paths["seg"])):
            return None
        for s in record["series"]:
            folder = os.path.join(paths["case"], s["folder"])
            if not os.path.isdir(folder) or len(os.listdir(folder)) != s["num_images"]:
                return None
        return record

    return is_done


def write_duke_layout(
    out_dir: str,
    num_cases: int,
    seed: int,
    matrix: int = 320,
    slices: int = 96,
    fov_mm: float = 320.0,
    phase_interval_s: float = 75.0,
    duke_mapping_csv: bool = False,
    workers: int = 1,
    progress: Optional[Callable[[str, bool], None]] = None,
) -> CohortSummary:
    """Write (or finish) a phantom cohort as a Duke-Breast-Cancer-MRI TCIA download.

    See the module docstring for the tree and :func:`duke_case_plan` for what each case holds.
    Dynamic series: SeriesNumber/SeriesDescription of the case's family; voxels = the phantom's
    int16 phases, geometry = the phantom's (axial, ImageOrientationPatient ``1\\0\\0\\0\\1\\0``).
    Annotation_Boxes rows are 1-based inclusive, rows = DICOM rows (y), columns = DICOM columns
    (x), Start/End Slice = file numbers of the dynamic series (per phase for the multiphase
    series). ``phantom.json`` holds per case the position-sorted half-open boxes
    ``[x0, y0, z0, x1, y1, z1]``, the plan, the series and the chosen dynamic series folders.

    Args:
        out_dir: new or empty folder, or a Duke-layout phantom made with the same parameters.
        num_cases: cases ``Breast_MRI_001 ..`` (at most 999).
        seed: cohort seed (case ``i`` has the anatomy of ``make_case(i, seed)``).
        matrix, slices, fov_mm, phase_interval_s: see :func:`breast_d2.data.phantom.make_case`.
        duke_mapping_csv: also write the filepath mapping as ``.csv`` (same columns).
        workers: processes writing cases in parallel (the bytes do not depend on it).
        progress: called as ``progress(case_id, generated)`` after each case.

    Returns:
        CohortSummary.

    Raises:
        ValueError: bad arguments, or ``out_dir`` holds something else.
    """
    params = _layout_params(
        "duke", num_cases, seed, matrix, slices, fov_mm, phase_interval_s, workers
    )
    params["manifest"], params["download_timestamp"] = _manifest(seed)
    out_dir = os.path.abspath(out_dir)
    _prepare_out_dir(out_dir, params)
    ids = [duke_case_id(i) for i in range(num_cases)]
    is_done = _duke_done(out_dir, params)
    records, generated = _generate_all(
        _write_duke_case, ids, is_done, out_dir, params, workers, progress
    )
    _write_duke_tables(out_dir, params, records, duke_mapping_csv)
    return _summary(out_dir, records, generated)


def _write_duke_tables(out_dir, params, records, mapping_csv: bool) -> None:
    """The cohort-level files, from the case records (so a resumed run writes the same)."""
    metadata = [row for r in records for row in r["metadata"]]
    meta_path = os.path.join(out_dir, params["manifest"], "metadata.csv")
    _write_text(meta_path, _csv_text(NBIA_COLUMNS, metadata))
    boxes = [row for r in records for row in r["annotation_rows"]]
    _write_xlsx(os.path.join(out_dir, "Annotation_Boxes.xlsx"), "Sheet1", DUKE_COLUMNS, boxes)
    mapping = [row for r in records for row in r["mapping"]]
    base = os.path.join(out_dir, DUKE_MAPPING_NAME)
    _write_xlsx(base + ".xlsx", "Sheet1", MAPPING_COLUMNS, mapping)
    if mapping_csv:
        _write_text(base + ".csv", _csv_text(MAPPING_COLUMNS, mapping))
    doc = _phantom_json(params, records, drop=("mapping", "metadata"))
    doc["collection_dir"] = f"{params['manifest']}/{DUKE_COLLECTION}"
    write_json_atomic(os.path.join(out_dir, "phantom.json"), doc, indent=1)
