"""Reading DCE-MRI cases (NIfTI or DICOM), label/mask volumes and Duke box CSVs.

Conventions (docs/DATA_FORMAT.md):

* Arrays are NumPy in SimpleITK's order ``[Z, Y, X]`` (slice, row, column); a case's phases are
  stacked as ``[P, Z, Y, X]`` float32 with phase 0 = pre-contrast, 1.. = post-contrast.
* Boxes are voxel indices, **half-open**: a 3D box ``[x0, y0, z0, x1, y1, z1]`` covers columns
  ``x0..x1-1``, rows ``y0..y1-1`` and slices ``z0..z1-1``; a 2D slice box ``[x0, y0, x1, y1]`` is
  detectron2's ``XYXY_ABS`` with the same edges.
* Spacings and origins are in millimetres, in ``(x, y, z)`` order as SimpleITK reports them.

Every problem with the input raises :class:`CohortError`, whose one-line message names the case,
the file (or CSV line) and what is wrong.
"""
import logging
import math
import os
import re
import zlib
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

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
    "label_components",
    "largest_component",
    "keep_large_components",
    "label_boxes",
    "label_lesions",
    "lesions_from_labels",
    "slice_boxes_from_boxes",
    "slice_boxes_from_components",
    "parse_channels",
    "compose_channels",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
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
NIFTI_SUFFIXES = (".nii.gz", ".nii")
_PHASE_RE = re.compile(r"^(?P<prefix>.+)_(?P<phase>\d{4})\.nii(\.gz)?$")
# A case id becomes a folder and file name in the output: letters, digits, "_", "-", "." only.
_CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# Relative tolerance when comparing spacings of phases of one case (header rounding noise).
_SPACING_RTOL = 1e-3
# Phases whose corner voxels lie further apart than this many voxels are not on one grid.
_ALIGN_TOL_VOXELS = 0.5


class CohortError(ValueError):
    """Bad input cohort; the message is one line naming the case, file or CSV line, and problem."""


