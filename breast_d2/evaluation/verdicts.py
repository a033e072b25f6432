"""Per-mass verdicts of a slice detector (found, or lost at the box head or the RPN), their files
and tables.

``tools/explain_misses.py`` traces every slice of a mass through the model
(:func:`breast_d2.modeling.introspect.trace_boxes`) and gives the mass one verdict
(:func:`mass_verdict`); ``--json`` writes the verdicts of one fold (:func:`verdict_record`), and
``--summarize`` pools several folds' files into one table (:func:`summarize_verdicts`), as
``tools/cross_validate.py`` does after its folds. The demo's report shows one fold's table
(:func:`format_mass_table`).

Verdicts, at a detection score threshold ``min_score`` and the matching IoU (0.5):

- ``found``: a final detection matches the mass's box and scores >= ``min_score`` on some slice;
- ``box off``: not found, but a detection scoring >= ``min_score`` covers the mass's centre on
  some slice: the detector saw the mass and boxed it too small, too large or off-centre;
- ``box head``: neither, but a proposal matches on some slice (the head scored it low);
- ``RPN``: none of these: no proposal matches on any slice.

With the fold's evaluation folder (``explain_misses.py --candidates``), each mass also gets its
fate after 3D merging and the box fit (:func:`candidate_outcomes`): the score of the best 3D
candidate that hits it, the false positives per case at that score, and the best 3D IoU of any
candidate of its case. A slice verdict says whether the detector saw the mass; this says whether
the pipeline reports it (a *box off* mass may be regrown by the box fit; a *found* one may be
lost by merging or the fit).
"""
import json
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .candidates import CandidateArrays
from .matching import box_iou3d, candidate_case_index, ground_truth_arrays, match_candidates
from .tables import MISSING, format_cell, markdown_table

__all__ = [
    "VERDICTS",
    "mass_verdict",
    "mass_summary",
    "verdict_record",
    "read_verdicts",
    "format_score_iou",
    "format_mass_table",
    "summarize_verdicts",
    "candidate_outcomes",
    "has_candidates",
    "reported",
    "REPORT_FP_RATE",
]

#: False positives per case up to which the tables count a mass's 3D candidate as reported (the
#: study's operating point).
REPORT_FP_RATE = 3.4

VERDICTS = ("found", "box off", "box head", "RPN")


def mass_verdict(traces: Sequence[Mapping], min_score: float) -> str:
    """One of :data:`VERDICTS` from a mass's per-slice traces (``trace_boxes`` dicts: at least
    ``detection_score`` and ``centre_detection_score`` (None: no such detection) and
    ``matched_proposals``)."""
    if any((t["detection_score"] or 0.0) >= min_score for t in traces):
        return "found"
    if any((t["centre_detection_score"] or 0.0) >= min_score for t in traces):
        return "box off"
    if any(t["matched_proposals"] for t in traces):
        return "box head"
    return "RPN"


def mass_summary(case_id: str, lesion_index: int, traces: Sequence[Mapping],
                 min_score: float) -> Dict:
    """One mass's row of a verdict file: its slices, best proposal IoU, slices with a matching
    proposal, best matching detection score (0.0 when none), the best score of a detection over
    its centre with that detection's IoU (0.0 and None when none), and the verdict."""
    centre = max(traces, key=lambda t: t["centre_detection_score"] or 0.0)
    return {
        "case_id": case_id,
        "lesion_index": int(lesion_index),
        "slices": len(traces),
        "best_proposal_iou": max(float(t["best_iou"]) for t in traces),
        "slices_with_proposal": sum(bool(t["matched_proposals"]) for t in traces),
        "best_detection_score": max(float(t["detection_score"] or 0.0) for t in traces),
        "best_centre_score": float(centre["centre_detection_score"] or 0.0),
        "best_centre_iou": centre["centre_detection_iou"],
        "verdict": mass_verdict(traces, min_score),
    }


