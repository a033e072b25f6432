"""Test-time model wrappers: horizontal-flip TTA with weighted box fusion (``tta``), and the
plain-NumPy weighted box fusion it uses (``fusion``, usable without detectron2)."""
import logging

from .fusion import box_iou_one_to_many, weighted_box_fusion
from .tta import BreastFlipTTA, apply_test_time_flip

__all__ = ["BreastFlipTTA", "apply_test_time_flip", "box_iou_one_to_many", "weighted_box_fusion"]

logger = logging.getLogger(__name__)
