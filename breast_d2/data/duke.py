"""Choosing the DCE phases of a TCIA download (Duke-Breast-Cancer-MRI) among all its series.

A Duke patient folder holds, next to the dynamic series, a localizer, a non-fat-saturated T1
(``ax t1``, ``ax t1 tse c``) and sometimes SEG objects. The phases are chosen in one of two ways:

1. **TCIA's filepath mapping** (``--series-map``, ``Breast-Cancer-MRI-filepath_filename-mapping``
   ``.xlsx`` or ``.csv``). Authoritative where given: each downloaded file's row names its sequence
   (``pre``, ``post_1`` .. ``post_4``, ``T1``) and its number within it, whatever the
   descriptions or series numbers say. See :class:`SeriesMap`.
2. **SeriesDescription rules** (:func:`classify_description`), for cases the map does not cover:

   ============================  ==========================================================
   description (case-insensitive)  phase
   ============================  ==========================================================
   ``... dyn ... pre``            0 (``ax dyn pre``, ``t1_fl3d_tra_dynVIEWS_spair_ pre``)
   ``... dyn ... <n>st/nd/rd/th pass``  n (``ax dyn 1st pass``, ``..._spair 2nd pass``)
   ``Ph<n>/... dyn``              n (``Ph1/ax 3d dyn``; the folder name drops the ``/``)
   ``... dyn`` with no marker     0, when the case's other dynamic series are marked posts
                                  (``ax 3d dyn`` next to ``Ph1/ax 3d dyn`` ..)
   ``... multiphase``             every phase, split by TemporalPositionIdentifier, else by
                                  AcquisitionTime (``Ax Vibrant MultiPhase``)
   ============================  ==========================================================

   Never a phase: a description without ``dyn``/``multiphase`` (``ax t1``, ``ax t1 tse c``), a
   localizer/scout/calibration/subtraction/MIP, a non-MR modality (SEG, PR), or a series on
   another orientation than the dynamic ones.

Either way the chosen phases must be ``pre`` plus posts ``1..n`` without a hole, each exactly
once, from one patient and study (PatientID, StudyInstanceUID) and one orientation; anything
else is a :class:`CohortError` naming the case and the series folders. A case whose phases no
rule can tell apart suggests ``--series-map``.
"""
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .dicom import (
    DicomSlice,
    SeriesHeader,
    check_slices,
    read_slices,
    scan_case_series,
    sort_slices,
)
from .errors import CohortError, PathLike, case_id_index
from .tables import iter_table, row_label

__all__ = [
    "ChosenPhase",
    "SeriesMap",
    "classify_description",
    "choose_dce_phases",
    "find_collection_root",
    "read_series_map",
]

logger = logging.getLogger(__name__)

MAP_COLUMNS = ("original_path_and_filename", "classic_path", "descriptive_path")
_NOT_A_PHASE_RE = re.compile(
    r"(?<![a-z])loc(?![a-z])|locali[sz]er|scout|survey|calibrat|(?<![a-z])cal(?![a-z])"
    r"|(?<![a-z])sub(?![a-z])|subtract|(?<![a-z])mip(?![a-z])|(?<![a-z])mpr(?![a-z])|reformat"
)
_PRE_RE = re.compile(r"(?<![a-z])pre(?![a-z])")
_PASS_RE = re.compile(r"(\d+)\s*(?:st|nd|rd|th)?\s*pass")
_PH_RE = re.compile(r"(?<![a-z])ph\s*(\d+)")
_POST_RE = re.compile(r"post\s*[-_]?\s*(\d+)")
_MAP_SEQUENCE_RE = re.compile(r"^(pre|post_(\d+))$", re.IGNORECASE)
_MAP_NUMBER_RE = re.compile(r"_(\d+)\.dcm$", re.IGNORECASE)
_ORIENTATION_ATOL = 1e-3
# rules that split one multi-phase series into its phases
_SPLIT_RULES = ("temporal position", "acquisition time")


@dataclass(frozen=True)
class ChosenPhase:
    """One DCE phase of a case, ready to read.

    Attributes:
        index: 0 = pre-contrast, k = k-th post-contrast.
        series: the series folder it comes from.
        slices: its files sorted by position along the normal (z order), with file numbers.
        rule: how it was chosen (``"series map"``, ``"description"``, ``"temporal position"``,
            ``"acquisition time"``, ``"series number"``).
    """

    index: int
    series: SeriesHeader
    slices: Tuple[DicomSlice, ...]
    rule: str

    @property
    def label(self) -> str:
        """Series folder (relative to the case), plus the phase for a split multi-phase series."""
        if self.rule in _SPLIT_RULES:
            return f"{self.series.rel} [phase {self.index}]"
        return self.series.rel


