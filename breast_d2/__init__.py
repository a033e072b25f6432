"""breast_d2: detect breast masses in DCE-MRI with detectron2.

Importing the package registers the converted cohort's folds (``breast_fold{K}_train/_val``)
from ``$BREAST_D2_DATA`` (default ``datasets/phantom_coco``).
"""
from .config import add_breast_config
from .data import BreastMaskDatasetMapper, register_breast_folds

register_breast_folds()

__all__ = ["add_breast_config", "BreastMaskDatasetMapper", "register_breast_folds"]