def one_line(exc: BaseException) -> str:
    """Condense a (multi-line, ITK-style) exception message to its most useful single line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:  # ITK messages put the reason on the line with "ERROR"
        if "ERROR" in ln:
            return ln
    return lines[-1] if lines else type(exc).__name__


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class CaseGeometry:
    """Physical geometry of a 3D volume (what SimpleITK stores next to the voxels).

    Attributes:
        size: ``(X, Y, Z)`` voxels.
        spacing: ``(sx, sy, sz)`` in mm.
        origin: ``(ox, oy, oz)`` in mm, world position of voxel ``(0, 0, 0)``.
        direction: 9 floats, row-major 3x3 direction cosine matrix.
    """

    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]

    @classmethod
    def from_image(cls, image: sitk.Image) -> "CaseGeometry":
        """Geometry of a 3D SimpleITK image."""
        return cls(
            size=tuple(int(v) for v in image.GetSize()),
            spacing=tuple(float(v) for v in image.GetSpacing()),
            origin=tuple(float(v) for v in image.GetOrigin()),
            direction=tuple(float(v) for v in image.GetDirection()),
        )

    @classmethod
    def from_dict(cls, d: Mapping) -> "CaseGeometry":
        """Inverse of :meth:`to_dict`."""
        return cls(
            size=tuple(int(v) for v in d["size"]),
            spacing=tuple(float(v) for v in d["spacing"]),
            origin=tuple(float(v) for v in d["origin"]),
            direction=tuple(float(v) for v in d["direction"]),
        )

    @property
    def shape_zyx(self) -> Tuple[int, int, int]:
        """Array shape ``(Z, Y, X)`` of a volume with this geometry."""
        return (self.size[2], self.size[1], self.size[0])

    def to_dict(self) -> dict:
        """JSON-friendly ``{"size", "spacing", "origin", "direction"}`` (lists, x-y-z order)."""
        return {
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    def to_image(self, array_zyx: np.ndarray) -> sitk.Image:
        """Wrap a ``[Z, Y, X]`` array (e.g. a predicted mask) as an image with this geometry.

        Args:
            array_zyx: array of shape ``(Z, Y, X)`` == :attr:`shape_zyx`.

        Returns:
            sitk.Image with this spacing, origin and direction (write it with ``sitk.WriteImage``).
        """
        if tuple(array_zyx.shape) != self.shape_zyx:
            raise ValueError(
                f"array shape {array_zyx.shape} != volume shape {self.shape_zyx} (ZYX)"
            )
        image = sitk.GetImageFromArray(array_zyx)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


class CaseVolume(NamedTuple):
    """What :func:`read_case_phases` returns (unpacks as ``phases, spacing, geometry``).

    Attributes:
        phases: ``[P, Z, Y, X]`` float32, phase 0 = pre-contrast.
        spacing: ``(sx, sy, sz)`` in mm.
        geometry: :class:`CaseGeometry` shared by all phases.
    """

    phases: np.ndarray
    spacing: Tuple[float, float, float]
    geometry: CaseGeometry


# ----------------------------------------------------------------------------- case ids / listing


def check_case_id(case_id: str, where: str = "") -> str:
    """Return ``case_id`` if it is a plain file name usable as an output folder, else raise.

    Allowed: letters, digits, ``_``, ``-`` and ``.``, not starting with ``.`` and without ``..``
    (so it can never name a parent folder or a path).

    Args:
        case_id: the case (patient) id.
        where: prefix for the error message (e.g. ``"boxes.csv line 3: "``).

    Raises:
        CohortError: if the id is empty or not a plain file name.
    """
    if not isinstance(case_id, str) or not _CASE_ID_RE.match(case_id) or ".." in case_id:
        raise CohortError(
            f"{where}case id {case_id!r} is not a plain file name "
            "(use letters, digits, '_', '-', '.'; no '/', '\\', '..', spaces or leading '.')"
        )
    return case_id


def list_cases(images_dir: PathLike) -> List[str]:
    """Case ids of an ``IMAGES`` folder: its sub-folders, sorted; hidden entries and files skipped.

    Raises:
        CohortError: if the folder does not exist, holds no case folder, or a folder name is not a
            valid case id (see :func:`check_case_id`).
    """
    images_dir = os.fspath(images_dir)
    if not os.path.isdir(images_dir):
        raise CohortError(f"images folder {images_dir} does not exist or is not a folder")
    cases = []
    for name in sorted(os.listdir(images_dir)):
        if name.startswith(".") or not os.path.isdir(os.path.join(images_dir, name)):
            continue
        cases.append(check_case_id(name, f"{os.path.join(images_dir, name)}: "))
    if not cases:
        raise CohortError(f"images folder {images_dir} holds no case folder (IMAGES/<case_id>/)")
    return cases


# ----------------------------------------------------------------------------- phase discovery


class _PhaseSource(NamedTuple):
    """One phase on disk: a NIfTI file, or the file list of one DICOM series."""

    label: str  # path shown in messages (file, or series folder)
    files: Tuple[str, ...]  # DICOM: sorted by position along the slice normal (z order)
    is_dicom: bool
    volume_index: int  # time index inside a 4D NIfTI, else -1
    file_numbers: Tuple[int, ...] = ()  # DICOM: file number of each of ``files`` (1-based)
    description: str = ""  # DICOM SeriesDescription
    rule: str = ""  # DICOM: how the phase was chosen (series map, description, ...)


def _is_nifti(name: str) -> bool:
    return name.endswith(NIFTI_SUFFIXES)


def _nifti_phase_sources(case_dir: str, case_id: str) -> List[_PhaseSource]:
    """``<case_id>_<phase:04d>.nii.gz`` files of a folder as a contiguous list of phases."""
    groups: Dict[str, Dict[int, str]] = {}
    for name in sorted(os.listdir(case_dir)):
        m = _PHASE_RE.match(name)
        if m and os.path.isfile(os.path.join(case_dir, name)):
            groups.setdefault(m.group("prefix"), {})[int(m.group("phase"))] = name
    if not groups:
        return []
    if len(groups) > 1:
        # MAMA-MIA names files like the folder, sometimes in lower case; anything else is ambiguous.
        same = [p for p in groups if p.lower() == case_id.lower()]
        if len(same) != 1:
            raise CohortError(
                f"case {case_id}: {case_dir} mixes phase files of several cases "
                f"({', '.join(sorted(groups))}); expected only {case_id}_<phase:04d>.nii.gz"
            )
        groups = {same[0]: groups[same[0]]}
    prefix, phases = next(iter(groups.items()))
    ext = os.path.splitext(phases[min(phases)])[1]
    ext = ".nii.gz" if ext == ".gz" else ext
    for k in range(max(phases) + 1):
        if k not in phases:
            missing = os.path.join(case_dir, f"{prefix}_{k:04d}{ext}")
            raise CohortError(f"case {case_id}: missing phase file {missing}")
    paths = [os.path.join(case_dir, phases[k]) for k in sorted(phases)]
    return [_PhaseSource(p, (p,), False, -1) for p in paths]


def _dicom_phase_sources(
    case_dir: str, case_id: str, series_map=None, order: str = "description"
) -> List[_PhaseSource]:
    """The DCE phases among the DICOM series below ``case_dir``; see :mod:`.duke`."""
    from .duke import choose_dce_phases  # duke imports this module

    return [
        _PhaseSource(
            label=p.label if p.series.rel != "." else case_dir,
            files=tuple(s.path for s in p.slices),
            is_dicom=True,
            volume_index=-1,
            file_numbers=tuple(s.file_number for s in p.slices),
            description=p.series.description,
            rule=p.rule,
        )
        for p in choose_dce_phases(case_dir, case_id, series_map, order)
    ]


def _file_phase_sources(paths: Sequence[PathLike], case_id: str) -> List[_PhaseSource]:
    """Explicit phase list: NIfTI/ITK files or DICOM series folders; one 4D file = all phases."""
    sources = []
    for p in map(os.fspath, paths):
        if os.path.isdir(p):
            series = _dicom_phase_sources(p, case_id, order="series-number")
            if len(series) != 1:
                raise CohortError(
                    f"case {case_id}: {p} holds {len(series)} DICOM series, expected one phase"
                )
            sources.extend(series)
        elif not os.path.isfile(p):
            raise CohortError(f"case {case_id}: missing phase file {p}")
        elif len(paths) == 1 and _num_dims(p, case_id) == 4:
            sources.extend(_PhaseSource(p, (p,), False, t) for t in range(_num_volumes(p, case_id)))
        else:
            sources.append(_PhaseSource(p, (p,), False, -1))
    return sources


def read_header(
    path: str, case_id: str, kind: str = "image", image_io: str = ""
) -> sitk.ImageFileReader:
    """A reader holding the header of ``path``; unreadable -> CohortError naming ``kind``.

    Args:
        image_io: SimpleITK ImageIO to use (e.g. ``"GDCMImageIO"``); "" lets SimpleITK choose.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    if image_io:
        reader.SetImageIO(image_io)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise CohortError(f"case {case_id}: unreadable {kind} file {path}: {one_line(e)}") from None
    return reader


