"""Reading DCE-MRI cases one at a time: NIfTI or DICOM phases, label/mask volumes, geometry.

Conventions (docs/DATA_FORMAT.md):

* Arrays are NumPy in SimpleITK's order ``[Z, Y, X]`` (slice, row, column); a case's phases are
  stacked as ``[P, Z, Y, X]`` float32 with phase 0 = pre-contrast, 1.. = post-contrast.
* Spacings and origins are in millimetres, in ``(x, y, z)`` order as SimpleITK reports them.

A case's phases are found as ``<case_id>_<phase:04d>.nii.gz`` files (MAMA-MIA naming), as DICOM
series below the case folder (a TCIA download; the phases are chosen by :mod:`.duke`), or as an
explicit list of files / series folders. Every phase is read and checked to lie on phase 0's voxel
grid (or resampled onto it on request); truncated NIfTI files are refused.

Every problem with the input raises :class:`CohortError`, whose one-line message names the case,
the file and what is wrong. Box conventions live in :mod:`.boxes`, channel composition in
:mod:`.channels`.
"""
import logging
import os
import re
import zlib
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .errors import CohortError, PathLike, check_case_id, one_line

__all__ = [
    "CohortError",
    "one_line",
    "check_case_id",
    "read_header",
    "check_nifti_complete",
    "CaseGeometry",
    "CaseVolume",
    "list_cases",
    "find_phase_sources",
    "iter_phase_images",
    "iter_source_images",
    "grid_misalignment_mm",
    "read_case_phases",
    "read_phases_from_dir",
    "read_volume",
    "find_case_volume",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_PHASE_RE = re.compile(r"^(?P<prefix>.+)_(?P<phase>\d{4})\.nii(\.gz)?$")
# Relative tolerance when comparing spacings of phases of one case (header rounding noise).
_SPACING_RTOL = 1e-3
# Phases whose corner voxels lie further apart than this many voxels are not on one grid.
_ALIGN_TOL_VOXELS = 0.5


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


# ----------------------------------------------------------------------------- case listing


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
    from .duke import choose_dce_phases  # duke -> dicom imports this module

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
