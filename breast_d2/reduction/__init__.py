"""Second-stage false-positive reduction of 3D candidates (post hoc, on saved evaluations).

``features`` (one row of measured features per candidate: detector scores, size and shape,
position in the breast mask, contrast kinetics), ``reducer`` (a small LightGBM classifier saved as
a text model with a JSON provenance sidecar), ``oof`` (out-of-fold training and scoring over the
folds of a cross-validation, and one final model for new cases). ``tools/reduce_fp.py`` is the
command line.
"""
import logging

from .features import FEATURE_VERSION, ReductionError, associate_detections, feature_names
from .oof import (
    FoldRun,
    candidate_hits,
    find_fold_dirs,
    fold_features,
    load_fold_run,
    out_of_fold,
    train_final,
)
from .reducer import SCORE_MODES, Reducer, load_reducer, train_reducer

__all__ = [
    "FEATURE_VERSION",
    "ReductionError",
    "associate_detections",
    "feature_names",
    "FoldRun",
    "candidate_hits",
    "find_fold_dirs",
    "fold_features",
    "load_fold_run",
    "out_of_fold",
    "train_final",
    "SCORE_MODES",
    "Reducer",
    "load_reducer",
    "train_reducer",
]

logger = logging.getLogger(__name__)
