"""Cohort I/O, conversion to COCO, dataset registration and the masking mapper."""
from .datasets import (
    default_data_root,
    dataset_name,
    load_breast_json,
    load_cases_by_id,
    register_breast_folds,
)
from .mapper import BreastMaskDatasetMapper

__all__ = [k for k in globals().keys() if not k.startswith("_")]