def _num_dims(path: str, case_id: str) -> int:
    return read_header(path, case_id).GetDimension()


def _num_volumes(path: str, case_id: str) -> int:
    return int(read_header(path, case_id).GetSize()[3])


def find_phase_sources(
    src: Union[PathLike, Sequence[PathLike]],
    case_id: Optional[str] = None,
    series_map=None,
    dicom_order: str = "description",
) -> List[_PhaseSource]:
    """Locate the phases of one case, in phase order, without reading voxels.

    Args:
        src: a case folder holding ``<case_id>_<phase:04d>.nii.gz`` files (MAMA-MIA naming; the
            file prefix may differ in letter case), or a case folder holding DICOM series in
            sub-folders at any depth (a TCIA download: the DCE phases are chosen among all its
            series, see :mod:`breast_d2.data.duke`), or an explicit list of phase files / DICOM
            series folders in phase order (a single 4D NIfTI file counts as all phases).
        case_id: name used in error messages; default the folder name.
        series_map: :class:`~breast_d2.data.duke.SeriesMap` (TCIA's filepath mapping), which
            decides the DICOM phases of the cases it holds.
        dicom_order: ``"description"`` (SeriesDescription rules) or ``"series-number"`` (every
            MR series of the folder is a phase, by SeriesNumber).

    Returns:
        list of phase sources (opaque; pass to :func:`iter_source_images`).

    Raises:
        CohortError: no phases found, a missing phase file, DICOM phases that cannot be told
            apart or that miss or repeat slices.
    """
    if isinstance(src, (str, os.PathLike)):
        case_dir = os.fspath(src)
        case_id = case_id or os.path.basename(os.path.normpath(case_dir))
        if not os.path.isdir(case_dir):
            raise CohortError(f"case {case_id}: no images ({case_dir} is not a folder)")
        sources = _nifti_phase_sources(case_dir, case_id) or _dicom_phase_sources(
            case_dir, case_id, series_map, dicom_order
        )
        where = case_dir
    else:
        case_id = case_id or "<files>"
        sources = _file_phase_sources(list(src), case_id)
        where = "the given files"
    if not sources:
        raise CohortError(
            f"case {case_id}: no phases in {where} (expected {case_id}_0000.nii.gz, "
            f"{case_id}_0001.nii.gz, ... or DICOM series folders)"
        )
    return sources


