"""Cohort I/O, the synthetic phantom, conversion to COCO, dataset registration, the mapper.

Submodules are imported on first use: ``phantom``, ``readers``, ``boxes``, ``channels`` and
``convert`` need only NumPy/SciPy/SimpleITK; ``datasets`` and ``mapper`` import detectron2 (and
``datasets`` registers the cohort's folds when imported). ``volumes`` is kept only for old imports
(it re-exports what moved to ``errors``, ``readers``, ``boxes`` and ``channels``).
"""
import importlib

_LAZY = {
    # errors.py / readers.py: reading cases
    "CohortError": "errors",
    "CaseGeometry": "readers",
    "list_cases": "readers",
    "read_case_phases": "readers",
    "read_phases_from_dir": "readers",
    # boxes.py: box conventions, lesions of label volumes
    "read_boxes_csv": "boxes",
    "lesions_from_labels": "boxes",
    # channels.py: phases -> 3 channels
    "compose_channels": "channels",
    # converted.py: reading the converted folder's cases.json / splits.json
    "read_cases": "converted",
    "read_splits": "converted",
    "read_fold": "converted",
    # convert.py
    "convert_cohort": "convert",
    "make_folds": "convert",
    # phantom/ (package)
    "make_case": "phantom",
    "write_cohort": "phantom",
    "PhantomCase": "phantom",
    # datasets.py / mapper.py (detectron2)
    "default_data_root": "datasets",
    "dataset_name": "datasets",
    "load_breast_json": "datasets",
    "register_breast_folds": "datasets",
    "BreastMaskDatasetMapper": "mapper",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
