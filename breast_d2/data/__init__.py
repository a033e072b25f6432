"""Cohort I/O, the synthetic phantom, conversion to COCO, dataset registration, the mapper.

Submodules are imported on first use: ``phantom``, ``volumes`` and ``convert`` need only
NumPy/SciPy/SimpleITK; ``datasets`` and ``mapper`` import detectron2 (and ``datasets``
registers the cohort's folds when imported).
"""
import importlib

_LAZY = {
    # volumes.py: reading cases, box conventions
    "CohortError": "volumes",
    "CaseGeometry": "volumes",
    "list_cases": "volumes",
    "read_case_phases": "volumes",
    "read_phases_from_dir": "volumes",
    "read_boxes_csv": "volumes",
    "lesions_from_labels": "volumes",
    "compose_channels": "volumes",
    # converted.py: reading the converted folder's cases.json / splits.json
    "read_cases": "converted",
    "read_splits": "converted",
    "read_fold": "converted",
    # convert.py
    "convert_cohort": "convert",
    "make_folds": "convert",
    # phantom.py
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