# ----------------------------------------------------------------------------- reading voxels


def _nifti_expected_bytes(path: str) -> Optional[int]:
    """Bytes a NIfTI file must hold (header offset + voxel data), or None if not a NIfTI header."""
    import nibabel  # header parsing only; voxels are read by SimpleITK (geometry in ITK's LPS)

    try:
        # the image's header copy resets vox_offset to 0; the array proxy keeps the real offset
        proxy = nibabel.load(path).dataobj
        return int(proxy.offset) + int(np.prod(proxy.shape)) * np.dtype(proxy.dtype).itemsize
    except Exception:  # not parseable here: SimpleITK decides (it raises on garbage)
        return None


def _gzip_size(path: str, need: Optional[int]) -> int:
    """Uncompressed size of a (possibly multi-member) gzip file; raises EOFError if truncated."""
    if os.path.getsize(path) < 18:  # smallest possible gzip member
        raise EOFError(f"only {os.path.getsize(path)} bytes")
    with open(path, "rb") as f:  # cheap test first: ISIZE trailer (size mod 2**32) of one member
        f.seek(-4, os.SEEK_END)
        if need is not None and int.from_bytes(f.read(4), "little") == need % 2**32:
            return need
    total, d, fed = 0, zlib.decompressobj(wbits=31), False
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            while chunk:
                total += len(d.decompress(chunk))
                fed = True
                if not d.eof:
                    break
                chunk, d, fed = d.unused_data, zlib.decompressobj(wbits=31), False
    if fed or total == 0:  # the last gzip member never reached its end-of-stream marker
        raise EOFError("compressed data ends early")
    return total


def check_nifti_complete(path: str, case_id: str) -> None:
    """Raise if a NIfTI file holds fewer voxel bytes than its header announces.

    SimpleITK silently reads a truncated ``.nii``/``.nii.gz`` (missing voxels become zeros or
    garbage), so truncation is checked here: file size for ``.nii``, the gzip trailer (and, if
    that does not match, a streaming decompression) for ``.nii.gz``.
    """
    need = _nifti_expected_bytes(path)
    if need is None and not path.endswith(".gz"):
        return
    try:
        have = _gzip_size(path, need) if path.endswith(".gz") else os.path.getsize(path)
    except (EOFError, OSError, zlib.error) as e:
        raise CohortError(f"case {case_id}: truncated or corrupt file {path}: {e}") from None
    if need is not None and have < need:
        raise CohortError(
            f"case {case_id}: truncated file {path}: {have} bytes, its header needs {need}"
        )