def candidate_outcomes(
    candidates: CandidateArrays, cases: Sequence[Mapping], *, hit: str, iou_thresh: float,
    duplicates: str,
) -> Dict[Tuple[str, int], Dict[str, Optional[float]]]:
    """Each mass's fate among a fold's 3D candidates, as the FROC counts it.

    Args:
        candidates: the fold's merged (and fitted) candidates, boxes ``[M, 6]`` half-open voxel
            indices.
        cases: the evaluated ``cases.json`` entries (all of them: the false positives per case
            are over these cases).
        hit, iou_thresh, duplicates: the evaluation's hit rule (``froc.json``'s ``params``).

    Returns:
        ``{(case_id, lesion_index): {"candidate_score", "candidate_fp_per_case",
        "candidate_best_iou"}}``: the best hitting candidate's score and the false positives per
        case at that score (both None when no candidate hits), and the best 3D IoU of any
        candidate of the case (0.0 without one). ``lesion_index`` is the mass's index in its
        case's ``boxes``.
    """
    case_ids, gt_case, gt_boxes = ground_truth_arrays(list(cases))
    cand_case = candidate_case_index(candidates, case_ids)
    is_fp, lesion_score = match_candidates(
        cand_case, candidates.boxes, candidates.scores, gt_case, gt_boxes, len(case_ids),
        hit=hit, iou_thresh=iou_thresh, duplicates=duplicates)
    fp_scores = np.sort(candidates.scores[is_fp])
    first = np.searchsorted(gt_case, np.arange(len(case_ids)))  # each case's first mass
    out = {}
    for g, (ci, box, score) in enumerate(zip(gt_case, gt_boxes, lesion_score)):
        ious = box_iou3d(candidates.boxes[cand_case == ci], box)
        found = bool(np.isfinite(score))
        fps = (fp_scores.size - np.searchsorted(fp_scores, score)) / len(case_ids)
        out[(case_ids[ci], int(g - first[ci]))] = {
            "candidate_score": float(score) if found else None,
            "candidate_fp_per_case": float(fps) if found else None,
            "candidate_best_iou": float(ious.max()) if ious.size else 0.0,
        }
    return out


def verdict_record(fold: int, min_score: float, match_iou: float, masses: Sequence[Dict],
                   **provenance) -> Dict:
    """The content of one fold's verdict file (``explain_misses.py --json``)."""
    return {"fold": int(fold), "min_score": float(min_score), "match_iou": float(match_iou),
            **provenance, "masses": list(masses)}


def read_verdicts(path: str) -> Dict:
    """A verdict file, checked. Raises ValueError naming the file when it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(record, dict) or not isinstance(record.get("masses"), list):
        raise ValueError(f"{path}: not a verdict file of tools/explain_misses.py --json")
    for k, mass in enumerate(record["masses"]):
        if not isinstance(mass, dict) or mass.get("verdict") not in VERDICTS:
            raise ValueError(f"{path}: mass {k} has no verdict among {', '.join(VERDICTS)}")
    return record


MASS_HEADERS = ["case", "mass", "slices", "best proposal IoU",
                "slices with a proposal IoU >= {iou}", "best detection score",
                "best detection over its centre (IoU)", "verdict (min score {score})"]


def format_score_iou(score: Optional[float], iou: Optional[float]) -> str:
    """``"0.840 (0.26)"``: a detection's score and its IoU with a mass; ``MISSING`` without an
    IoU (no such detection)."""
    if iou is None:
        return MISSING
    return f"{format_cell(score)} ({format_cell(iou, 2)})"


#: Column of the 3D outcome (masses with :func:`candidate_outcomes`' fields).
CANDIDATE_HEADER = "3D candidate: FP/case at its hit (score), else best IoU"


def has_candidates(masses: Sequence[Mapping]) -> bool:
    """Whether every mass carries :func:`candidate_outcomes`' fields (and there is one)."""
    return bool(masses) and all("candidate_best_iou" in m for m in masses)


