"""Test-time model wrappers: horizontal-flip TTA with weighted box fusion (``tta``), and the
weighted box fusion it uses (``fusion``, plain NumPy, usable without detectron2; ``tta`` is
imported lazily so that importing this package does not import detectron2). ``introspect``
(imported explicitly) traces given boxes through a detector's RPN and box head."""
import logging

from .fusion import box_iou_one_to_many, weighted_box_fusion

__all__ = ["BreastFlipTTA", "apply_test_time_flip", "box_iou_one_to_many", "weighted_box_fusion"]

logger = logging.getLogger(__name__)


def __getattr__(name: str):
    if name in ("BreastFlipTTA", "apply_test_time_flip"):
        from . import tta

        return getattr(tta, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