def _read_source(source: _PhaseSource, case_id: str) -> sitk.Image:
    """Read one phase as a 3D scalar image; any reader failure becomes a CohortError."""
    try:
        if source.is_dicom:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(list(source.files))
            image = reader.Execute()
        else:
            if _is_nifti(source.files[0]):
                check_nifti_complete(source.files[0], case_id)
            image = sitk.ReadImage(source.files[0])
            if source.volume_index >= 0:
                size = list(image.GetSize())
                image = sitk.Extract(image, size[:3] + [0], [0, 0, 0, source.volume_index])
    except RuntimeError as e:
        kind = "DICOM series" if source.is_dicom else "image file"
        raise CohortError(
            f"case {case_id}: unreadable {kind} {source.label}: {one_line(e)}"
        ) from None
    if image.GetDimension() != 3:
        raise CohortError(
            f"case {case_id}: {source.label} is {image.GetDimension()}D, expected a 3D volume"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CohortError(f"case {case_id}: {source.label} is not a scalar (grey-value) volume")
    return image


def _corners_mm(geom: CaseGeometry) -> np.ndarray:
    """World positions (mm) of the 8 corner voxel centres of a grid, ``[8, 3]``."""
    direction = np.asarray(geom.direction).reshape(3, 3)
    idx = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float)
    idx *= np.asarray(geom.size, float) - 1
    return np.asarray(geom.origin) + (idx * np.asarray(geom.spacing)) @ direction.T


def grid_misalignment_mm(ref: CaseGeometry, geom: CaseGeometry) -> float:
    """Largest distance (mm) between matching corner voxels of two grids of the same size."""
    return float(np.max(np.linalg.norm(_corners_mm(ref) - _corners_mm(geom), axis=1)))


def _check_same_grid(ref: CaseGeometry, geom: CaseGeometry, case_id: str, label: str) -> None:
    """Raise if ``geom`` is not ``ref``'s voxel grid (see :func:`iter_source_images`)."""
    if geom.size != ref.size:
        raise CohortError(
            f"case {case_id}: {label} has size {list(geom.size)} (XYZ) but phase 0 has "
            f"{list(ref.size)}; pass --resample-phases to resample it onto phase 0"
        )
    if not np.allclose(geom.spacing, ref.spacing, rtol=_SPACING_RTOL, atol=1e-6):
        raise CohortError(
            f"case {case_id}: {label} has spacing {list(geom.spacing)} mm but phase 0 has "
            f"{list(ref.spacing)} mm; pass --resample-phases to resample it onto phase 0"
        )
    shift, tolerance = grid_misalignment_mm(ref, geom), _ALIGN_TOL_VOXELS * min(ref.spacing)
    if shift > tolerance:
        raise CohortError(
            f"case {case_id}: {label} is misaligned with phase 0 by up to {shift:.2f} mm (origin "
            f"or direction differ; tolerance half a voxel, {tolerance:.2f} mm); pass "
            "--resample-phases to resample it onto phase 0"
        )


def _resample_onto(image: sitk.Image, ref: sitk.Image) -> sitk.Image:
    """``image`` on ``ref``'s voxel grid by physical position (linear; outside = 0)."""
    return sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def iter_source_images(
    sources: Sequence[_PhaseSource], case_id: str, resample: bool = False
) -> Iterator[Tuple[int, np.ndarray, CaseGeometry]]:
    """Read found phases one at a time, checking they share one voxel grid.

    Lets callers keep only the phases they need in memory while every phase is still read and
    validated (a truncated unused phase is still an error).

    Phases must lie on phase 0's grid: same size and spacing, and corner voxels at most half a
    voxel (of the finest spacing) apart in world space, which allows header rounding but not a
    shifted or flipped acquisition. With ``resample``, a phase off the grid is instead resampled
    onto phase 0's grid by physical position (linear), with one warning.

    Args:
        sources: from :func:`find_phase_sources`.
        case_id: for messages.
        resample: resample phases that are not on phase 0's grid instead of refusing them.

    Yields:
        ``(phase_index, array [Z, Y, X] float32, geometry)``; the geometry is phase 0's.

    Raises:
        CohortError: unreadable/truncated files; a phase off phase 0's grid (without
            ``resample``).
    """
    ref, ref_image = None, None
    for k, source in enumerate(sources):
        image = _read_source(source, case_id)
        geom = CaseGeometry.from_image(image)
        if ref is None:
            ref, ref_image = geom, image
        else:
            try:
                _check_same_grid(ref, geom, case_id, f"phase {k} ({source.label})")
            except CohortError as e:
                if not resample:
                    raise
                logger.warning("%s; resampled onto phase 0", str(e).split("; pass")[0])
                image, geom = _resample_onto(image, ref_image), ref
        yield k, sitk.GetArrayViewFromImage(image).astype(np.float32), geom


