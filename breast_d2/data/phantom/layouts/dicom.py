"""Duke layout: the images of each series and their DICOM files (SimpleITK / GDCM).

The dynamic series hold the phantom's int16 phases on its own grid; the localizer, the
non-fat-sat T1 and breast masks on another grid are resampled from them. Every file gets the
tags a TCIA download has, with UIDs and times determined by the seed and the case.
"""

import datetime
import locale
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np
import SimpleITK as sitk

from ..anatomy import FAT
from ..case import PhantomCase
from ..cohort import _to_int16
from .common import _GE, _SIEMENS, _digits, _hash_int, _uid
from .duke_plan import DukeCasePlan, _Series

__all__ = []

logger = logging.getLogger(__name__)

_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"  # SOP Class UID of MR Image Storage
# The 3-plane localizer: 3 slices per orientation, FOV (mm) and slice thickness (mm).
_LOC_FOV_MM, _LOC_THICKNESS_MM = 400.0, 8.0


def _file_name(number: int, count: int) -> str:
    """NBIA file name: ``1-001.dcm`` .. (3 digits, more when a series has over 999 files)."""
    return f"1-{number:0{max(3, len(str(count)))}d}.dcm"


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
