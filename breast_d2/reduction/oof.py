"""Out-of-fold reduction on saved cross-validation outputs (no retraining of the detector).

A fold's evaluation folder (``.../fold{K}/inference/<dataset>/``) holds ``froc.json`` (its
``case_ids``, FROC ``params``, ``merge`` parameters), ``candidates.json`` and
``detections.json``. For fold K the reducer trains only on the candidates of the *other* folds'
validation cases and scores fold K's candidates: a fold's own validation cases never train the
reducer that scores them (:func:`out_of_fold`, checked on the case-id sets, not assumed).
Features are cached per fold (:func:`fold_features`) so an interrupted run resumes.
"""
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..evaluation.candidates import CandidateArrays, detections_to_arrays
from ..evaluation.io import load_candidates_json, read_froc_json
from ..evaluation.matching import candidate_case_index, ground_truth_arrays, match_candidates
from ..evaluation.params import FROCParams
from ..fileio import atomic_path
from .features import (
    FEATURE_VERSION,
    ReductionError,
    associate_detections,
    candidate_features,
    feature_names,
)
from .reducer import Reducer, train_reducer

__all__ = ["FoldRun", "find_fold_dirs", "load_fold_run", "candidate_hits", "fold_features",
           "out_of_fold", "train_final"]

logger = logging.getLogger(__name__)

_FOLD_RE = re.compile(r"^fold(\d+)$")
#: A fold's validation evaluation re-merged by tools/froc.py --detections: ``<prefix>_fold{K}_val``.
_VAL_RE = re.compile(r"^\w+_fold(\d+)_val$")


@dataclass
class FoldRun:
    """One fold's saved evaluation.

    Attributes:
        fold: K (from the ``fold{K}`` folder name; None when there is none).
        path: the evaluation folder.
        froc: its ``froc.json`` dict.
        case_ids: the fold's evaluated (validation) cases, ``froc["case_ids"]``.
        candidates: the ``candidates.json`` list (dicts, file order).
        arrays: the same as :class:`CandidateArrays`.
        x: [M, F] features (set by :func:`fold_features`).
    """

    fold: Optional[int]
    path: str
    froc: Dict[str, Any]
    case_ids: List[str]
    candidates: List[Dict[str, Any]]
    arrays: CandidateArrays
    x: Optional[np.ndarray] = None

    @property
    def row_case_ids(self) -> List[str]:
        """[M] case id of each candidate."""
        return [self.arrays.case_ids[i] for i in self.arrays.case_index.tolist()]

    def froc_params(self) -> Dict[str, Any]:
        """``hit``, ``iou_thresh``, ``duplicates`` of its ``froc.json`` (defaults if absent)."""
        d = FROCParams()
        p = self.froc.get("params") or {}
        return {"hit": p.get("hit", d.hit), "iou_thresh": float(p.get("iou_thresh", d.iou_thresh)),
                "duplicates": p.get("duplicates", d.duplicates)}


def find_fold_dirs(cv_dir: str) -> List[str]:
    """Evaluation folders of a cross-validation output, sorted by fold: the first of these
    layouts that holds any ``froc.json``:

    - ``CV/detector/fold{K}/inference/*/`` (``tools/cross_validate.py``);
    - ``CV/fold{K}/inference/*/`` (``tools/train_net.py --eval-only`` per fold);
    - ``CV/*_fold{K}_val/`` (the folds re-merged by ``tools/froc.py --detections``).

    Raises:
        ReductionError: ``cv_dir`` is not a folder, holds none, or a fold holds two.
    """
    if not os.path.isdir(cv_dir):
        raise ReductionError(f"--cv {cv_dir} is not a folder")
    layouts = [[(m, os.path.join(base, name, "inference", sub))
                for name, m in _matching(base, _FOLD_RE)
                for sub in _sorted_entries(os.path.join(base, name, "inference"))]
               for base in (os.path.join(cv_dir, "detector"), cv_dir)]  # fmt: skip
    layouts.append([(m, os.path.join(cv_dir, name)) for name, m in _matching(cv_dir, _VAL_RE)])
    for layout in layouts:
        found: Dict[int, str] = {}
        for m, d in layout:
            if os.path.isfile(os.path.join(d, "froc.json")):
                k = int(m.group(1))
                if k in found:
                    raise ReductionError(f"fold {k} has two evaluations: {found[k]} and {d}")
                found[k] = d
        if found:
            return [found[k] for k in sorted(found)]
    raise ReductionError(f"{cv_dir} holds no fold evaluation (expected detector/fold*/inference/"
                         "*/froc.json or *_fold*_val/froc.json)")


