"""Refine the slice extent of small 3D candidates from the image (not from the labels).

A small mass (3-6 voxels per side) is often found on its central slices only: its faint end
slice (partial volume) gets no detection above ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``, and the
merged box, one slice short, has a 3D IoU below 0.5 with the mass. This module looks at the
slice just beyond each z-end of a short candidate and extends the box by that slice when the
subtraction image (post1 - pre) there, inside the candidate's in-plane box, still enhances:

- enhancement of a box on slice z = mean of the box's pixels minus mean of a ring of ``ring``
  pixels around it (the local background), on the subtraction channel of the converted PNG;
- reference = mean enhancement of the box over the candidate's own slices ``z0 .. z1 - 1``;
- a candidate whose box spans at most ``max_slices`` slices and whose reference is > 0 takes
  slice ``z0 - 1`` (then ``z0 - 2``, ... up to ``max_steps``) while its enhancement is
  ``>= ratio * reference``; the same at ``z1``. Slices outside the volume are never taken.

Default ``ratio`` 0.4: on an independent phantom cohort (seed 101, 60 cases; the benchmark
uses seed 0), of 98 label boxes of its 49 masses of <= 6 slices, grown by one pixel per side
and cut one slice short at one end, 28 hit (3D IoU > 0.5) unrefined and 61 refined at 0.4 (56 at
0.5, 66 at 0.3), and none of the 49 full-extent boxes lost its hit (one did at 0.3).

The in-plane box, the scores and ``slices`` (member detection slices) are unchanged. The rule
reads only the slices it needs (``slices/<case>/<z:04d>.png``, one PNG read per slice and case),
and each slice's box sums come from one summed-area table, vectorised over the candidates.

:func:`refine_eval_dir` applies it post hoc to a saved evaluation folder (``detections.json`` +
``froc.json``): same merge and FROC parameters as recorded there; ``tools/froc.py
--refine-extent`` runs it over cross-validation folds.
"""
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..fileio import path_inside
from .candidates import CandidateArrays, FROCInputError, detections_to_arrays, merge_slice_arrays
from .froc import compute_froc
from .io import load_cases_json, read_froc_json, save_froc, subset_cases
from .boxfit import BoxFitParams, fit_boxes
from .params import FROCParams, StepParams
from .slices import SUBTRACTION_CHANNEL, ConvertedSlices

__all__ = [
    "RefineParams",
    "ConvertedSlices",
    "box_enhancement",
    "refine_extent",
    "refine_eval_dir",
    "fold_output_names",
    "refine_folds",
    "format_refine_table",
]

logger = logging.getLogger(__name__)

# Merge parameters every evaluator froc.json records; "box_merge" came later (older files
# merged with "union").
_MERGE_KEYS = ("slice_gap", "link_iou", "score", "score_thresh")


@dataclass(frozen=True)
class RefineParams(StepParams):
    """Parameters of the extent refinement; field ``f`` is ``cfg.TEST.FROC.<_CFG_KEYS[f]>``.

    Attributes:
        enabled: refine at all (off by default: the study's merging is unchanged).
        max_slices: only candidates whose box spans at most this many slices are refined.
        ratio: a slice beyond an end is taken when its enhancement is >= ratio * the mean
            enhancement of the candidate's own slices.
        max_steps: at most this many slices are added at each end.
        ring: width in pixels of the background ring around the in-plane box.
        channel: channel of the converted PNG holding post1 - pre (0 = R; the converter's
            default ``--channels 1,1-0,0`` puts it in channel 1).
    """

    enabled: bool = False
    max_slices: int = 4
    ratio: float = 0.4
    max_steps: int = 1
    ring: int = 2
    channel: int = SUBTRACTION_CHANNEL

    @classmethod
    def config_keys(cls) -> Dict[str, str]:
        """``{field: cfg.TEST.FROC key}``."""
        return {
            "enabled": "REFINE_EXTENT",
            "max_slices": "REFINE_MAX_SLICES",
            "ratio": "REFINE_RATIO",
            "max_steps": "REFINE_MAX_STEPS",
            "ring": "REFINE_RING",
            "channel": "REFINE_CHANNEL",
        }

    def checked(self) -> "RefineParams":
        """Return self; raise FROCInputError naming a parameter out of range."""
        ints = {"max_slices": 1, "max_steps": 1, "ring": 1, "channel": 0}
        for name, low in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise FROCInputError(f"refine {name} must be an integer >= {low}, got {v!r}")
        if self.channel > 2:
            raise FROCInputError(f"refine channel must be 0, 1 or 2, got {self.channel!r}")
        if not isinstance(self.ratio, (int, float)) or not 0.0 < float(self.ratio) < math.inf:
            raise FROCInputError(f"refine ratio must be a number > 0, got {self.ratio!r}")
        return self


