"""breast_d2: detect breast masses in DCE-MRI with detectron2.

The package is imported lazily: the NumPy-only parts (phantom, conversion, FROC maths) load
without torch or detectron2. Importing :mod:`breast_d2.data.datasets` — which the trainer, the
mapper, :mod:`breast_d2.engine` and the attributes below do — registers the converted cohort's
folds ``breast_fold{K}_train/_val`` from ``$BREAST_D2_DATA`` (default ``datasets/phantom_coco``).
"""
import importlib
import importlib.util

__version__ = "0.1.0"

# A detectron2 plugin: say how to get detectron2 in one line (find_spec imports nothing).
if importlib.util.find_spec("detectron2") is None:
    raise ImportError(
        "breast_d2 needs detectron2, which is not installed: run `make env` in the breast_d2 "
        "checkout, or install detectron2 for your torch (https://detectron2.readthedocs.io)"
    )

_LAZY = {
    "add_breast_config": "breast_d2.config",
    "BreastMaskDatasetMapper": "breast_d2.data.mapper",
    "register_breast_folds": "breast_d2.data.datasets",
    "BreastFROCEvaluator": "breast_d2.evaluation",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'breast_d2' has no attribute {name!r}")