def _sorted_entries(folder: str) -> List[str]:
    """The names in ``folder``, sorted ([] when it is not a folder)."""
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _matching(folder: str, pattern: "re.Pattern") -> List[Tuple[str, "re.Match"]]:
    """``(name, match)`` of the entries of ``folder`` whose name matches ``pattern``."""
    return [(n, m) for n in _sorted_entries(folder) for m in [pattern.match(n)] if m]


def load_fold_run(path: str) -> FoldRun:
    """Read one evaluation folder (``froc.json`` + ``candidates.json``).

    Raises:
        ReductionError / FROCInputError: a missing or malformed file (one line naming it).
    """
    froc = read_froc_json(os.path.join(path, "froc.json"))
    if not isinstance(froc, dict) or not isinstance(froc.get("case_ids"), list):
        raise ReductionError(f"{path}/froc.json is not a FROC result (no case_ids)")
    cands = load_candidates_json(os.path.join(path, "candidates.json"))
    arrays = CandidateArrays.from_dicts(cands)
    outside = sorted(set(arrays.case_ids) - set(froc["case_ids"]))
    if outside:
        raise ReductionError(
            f"{path}/candidates.json: case {outside[0]!r} is not among froc.json's case_ids")
    parts = os.path.normpath(path).split(os.sep)
    fold = next((int(m.group(1)) for p in reversed(parts)
                 for m in [_FOLD_RE.match(p) or _VAL_RE.match(p)] if m), None)
    return FoldRun(fold, path, froc, list(froc["case_ids"]), cands, arrays)


def candidate_hits(run: FoldRun, cases: Mapping[str, Mapping]) -> np.ndarray:
    """[M] bool: the candidate hits a mass (the fold's hit criterion and IoU threshold,
    ``duplicates="ignore"``: every candidate hitting a mass is a hit)."""
    gt = [cases[c] for c in run.case_ids]
    case_ids, gt_case, gt_boxes = ground_truth_arrays(gt)
    cand_case = candidate_case_index(run.arrays, case_ids)
    p = run.froc_params()
    is_fp, _ = match_candidates(cand_case, run.arrays.boxes, run.arrays.scores, gt_case,
                                gt_boxes, len(case_ids), hit=p["hit"],
                                iou_thresh=p["iou_thresh"], duplicates="ignore")
    return ~is_fp


def _stat(path: str) -> List[int]:
    st = os.stat(path)
    return [int(st.st_size), int(st.st_mtime_ns)]


def fold_features(
    run: FoldRun,
    cases: Mapping[str, Mapping],
    data_root: str,
    num_post: int,
    cache: Optional[str] = None,
    mask_source: str = "auto",
    kinetics: bool = True,
) -> Dict[str, Any]:
    """Compute (or reuse from ``cache``) the fold's feature matrix; sets ``run.x``.

    The cache (``.npz``, read with ``allow_pickle=False``) is reused only when its key (feature
    version, inputs' sizes and modification times, mask source, phases, kinetics) matches.

    Returns:
        ``{"cached": bool, "mask_sources": {source: cases}}``.
    """
    det_path = os.path.join(run.path, "detections.json")
    files = [os.path.join(run.path, "candidates.json"), det_path,
             os.path.join(data_root, "cases.json")]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise ReductionError(f"cannot read {missing[0]}: no such file")
    key = json.dumps({"version": FEATURE_VERSION, "files": {f: _stat(f) for f in files},
                      "mask": mask_source, "num_post": num_post, "kinetics": kinetics,
                      "fold": run.fold}, sort_keys=True)
    if cache and os.path.isfile(cache):
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key and z["x"].shape[0] == len(run.arrays):
                run.x = z["x"]
                return {"cached": True, "mask_sources": json.loads(str(z["masks"]))}
    detections = read_froc_json(det_path)
    det_ids, det_index, det_slices, det_boxes, det_scores = detections_to_arrays(detections)
    thresh = float((run.froc.get("merge") or {}).get("score_thresh", FROCParams.score_thresh))
    keep = det_scores >= thresh  # what the merging kept
    det_case = np.asarray(det_ids, dtype=object)[det_index] if len(det_ids) else \
        np.zeros(0, object)
    assoc = associate_detections(run.arrays, det_case[keep], det_slices[keep], det_boxes[keep])
    x, used = candidate_features(run.arrays, assoc, det_scores[keep], cases, data_root,
                                 run.fold, num_post, mask_source, kinetics)
    run.x = x
    if cache:
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, x=x, key=np.array(key), masks=np.array(json.dumps(used)),
                         names=np.array(feature_names(num_post)))
    return {"cached": False, "mask_sources": used}