def iter_phase_images(
    src: Union[PathLike, Sequence[PathLike]], case_id: Optional[str] = None
) -> Iterator[Tuple[int, np.ndarray, CaseGeometry]]:
    """:func:`find_phase_sources` then :func:`iter_source_images` (see both)."""
    if isinstance(src, (str, os.PathLike)):
        case_id = case_id or os.path.basename(os.path.normpath(os.fspath(src)))
    sources = find_phase_sources(src, case_id)
    yield from iter_source_images(sources, case_id or "<files>")


def read_phases_from_dir(
    src: Union[PathLike, Sequence[PathLike]], case_id: Optional[str] = None
) -> CaseVolume:
    """Read all phases of one case from a case folder or an explicit list of files.

    Usable on a single case folder outside any cohort (e.g. by the inference tool).

    Args:
        src: case folder (NIfTI ``*_0000.nii.gz``... or DICOM series sub-folders) or list of phase
            files / series folders in phase order; see :func:`find_phase_sources`.
        case_id: name used in error messages; default the folder name.

    Returns:
        :class:`CaseVolume` ``(phases [P, Z, Y, X] float32, spacing (sx, sy, sz) mm, geometry)``.

    Raises:
        CohortError: on any missing, unreadable or inconsistent phase.
    """
    arrays, geom = [], None
    for _, array, geom in iter_phase_images(src, case_id):
        arrays.append(array)
    return CaseVolume(np.stack(arrays), geom.spacing, geom)


def read_case_phases(images_dir: PathLike, case_id: str) -> CaseVolume:
    """Read case ``IMAGES/<case_id>/`` of a cohort; see :func:`read_phases_from_dir`."""
    check_case_id(case_id)
    return read_phases_from_dir(os.path.join(os.fspath(images_dir), case_id), case_id)


def find_case_volume(folder: PathLike, case_id: str) -> Optional[str]:
    """Path of ``<folder>/<case_id>.nii.gz`` (or ``.nii``), or None if absent."""
    for ext in NIFTI_SUFFIXES:
        path = os.path.join(os.fspath(folder), case_id + ext)
        if os.path.isfile(path):
            return path
    return None


def read_volume(
    path: PathLike, case_id: str, kind: str = "volume", expect: Optional[CaseGeometry] = None
) -> np.ndarray:
    """Read a label or mask volume (``LABELS/<case_id>.nii.gz``, ``MASKS/<case_id>.nii.gz``).

    Args:
        path: NIfTI (or other ITK-readable) 3D file.
        case_id: for error messages.
        kind: ``"label volume"``/``"mask"``, for error messages.
        expect: geometry of the case's phases; the size must match (spacing/origin: warning).

    Returns:
        array ``[Z, Y, X]`` in the file's integer/float type.

    Raises:
        CohortError: unreadable file, not 3D, or size differing from ``expect``.
    """
    path = os.fspath(path)
    image = _read_source(_PhaseSource(path, (path,), False, -1), case_id)
    geom = CaseGeometry.from_image(image)
    if expect is not None:
        if geom.size != expect.size:
            raise CohortError(
                f"case {case_id}: {kind} {path} has size {list(geom.size)} (XYZ) but the images "
                f"have {list(expect.size)}"
            )
        if not np.allclose(geom.spacing, expect.spacing, rtol=_SPACING_RTOL, atol=1e-6):
            logger.warning("case %s: %s %s has another spacing than the images",
                           case_id, kind, path)  # fmt: skip
    return sitk.GetArrayFromImage(image)


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
    from .tables import iter_table, row_label  # tables imports this module

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


