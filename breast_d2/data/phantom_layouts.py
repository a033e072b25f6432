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
"""

import contextlib
import csv
import datetime
import hashlib
import io
import json
import locale
import logging
import os
import re
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from openpyxl import Workbook
from scipy import ndimage

from ..fileio import atomic_folder, atomic_path, write_atomic, write_json_atomic
from .phantom import (
    _STATE_DIR,
    FAT,
    GENERATOR_VERSION,
    CohortSummary,
    PhantomCase,
    _case_record,
    _check_int,
    _check_params,
    _prepare_out_dir,
    _to_int16,
    _write_nifti,
    make_case,
    run_case_jobs,
)
from .boxes import DUKE_COLUMNS, box_to_duke_row

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
MAMA_MIA_DATASETS = ("DUKE", "ISPY1", "ISPY2", "NACT")

_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"  # SOP Class UID of MR Image Storage
_DUKE_DOI = "https://doi.org/10.7937/TCIA.e3sv-re93"
_ORDINALS = ("1st", "2nd", "3rd", "4th")
_GE, _SIEMENS = "GE MEDICAL SYSTEMS", "SIEMENS"
# Fixed time stamp of the xlsx document properties and zip entries (same seed, same bytes).
_XLSX_STAMP = b"2000-01-01T00:00:00Z"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# The 3-plane localizer: 3 slices per orientation, FOV (mm) and slice thickness (mm).
_LOC_FOV_MM, _LOC_THICKNESS_MM = 400.0, 8.0


# ----------------------------------------------------------------------------------------------
# Deterministic identifiers
# ----------------------------------------------------------------------------------------------
def _hash_int(*parts) -> int:
    """A 128-bit integer that depends only on ``parts`` (stable across runs and processes)."""
    digest = hashlib.sha256(json.dumps(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:16], "big")


def _uid(*parts) -> str:
    """A DICOM UID in the UUID-derived ``2.25`` root, determined by ``parts``."""
    return f"2.25.{_hash_int('uid', *parts)}"


def _digits(n: int, *parts) -> str:
    """``n`` decimal digits (no leading zero) determined by ``parts``."""
    lo = 10 ** (n - 1)
    return str(lo + _hash_int("digits", *parts) % (9 * lo))


def _file_name(number: int, count: int) -> str:
    """NBIA file name: ``1-001.dcm`` .. (3 digits, more when a series has over 999 files)."""
    return f"1-{number:0{max(3, len(str(count)))}d}.dcm"


def _seq_number(number: int, count: int) -> str:
    return f"{number:0{max(3, len(str(count)))}d}"


# ----------------------------------------------------------------------------------------------
# Duke: what each case looks like
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Images of the extra series (localizer, T1, masks on another grid)
# ----------------------------------------------------------------------------------------------
def _sitk_volume(array: np.ndarray, case: PhantomCase):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(v) for v in case.spacing))
    img.SetOrigin(tuple(float(v) for v in case.origin))
    return img


def _centred_grid(size, spacing, direction, centre, pixel=sitk.sitkInt16):
    """An empty image of ``size`` (x, y, z) whose voxel-centre box is centred on ``centre``."""
    ref = sitk.Image([int(v) for v in size], pixel)
    ref.SetSpacing([float(v) for v in spacing])
    ref.SetDirection([float(v) for v in np.asarray(direction, float).ravel()])
    half = np.asarray(direction, float) @ ((np.asarray(size) - 1) / 2.0 * np.asarray(spacing))
    ref.SetOrigin([float(v) for v in np.asarray(centre, float) - half])
    return ref


def _resample(src, ref, nearest: bool = False):
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.Resample(src, ref, sitk.Transform(), interp, 0.0, ref.GetPixelID())


def _centre(case: PhantomCase) -> np.ndarray:
    size = np.array(case.phases.shape[:0:-1])  # (X, Y, Z)
    return np.asarray(case.origin) + (size - 1) / 2.0 * np.asarray(case.spacing)


def _t1_image(case: PhantomCase, same_grid: bool):
    """Non-fat-sat T1: the pre-contrast image with bright fat, on the dynamic grid or another."""
    t1 = case.phases[0] * np.where(case.tissue == FAT, 4.0, 1.0).astype(np.float32)
    img = _sitk_volume(_to_int16(t1), case)
    if same_grid:
        return img
    x, y, z = case.phases.shape[:0:-1]
    size = (x - x // 4, y - y // 4, z + z // 2)  # same FOV and slab, other matrix / slices
    extent = np.array([x, y, z]) * np.asarray(case.spacing)
    return _resample(img, _centred_grid(size, extent / size, np.eye(3), _centre(case)))


# SimpleITK directions (columns = image x, y, normal) of the localizer planes.
_LOC_PLANES = {
    "sagittal": np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float),  # rows A->P, cols H->F
    "coronal": np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float),  # rows R->L, cols H->F
    "axial": np.eye(3),
}


def _localizer_images(case: PhantomCase) -> List:
    """3 sagittal, 3 coronal and 3 axial one-slice images resampled from the pre-contrast phase."""
    pre = _sitk_volume(_to_int16(case.phases[0]), case)
    n = max(case.phases.shape[-1] // 2, 32)
    spacing = (_LOC_FOV_MM / n, _LOC_FOV_MM / n, _LOC_THICKNESS_MM)
    centre = _centre(case)
    images = []
    for direction in _LOC_PLANES.values():
        for offset in (-30.0, 0.0, 30.0):  # mm along the plane's normal
            ref = _centred_grid((n, n, 1), spacing, direction, centre + direction[:, 2] * offset)
            images.append(_resample(pre, ref))
    return images


def _mask_image(case: PhantomCase, other_grid: bool):
    """Breast mask (uint8 0/1): on the dynamic grid, or finer in-plane with the y axis flipped."""
    img = _sitk_volume(case.breast_mask.astype(np.uint8), case)
    if not other_grid:
        return img
    x, y, z = case.phases.shape[:0:-1]
    size = (x + x // 4, y + y // 4, z)
    spacing = np.array([x, y, z]) * np.asarray(case.spacing) / size
    ref = _centred_grid(size, spacing, np.diag([1, -1, 1]), _centre(case), sitk.sitkUInt8)
    return _resample(img, ref, nearest=True)


# ----------------------------------------------------------------------------------------------
# Duke: DICOM writing
# ----------------------------------------------------------------------------------------------
def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    return format(float(value), ".10g")


def _tm(seconds: float) -> str:
    """DICOM time ``HHMMSS`` of a number of seconds after midnight."""
    s = int(round(seconds)) % 86400
    return f"{s // 3600:02d}{s // 60 % 60:02d}{s % 60:02d}"


@dataclass(frozen=True)
class _Study:
    """Study-level facts of one case."""

    uid: str
    frame_uid: str
    date: datetime.date
    start_s: float  # study start, seconds after midnight
    description: str
    folder: str


def _study(plan: DukeCasePlan, seed: int) -> _Study:
    date = datetime.date(1990, 1, 1) + datetime.timedelta(_hash_int(seed, plan.index, "d") % 4000)
    desc = "MRI BREAST BILATERAL W  WO" if plan.manufacturer == _GE else "BREAST BILATERAL W WO"
    folder = f"{date:%m-%d-%Y}-NA-{desc}-{_digits(5, seed, plan.index, 'study')}"
    return _Study(
        uid=_uid(seed, plan.index, "study"),
        frame_uid=_uid(seed, plan.index, "frame"),
        date=date,
        start_s=8 * 3600 + 60 * (_hash_int(seed, plan.index, "t") % 540),
        description=desc,
        folder=folder,
    )


def _series_tags(plan: DukeCasePlan, study: _Study, series: _Series, uid: str) -> Dict[str, str]:
    """Tags shared by every file of a series (SimpleITK ``group|element`` keys)."""
    dyn = series.role not in ("localizer", "T1")
    se = series.role == "T1" and "tse" in series.description
    field = "3" if plan.manufacturer == _SIEMENS or plan.family == "ax_3d_dyn" else "1.5"
    date = f"{study.date:%Y%m%d}"
    return {
        "0008|0008": "ORIGINAL\\PRIMARY\\OTHER",
        "0008|0016": _MR_STORAGE,
        "0008|0020": date,
        "0008|0021": date,
        "0008|0022": date,
        "0008|0023": date,
        "0008|0030": _tm(study.start_s),
        "0008|0060": "MR",
        "0008|0070": plan.manufacturer,
        "0008|1030": study.description,
        "0008|103e": series.description,
        "0010|0010": plan.case_id,
        "0010|0020": plan.case_id,
        "0018|0020": "SE" if se else "GR",
        "0018|0021": "SK\\SP" if se else "SS\\SK" if dyn else "SS",
        "0018|0080": "600" if se else _ds(4.5 if dyn else 7.2),
        "0018|0081": "12" if se else _ds(2.1 if dyn else 3.4),
        "0018|0087": field,
        "0018|1314": "90" if se else ("10" if dyn else "30"),
        "0020|000d": study.uid,
        "0020|000e": uid,
        "0020|0011": str(series.number),
        "0020|0052": study.frame_uid,
        "0028|1052": "0",
        "0028|1053": "1",
    }


def _slice_tags(image, number: int, uid: str, time_s: float) -> Dict[str, str]:
    """Per-file tags of a one-slice image (geometry from the image itself)."""
    d = np.asarray(image.GetDirection(), float).reshape(3, 3)
    iop = list(d[:, 0]) + list(d[:, 1])
    origin = image.GetOrigin()
    normal = d[:, 2]
    return {
        "0008|0018": uid,
        "0008|0032": _tm(time_s),
        "0008|0033": _tm(time_s),
        "0018|0050": _ds(image.GetSpacing()[2]),
        "0018|0088": _ds(image.GetSpacing()[2]),
        "0020|0013": str(number),
        "0020|0032": "\\".join(_ds(v) for v in origin),
        "0020|0037": "\\".join(_ds(v) for v in iop),
        "0020|1041": _ds(float(np.dot(normal, origin))),
    }


def _write_dicom(image, path: str, tags: Dict[str, str]) -> None:
    """Write a one-slice 3D image as one DICOM file (SimpleITK/GDCM, our UIDs kept)."""
    for key, value in tags.items():
        image.SetMetaData(key, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(path)
    # ITK's DICOM writer leaves the process's LC_CTYPE at "C" for a 3D image, which turns
    # Python's default text encoding into ASCII for the rest of the process: put it back.
    ctype = locale.setlocale(locale.LC_CTYPE)
    try:
        writer.Execute(image)
    finally:
        locale.setlocale(locale.LC_CTYPE, ctype)


@dataclass
class _Written:
    """What was written for one series: its folder, UID, file count and bytes."""

    series: _Series
    folder: str
    uid: str
    num_images: int = 0
    file_size: int = 0
    # (sequence folder of the mapping, number within that sequence, file name), mapped series only
    files: List[Tuple[str, int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _CaseContext:
    """Everything the series writers of one case need."""

    plan: DukeCasePlan
    study: _Study
    case: PhantomCase
    seed: int
    t1: sitk.Image

    def num_files(self, series: _Series) -> int:
        if series.role == "localizer":
            return 3 * len(_LOC_PLANES)
        if series.role == "T1":
            return self.t1.GetSize()[2]
        return self.case.phases.shape[1] * len(series.phases)


def _file_number(z: int, num_slices: int, reversed_numbers: bool) -> int:
    """File number (1-based) of position-sorted slice ``z``; reversed: ``f = Z - z``."""
    return num_slices - z if reversed_numbers else z + 1


def _write_series(ctx: _CaseContext, series: _Series, case_dir: str) -> _Written:
    """Write one series below ``case_dir/<study folder>/`` and describe it."""
    plan, study, seed = ctx.plan, ctx.study, ctx.seed
    uid = _uid(seed, plan.index, "series", series.number)
    name = series.description.replace("/", "")
    folder = f"{series.number}.000000-{name}-{_digits(5, seed, plan.index, series.number)}"
    out = os.path.join(case_dir, study.folder, folder)
    os.makedirs(out)
    base = _series_tags(plan, study, series, uid)
    written = _Written(series, f"{study.folder}/{folder}", uid)
    count = ctx.num_files(series)
    for number, image, extra, mapped in _series_slices(ctx, series):
        fname = _file_name(number, count)
        sop_uid = _uid(seed, plan.index, uid, number)
        tags = dict(base)
        tags.update(_slice_tags(image, number, sop_uid, extra.pop("t")))
        tags.update(extra)
        path = os.path.join(out, fname)
        _write_dicom(image, path, tags)
        written.num_images += 1
        written.file_size += os.path.getsize(path)
        if mapped is not None:
            written.files.append((mapped[0], mapped[1], fname))
    return written


def _series_slices(ctx: _CaseContext, series: _Series):
    """Yield ``(file number, one-slice image, extra tags with time "t", mapping or None)``.

    ``mapping`` is ``(sequence folder, number within the sequence)`` of TCIA's filepath mapping:
    ``pre``, ``post_k`` or ``T1``; the multiphase series numbers its files phase-major
    (``p * Z + f``) and maps each to its phase and per-phase number ``f``.
    """
    plan, study, case = ctx.plan, ctx.study, ctx.case
    if series.role == "localizer":
        for i, image in enumerate(_localizer_images(case), start=1):
            yield i, image, {"t": study.start_s + 30}, None
        return
    if series.role == "T1":
        volumes = [(ctx.t1, "T1", study.start_s + 120, {})]
    else:
        volumes = []
        for p in series.phases:
            seq = "pre" if p == 0 else f"post_{p}"
            t = study.start_s + 360 + case.phase_times_s[p]
            extra = {}
            if series.role == "multiphase":
                extra = {
                    "0020|0100": str(p + 1),
                    "0020|0105": str(len(series.phases)),
                    "0018|1060": _ds(1000 * case.phase_times_s[p]),
                }
            volumes.append((_sitk_volume(_to_int16(case.phases[p]), case), seq, t, extra))
    for k, (volume, seq, t, extra) in enumerate(volumes):
        nz = volume.GetSize()[2]
        for z in range(nz):
            f = _file_number(z, nz, plan.reversed_numbers)
            tags = dict(extra, t=t)
            yield k * nz + f, volume[:, :, z : z + 1], tags, (seq, f)


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
# Tables (csv, deterministic xlsx)
# ----------------------------------------------------------------------------------------------
def _csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _write_text(path: str, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode("utf-8")), mode="wb")


def _xlsx_bytes(sheet: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> bytes:
    """One-sheet workbook (openpyxl, write-only) with fixed time stamps: same rows, same bytes."""
    wb = Workbook(write_only=True)
    ws = wb.create_sheet(sheet)
    ws.append(list(header))
    for row in rows:
        ws.append(list(row))
    wb.properties.creator = "breast_d2 phantom"
    wb.properties.created = datetime.datetime(2000, 1, 1)
    buf = io.BytesIO()
    wb.save(buf)
    # openpyxl stamps the save time into docProps/core.xml and the zip entries: fix both.
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zin:
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
            for info in zin.infolist():
                data = zin.read(info.filename)
                if info.filename == "docProps/core.xml":
                    data = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*", rb"\g<1>" + _XLSX_STAMP, data)
                entry = zipfile.ZipInfo(info.filename, date_time=_ZIP_TIME)
                entry.compress_type = zipfile.ZIP_DEFLATED
                entry.external_attr = 0o644 << 16
                zout.writestr(entry, data)
    return out.getvalue()


def _write_xlsx(path: str, sheet: str, header, rows) -> None:
    data = _xlsx_bytes(sheet, header, rows)
    write_atomic(path, lambda f: f.write(data), mode="wb")


# ----------------------------------------------------------------------------------------------
# Cohort driver shared by the layouts
# ----------------------------------------------------------------------------------------------
def _layout_params(layout, num_cases, seed, matrix, slices, fov_mm, phase_interval_s, workers):
    _check_int("num_cases", num_cases, 1, 999 if layout == "duke" else 100_000)
    _check_params(seed, matrix, slices, fov_mm, 2, phase_interval_s)  # phases: chosen per case
    _check_int("workers", workers, 1, 256)
    return {
        "generator": __name__,
        "version": GENERATOR_VERSION,
        "layout": layout,
        "seed": int(seed),
        "num_cases": int(num_cases),
        "matrix": int(matrix),
        "slices": int(slices),
        "fov_mm": float(fov_mm),
        "phase_interval_s": float(phase_interval_s),
    }


def _load_record(path: str) -> Optional[Dict[str, object]]:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _generate_all(job, case_ids, is_done, out_dir, params, workers, progress):
    """Generate the unfinished cases; return every case's record (cohort order), number made."""
    records: Dict[str, Dict[str, object]] = {}
    todo = []
    for index, cid in enumerate(case_ids):
        record = is_done(index, cid)
        if record is None:
            todo.append(index)
            continue
        records[cid] = record
        if progress is not None:
            progress(cid, False)
    layout = params["layout"]
    logger.info("%s layout %s: %d to generate, %d kept", layout, out_dir, len(todo), len(records))

    def done(record: Dict[str, object]) -> None:
        records[record["case_id"]] = record
        if progress is not None:
            progress(record["case_id"], True)

    run_case_jobs(job, todo, out_dir, params, workers, done)
    shutil.rmtree(os.path.join(out_dir, _STATE_DIR, "tmp"), ignore_errors=True)
    return [records[cid] for cid in case_ids], len(todo)


def _summary(out_dir: str, records: Sequence[Dict], generated: int) -> CohortSummary:
    return CohortSummary(
        out_dir=out_dir,
        num_cases=len(records),
        generated=generated,
        skipped=len(records) - generated,
        num_lesions=sum(r["num_lesions"] for r in records),
        cases_without_lesions=sum(1 for r in records if r["num_lesions"] == 0),
    )


def _phantom_json(params: Dict[str, object], records: Sequence[Dict], drop=()) -> Dict:
    doc = dict(params)
    doc.update(
        {
            "direction": "identity (LPS; x = column, y = row, z = slice)",
            "sequence": "axial prone fat-suppressed T1 GRE (simulated), 1 pre + post-contrast",
            "image_dtype": "int16, arbitrary MR units",
            "box_convention": "[x0, y0, z0, x1, y1, z1] half-open voxel indices, position-sorted",
            "cases": [{k: v for k, v in r.items() if k not in drop} for r in records],
        }
    )
    return doc


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
