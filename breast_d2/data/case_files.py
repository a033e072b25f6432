"""Find the per-case files of a LABELS/MASKS folder as other tools and cohorts name them.

A folder of label or mask volumes is matched to the case ids of the images **without regard to
letter case** (MAMA-MIA ships ``images/ISPY2_100899/`` next to
``segmentations/expert/ispy2_100899.nii.gz``). Two layouts are accepted, also mixed:

* flat files ``<folder>/<name>.<ext>``, e.g. ``LABELS/PH0001.nii.gz``,
  ``expert/ispy2_100899.nii.gz``;
* per-case folders ``<folder>/<case>/<name>.<ext>`` holding exactly one matching file, e.g. the
  Duke-Breast-Cancer-MRI-Supplement breast masks
  ``Segmentation_Masks_NRRD/Breast_MRI_001/Segmentation_Breast_MRI_001_Breast.seg.nrrd``.

``<name>`` must match one of the ``patterns`` (regular expressions with a named group ``case``),
tried in order: for breast masks 3D Slicer's ``Segmentation_<case>_Breast`` and then ``<case>``
itself; for anything else ``<case>`` only. Other 3D Slicer segmentations
(``Segmentation_<case>_Dense_and_Vessels.seg.nrrd`` beside the breast mask) are never taken.
Hidden entries (names starting with ``.``) and files with other extensions are ignored.
Files whose case is not among the images are returned as orphans: partial downloads are normal,
so the caller warns once per file and counts them.
"""
import logging
import os
import re
from typing import Dict, List, NamedTuple, Optional, Pattern, Sequence, Tuple, Union

from .errors import CohortError, case_id_index