# ----------------------------------------------------------------------------- channels


def parse_channels(spec: str, num_phases: Optional[int] = None) -> List[Tuple[int, Optional[int]]]:
    """Parse a channel spec such as ``"1,1-0,0"`` into ``[(a, b), ...]`` = phase a minus phase b.

    Three comma-separated expressions, each a phase index ``a`` or a subtraction ``a-b``
    (``b`` is None for a plain phase). Default ``"1,1-0,0"`` = first post-contrast, its
    subtraction from pre-contrast, pre-contrast.

    Raises:
        ValueError: malformed spec, or a phase index >= ``num_phases``.
    """
    exprs = [e.strip() for e in str(spec).split(",")]
    if len(exprs) != 3:
        raise ValueError(f"channel spec {spec!r} must be 3 comma-separated expressions (1,1-0,0)")
    out = []
    for e in exprs:
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", e)
        if not m:
            raise ValueError(f"channel spec {spec!r}: {e!r} is not a phase index or 'a-b'")
        a, b = int(m.group(1)), None if m.group(2) is None else int(m.group(2))
        used = max(a, -1 if b is None else b)
        if num_phases is not None and used >= num_phases:
            raise ValueError(f"channel spec {spec!r} uses phase {used} but there are {num_phases}")
        out.append((a, b))
    return out


def _window_uint8(x: np.ndarray, percentiles: Tuple[float, float]) -> np.ndarray:
    """Map ``[lo, hi]`` = the given percentiles of ``x`` linearly to 0..255 (clipped)."""
    # Percentiles over a strided sample of at most ~2M voxels: same window, far less sorting time.
    step = max(1, x.size // 2_000_000)
    lo, hi = np.percentile(x.reshape(-1)[::step], percentiles)
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return np.zeros(x.shape, dtype=np.uint8)
    y = (x - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(y, 0, 255, out=y).round(out=y).astype(np.uint8)


def compose_channels(
    phases: Union[np.ndarray, Mapping[int, np.ndarray]],
    spec: str = "1,1-0,0",
    percentiles: Tuple[float, float] = (0.5, 99.5),
) -> np.ndarray:
    """Compose three 8-bit channels from the phases of one case.

    Each channel is an expression of :func:`parse_channels` (a phase, or a subtraction of two
    phases). Windowing: per channel over the whole case, the ``percentiles`` (default 0.5 % and
    99.5 %) of its values are mapped linearly to 0 and 255 and values outside are clipped. A
    constant channel becomes 0. Robust per-case percentiles make cases from different scanners
    comparable without letting a few very bright voxels (vessels, artefacts) set the scale.

    Args:
        phases: ``[P, Z, Y, X]`` array, or a mapping ``{phase_index: [Z, Y, X]}`` holding at least
            the phases the spec uses.
        spec: channel spec, default ``"1,1-0,0"`` (post1, post1 - pre, pre).
        percentiles: lower and upper window percentiles in %.

    Returns:
        ``[Z, Y, X, 3]`` uint8; channel c is expression c (write as R, G, B).

    Raises:
        ValueError: bad spec or a phase the input lacks.
    """
    exprs = parse_channels(spec)
    for a, b in exprs:
        for k in (a, b):
            if k is not None and not _has_phase(phases, k):
                raise ValueError(f"channel spec {spec!r} uses phase {k}, which is not available")
    first = phases[exprs[0][0]]
    out = np.empty(tuple(first.shape) + (3,), dtype=np.uint8)
    for c, (a, b) in enumerate(exprs):
        x = np.asarray(phases[a], dtype=np.float32)
        if b is not None:
            x = x - np.asarray(phases[b], dtype=np.float32)
        out[..., c] = _window_uint8(x, percentiles)
    return out


def _has_phase(phases: Union[np.ndarray, Mapping[int, np.ndarray]], k: int) -> bool:
    if isinstance(phases, Mapping):
        return k in phases
    return 0 <= k < len(phases)