# ----------------------------------------------------------------------------- descriptions


def classify_description(description: str) -> Tuple[str, Optional[int]]:
    """What a SeriesDescription says about a series.

    Returns:
        ``(kind, phase)``: kind ``"dynamic"`` with phase 0..n or None (no marker),
        ``"multiphase"`` (phase None), ``"ambiguous"`` (markers disagree), or ``"other"``.
    """
    text = " ".join(description.lower().split())
    if not text or _NOT_A_PHASE_RE.search(text):
        return "other", None
    if re.search(r"multi\s*-?\s*phase", text):
        return "multiphase", None
    if "dyn" not in text:
        return "other", None
    marks = set()
    if _PRE_RE.search(text):
        marks.add(0)
    for regex in (_PASS_RE, _PH_RE, _POST_RE):
        marks.update(int(m.group(1)) for m in regex.finditer(text))
    if len(marks) > 1:
        return "ambiguous", None
    return "dynamic", (marks.pop() if marks else None)


def _describe(headers: Iterable[SeriesHeader]) -> str:
    return "; ".join(f"{h.rel} ({h.description or 'no description'})" for h in headers)


def _same_orientation(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.allclose(a, b, atol=_ORIENTATION_ATOL))


def _by_description(headers: Sequence[SeriesHeader], case_id: str) -> Dict[int, SeriesHeader]:
    """``{phase: series}`` from the description rules (multi-phase series handled elsewhere)."""
    marked: Dict[int, List[SeriesHeader]] = {}
    unmarked: List[SeriesHeader] = []
    for h in headers:
        kind, phase = classify_description(h.description)
        if kind == "ambiguous":
            raise CohortError(
                f"case {case_id}: series {h.rel} ({h.description}) names two phases; "
                "pass --series-map to say which it is"
            )
        (unmarked if phase is None else marked.setdefault(phase, [])).append(h)
    for phase, group in sorted(marked.items()):
        if len(group) > 1:
            name = "pre" if phase == 0 else f"post_{phase}"
            raise CohortError(
                f"case {case_id}: series {' and '.join(h.rel for h in group)} both look like "
                f"{name}; pass --series-map to choose"
            )
    chosen = {phase: group[0] for phase, group in marked.items()}
    if unmarked:
        if len(unmarked) > 1 or 0 in chosen or not chosen:
            raise CohortError(
                f"case {case_id}: cannot tell the DCE phases apart among {_describe(headers)}; "
                "pass --series-map with TCIA's Breast-Cancer-MRI-filepath_filename-mapping"
            )
        chosen[0] = unmarked[0]  # "ax 3d dyn" beside "Ph1/ax 3d dyn".. is the pre-contrast
    return chosen


def _split_multiphase(series: SeriesHeader, case_id: str) -> List[ChosenPhase]:
    """Phases of one multi-phase series, by TemporalPositionIdentifier else AcquisitionTime."""
    slices = read_slices(series, case_id)
    if all(s.temporal_position is not None for s in slices):
        rule, key = "temporal position", (lambda s: s.temporal_position)
    elif all(s.acquisition_time for s in slices):
        rule, key = "acquisition time", (lambda s: float(s.acquisition_time or 0))
    else:
        raise CohortError(
            f"case {case_id}: multi-phase series {series.rel} has neither "
            "TemporalPositionIdentifier nor AcquisitionTime on every file; cannot split it"
        )
    groups: Dict[float, List[DicomSlice]] = {}
    for s in slices:
        groups.setdefault(key(s), []).append(s)
    phases = []
    for index, value in enumerate(sorted(groups)):
        ordered = sort_slices(groups[value], series.orientation)
        check_slices(ordered, series.orientation, case_id, f"{series.rel} [phase {index}]",
                     first_number=None)  # fmt: skip
        first = min(s.file_number for s in ordered)
        # Box tables count each phase's slices from 1 (TCIA's mapping numbers them per phase).
        local = tuple(_renumber(s, s.file_number - first + 1) for s in ordered)
        phases.append(ChosenPhase(index, series, local, rule))
    return phases


def _renumber(s: DicomSlice, number: int) -> DicomSlice:
    return DicomSlice(s.path, number, s.position, s.temporal_position, s.acquisition_time)


