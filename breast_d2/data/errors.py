"""The cohort error, its one-line messages and the case-id check, shared by every data reader.

A tiny module with no third-party imports, so that :mod:`.readers`, :mod:`.boxes`,
:mod:`.tables`, :mod:`.dicom`, :mod:`.duke` and the converted-cohort readers can all raise the same
:class:`CohortError` without importing each other (or SimpleITK) just for it.
"""
import logging
import os
import re
from typing import Dict, Iterable, Union

__all__ = ["CohortError", "one_line", "check_case_id", "case_id_index", "PathLike"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# A case id becomes a folder and file name in the output: letters, digits, "_", "-", "." only.
_CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class CohortError(ValueError):
    """Bad input cohort; the message is one line naming the case, file or CSV line, and problem."""


def one_line(exc: BaseException) -> str:
    """Condense a (multi-line, ITK-style) exception message to its most useful single line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:  # ITK messages put the reason on the line with "ERROR"
        if "ERROR" in ln:
            return ln
    return lines[-1] if lines else type(exc).__name__


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



def case_id_index(case_ids: Iterable[str], what: str = "files") -> Dict[str, str]:
    """``{case_id.lower(): case_id}``: tables and label files may spell a case id in another case.

    Args:
        case_ids: the case ids of the images.
        what: what the ids are matched to, for the message (e.g. ``"mask files"``).

    Raises:
        CohortError: two case ids that differ only in letter case (their files could not be told
            apart, so one case would silently take the other's).
    """
    index: Dict[str, str] = {}
    for case_id in case_ids:
        other = index.setdefault(case_id.lower(), case_id)
        if other != case_id:
            raise CohortError(
                f"cases {other} and {case_id} differ only in letter case; their {what} cannot be "
                "told apart"
            )
    return index
