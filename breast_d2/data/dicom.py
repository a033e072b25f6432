"""DICOM series on disk: headers, slice order, file numbers and gap checks (SimpleITK/GDCM).

A DCE-MRI case downloaded from TCIA is a folder tree with one DICOM series per folder and one file
per slice. This module reads the headers it needs (never the voxels, except in
:func:`read_series_image`), sorts the slices of a series by their position along the slice
normal, and checks that nothing is missing:

* **Slice order.** Slices are sorted by ``ImagePositionPatient`` projected on the normal
  ``row x column`` of ``ImageOrientationPatient``, ascending, which is the order SimpleITK gives
  a volume's z axis. File names and InstanceNumbers do not decide the order.
* **File numbers.** The *file number* of a slice is the ``NNN`` of TCIA's ``1-NNN.dcm`` file
  name, else its InstanceNumber (0020,0013). Box tables such as Duke's ``Annotation_Boxes``
  count slices by file number, which in some cases runs *against* slice position; the sorted
  slices keep their file numbers so boxes can be placed on the slices that came from those files.
* **Gaps.** A missing or duplicated file number, a duplicated slice position, or a jump in the
  spacing along the normal (> 1.5 x the median spacing) is a :class:`CohortError` naming the
  case, the series folder and the missing numbers. A gap never shifts slices silently.

Positions are in mm in the patient (LPS) frame, as DICOM stores them.
"""
import logging
import os
import re
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import CohortError, one_line
from .readers import read_header

__all__ = [
    "DicomSlice",
    "SeriesHeader",
    "scan_case_series",
    "read_slices",
    "sort_slices",
    "check_slices",
    "read_series_image",
    "series_normal",
]

logger = logging.getLogger(__name__)

TAGS = {
    "modality": "0008|0060",
    "description": "0008|103e",
    "series_number": "0020|0011",
    "series_uid": "0020|000e",
    "study_uid": "0020|000d",
    "patient_id": "0010|0020",
    "orientation": "0020|0037",
    "position": "0020|0032",
    "instance": "0020|0013",
    "temporal": "0020|0100",
    "acquisition_time": "0008|0032",
    "samples": "0028|0002",
    "rows": "0028|0010",
    "columns": "0028|0011",
    "bits_allocated": "0028|0100",
    "frames": "0028|0008",
}
# Uncompressed transfer syntaxes (implicit LE, explicit LE, explicit BE): byte order, explicit VR.
_NATIVE_SYNTAXES = {
    b"1.2.840.10008.1.2": ("<", False),
    b"1.2.840.10008.1.2.1": ("<", True),
    b"1.2.840.10008.1.2.2": (">", True),
}
# TCIA's NBIA names each slice file "<n>-<file number>.dcm".
_FILE_NUMBER_RE = re.compile(r"^\d+-(\d+)\.dcm$", re.IGNORECASE)
# A spacing step this many times the median one means a slice is missing.
_GAP_FACTOR = 1.5


@dataclass(frozen=True)
class DicomSlice:
    """The header fields of one DICOM file that ordering and phase splitting need.

    Attributes:
        path: file path.
        file_number: TCIA ``1-NNN.dcm`` number, else InstanceNumber (1-based).
        position: ImagePositionPatient ``(x, y, z)`` in mm (LPS).
        temporal_position: TemporalPositionIdentifier (0020,0100), or None.
        acquisition_time: AcquisitionTime (0008,0032) text, "" when absent.
    """

    path: str
    file_number: int
    position: Tuple[float, float, float]
    temporal_position: Optional[int]
    acquisition_time: str


@dataclass(frozen=True)
class SeriesHeader:
    """A DICOM series folder as seen from its first file (no voxels read).

    Attributes:
        folder: absolute folder path.
        rel: folder path relative to the case folder (``/``-separated), shown to users.
        files: sorted paths of the folder's ``.dcm`` files.
        description: SeriesDescription (0008,103E), "" when absent.
        series_number: SeriesNumber (0020,0011) or None.
        modality: Modality (0008,0060), e.g. ``"MR"``.
        orientation: ImageOrientationPatient, 6 direction cosines, or None.
        patient_id, study_uid, series_uid: PatientID, StudyInstanceUID, SeriesInstanceUID.
    """

    folder: str
    rel: str
    files: Tuple[str, ...]
    description: str
    series_number: Optional[int]
    modality: str
    orientation: Optional[Tuple[float, ...]]
    patient_id: str
    study_uid: str
    series_uid: str


def _header(path: str, case_id: str) -> sitk.ImageFileReader:
    return read_header(path, case_id, "DICOM", image_io="GDCMImageIO")