def box_enhancement(sat: np.ndarray, boxes: np.ndarray, ring: int) -> np.ndarray:
    """Mean inside each box minus mean of the ring of ``ring`` pixels around it.

    Args:
        sat: ``[H + 1, W + 1]`` summed-area table of one slice (``sat[y, x]`` = sum of rows < y,
            columns < x).
        boxes: ``[K, 4]`` int as x0, y0, x1, y1, half-open, clipped to the slice and non-empty.
        ring: ring width in pixels (the ring is clipped to the slice).

    Returns:
        ``[K]`` float64, in the slice's intensity units; the inside mean alone where the ring
        lies entirely outside the slice.
    """
    h, w = sat.shape[0] - 1, sat.shape[1] - 1

    def rect_sum(x0, y0, x1, y1):
        return sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]

    x0, y0, x1, y1 = (boxes[:, k] for k in range(4))
    inner = rect_sum(x0, y0, x1, y1).astype(np.float64)
    a_in = ((x1 - x0) * (y1 - y0)).astype(np.float64)
    ox0, oy0 = np.maximum(x0 - ring, 0), np.maximum(y0 - ring, 0)
    ox1, oy1 = np.minimum(x1 + ring, w), np.minimum(y1 + ring, h)
    outer = rect_sum(ox0, oy0, ox1, oy1).astype(np.float64)
    a_ring = ((ox1 - ox0) * (oy1 - oy0)).astype(np.float64) - a_in
    background = np.divide(outer - inner, a_ring, out=np.zeros_like(inner), where=a_ring > 0)
    return inner / a_in - background


def _pixel_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[K, 4]`` int64 pixel boxes (floor/ceil of the float edges) clipped to the slice."""
    out = np.empty((boxes.shape[0], 4), dtype=np.int64)
    out[:, 0] = np.clip(np.floor(boxes[:, 0]), 0, width - 1)
    out[:, 1] = np.clip(np.floor(boxes[:, 1]), 0, height - 1)
    out[:, 2] = np.clip(np.ceil(boxes[:, 3]), out[:, 0] + 1, width)
    out[:, 3] = np.clip(np.ceil(boxes[:, 4]), out[:, 1] + 1, height)
    return out


def _case_enhancement(
    reader: ConvertedSlices, case_id: str, boxes: np.ndarray, steps: int, ring: int
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Enhancement table of one case's candidates.

    Args:
        boxes: ``[K, 6]`` candidate boxes of the case.

    Returns:
        ``(enh [K, L], z_first [K], z_end [K])``: ``enh[i, k]`` is the enhancement of candidate
        i's in-plane box on slice ``z_first[i] - steps + k`` (NaN outside the volume or beyond
        ``z_end[i] + steps``); ``z_first``/``z_end`` are the integer z-range of the box.
    """
    depth = reader.num_slices(case_id)
    z_first = np.floor(boxes[:, 2]).astype(np.int64)
    z_end = np.ceil(boxes[:, 5]).astype(np.int64)
    length = z_end - z_first + 2 * steps
    enh = np.full((boxes.shape[0], int(length.max())), np.nan)
    # Queries (candidate, column k, slice z), grouped by z so each slice is read once.
    cand = np.repeat(np.arange(boxes.shape[0]), length)
    k = np.arange(cand.size) - np.repeat(np.cumsum(length) - length, length)
    z = z_first[cand] - steps + k
    ok = (z >= 0) & (z < depth)
    cand, k, z = cand[ok], k[ok], z[ok]
    order = np.argsort(z, kind="stable")
    cand, k, z = cand[order], k[order], z[order]
    starts = np.flatnonzero(np.r_[True, z[1:] != z[:-1]])
    ends = np.r_[starts[1:], z.size]
    pix = None
    for s, e in zip(starts.tolist(), ends.tolist()):
        image = reader.read(case_id, int(z[s]))
        if pix is None:
            pix = _pixel_boxes(boxes, *image.shape)
        sat = np.zeros((image.shape[0] + 1, image.shape[1] + 1), dtype=np.int64)
        np.cumsum(np.cumsum(image, axis=0, dtype=np.int64), axis=1, out=sat[1:, 1:])
        enh[cand[s:e], k[s:e]] = box_enhancement(sat, pix[cand[s:e]], ring)
    return enh, z_first, z_end