def out_of_fold(
    runs: Sequence[FoldRun],
    labels: Sequence[np.ndarray],
    names: Sequence[str],
    num_trees: int,
    seed: int,
    **provenance: Any,
) -> List[Reducer]:
    """Train fold K's reducer on every other fold's candidates, for each K.

    Args:
        runs: [K] folds with features (``x``) set; labels: [K] hit arrays.
        names: feature names; num_trees, seed: see :func:`train_reducer`.
        provenance: more sidecar entries (command, ...).

    Returns:
        [K] reducers; reducer K never saw a candidate of fold K's cases.

    Raises:
        ReductionError: fewer than 2 folds, a case evaluated in two folds, or a leak.
    """
    if len(runs) < 2:
        raise ReductionError(f"out-of-fold training needs >= 2 folds, found {len(runs)}")
    _check_disjoint(runs)
    reducers = []
    for i, run in enumerate(runs):
        others = [j for j in range(len(runs)) if j != i]
        train_ids = {c for j in others for c in runs[j].case_ids}
        rows_ids = {c for j in others for c in runs[j].row_case_ids}
        if train_ids & set(run.case_ids) or rows_ids & set(run.case_ids):  # the leakage rule
            raise ReductionError(f"fold {run.fold}: training cases overlap its validation cases")
        x = np.concatenate([runs[j].x for j in others])
        y = np.concatenate([labels[j] for j in others])
        reducers.append(train_reducer(
            x, y, names, sorted(train_ids), num_trees=num_trees, seed=seed, fold=run.fold,
            training_folds=[runs[j].fold for j in others],
            training_dirs=[os.path.abspath(runs[j].path) for j in others], **provenance))
        assert not set(reducers[-1].provenance["training_case_ids"]) & set(run.case_ids)
    return reducers


def _check_disjoint(runs: Sequence[FoldRun]) -> None:
    """Each case is evaluated by one fold only (else its candidates would count twice)."""
    owner: Dict[str, int] = {}
    for i, r in enumerate(runs):
        for c in r.case_ids:
            if c in owner:
                raise ReductionError(
                    f"case {c!r} is evaluated in both {runs[owner[c]].path} and {r.path}")
            owner[c] = i


def train_final(
    runs: Sequence[FoldRun],
    labels: Sequence[np.ndarray],
    names: Sequence[str],
    num_trees: int,
    seed: int,
    exclude_case_ids: Sequence[str] = (),
    **provenance: Any,
) -> Reducer:
    """One reducer for new cases: trained on every fold's validation candidates (each produced by
    a detector that never trained on that case), minus the cases in ``exclude_case_ids``.

    Use it on cases outside the cross-validation (a held-out cohort, the demo's), never on the
    folds' own cases: :meth:`Reducer.check_unseen` refuses every training case id. Exclude the
    ids of cases that will be scored later under the same name (the same cohort's cases).

    Args:
        runs: [K] folds with features (``x``) set; labels: [K] hit arrays.
        names: feature names; num_trees, seed: see :func:`train_reducer`.
        exclude_case_ids: cases whose candidates must not train it (recorded in the sidecar as
            ``excluded_case_ids``).
        provenance: more sidecar entries (command, ...).

    Raises:
        ReductionError: a case evaluated in two folds, an excluded id that no fold evaluates
            (a typo would silently exclude nothing), or no hits/no false positives left.
    """
    _check_disjoint(runs)
    exclude = set(exclude_case_ids)
    evaluated = {c for r in runs for c in r.case_ids}
    unknown = sorted(exclude - evaluated)
    if unknown:
        raise ReductionError(f"excluded case {unknown[0]!r} is not evaluated by any fold "
                             f"({len(unknown)} of {len(exclude)} excluded ids)")
    keep = [np.array([c not in exclude for c in r.row_case_ids], dtype=bool) for r in runs]
    x = np.concatenate([r.x[k] for r, k in zip(runs, keep)])
    y = np.concatenate([np.asarray(lab)[k] for lab, k in zip(labels, keep)])
    train_ids = sorted(evaluated - exclude)
    red = train_reducer(
        x, y, names, train_ids, num_trees=num_trees, seed=seed, fold=None,
        training_folds=[r.fold for r in runs], excluded_case_ids=sorted(exclude),
        training_dirs=[os.path.abspath(r.path) for r in runs], **provenance)
    assert not set(red.provenance["training_case_ids"]) & exclude
    return red
