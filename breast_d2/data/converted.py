"""Read the converter's ``cases.json`` and ``splits.json`` (docs/DATA_FORMAT.md), validated.

The one place that reads these two files for the library and the tools (plain ``json``, no
detectron2 or torch), and the one check that a folder is a converted folder at all. Every case
id is checked with :func:`~breast_d2.data.errors.check_case_id` because it becomes a folder name
(``slices/<case_id>/``, ``masks/fold{K}/<case_id>/``); a bad file stops with a one-line
:class:`~breast_d2.data.errors.CohortError` naming the file and entry.
"""
import json
import logging
import os
from typing import Any, Dict, List, Tuple

from .errors import CohortError, check_case_id

__all__ = [
    "CONVERTED_FILES",
    "check_converted_folder",
    "read_json",
    "read_cases",
    "read_splits",
    "fold_case_ids",
    "read_fold",
]

logger = logging.getLogger(__name__)

# The files that make a folder a converted folder for the segmentation side (docs/DATA_FORMAT.md).
CONVERTED_FILES = ("cases.json", "splits.json")


def check_converted_folder(path: str) -> str:
    """Return ``path`` when it is a converted folder (holds ``cases.json`` and ``splits.json``).

    Raises:
        CohortError: one line naming ``path`` and the files it lacks.
    """
    missing = [name for name in CONVERTED_FILES if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise CohortError(
            f"{path} is not a converted folder (needs cases.json and splits.json; "
            f"missing {', '.join(missing)}); write one with tools/convert_to_coco.py"
        )
    return path


def _json_path(path: str, name: str) -> str:
    """``path`` itself, or ``path/name`` when ``path`` is a converted folder."""
    return os.path.join(path, name) if os.path.isdir(path) else path


def read_json(path: str) -> Any:
    """``json.load`` with a one-line :class:`CohortError` naming the file."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CohortError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError:
        raise CohortError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except OSError as e:
        raise CohortError(f"cannot read {path}: {e.strerror or e}") from None


def read_cases(path: str) -> Dict[str, Dict[str, Any]]:
    """``cases.json`` as ``{case_id: entry}`` (entry: case_id, shape [X, Y, Z], spacing, boxes).

    Args:
        path: the converted folder or the ``cases.json`` file.

    Raises:
        CohortError: unreadable file, no ``"cases"`` list, an entry that is not an object, a bad
            or repeated case id.
    """
    path = _json_path(path, "cases.json")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise CohortError(f'{path}: expected {{"cases": [...]}} (the converter\'s cases.json)')
    cases: Dict[str, Dict[str, Any]] = {}
    for i, entry in enumerate(data["cases"]):
        if not isinstance(entry, dict):
            raise CohortError(f"{path}: case #{i} is not an object")
        case_id = check_case_id(entry.get("case_id"), f"{path}: case #{i}: ")
        if case_id in cases:
            raise CohortError(f"{path}: case {case_id!r} appears twice")
        cases[case_id] = entry
    return cases


def read_splits(path: str) -> Dict[str, Any]:
    """``splits.json``, validated: ``{"num_folds", "seed", "folds": [{"fold", "train", "val"}]}``.

    Args:
        path: the converted folder or the ``splits.json`` file.

    Raises:
        CohortError: unreadable file, not an object with a ``"folds"`` list, a fold entry without
            an integer ``"fold"`` or without ``"train"``/``"val"`` lists of valid case ids.
    """
    path = _json_path(path, "splits.json")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("folds"), list):
        raise CohortError(f'{path}: expected an object with a "folds" list (the converter\'s '
                          "splits.json)")
    for i, entry in enumerate(data["folds"]):
        where = f"{path}: folds[{i}]"
        if not isinstance(entry, dict):
            raise CohortError(f"{where} is not an object")
        if not isinstance(entry.get("fold"), int) or isinstance(entry.get("fold"), bool):
            raise CohortError(f"{where}: 'fold' must be an integer, got {entry.get('fold')!r}")
        for split in ("train", "val"):
            ids = entry.get(split)
            if not isinstance(ids, list):
                raise CohortError(f"{where}: {split!r} must be a list of case ids, got {ids!r:.80}")
            for case_id in ids:
                check_case_id(case_id, f"{where} {split}: ")
    return data


def fold_case_ids(
    splits: Dict[str, Any], fold: int, path: str = "splits.json"
) -> Tuple[List[str], List[str]]:
    """``(train_case_ids, val_case_ids)`` of ``fold`` in a :func:`read_splits` result.

    Raises:
        CohortError: the fold is not in ``splits`` (``path`` names the file in the message).
    """
    for entry in splits["folds"]:
        if entry["fold"] == int(fold):
            return list(entry["train"]), list(entry["val"])
    known = [e["fold"] for e in splits["folds"]]
    raise CohortError(f"{path}: no fold {fold} (folds {known})")


def read_fold(path: str, fold: int) -> Tuple[List[str], List[str]]:
    """``(train_case_ids, val_case_ids)`` of ``fold`` in ``splits.json`` (ids validated).

    Args:
        path: the converted folder or the ``splits.json`` file.
        fold: fold index K.

    Raises:
        CohortError: malformed ``splits.json``, a bad case id, or no such fold.
    """
    path = _json_path(path, "splits.json")
    return fold_case_ids(read_splits(path), fold, path)