def refine_extent(
    candidates: CandidateArrays, reader: ConvertedSlices, params: RefineParams = RefineParams()
) -> Tuple[CandidateArrays, Dict[str, int]]:
    """Extend short candidates by the enhancing slice beyond each z-end (see module doc).

    Args:
        candidates: merged candidates (boxes ``[M, 6]`` x0, y0, z0, x1, y1, z1, half-open).
        reader: the converted folder's slices (:class:`ConvertedSlices`).
        params: the rule's parameters (``enabled`` is not looked at: calling it refines).

    Returns:
        ``(refined, stats)``: a new CandidateArrays (same order, case ids, scores and
        ``slices``; only z0/z1 of some boxes moved by whole slices) and ``{"candidates",
        "eligible", "extended_low", "extended_high"}`` counts.
    """
    params.checked()
    boxes = candidates.boxes.copy()
    extent = boxes[:, 5] - boxes[:, 2]
    eligible = extent <= params.max_slices
    stats = {"candidates": len(candidates), "eligible": int(eligible.sum()),
             "extended_low": 0, "extended_high": 0}  # fmt: skip
    steps = int(params.max_steps)
    for ci in np.unique(candidates.case_index[eligible]).tolist():
        idx = np.flatnonzero(eligible & (candidates.case_index == ci))
        enh, z_first, z_end = _case_enhancement(
            reader, candidates.case_ids[ci], boxes[idx], steps, int(params.ring)
        )
        cols = np.arange(enh.shape[1])
        own = (cols >= steps) & (cols[None, :] < (z_end - z_first + steps)[:, None])
        with np.errstate(invalid="ignore"):
            ref = np.nanmean(np.where(own, enh, np.nan), axis=1)
            rows = np.arange(idx.size)
            low = np.zeros(idx.size, np.int64)
            high = np.zeros(idx.size, np.int64)
            go_low = ref > 0
            go_high = go_low.copy()
            for s in range(1, steps + 1):
                go_low &= enh[rows, steps - s] >= params.ratio * ref  # NaN (outside) -> False
                go_high &= enh[rows, z_end - z_first + steps - 1 + s] >= params.ratio * ref
                low += go_low
                high += go_high
        boxes[idx, 2] -= low
        boxes[idx, 5] += high
        stats["extended_low"] += int((low > 0).sum())
        stats["extended_high"] += int((high > 0).sum())
    logger.info(
        "Extent refinement: %d of %d candidates span <= %d slices; extended %d at z0, %d at z1",
        stats["eligible"], stats["candidates"], params.max_slices, stats["extended_low"],
        stats["extended_high"],
    )  # fmt: skip
    refined = CandidateArrays(
        list(candidates.case_ids), candidates.case_index.copy(), boxes,
        candidates.scores.copy(), candidates.slices.copy(),
    )  # fmt: skip
    return refined, stats


