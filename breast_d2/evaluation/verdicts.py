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
"""
import json
from typing import Dict, List, Mapping, Optional, Sequence

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
]

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


def _mass_cells(mass: Mapping) -> List[str]:
    # files from before the centre fields read n/a
    centre = format_score_iou(mass.get("best_centre_score"), mass.get("best_centre_iou"))
    return [mass["case_id"], str(mass["lesion_index"]), str(mass["slices"]),
            format_cell(mass["best_proposal_iou"], 2), str(mass["slices_with_proposal"]),
            format_cell(mass["best_detection_score"]), centre, mass["verdict"]]


def format_mass_table(record: Mapping, masses: Optional[Sequence[Mapping]] = None,
                      fold_column: bool = False) -> str:
    """One row per mass (``masses``, default all of ``record``'s), optionally with its fold."""
    headers = [h.format(iou=record["match_iou"], score=record["min_score"]) for h in MASS_HEADERS]
    masses = record["masses"] if masses is None else masses
    if fold_column:
        return markdown_table(["fold", *headers],
                              [[str(m["fold"]), *_mass_cells(m)] for m in masses])
    return markdown_table(headers, [_mass_cells(m) for m in masses])


def summarize_verdicts(records: Sequence[Mapping]) -> str:
    """Markdown: verdict counts per fold and pooled, then every mass not found, with its fold.

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
    rows, pooled = [], dict.fromkeys(VERDICTS, 0)
    for r in sorted(records, key=lambda r: r["fold"]):
        counts = dict.fromkeys(VERDICTS, 0)
        for mass in r["masses"]:
            counts[mass["verdict"]] += 1
            pooled[mass["verdict"]] += 1
        rows.append([str(r["fold"]), str(len(r["masses"])), *map(str, counts.values())])
    rows.append(["pooled", str(sum(pooled.values())), *map(str, pooled.values())])
    missed = [{**m, "fold": r["fold"]} for r in sorted(records, key=lambda r: r["fold"])
              for m in r["masses"] if m["verdict"] != "found"]
    parts = [markdown_table(["fold", "masses", *VERDICTS], rows)]
    if missed:
        parts.append(format_mass_table(records[0], missed, fold_column=True))
    return "\n\n".join(parts)