def reported(mass: Mapping, fp_rate: float = REPORT_FP_RATE) -> bool:
    """Whether a 3D candidate hits the mass at <= ``fp_rate`` false positives per case."""
    fps = mass.get("candidate_fp_per_case")
    return fps is not None and fps <= fp_rate


def _candidate_cell(mass: Mapping) -> str:
    if mass["candidate_score"] is None:
        return f"no hit (best IoU {format_cell(mass['candidate_best_iou'], 2)})"
    fps, score = mass["candidate_fp_per_case"], mass["candidate_score"]
    return f"{format_cell(fps, 2)} ({format_cell(score)})"


def _mass_cells(mass: Mapping, with_candidates: bool) -> List[str]:
    # files from before the centre fields read n/a
    centre = format_score_iou(mass.get("best_centre_score"), mass.get("best_centre_iou"))
    cells = [mass["case_id"], str(mass["lesion_index"]), str(mass["slices"]),
             format_cell(mass["best_proposal_iou"], 2), str(mass["slices_with_proposal"]),
             format_cell(mass["best_detection_score"]), centre, mass["verdict"]]
    return cells + [_candidate_cell(mass)] if with_candidates else cells


def format_mass_table(record: Mapping, masses: Optional[Sequence[Mapping]] = None,
                      fold_column: bool = False) -> str:
    """One row per mass (``masses``, default all of ``record``'s), optionally with its fold, and
    with the 3D outcome when every mass has it."""
    headers = [h.format(iou=record["match_iou"], score=record["min_score"]) for h in MASS_HEADERS]
    masses = record["masses"] if masses is None else masses
    with_candidates = has_candidates(masses)
    headers += [CANDIDATE_HEADER] * with_candidates
    rows = [_mass_cells(m, with_candidates) for m in masses]
    if fold_column:
        return markdown_table(["fold", *headers],
                              [[str(m["fold"]), *row] for m, row in zip(masses, rows)])
    return markdown_table(headers, rows)


def summarize_verdicts(records: Sequence[Mapping]) -> str:
    """Markdown: verdict counts per fold and pooled, then every mass not found, with its fold.
    When every mass has its 3D outcome, the counts gain the masses reported at <=
    :data:`REPORT_FP_RATE` FP per case, and the list every mass not reported there too.

    Raises:
        ValueError: no record, one fold given twice, or records made with different
            ``min_score`` or ``match_iou`` (their counts do not add up).
    """
    if not records:
        raise ValueError("no verdict file to summarize")
    folds = [r["fold"] for r in records]
    repeated = sorted({k for k in folds if folds.count(k) > 1})
    if repeated:
        raise ValueError(f"fold {repeated[0]} is given more than once")
    settings = {(r["min_score"], r["match_iou"]) for r in records}
    if len(settings) > 1:
        raise ValueError(f"verdict files made with different (min score, IoU): {sorted(settings)}")
    records = sorted(records, key=lambda r: r["fold"])
    with_candidates = has_candidates([m for r in records for m in r["masses"]])
    columns = [*VERDICTS] + [f"reported (3D, <= {REPORT_FP_RATE:g} FP/case)"] * with_candidates
    rows, pooled = [], dict.fromkeys(columns, 0)
    for r in records:
        counts = dict.fromkeys(columns, 0)
        for mass in r["masses"]:
            counts[mass["verdict"]] += 1
            if with_candidates and reported(mass):
                counts[columns[-1]] += 1
        for k, v in counts.items():
            pooled[k] += v
        rows.append([str(r["fold"]), str(len(r["masses"])), *map(str, counts.values())])
    rows.append(["pooled", str(sum(len(r["masses"]) for r in records)),
                 *map(str, pooled.values())])
    missed = [{**m, "fold": r["fold"]} for r in records for m in r["masses"]
              if m["verdict"] != "found" or (with_candidates and not reported(m))]
    parts = [markdown_table(["fold", "masses", *columns], rows)]
    if missed:
        parts.append(format_mass_table(records[0], missed, fold_column=True))
    return "\n\n".join(parts)