def refine_eval_dir(
    eval_dir: str,
    out_dir: str,
    params: RefineParams,
    data_root: Optional[str] = None,
    ground_truth: Optional[str] = None,
    fit: Optional[BoxFitParams] = None,
    box_merge: Optional[str] = None,
) -> Dict[str, Any]:
    """Re-merge a saved evaluation folder's detections with the refinement and write its FROC.

    Reads ``eval_dir/froc.json`` (its ``merge`` parameters, FROC ``params``, ``bootstrap``,
    ``case_ids`` and ``inputs.ground_truth``) and ``eval_dir/detections.json``; merges the
    detections with the recorded parameters (``box_merge`` replaced when given), fits the boxes
    to the image (when ``fit.enabled``, :mod:`breast_d2.evaluation.boxfit`), refines the extent
    (when ``params.enabled``), and writes ``froc.json`` (``merge.box_fit`` and
    ``merge.refine_extent`` = the parameters and counts), ``froc.csv``, ``froc.png``,
    ``candidates.json`` and a copy of ``detections.json`` into ``out_dir`` (a complete evaluation
    folder, e.g. for ``tools/reduce_fp.py``).

    Args:
        data_root: the converted folder of the slices (default: the folder of the ground truth).
        ground_truth: ``cases.json`` (default: the one recorded in ``froc.json``).
        fit: box fit parameters (None: as ``merge.box_fit`` in froc.json records, no fit if it
            records none).
        box_merge: ``"union"`` or ``"fused"`` (None: as recorded; ``"union"`` if not recorded).

    Returns:
        The new ``froc.json`` dict.

    Raises:
        FROCInputError: a missing or malformed file, or a froc.json without merge parameters.
    """
    res = read_froc_json(os.path.join(eval_dir, "froc.json"))
    if not isinstance(res, dict) or not isinstance(res.get("case_ids"), list):
        raise FROCInputError(f"{eval_dir}/froc.json is not a FROC result of this tool")
    merge = res.get("merge")
    if not isinstance(merge, dict) or any(k not in merge for k in _MERGE_KEYS):
        raise FROCInputError(
            f"{eval_dir}/froc.json records no merge parameters ({', '.join(_MERGE_KEYS)}): "
            "it was not written by the evaluator"
        )
    gt_path = ground_truth or (res.get("inputs") or {}).get("ground_truth")
    if not gt_path:
        raise FROCInputError(f"{eval_dir}/froc.json records no ground truth: pass --ground-truth")
    det_path = os.path.join(eval_dir, "detections.json")
    dets = read_froc_json(det_path)
    try:
        names, case_index, slices, boxes, scores = detections_to_arrays(dets)
    except FROCInputError as e:
        raise FROCInputError(f"{det_path}: {e}") from None
    cases = subset_cases(load_cases_json(gt_path), res["case_ids"])
    if fit is None and isinstance(merge.get("box_fit"), dict):
        try:
            fit = BoxFitParams.from_record(merge["box_fit"])
        except (FROCInputError, TypeError) as e:
            raise FROCInputError(f"{eval_dir}/froc.json: bad merge.box_fit ({e})") from None
    merge = dict({k: merge[k] for k in _MERGE_KEYS}, box_merge=box_merge or merge.get(
        "box_merge", "union"))
    try:
        cands = merge_slice_arrays(names, case_index, slices, boxes, scores, **merge)
    except ValueError as e:
        raise FROCInputError(f"{eval_dir}/froc.json: {e}") from None
    merge_out: Dict[str, Any] = dict(merge)
    root = data_root or os.path.dirname(os.path.abspath(gt_path))
    if fit is not None and fit.enabled:
        cands, stats = fit_boxes(cands, ConvertedSlices(root, fit.channel), fit)
        merge_out["box_fit"] = dict(fit.asdict(), data_root=os.path.abspath(root), **stats)
    if params.enabled:
        cands, stats = refine_extent(cands, ConvertedSlices(root, params.channel), params)
        merge_out["refine_extent"] = dict(params.asdict(), data_root=os.path.abspath(root),
                                          **stats)  # fmt: skip
    boot = res.get("bootstrap") or {}
    fp = dict(FROCParams().asdict(), **(res.get("params") or {}))
    result = compute_froc(
        cands, cases, hit=fp["hit"], iou_thresh=fp["iou_thresh"], duplicates=fp["duplicates"],
        bootstrap=int(boot.get("resamples", 0)), seed=int(boot.get("seed", 0)),
    )  # fmt: skip
    result["merge"] = merge_out
    result["inputs"] = {"detections": os.path.abspath(det_path),
                        "ground_truth": os.path.abspath(gt_path),
                        "refined_from": os.path.abspath(eval_dir)}  # fmt: skip
    save_froc(result, out_dir, candidates=cands, detections=dets)
    return result