def _tag(reader: sitk.ImageFileReader, name: str) -> str:
    key = TAGS[name]
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _floats(text: str, count: int) -> Optional[Tuple[float, ...]]:
    try:
        values = tuple(float(v) for v in text.split("\\"))
    except ValueError:
        return None
    return values if len(values) == count else None


def _int_or_none(text: str) -> Optional[int]:
    try:
        return int(float(text))
    except ValueError:
        return None


def scan_case_series(case_dir: str, case_id: str) -> List[SeriesHeader]:
    """Every folder below ``case_dir`` that holds ``.dcm`` files, as one series each.

    Reads the header of each folder's first file only. Folders are visited in sorted order.

    Raises:
        CohortError: unreadable first file.
    """
    found = []
    for root, dirs, names in os.walk(case_dir):
        dirs.sort()
        files = tuple(sorted(os.path.join(root, n) for n in names if n.lower().endswith(".dcm")))
        if not files:
            continue
        reader = _header(files[0], case_id)
        orientation = _floats(_tag(reader, "orientation"), 6)
        found.append(
            SeriesHeader(
                folder=root,
                rel=os.path.relpath(root, case_dir).replace(os.sep, "/"),
                files=files,
                description=_tag(reader, "description"),
                series_number=_int_or_none(_tag(reader, "series_number")),
                modality=_tag(reader, "modality").upper(),
                orientation=orientation,
                patient_id=_tag(reader, "patient_id"),
                study_uid=_tag(reader, "study_uid"),
                series_uid=_tag(reader, "series_uid"),
            )
        )
    return found


def _file_number(path: str, reader: sitk.ImageFileReader, case_id: str) -> int:
    m = _FILE_NUMBER_RE.match(os.path.basename(path))
    if m:
        return int(m.group(1))
    number = _int_or_none(_tag(reader, "instance"))
    if number is None:
        raise CohortError(
            f"case {case_id}: DICOM file {path} has no InstanceNumber (0020,0013) and its name "
            "is not TCIA's <n>-<number>.dcm; cannot number the slice"
        )
    return number


def _transfer_syntax(data: bytes) -> Optional[bytes]:
    """TransferSyntaxUID (0002,0010) of a Part 10 file's meta header, or None."""
    if data[128:132] != b"DICM":
        return None
    i = data.find(b"\x02\x00\x10\x00UI", 132, 1 << 16)
    if i < 0:
        return None
    (length,) = struct.unpack("<H", data[i + 6 : i + 8])
    return data[i + 8 : i + 8 + length].rstrip(b"\0 ")


