"""The cohort files of a converted folder: patient-level folds, COCO files, cases.json, splits.json.

Written from the per-case records of :mod:`breast_d2.data.convert` (one run, a resumed run or the
merge of shards: the same records give the same bytes)::

    OUT/cases.json, OUT/splits.json, OUT/fold{k}_train.json, OUT/fold{k}_val.json, OUT/test.json
"""
import logging
import os
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from ..fileio import write_json_atomic
from .boxes import slice_boxes_from_boxes
from .errors import CohortError, case_id_index
from .tables import iter_table

__all__ = ["CATEGORIES", "lesion_stratum", "make_folds", "read_test_cases", "write_cohort_files"]

logger = logging.getLogger(__name__)

#: The single COCO category of the project.
CATEGORIES = [{"id": 1, "name": "mass", "supercategory": "lesion"}]


# ----------------------------------------------------------------------------- folds


def lesion_stratum(num_lesions: int) -> int:
    """Stratum of a case for fold splitting: 0, 1 or 2 (= two or more lesions)."""
    return min(int(num_lesions), 2)


def make_folds(lesion_counts: Mapping[str, int], num_folds: int, seed: int) -> List[List[str]]:
    """Patient-level stratified k-fold split.

    Cases are grouped by :func:`lesion_stratum`; each group is shuffled with ``seed`` and dealt
    round-robin over the folds, continuing where the previous group stopped, so fold sizes differ
    by at most one and every stratum is spread evenly. Same counts and seed -> same split.

    Args:
        lesion_counts: ``{case_id: number of lesions}``.
        num_folds: K, 2 <= K <= number of cases.
        seed: shuffling seed.

    Returns:
        K sorted lists of case ids (the validation cases of each fold); each case is in exactly one.
    """
    if not 2 <= num_folds <= len(lesion_counts):
        raise CohortError(
            f"cannot split {len(lesion_counts)} case(s) into {num_folds} folds "
            "(need 2 <= folds <= number of cases)"
        )
    rng = np.random.default_rng(seed)
    folds: List[List[str]] = [[] for _ in range(num_folds)]
    k = 0
    for stratum in range(3):
        group = sorted(c for c, n in lesion_counts.items() if lesion_stratum(n) == stratum)
        for i in rng.permutation(len(group)):
            folds[k % num_folds].append(group[i])
            k += 1
    return [sorted(f) for f in folds]


# ----------------------------------------------------------------------------- COCO / JSON


def _slice_boxes(record: dict) -> list:
    if record["slice_boxes"] is not None:
        return record["slice_boxes"]
    return slice_boxes_from_boxes(record["boxes"], record["shape"][2])


def _coco_entries(records: Sequence[dict]) -> Dict[str, Tuple[list, list]]:
    """``{case_id: (images, annotations)}``; ids unique over the cohort, the same in every fold."""
    entries, image_id, ann_id = {}, 0, 0
    for rec in records:
        width, height, depth = rec["shape"]
        images, anns = [], []
        for z, boxes in enumerate(_slice_boxes(rec)):
            image_id += 1
            images.append({
                "id": image_id,
                "file_name": f"slices/{rec['case_id']}/{z:04d}.png",
                "height": height,
                "width": width,
                "case_id": rec["case_id"],
                "slice_index": z,
            })  # fmt: skip
            for lesion_index, (x0, y0, x1, y1) in boxes:
                ann_id += 1
                anns.append({
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                    "lesion_index": lesion_index,
                })  # fmt: skip
        entries[rec["case_id"]] = (images, anns)
    return entries


def _coco_file(entries, case_ids: Sequence[str], description: str) -> dict:
    return {
        "info": {"description": description, "version": "1.0"},
        "licenses": [],
        "images": [im for c in case_ids for im in entries[c][0]],
        "annotations": [a for c in case_ids for a in entries[c][1]],
        "categories": CATEGORIES,
    }


def read_test_cases(path: str, cases: Sequence[str]) -> List[str]:
    """Held-out test cases of MAMA-MIA's ``train_test_splits.csv`` (column ``test_split``).

    Ids are matched to the converted cases without regard to letter case; test ids without
    images (a partial download) are counted in a warning.

    Returns:
        sorted case ids (as the images spell them).
    """
    lookup, test, absent = case_id_index(cases, "test split entries"), set(), 0
    for _, cells in iter_table(path, ("test_split",)):
        name = cells["test_split"]
        if name:
            if name.lower() in lookup:
                test.add(lookup[name.lower()])
            else:
                absent += 1
    if absent:
        logger.warning("%s: %d test case(s) have no images; ignored", path, absent)
    return sorted(test)


def write_cohort_files(out: str, records: List[dict], settings: dict, skipped: List[dict]) -> None:
    """Write the folds, the COCO files, ``cases.json`` and ``splits.json`` of a converted folder.

    Args:
        out: the converted folder.
        records: the per-case records, in case order.
        settings: ``folds``, ``seed`` and ``splits_from`` (MAMA-MIA's train_test_splits or None).
        skipped: ``{"case_id", "reason"}`` of the cases skipped as bad input.
    """
    num_folds, seed = settings["folds"], settings["seed"]
    keys = ("case_id", "shape", "spacing", "boxes", "has_mask", "num_phases", "phases",
            "file_numbers")  # fmt: skip
    cases = [{k: r.get(k) for k in keys} for r in records]
    all_ids = [r["case_id"] for r in records]
    test = read_test_cases(settings["splits_from"], all_ids) if settings["splits_from"] else []
    pool = [r for r in records if r["case_id"] not in set(test)]
    folds = make_folds({r["case_id"]: len(r["boxes"]) for r in pool}, num_folds, seed)
    pool_ids = [r["case_id"] for r in pool]
    splits = {"num_folds": num_folds, "seed": seed, "folds": []}
    entries = _coco_entries(records)
    for k, val in enumerate(folds):
        train = [c for c in pool_ids if c not in set(val)]
        splits["folds"].append({"fold": k, "train": train, "val": val})
        for split, ids in (("train", train), ("val", val)):
            coco = _coco_file(entries, ids, f"fold {k} {split}")
            write_json_atomic(os.path.join(out, f"fold{k}_{split}.json"), coco)
    if settings["splits_from"]:
        splits.update(test=test, splits_from=settings["splits_from"])
        write_json_atomic(os.path.join(out, "test.json"), _coco_file(entries, test, "test"))
    write_json_atomic(os.path.join(out, "splits.json"), splits)
    write_json_atomic(os.path.join(out, "cases.json"), {"cases": cases, "skipped": skipped})