def _read_phase(index: int, series: SeriesHeader, case_id: str, rule: str) -> ChosenPhase:
    ordered = sort_slices(read_slices(series, case_id), series.orientation)
    check_slices(ordered, series.orientation, case_id, series.rel)
    return ChosenPhase(index, series, tuple(ordered), rule)


def _check_phase_set(phases: Dict[int, object], case_id: str, where: str) -> None:
    if 0 not in phases or len(phases) < 2:
        found = ", ".join("pre" if k == 0 else f"post_{k}" for k in sorted(phases)) or "none"
        raise CohortError(
            f"case {case_id}: needs a pre-contrast and at least one post-contrast phase, "
            f"found {found} ({where})"
        )
    missing = sorted(set(range(max(phases) + 1)) - set(phases))
    if missing:
        raise CohortError(
            f"case {case_id}: post-contrast phase(s) {', '.join(f'post_{k}' for k in missing)} "
            f"missing while later ones exist ({where}); a later phase never takes its place"
        )


def _check_consistent(phases: Sequence[ChosenPhase], case_id: str) -> None:
    """One patient, one study, one orientation across the chosen phases."""
    ref = phases[0].series
    for p in phases[1:]:
        s = p.series
        for name, a, b in (("PatientID", ref.patient_id, s.patient_id),
                           ("StudyInstanceUID", ref.study_uid, s.study_uid)):  # fmt: skip
            if a and b and a != b:
                raise CohortError(
                    f"case {case_id}: series {s.rel} has {name} {b} but {ref.rel} has {a}; "
                    "phases must come from one examination"
                )
        if not _same_orientation(ref.orientation, s.orientation):
            raise CohortError(
                f"case {case_id}: series {s.rel} has another orientation than {ref.rel}"
            )


def _choose_by_rules(headers: Sequence[SeriesHeader], case_id: str) -> List[ChosenPhase]:
    dynamic = [h for h in headers if classify_description(h.description)[0] != "other"]
    if not dynamic:
        raise CohortError(
            f"case {case_id}: no series looks like a DCE phase among {_describe(headers)}; "
            "pass --series-map with TCIA's Breast-Cancer-MRI-filepath_filename-mapping"
        )
    # The dynamic series share one orientation; a series on another one is never a phase.
    common = Counter(tuple(np.round(h.orientation, 3)) if h.orientation else None
                     for h in dynamic).most_common(1)[0][0]  # fmt: skip
    kept = [h for h in dynamic if _same_orientation(
        None if common is None else tuple(common), h.orientation)]  # fmt: skip
    for h in dynamic:
        if h not in kept:
            logger.warning("case %s: series %s (%s) is on another orientation; not a phase",
                           case_id, h.rel, h.description)  # fmt: skip
    multi = [h for h in kept if classify_description(h.description)[0] == "multiphase"]
    if multi:
        if len(kept) > 1:
            raise CohortError(
                f"case {case_id}: a multi-phase series next to other dynamic series "
                f"({_describe(kept)}); pass --series-map to choose"
            )
        phases = _split_multiphase(multi[0], case_id)
        _check_phase_set({p.index: p for p in phases}, case_id, multi[0].rel)
        return phases
    chosen = _by_description(kept, case_id)
    _check_phase_set(chosen, case_id, _describe(chosen[k] for k in sorted(chosen)))
    return [_read_phase(k, chosen[k], case_id, "description") for k in sorted(chosen)]


def _choose_by_series_number(headers: Sequence[SeriesHeader], case_id: str) -> List[ChosenPhase]:
    """Every MR series is a phase, in SeriesNumber order (folders exported one per phase)."""
    series = [h for h in headers if h.modality in ("MR", "")]
    numbers = [h.series_number for h in series]
    if None in numbers:
        h = series[numbers.index(None)]
        raise CohortError(f"case {case_id}: DICOM series {h.rel} has no SeriesNumber (0020,0011)")
    series.sort(key=lambda h: h.series_number)
    for a, b in zip(series, series[1:]):
        if a.series_number == b.series_number:
            raise CohortError(
                f"case {case_id}: DICOM series {a.rel} and {b.rel} share SeriesNumber "
                f"{a.series_number}; cannot order the phases"
            )
    return [_read_phase(k, h, case_id, "series number") for k, h in enumerate(series)]


# ----------------------------------------------------------------------------- series map


@dataclass
class _MapSeries:
    """The mapping rows of one downloaded series folder of one case."""

    descriptive: str  # folder relative to the case folder, descriptive download
    classic: str  # the same folder in the classic (UID-named) download
    # (descriptive file name, classic file name, sequence, number within the sequence, row)
    files: List[Tuple[str, str, str, int, int]] = field(default_factory=list)