def _check_native_pixel_data(path: str, reader: sitk.ImageFileReader, case_id: str) -> None:
    """Raise if an uncompressed file holds fewer pixel bytes than its header announces.

    GDCM reads a short native PixelData element without complaint (the missing pixels become
    garbage), so the element's length is compared with Rows x Columns x bytes x samples x frames.
    Compressed syntaxes are checked by their decoders.
    """
    with open(path, "rb") as f:
        data = f.read()
    syntax = _NATIVE_SYNTAXES.get(_transfer_syntax(data) or b"")
    if syntax is None:
        return
    order, explicit = syntax
    ints = [_int_or_none(_tag(reader, k)) for k in ("rows", "columns", "bits_allocated")]
    if None in ints:
        return
    rows, cols, bits = ints
    need = rows * cols * max(bits // 8, 1) * (_int_or_none(_tag(reader, "samples")) or 1)
    need *= _int_or_none(_tag(reader, "frames")) or 1
    i = data.rfind(b"\xe0\x7f\x10\x00" if order == "<" else b"\x7f\xe0\x00\x10")
    if i < 0:
        have = 0
    elif explicit:
        have = struct.unpack(order + "I", data[i + 8 : i + 12])[0]
        have = min(have, len(data) - i - 12)
    else:
        have = min(struct.unpack(order + "I", data[i + 4 : i + 8])[0], len(data) - i - 8)
    if have < need:
        raise CohortError(
            f"case {case_id}: DICOM file {path} holds {have} bytes of pixel data but its header "
            f"needs {need} (truncated or corrupt)"
        )


def read_slices(
    series: SeriesHeader,
    case_id: str,
    files: Optional[Sequence[str]] = None,
    file_numbers: Optional[Dict[str, int]] = None,
) -> List[DicomSlice]:
    """Read the per-file header fields of a series (all its files, or ``files``).

    Args:
        series: the series folder.
        case_id: for messages.
        files: subset of ``series.files`` to read (default all).
        file_numbers: ``{path: number}`` overriding the file-name/InstanceNumber rule (e.g. the
            numbers of TCIA's filepath mapping).

    Returns:
        one :class:`DicomSlice` per file, in ``files`` order.

    Raises:
        CohortError: unreadable file, a file of another series, or a missing position.
    """
    out = []
    for path in files if files is not None else series.files:
        reader = _header(path, case_id)
        uid = _tag(reader, "series_uid")
        if series.series_uid and uid and uid != series.series_uid:
            raise CohortError(
                f"case {case_id}: {series.rel} mixes DICOM series ({os.path.basename(path)} "
                f"belongs to SeriesInstanceUID {uid}); expected one series per folder"
            )
        _check_native_pixel_data(path, reader, case_id)
        position = _floats(_tag(reader, "position"), 3)
        if position is None:
            raise CohortError(
                f"case {case_id}: DICOM file {path} has no ImagePositionPatient (0020,0032)"
            )
        number = (file_numbers or {}).get(path)
        out.append(
            DicomSlice(
                path=path,
                file_number=number if number is not None else _file_number(path, reader, case_id),
                position=position,
                temporal_position=_int_or_none(_tag(reader, "temporal")),
                acquisition_time=_tag(reader, "acquisition_time"),
            )
        )
    return out


def series_normal(orientation: Optional[Sequence[float]]) -> np.ndarray:
    """Unit slice normal ``row x column`` of an ImageOrientationPatient (z axis if None)."""
    if orientation is None:
        return np.array([0.0, 0.0, 1.0])
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    return normal / norm if norm > 0 else np.array([0.0, 0.0, 1.0])


def sort_slices(slices: Sequence[DicomSlice], orientation) -> List[DicomSlice]:
    """Slices sorted by position along the normal, ascending (SimpleITK's z order)."""
    normal = series_normal(orientation)
    return sorted(slices, key=lambda s: float(np.dot(normal, s.position)))


def _ranges(numbers: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"`` (short text for messages)."""
    parts, start, prev = [], None, None
    for n in sorted(numbers):
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = n
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(parts)


def check_slices(
    slices_sorted: Sequence[DicomSlice],
    orientation,
    case_id: str,
    label: str,
    first_number: Optional[int] = 1,
) -> None:
    """Raise if a series (sorted by :func:`sort_slices`) misses or repeats a slice.

    Args:
        slices_sorted: the slices of one phase, in position order.
        orientation: the series' ImageOrientationPatient (6 floats) or None.
        case_id, label: for messages (label = series folder, and phase when split).
        first_number: the file number the phase must start at (1 for a whole series; None for
            one phase of a multi-phase series, whose numbers start where the previous phase
            stopped).

    Raises:
        CohortError: duplicated or missing file numbers, duplicated positions, a spacing gap.
    """
    numbers = [s.file_number for s in slices_sorted]
    seen, dups = set(), set()
    for n in numbers:
        (dups if n in seen else seen).add(n)
    if dups:
        raise CohortError(
            f"case {case_id}: series {label} has duplicated file number(s) {_ranges(dups)}"
        )
    lo = min(numbers) if first_number is None else first_number
    missing = sorted(set(range(lo, max(numbers) + 1)) - seen)
    if missing:
        raise CohortError(
            f"case {case_id}: series {label} is missing file number(s) {_ranges(missing)} of "
            f"{lo}-{max(numbers)} (incomplete download?)"
        )
    if len(slices_sorted) < 2:
        return
    normal = series_normal(orientation)
    z = np.array([np.dot(normal, s.position) for s in slices_sorted])
    steps = np.diff(z)
    median = float(np.median(steps))
    if median <= 1e-6 or np.any(steps <= 1e-3 * median):
        i = int(np.argmin(steps))
        raise CohortError(
            f"case {case_id}: series {label}: files {slices_sorted[i].file_number} and "
            f"{slices_sorted[i + 1].file_number} lie at the same slice position {z[i]:.2f} mm"
        )
    gaps = np.flatnonzero(steps > _GAP_FACTOR * median)
    if len(gaps):
        i = int(gaps[0])
        lost = int(round(steps[i] / median)) - 1
        raise CohortError(
            f"case {case_id}: series {label} has a gap of {steps[i]:.2f} mm (spacing "
            f"{median:.2f} mm) between files {slices_sorted[i].file_number} and "
            f"{slices_sorted[i + 1].file_number}: about {lost} slice(s) missing"
        )


def read_series_image(slices_sorted: Sequence[DicomSlice], case_id: str, label: str) -> sitk.Image:
    """Read the voxels of sorted slices as one 3D image (SimpleITK's series reader).

    Raises:
        CohortError: any reader failure, naming the case and series.
    """
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([s.path for s in slices_sorted])
    try:
        return reader.Execute()
    except RuntimeError as e:
        raise CohortError(
            f"case {case_id}: unreadable DICOM series {label}: {one_line(e)}"
        ) from None
