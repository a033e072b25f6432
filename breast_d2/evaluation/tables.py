"""Markdown tables of results: the one cell formatter and table writer of the package.

Tables are GitHub/pipe markdown written by ``tabulate``; every cell is formatted here first
(numbers with a fixed number of decimals, missing values as ``n/a``), so ``tabulate`` never
re-reads a cell as a number (``disable_numparse``: a rate key such as ``3.4`` stays as written).
Used by the FROC tools, :mod:`breast_d2.job_report` and :mod:`breast_d2.segmentation.seg_tables`.
"""
import logging
from typing import Any, Mapping, Optional, Sequence

from tabulate import tabulate

__all__ = [
    "MISSING",
    "format_cell",
    "format_range",
    "format_mean_sd",
    "markdown_table",
    "format_froc_table",
    "format_folds_table",
]

logger = logging.getLogger(__name__)

# How a missing value (None, NaN: e.g. a sensitivity without masses) reads in every table.
MISSING = "n/a"


def format_cell(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; ``MISSING`` for None or NaN."""
    if value is None or value != value:
        return MISSING
    return f"{value:.{digits}f}"


def format_range(lo_hi: Optional[Sequence[Any]], digits: int = 3) -> str:
    """A confidence interval ``lo–hi``; ``MISSING`` when there is none."""
    if not lo_hi:
        return MISSING
    return f"{format_cell(lo_hi[0], digits)}–{format_cell(lo_hi[1], digits)}"


def format_mean_sd(mean: Any, sd: Any, digits: int = 3) -> str:
    """``mean ± sd``; ``MISSING`` when the mean is missing."""
    if mean is None or mean != mean:
        return MISSING
    return f"{format_cell(mean, digits)} ± {format_cell(sd, digits)}"


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], align: Optional[Sequence[str]] = None
) -> str:
    """Pipe-markdown table of already formatted cells.

    Args:
        headers: [C] column titles.
        rows: [R][C] cell texts (format numbers with :func:`format_cell` first).
        align: [C] ``"left"``, ``"right"`` or ``"center"`` per column (default: left).
    """
    colalign = tuple(align) if align is not None else ("left",) * len(headers)
    return tabulate(
        [[str(c) for c in row] for row in rows],
        headers=list(headers),
        tablefmt="pipe",
        disable_numparse=True,
        colalign=colalign,
    )


def format_froc_table(result: Mapping[str, Any]) -> str:
    """Markdown table of one FROC result (``froc.json``): a row per FP rate, then CPM."""
    ci = result.get("ci95") or {}
    params = result["params"]
    title = (
        f"FROC: {result['num_cases']} cases, {result['num_lesions']} masses, "
        f"{result['num_candidates']} candidates ({params['hit']}, "
        f"IoU > {params['iou_thresh']:g}, duplicates {params['duplicates']})"
    )
    ci_at = ci.get("sensitivity_at") or {}
    rows = [
        [
            k,
            format_cell(s),
            format_range(ci_at.get(k)),
            format_cell(result["threshold_at"].get(k), 4),
            format_cell(result["sensitivity_at_interp"].get(k)),
        ]
        for k, s in result["sensitivity_at"].items()
    ]
    cpm_row = [format_cell(result["cpm"]), format_range(ci.get("cpm")), ""]
    rows.append(["**CPM**"] + cpm_row + [format_cell(result["cpm_interp"])])
    headers = ["FP/case", "Sensitivity", "95% CI", "Threshold", "Sens. (interp.)"]
    align = ["right", "right", "center", "right", "right"]
    return title + "\n\n" + markdown_table(headers, rows, align)


def format_folds_table(agg: Mapping[str, Any]) -> str:
    """Markdown table of ``aggregate_folds``: a row per fold, mean ± sd across folds, pooled."""
    rates = list(agg["folds"][0]["sensitivity_at"])
    rows = []
    for f in agg["folds"]:
        vals = [format_cell(f["sensitivity_at"][k]) for k in rates] + [format_cell(f["cpm"])]
        rows.append([f["name"], str(f["num_cases"]), str(f["num_lesions"])] + vals)
    mean, sd = agg["mean"], agg["sd"]
    vals = [format_mean_sd(mean["sensitivity_at"][k], sd["sensitivity_at"][k]) for k in rates]
    vals.append(format_mean_sd(mean["cpm"], sd["cpm"]))
    n_cases = sum(f["num_cases"] for f in agg["folds"])
    n_les = sum(f["num_lesions"] for f in agg["folds"])
    rows.append(["mean ± sd", str(n_cases), str(n_les)] + vals)
    pooled = agg.get("pooled")
    if pooled:
        vals = [format_cell(pooled["sensitivity_at"][k]) for k in rates]
        vals.append(format_cell(pooled["cpm"]))
        rows.append(["pooled", str(pooled["num_cases"]), str(pooled["num_lesions"])] + vals)
    headers = ["Fold", "Cases", "Masses"] + [f"sens@{k}" for k in rates] + ["CPM"]
    align = ["left"] + ["right"] * (len(headers) - 1)
    return markdown_table(headers, rows, align)