@dataclass
class SeriesMap:
    """TCIA's ``Breast-Cancer-MRI-filepath_filename-mapping`` for the cases being converted.

    Attributes:
        path: the table file.
        cases: ``{case_id: {descriptive series folder: _MapSeries}}``; only cases asked for.
    """

    path: str
    cases: Dict[str, Dict[str, _MapSeries]]


def _split_rel(path: str, row: int, table: str, column: str) -> Tuple[str, str, str]:
    """``Duke-Breast-Cancer-MRI/<case>/<study>/<series>/<file>`` -> (case, series folder, file)."""
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    if len(parts) < 4:
        raise CohortError(
            f"{row_label(table, row)}: {column} {path!r} is not <collection>/<case>/.../<file>.dcm"
        )
    return parts[1], "/".join(parts[2:-1]), parts[-1]


def read_series_map(path: PathLike, case_ids: Optional[Iterable[str]] = None) -> SeriesMap:
    """Read TCIA's filepath mapping (``.xlsx`` as published, or ``.csv``), streamed.

    Columns ``original_path_and_filename`` (``DICOM_Images/<case>/<sequence>/<case>_<sequence>_
    <NNN>.dcm``: the sequence is ``pre``, ``post_1``.. ``post_4`` or ``T1``, ``NNN`` the file's
    number within it), ``classic_path`` and ``descriptive_path`` (the downloaded file's path from
    the collection folder). Rows of other sequences (``T1``) are read and ignored; rows of cases
    not in ``case_ids`` are skipped (a partial download).

    Args:
        path: the table.
        case_ids: cases to keep (default all).

    Returns:
        :class:`SeriesMap`.

    Raises:
        CohortError: missing columns, or a row whose paths cannot be parsed (names file and row).
    """
    path = os.fspath(path)
    wanted = None if case_ids is None else case_id_index(case_ids, "series map rows")
    cases: Dict[str, Dict[str, _MapSeries]] = {}
    rows = skipped = 0
    for row, cells in iter_table(path, MAP_COLUMNS):
        rows += 1
        original = cells["original_path_and_filename"].replace("\\", "/").split("/")
        if len(original) < 4:
            raise CohortError(
                f"{row_label(path, row)}: original_path_and_filename "
                f"{cells[MAP_COLUMNS[0]]!r} is not DICOM_Images/<case>/<sequence>/<file>_<NNN>.dcm"
            )
        sequence = original[-2]
        m = _MAP_SEQUENCE_RE.match(sequence)
        if m is None:  # T1 and other sequences: never a DCE phase
            continue
        number = _MAP_NUMBER_RE.search(original[-1])
        if number is None:
            raise CohortError(f"{row_label(path, row)}: no _<NNN>.dcm number in {original[-1]!r}")
        case, desc_folder, desc_file = _split_rel(cells["descriptive_path"], row, path,
                                                  "descriptive_path")  # fmt: skip
        _, classic_folder, classic_file = _split_rel(cells["classic_path"], row, path,
                                                     "classic_path")  # fmt: skip
        if wanted is not None:
            if case.lower() not in wanted:
                skipped += 1
                continue
            case = wanted[case.lower()]
        by_folder = cases.setdefault(case, {})
        entry = by_folder.get(desc_folder)
        if entry is None:
            entry = by_folder[desc_folder] = _MapSeries(desc_folder, classic_folder)
        phase = 0 if m.group(2) is None else int(m.group(2))
        entry.files.append((desc_file, classic_file, phase, int(number.group(1)), row))
    logger.info("series map %s: %d rows, %d case(s) kept, %d DCE row(s) of other cases skipped",
                path, rows, len(cases), skipped)  # fmt: skip
    return SeriesMap(path, cases)