__all__ = [
    "CASE_FILE_SUFFIXES",
    "CASE_PATTERNS",
    "MASK_PATTERNS",
    "IGNORED_PATTERNS",
    "CaseFiles",
    "split_suffix",
    "find_case_files",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Volume file extensions, longest first (``x.seg.nrrd`` has the name ``x``). Matched in any
#: letter case. ``.nhdr``/``.mhd`` are detached headers; their data files are not volumes.
CASE_FILE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Default patterns of lesion label volumes: the file is named like the case.
CASE_PATTERNS = (r"(?P<case>.+)",)
#: Default patterns of breast masks: 3D Slicer's breast segmentation first, then the plain name.
MASK_PATTERNS = (r"Segmentation_(?P<case>.+)_Breast", r"(?P<case>.+)")
#: Names that are never a case's file even when no pattern gives a known case (other 3D Slicer
#: segments, such as Duke's ``Segmentation_<case>_Dense_and_Vessels.seg.nrrd``).
IGNORED_PATTERNS = (r"Segmentation_.+",)


class CaseFiles(NamedTuple):
    """What :func:`find_case_files` returns.

    Attributes:
        paths: ``{case_id: path}``, keys spelled as in the given case ids, one file per case.
        orphans: ``[(name, path), ...]`` files whose case (``name``, as the file spells it) is not
            among the case ids, sorted by path.
    """

    paths: Dict[str, str]
    orphans: List[Tuple[str, str]]


def split_suffix(
    filename: str, suffixes: Sequence[str] = CASE_FILE_SUFFIXES
) -> Optional[Tuple[str, str]]:
    """``(name, suffix)`` of a file name with one of ``suffixes`` (any letter case), else None.

    Example: ``"Segmentation_X_Breast.seg.nrrd"`` -> ``("Segmentation_X_Breast", ".seg.nrrd")``.
    """
    lower = filename.lower()
    for suffix in sorted(suffixes, key=len, reverse=True):
        if lower.endswith(suffix.lower()) and len(filename) > len(suffix):
            return filename[: -len(suffix)], filename[-len(suffix) :]
    return None


def _default_patterns(kind: str) -> Tuple[str, ...]:
    return MASK_PATTERNS if "mask" in kind.lower() else CASE_PATTERNS


class _Matcher:
    """Names -> case ids with the patterns, case-insensitively."""

    def __init__(self, case_ids: Sequence[str], patterns: Sequence[str], kind: str):
        self.index = case_id_index(case_ids, f"{kind} files")
        self.patterns: List[Pattern] = [re.compile(p, re.IGNORECASE) for p in patterns]
        for p in self.patterns:
            if "case" not in p.groupindex:
                raise ValueError(f"pattern {p.pattern!r} has no named group (?P<case>...)")
        self.ignored = [re.compile(p, re.IGNORECASE) for p in IGNORED_PATTERNS]

    def candidates(self, name: str) -> List[str]:
        """Case names the patterns read from ``name``, most specific pattern first."""
        out = []
        for p in self.patterns:
            m = p.fullmatch(name)
            if m and m.group("case"):
                out.append(m.group("case"))
        return out

    def known(self, name: str) -> Optional[str]:
        """The case id (as given) a file name belongs to, or None."""
        for candidate in self.candidates(name):
            if candidate.lower() in self.index:
                return self.index[candidate.lower()]
        return None

    def orphan_name(self, name: str) -> Optional[str]:
        """The case a file of no known case is named for, or None if it is no case's file."""
        for candidate in self.candidates(name):
            if not any(p.fullmatch(candidate) for p in self.ignored):
                return candidate
        return None


def _entries(folder: str) -> List[str]:
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def _scan_case_folder(
    folder: str, dir_name: str, matcher: _Matcher, suffixes: Sequence[str]
) -> List[str]:
    """Files of ``folder/dir_name`` named for case ``dir_name`` (by the patterns)."""
    case_dir = os.path.join(folder, dir_name)
    found = []
    for name in _entries(case_dir):
        path = os.path.join(case_dir, name)
        split = split_suffix(name, suffixes)
        if split is None or not os.path.isfile(path):
            continue
        if any(c.lower() == dir_name.lower() for c in matcher.candidates(split[0])):
            found.append(path)
    return found


def find_case_files(
    folder: PathLike,
    case_ids: Sequence[str],
    kind: str = "mask",
    suffixes: Sequence[str] = CASE_FILE_SUFFIXES,
    patterns: Optional[Sequence[str]] = None,
) -> CaseFiles:
    """Match the files of a LABELS/MASKS folder to case ids (see the module docstring).

    Args:
        folder: the folder given as ``--labels`` / ``--masks``.
        case_ids: case ids of the images (e.g. :func:`breast_d2.data.readers.list_cases`).
        kind: ``"mask"`` / ``"label volume"``; names the files in messages and picks the default
            ``patterns`` (:data:`MASK_PATTERNS` when it contains "mask", else
            :data:`CASE_PATTERNS`).
        suffixes: volume extensions (:data:`CASE_FILE_SUFFIXES`).
        patterns: regular expressions, each with a group ``(?P<case>...)``, matched in full
            against a file name without its extension, ignoring letter case.

    Returns:
        :class:`CaseFiles`. Cases without a file are simply absent from ``paths``.

    Raises:
        CohortError: the folder is missing; two files for one case (e.g. ``A.nii.gz`` and
            ``a.nii.gz``, or a flat file and a per-case folder), naming both; two case ids that
            differ only in letter case.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise CohortError(f"{kind} folder {folder} does not exist or is not a folder")
    matcher = _Matcher(case_ids, patterns or _default_patterns(kind), kind)
    paths: Dict[str, str] = {}
    orphans: List[Tuple[str, str]] = []

    def add(case_id: str, path: str) -> None:
        if case_id in paths:
            raise CohortError(
                f"case {case_id}: two {kind} files {paths[case_id]} and {path}; keep one"
            )
        paths[case_id] = path

    for entry in _entries(folder):
        path = os.path.join(folder, entry)
        if os.path.isdir(path):
            found = _scan_case_folder(folder, entry, matcher, suffixes)
            if len(found) > 1:
                raise CohortError(
                    f"case {entry}: two {kind} files {found[0]} and {found[1]} in {path}; keep one"
                )
            case_id = matcher.index.get(entry.lower())
            if found and case_id is not None:
                add(case_id, found[0])
            elif found:
                orphans.append((entry, found[0]))
            elif case_id is not None:
                logger.warning("case %s: folder %s holds no %s file named for the case "
                               "(expected %s.nii.gz, Segmentation_%s_Breast.seg.nrrd, ...)",
                               case_id, path, kind, entry, entry)  # fmt: skip
            continue
        split = split_suffix(entry, suffixes)
        if split is None or not os.path.isfile(path):
            continue
        case_id = matcher.known(split[0])
        if case_id is not None:
            add(case_id, path)
        else:
            name = matcher.orphan_name(split[0])
            if name is not None:
                orphans.append((name, path))
            else:
                logger.debug("%s: not a %s file of any case; ignored", path, kind)
    logger.info("%s folder %s: files for %d of %d cases, %d without images",
                kind, folder, len(paths), len(case_ids), len(orphans))  # fmt: skip
    return CaseFiles(paths, sorted(orphans, key=lambda t: t[1]))
