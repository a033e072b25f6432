"""FROC files: load and validate candidates and ground truth, write ``froc.json``/``.csv``/``.png``.

Plain JSON and NumPy (no detectron2, no torch). ``cases.json`` is read by the cohort's one reader,
:func:`breast_d2.data.converted.read_cases`; its :class:`~breast_d2.data.volumes.CohortError`
comes back as :class:`FROCInputError` with the same one-line message.
"""
import contextlib
import csv
import io
import logging
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

from ..data.converted import read_cases, read_json
from ..data.errors import CohortError
from ..fileio import write_atomic, write_json_atomic
from .candidates import CandidateArrays, FROCInputError
from .matching import Candidates, ground_truth_arrays

__all__ = [
    "read_froc_json",
    "load_candidates_json",
    "load_cases_json",
    "subset_cases",
    "save_froc",
]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _as_froc_error() -> Iterator[None]:
    """Re-raise the cohort readers' one-line CohortError as FROCInputError (same message)."""
    try:
        yield
    except CohortError as e:
        raise FROCInputError(str(e)) from None


def read_froc_json(path: str) -> Any:
    """Any JSON file of the FROC tools (``froc.json``, candidates), parsed.

    Raises:
        FROCInputError: unreadable file or invalid JSON (one line naming the file).
    """
    with _as_froc_error():
        return read_json(path)


def load_candidates_json(path: str, as_arrays: bool = False) -> Candidates:
    """Load and validate a candidates JSON file.

    Returns:
        The list of candidate dicts, or :class:`CandidateArrays` when ``as_arrays``.

    Raises:
        FROCInputError: unreadable file or a malformed entry (named with its index and case).
    """
    data = read_froc_json(path)
    try:
        arrays = CandidateArrays.from_dicts(data)
    except FROCInputError as e:
        raise FROCInputError(f"{path}: {e}") from None
    return arrays if as_arrays else data


def load_cases_json(path: str) -> List[Dict[str, Any]]:
    """Load and validate ``cases.json``; returns its ``"cases"`` list (in file order).

    Args:
        path: the ``cases.json`` file (or the converted folder holding it).

    Raises:
        FROCInputError: unreadable file, no ``"cases"`` list, a bad or repeated case id, or a
            malformed case (named).
    """
    with _as_froc_error():
        cases = list(read_cases(path).values())
    try:
        ground_truth_arrays(cases)
    except FROCInputError as e:
        raise FROCInputError(f"{path}: {e}") from None
    return cases


def subset_cases(
    cases: Sequence[Mapping[str, Any]], case_ids: Sequence[str]
) -> List[Mapping[str, Any]]:
    """The entries of ``cases`` named in ``case_ids`` (in ``case_ids`` order).

    Raises:
        FROCInputError: when a case id is not in ``cases``.
    """
    by_id = {c.get("case_id"): c for c in cases if isinstance(c, Mapping)}
    missing = [c for c in case_ids if c not in by_id]
    if missing:
        raise FROCInputError(
            f"case {missing[0]!r} is not in the ground truth ({len(missing)} missing)"
        )
    return [by_id[c] for c in dict.fromkeys(case_ids)]


def save_froc(
    result: Mapping[str, Any],
    output_dir: str,
    *,
    candidates: Optional[Candidates] = None,
    detections: Optional[Sequence[Mapping[str, Any]]] = None,
    plot: bool = True,
) -> List[str]:
    """Write ``froc.json``, ``froc.csv``, ``froc.png`` (and candidates/detections JSON if given).

    Every file is written atomically (temporary file, then rename).

    Returns:
        The paths written.
    """
    paths = [os.path.join(output_dir, n) for n in ("froc.json", "froc.csv")]
    write_json_atomic(paths[0], result, indent=1)
    write_atomic(paths[1], lambda f: f.write(_curve_csv(result["curve"])))
    if plot:
        from .plots import plot_froc  # matplotlib only when a figure is wanted

        paths.append(os.path.join(output_dir, "froc.png"))
        plot_froc(result, paths[-1])
    if candidates is not None:
        if isinstance(candidates, CandidateArrays):
            candidates = candidates.to_dicts()
        paths.append(os.path.join(output_dir, "candidates.json"))
        write_json_atomic(paths[-1], candidates)
    if detections is not None:
        paths.append(os.path.join(output_dir, "detections.json"))
        write_json_atomic(paths[-1], detections)
    return paths


def _curve_csv(curve: Mapping[str, Sequence[float]]) -> str:
    """``threshold,fp_per_case,sensitivity`` rows; NaN/None as empty cells."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["threshold", "fp_per_case", "sensitivity"])
    for row in zip(curve["thresholds"], curve["fp_per_case"], curve["sensitivity"]):
        writer.writerow(["" if v is None or v != v else repr(float(v)) for v in row])
    return buf.getvalue()