def _choose_by_map(
    headers: Sequence[SeriesHeader], entries: Dict[str, _MapSeries], case_dir: str, case_id: str,
    table: str,
) -> List[ChosenPhase]:
    """Phases from the mapping rows of one case: every DCE row's file must exist."""
    by_rel = {h.rel: h for h in headers}
    files_by_phase: Dict[int, List[Tuple[SeriesHeader, str, int]]] = {}
    for entry in entries.values():
        use_classic = entry.descriptive not in by_rel and entry.classic in by_rel
        rel = entry.classic if use_classic else entry.descriptive
        header = by_rel.get(rel)
        for desc_file, classic_file, phase, number, row in entry.files:
            name = classic_file if use_classic else desc_file
            path = os.path.join(case_dir, *rel.split("/"), name)
            if header is None or not os.path.isfile(path):
                raise CohortError(
                    f"{row_label(table, row)}: case {case_id}: {rel}/{name} does not exist "
                    "(incomplete download, or a map for another download)"
                )
            files_by_phase.setdefault(phase, []).append((header, path, number))
    _check_phase_set(files_by_phase, case_id, f"series map {table}")
    listed = {path for items in files_by_phase.values() for _, path, _ in items}
    for header in {h.folder: h for items in files_by_phase.values() for h, _, _ in items}.values():
        extra = [f for f in header.files if f not in listed]
        if extra:  # a file the map does not know would be dropped without a word
            raise CohortError(
                f"case {case_id}: series {header.rel} holds {len(extra)} file(s) that {table} "
                f"does not list (e.g. {os.path.basename(extra[0])}); is the map for this download?"
            )
    phases = []
    for index in sorted(files_by_phase):
        items = files_by_phase[index]
        series = items[0][0]
        if any(h is not series for h, _, _ in items):
            raise CohortError(
                f"case {case_id}: {table} puts phase {index} in several series folders "
                f"({', '.join(sorted({h.rel for h, _, _ in items}))})"
            )
        numbers = {p: n for _, p, n in items}
        slices = read_slices(series, case_id, files=sorted(numbers), file_numbers=numbers)
        ordered = sort_slices(slices, series.orientation)
        check_slices(ordered, series.orientation, case_id, f"{series.rel} (phase {index})")
        phases.append(ChosenPhase(index, series, tuple(ordered), "series map"))
    return phases


# ----------------------------------------------------------------------------- entry points


def choose_dce_phases(
    case_dir: PathLike,
    case_id: str,
    series_map: Optional[SeriesMap] = None,
    order: str = "description",
) -> List[ChosenPhase]:
    """Find and order the DCE phases of one DICOM case folder (any depth of sub-folders).

    Args:
        case_dir: the patient folder (e.g. ``.../Duke-Breast-Cancer-MRI/Breast_MRI_001``).
        case_id: for messages and the series map lookup.
        series_map: TCIA's filepath mapping; authoritative for the cases it holds.
        order: ``"description"`` (the rules of this module) or ``"series-number"`` (every MR
            series is a phase, in SeriesNumber order: for exports that hold only the phases).

    Returns:
        the phases, index 0 (pre) first, each with its slices in z order.

    Raises:
        CohortError: see the module docstring.
    """
    case_dir = os.fspath(case_dir)
    headers = scan_case_series(case_dir, case_id)
    if not headers:
        return []
    if series_map is not None and case_id in series_map.cases:
        phases = _choose_by_map(headers, series_map.cases[case_id], case_dir, case_id,
                                series_map.path)  # fmt: skip
    elif order == "series-number":
        phases = _choose_by_series_number(headers, case_id)
    elif order == "description":
        mr = [h for h in headers if h.modality in ("MR", "")]
        phases = _choose_by_rules(mr, case_id)
    else:
        raise ValueError(f"unknown DICOM phase order {order!r}")
    _check_consistent(phases, case_id)
    for p in phases:
        logger.info("case %s: phase %d <- %s (%s; %s)", case_id, p.index, p.label,
                    p.series.description or "no description", p.rule)  # fmt: skip
    return phases


def find_collection_root(images: PathLike) -> str:
    """The folder of case folders inside what the user passed as ``--images``.

    Accepts the NBIA manifest folder (``manifest-<digits>/``, or any folder holding NBIA's
    ``metadata.csv``, with one collection folder inside), the collection folder
    (``Duke-Breast-Cancer-MRI/``), or any folder of case folders; returns the last two unchanged.

    Raises:
        CohortError: a manifest folder holding several collections.
    """
    images = os.fspath(images)
    manifest = os.path.isfile(os.path.join(images, "metadata.csv")) or re.match(
        r"^manifest-\d+$", os.path.basename(os.path.normpath(images))
    )
    if not manifest:
        return images
    subs = sorted(n for n in os.listdir(images)
                  if not n.startswith(".") and os.path.isdir(os.path.join(images, n)))  # fmt: skip
    if len(subs) != 1:
        raise CohortError(
            f"{images} is an NBIA manifest folder holding {len(subs)} collection folders "
            f"({', '.join(subs) or 'none'}); pass one of them as --images"
        )
    logger.info("%s is an NBIA manifest folder: reading collection %s", images, subs[0])
    return os.path.join(images, subs[0])
