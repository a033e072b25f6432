"""The false-positive reducer: a small LightGBM classifier of 3D candidates, saved without pickle.

Label: a candidate is positive when it hits a mass by the project's own matching
(:func:`breast_d2.evaluation.matching.match_candidates`; the FROC's hit criterion and IoU
threshold, 3D IoU > 0.5 by default; ``duplicates="ignore"``, so every candidate hitting a mass is
positive). New score: the classifier's probability that the candidate is a hit (``"prob"``), or
that probability times the detector's candidate score (``"prob_x_det"``).

A model is LightGBM's text model (``booster.save_model``, read back with
``lgb.Booster(model_file=...)``: no pickle) plus a JSON sidecar ``<model>.json`` recording its
provenance: training folds, training case ids, feature names, the parameters and the command.
A loaded model refuses to score a case it was trained on (:meth:`Reducer.check_unseen`).
"""
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

from ..fileio import atomic_path, write_json_atomic
from .features import ReductionError

__all__ = ["LGB_PARAMS", "NUM_TREES", "SCORE_MODES", "Reducer", "train_reducer", "load_reducer"]

logger = logging.getLogger(__name__)

# Small and reproducible: depth <= 4, fixed seed, one thread, deterministic histogram building.
LGB_PARAMS: Dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "max_depth": 4,
    "min_data_in_leaf": 5,
    "lambda_l2": 1.0,
    "seed": 0,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 1,
    "verbose": -1,
}
NUM_TREES = 100
SCORE_MODES = ("prob", "prob_x_det")
SIDECAR_FORMAT = "breast_d2.fp_reducer/1"


def _lgb():
    import lightgbm  # optional at import time: only training/scoring needs it

    return lightgbm


@dataclass
class Reducer:
    """A trained reducer: the LightGBM booster and its provenance (the sidecar's dict)."""

    booster: Any
    provenance: Dict[str, Any] = field(default_factory=dict)

    @property
    def feature_names(self) -> List[str]:
        return list(self.provenance["feature_names"])

    def check_unseen(self, case_ids: Sequence[str], where: str = "model") -> None:
        """Refuse (one line) to score any case that was among the training case ids."""
        seen = set(self.provenance.get("training_case_ids", []))
        leaked = sorted(set(case_ids) & seen)
        if leaked:
            raise ReductionError(
                f"{where} was trained on case {leaked[0]!r} ({len(leaked)} of the "
                f"{len(set(case_ids))} cases to score): refusing to score its own training cases"
            )

    def predict(
        self, x: np.ndarray, case_ids: Sequence[str], det_scores: np.ndarray,
        score_mode: str = "prob", where: str = "model",
    ) -> np.ndarray:
        """New candidate scores.

        Args:
            x: [M, F] features in :attr:`feature_names` order.
            case_ids: [M] case of each row (checked with :meth:`check_unseen`).
            det_scores: [M] detector candidate scores (for ``"prob_x_det"``).
            score_mode: one of :data:`SCORE_MODES`.

        Returns:
            [M] float64 scores in [0, 1] for ``"prob"``.
        """
        if score_mode not in SCORE_MODES:
            raise ReductionError(f"score mode must be one of {SCORE_MODES}, got {score_mode!r}")
        self.check_unseen(case_ids, where)
        if x.shape[1] != len(self.feature_names):
            raise ReductionError(
                f"{where} expects {len(self.feature_names)} features, got {x.shape[1]}")
        prob = np.asarray(self.booster.predict(x), dtype=np.float64) if len(x) else np.zeros(0)
        return prob * det_scores if score_mode == "prob_x_det" else prob

    def save(self, path: str) -> List[str]:
        """Write the text model ``path`` and its sidecar ``path + ".json"`` atomically."""
        with atomic_path(path) as tmp:
            self.booster.save_model(tmp)
        write_json_atomic(path + ".json", self.provenance, indent=1)
        return [path, path + ".json"]


def train_reducer(
    x: np.ndarray,
    y: np.ndarray,
    feature_names: Sequence[str],
    train_case_ids: Sequence[str],
    num_trees: int = NUM_TREES,
    seed: int = 0,
    **provenance: Any,
) -> Reducer:
    """Fit the classifier on training candidates.

    Args:
        x: [M, F] features; y: [M] bool (hit).
        feature_names: [F] column names.
        train_case_ids: the cases whose candidates are the rows (recorded; refused at scoring).
        num_trees: boosting rounds; seed: LightGBM seed.
        provenance: more sidecar entries (training folds, command, ...).

    Raises:
        ReductionError: no rows, or the rows have only hits or only false positives.
    """
    y = np.asarray(y, dtype=bool)
    if len(y) == 0 or y.all() or not y.any():
        raise ReductionError(
            f"cannot train a reducer on {len(y)} candidates with {int(y.sum())} hits "
            "(needs both hits and false positives)"
        )
    lgb = _lgb()
    params = dict(LGB_PARAMS, seed=int(seed))
    data = lgb.Dataset(x, label=y.astype(np.float64), feature_name=list(feature_names),
                       params={"verbose": -1}, free_raw_data=True)
    booster = lgb.train(params, data, num_boost_round=int(num_trees))
    prov = {
        "format": SIDECAR_FORMAT,
        "feature_names": list(feature_names),
        "training_case_ids": sorted(set(train_case_ids)),
        "num_train_candidates": int(len(y)),
        "num_train_hits": int(y.sum()),
        "lightgbm_params": params,
        "num_trees": int(num_trees),
        "lightgbm_version": lgb.__version__,
    }
    prov.update(provenance)
    return Reducer(booster, prov)


def load_reducer(path: str) -> Reducer:
    """Read a text model and its sidecar (``path + ".json"``).

    Raises:
        ReductionError: one line naming the file when either is missing or malformed, or when
            the model's feature names differ from the sidecar's.
    """
    side = path + ".json"
    for p in (path, side):
        if not os.path.isfile(p):
            raise ReductionError(f"cannot read reducer model {p}: no such file")
    try:
        with open(side, encoding="utf-8") as f:
            prov = json.load(f)
    except (OSError, ValueError) as e:
        raise ReductionError(f"{side}: not a reducer sidecar ({e})") from None
    if not isinstance(prov, Mapping) or prov.get("format") != SIDECAR_FORMAT or not all(
        isinstance(prov.get(k), list) for k in ("feature_names", "training_case_ids")
    ):
        raise ReductionError(f"{side}: not a {SIDECAR_FORMAT} sidecar")
    try:
        booster = _lgb().Booster(model_file=path)
    except Exception as e:  # LightGBMError on a garbage file
        raise ReductionError(f"{path}: not a LightGBM text model ({str(e).splitlines()[0]})") \
            from None
    if list(booster.feature_name()) != list(prov["feature_names"]):
        raise ReductionError(f"{path}: its features differ from those in {side}")
    return Reducer(booster, dict(prov))
