"""Register a converted breast DCE-MRI cohort (``tools/convert_to_coco.py`` output) in detectron2.

``register_breast_folds(root)`` registers ``breast_fold{K}_train`` and ``breast_fold{K}_val`` for
every fold in ``root/splits.json``. The data root defaults to ``$BREAST_D2_DATA`` and otherwise to
``datasets/phantom_coco`` (relative to the working directory), like ``DETECTRON2_DATASETS`` in
detectron2's ``builtin.py``.
"""
import json
import logging
import os
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .converted import read_splits
from .errors import check_case_id

__all__ = [
    "DEFAULT_DATA_ROOT",
    "default_data_root",
    "load_breast_json",
    "register_breast_folds",
    "dataset_name",
]

logger = logging.getLogger(__name__)

DEFAULT_DATA_ROOT = os.path.join("datasets", "phantom_coco")
_IMAGE_KEYS = ("case_id", "slice_index")


def default_data_root() -> str:
    """The converted-cohort folder: ``$BREAST_D2_DATA`` if set, else ``datasets/phantom_coco``."""
    return os.environ.get("BREAST_D2_DATA", "") or DEFAULT_DATA_ROOT


def dataset_name(fold: int, split: str, prefix: str = "breast") -> str:
    """Name of the registered dataset, e.g. ``breast_fold0_train`` (split: "train" or "val")."""
    return f"{prefix}_fold{fold}_{split}"


def load_breast_json(json_file: str, image_root: str, name: Optional[str] = None) -> List[Dict]:
    """Load a converted COCO file as detectron2 dataset dicts that keep ``case_id`` and
    ``slice_index`` (``load_coco_json`` keeps only file_name/height/width/id of image entries).

    Boxes stay as ``load_coco_json`` returns them (``BoxMode.XYWH_ABS``, slice pixels, x = column).
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"{json_file}: converted COCO file not found; run tools/convert_to_coco.py "
            "or set DATASETS.BREAST_ROOT / $BREAST_D2_DATA to the converted folder"
        )
    dicts = load_coco_json(json_file, image_root, name, extra_annotation_keys=["lesion_index"])
    with open(json_file) as f:
        extra = {im["id"]: im for im in json.load(f)["images"]}
    for d in dicts:
        image = extra[d["image_id"]]
        for key in _IMAGE_KEYS:
            if key not in image:
                raise ValueError(f"{json_file}: image id {d['image_id']} has no '{key}'")
            d[key] = image[key]
        # case_id names mask folders (masks/fold{K}/<case_id>/): a plain file name only.
        check_case_id(d["case_id"], f"{json_file}: image id {d['image_id']}: ")
    return dicts


def register_breast_folds(
    root: Optional[str] = None, num_folds: int = 5, prefix: str = "breast"
) -> List[str]:
    """Register ``{prefix}_fold{K}_train`` / ``_val`` of a converted folder (re-registers if taken).

    Args:
        root: converted folder; ``None`` uses :func:`default_data_root`. It need not exist yet:
            loading is lazy and fails with a clear message when the files are missing.
        num_folds: folds registered when ``root/splits.json`` does not exist (yet).
        prefix: dataset name prefix.

    Returns:
        The registered dataset names.
    """
    root = os.path.abspath(root or default_data_root())
    splits_json = os.path.join(root, "splits.json")
    splits = read_splits(splits_json) if os.path.isfile(splits_json) else None
    folds = splits["folds"] if splits else [{"fold": k} for k in range(num_folds)]
    names = []
    for entry in folds:
        fold = entry["fold"]
        for split in ("train", "val"):
            name = dataset_name(fold, split, prefix)
            json_file = os.path.join(root, f"fold{fold}_{split}.json")
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
            DatasetCatalog.register(
                name, lambda j=json_file, r=root, n=name: load_breast_json(j, r, n)
            )
            MetadataCatalog.get(name).set(
                json_file=json_file,
                image_root=root,
                data_root=root,
                cases_json=os.path.join(root, "cases.json"),
                case_ids=list(entry.get(split, [])),
                fold=fold,
                split=split,
                evaluator_type="breast_froc",
                thing_classes=["mass"],
            )
            names.append(name)
    logger.debug("Registered %d breast datasets from %s", len(names), root)
    return names


# Importing this module registers the default cohort (root from $BREAST_D2_DATA), as
# detectron2's builtin.py does; tools re-register with their --data root.
register_breast_folds()