def fold_output_names(eval_dirs: Sequence[str]) -> List[str]:
    """One output subfolder name per evaluation folder: its base name (must be unique).

    Raises:
        FROCInputError: two folders with the same base name, or a folder named ``/`` or ``..``.
    """
    names = [os.path.basename(os.path.abspath(d)) for d in eval_dirs]
    seen: Dict[str, str] = {}
    for d, n in zip(eval_dirs, names):
        if n in ("", ".", ".."):
            raise FROCInputError(f"{d}: cannot name an output folder after it")
        if n in seen:
            raise FROCInputError(f"{seen[n]} and {d} have the same folder name {n!r}")
        seen[n] = d
    return names


def refine_folds(
    eval_dirs: Sequence[str],
    out_dir: str,
    params: RefineParams,
    data_root: Optional[str] = None,
    ground_truth: Optional[str] = None,
    fit: Optional[BoxFitParams] = None,
    box_merge: Optional[str] = None,
) -> Dict[str, Any]:
    """:func:`refine_eval_dir` for each fold folder, into ``out_dir/<folder name>/``.

    Returns:
        ``{"folds": [{"name", "eval_dir", "num_cases", "num_lesions", "before": {"cpm",
        "cpm_interp", "sens@3.4"}, "after": {...}, "refine_extent": {...} or None}],
        "params": params}``; "before" is the folder's own ``froc.json``.
    """
    names = fold_output_names(eval_dirs)
    folds = []
    for d, name in zip(eval_dirs, names):
        before = read_froc_json(os.path.join(d, "froc.json"))
        sub = path_inside(out_dir, name)  # writes stay inside the output folder
        after = refine_eval_dir(d, sub, params, data_root, ground_truth, fit, box_merge)
        folds.append({
            "name": name, "eval_dir": os.path.abspath(d), "num_cases": after["num_cases"],
            "num_lesions": after["num_lesions"], "before": _headline(before),
            "after": _headline(after), "refine_extent": after["merge"].get("refine_extent"),
            "box_merge": after["merge"]["box_merge"], "box_fit": after["merge"].get("box_fit"),
        })  # fmt: skip
    return {"folds": folds, "params": params.asdict(),
            "box_fit": fit.asdict() if fit is not None else None}  # fmt: skip


def _headline(res: Mapping[str, Any]) -> Dict[str, Any]:
    return {"cpm": res.get("cpm"), "cpm_interp": res.get("cpm_interp"),
            "sens@3.4": (res.get("sensitivity_at") or {}).get("3.4")}  # fmt: skip


def format_refine_table(summary: Mapping[str, Any]) -> str:
    """Markdown table of :func:`refine_folds`: per fold, CPM and sensitivity at 3.4 FP/case of
    the saved evaluation and of the re-merged (refined) one, and the ends extended."""
    from .tables import format_cell, markdown_table

    rows = []
    for f in summary["folds"]:
        b, a, r = f["before"], f["after"], f["refine_extent"] or {}
        ext = f"{r['extended_low']} / {r['extended_high']} of {r['eligible']}" if r else "off"
        rows.append([f["name"], str(f["num_cases"]), str(f["num_lesions"]),
                     format_cell(b["cpm"]), format_cell(a["cpm"]),
                     format_cell(b["sens@3.4"]), format_cell(a["sens@3.4"]), ext])  # fmt: skip
    headers = ["fold", "cases", "masses", "CPM saved", "CPM refined", "sens@3.4 saved",
               "sens@3.4 refined", "extended z0 / z1"]  # fmt: skip
    return markdown_table(headers, rows, align=["left"] + ["right"] * 7)
