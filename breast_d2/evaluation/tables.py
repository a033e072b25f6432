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
    "format_size_table",
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
    """Markdown of one FROC result (``froc.json``): a row per FP rate, then "CPM (step)" and
    "CPM (interp.)"; below it the sensitivity by mass size when the result has it."""
    ci = result.get("ci95") or {}
    params = result["params"]
    title = (
        f"FROC: {result['num_cases']} cases, {result['num_lesions']} masses, "
        f"{result['num_candidates']} candidates ({params['hit']}, "
        f"IoU > {params['iou_thresh']:g}, duplicates {params['duplicates']})"
    )
    ci_at = ci.get("sensitivity_at") or {}
    ci_interp = ci.get("sensitivity_at_interp") or {}
    rows = [
        [
            k,
            format_cell(s),
            format_range(ci_at.get(k)),
            format_cell(result["threshold_at"].get(k), 4),
            format_cell(result["sensitivity_at_interp"].get(k)),
            format_range(ci_interp.get(k)),
        ]
        for k, s in result["sensitivity_at"].items()
    ]
    rows.append(["**CPM (step)**", format_cell(result["cpm"]), format_range(ci.get("cpm")),
                 "", "", ""])
    rows.append(["**CPM (interp.)**", "", "", "", format_cell(result["cpm_interp"]),
                 format_range(ci.get("cpm_interp"))])
    headers = ["FP/case", "Sensitivity", "95% CI", "Threshold", "Sens. (interp.)",
               "95% CI (interp.)"]
    align = ["right", "right", "center", "right", "right", "center"]
    text = title + "\n\n" + markdown_table(headers, rows, align)
    by_size = result.get("sensitivity_by_size")
    if by_size:
        text += "\n\nSensitivity by mass size (largest extent, mm; FP per case of all cases)"
        text += "\n\n" + format_size_table(by_size)
    return text


def format_size_table(by_size: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of ``froc.json``'s ``sensitivity_by_size``: a row per size band with its
    masses, step sensitivity at each FP rate, "CPM (step)" and "CPM (interp.)"."""
    rates = list(next(iter(by_size.values()))["sensitivity_at"])
    rows = [
        [f"{name} mm", str(band["num_lesions"])]
        + [format_cell(band["sensitivity_at"].get(k)) for k in rates]
        + [format_cell(band["cpm"]), format_cell(band["cpm_interp"])]
        for name, band in by_size.items()
    ]
    headers = ["Size", "Masses"] + [f"sens@{k}" for k in rates] + ["CPM (step)", "CPM (interp.)"]
    return markdown_table(headers, rows, ["left"] + ["right"] * (len(headers) - 1))


def format_folds_table(agg: Mapping[str, Any]) -> str:
    """Markdown table of ``aggregate_folds``: a row per fold, mean ± sd across folds, pooled,
    with "CPM (step)" and "CPM (interp.)"; then the pooled cases' sensitivity by mass size."""
    rates = list(agg["folds"][0]["sensitivity_at"])
    rows = []
    for f in agg["folds"]:
        vals = [format_cell(f["sensitivity_at"][k]) for k in rates]
        vals += [format_cell(f["cpm"]), format_cell(f.get("cpm_interp"))]
        rows.append([f["name"], str(f["num_cases"]), str(f["num_lesions"])] + vals)
    mean, sd = agg["mean"], agg["sd"]
    vals = [format_mean_sd(mean["sensitivity_at"][k], sd["sensitivity_at"][k]) for k in rates]
    vals.append(format_mean_sd(mean["cpm"], sd["cpm"]))
    vals.append(format_mean_sd(mean.get("cpm_interp"), sd.get("cpm_interp")))
    n_cases = sum(f["num_cases"] for f in agg["folds"])
    n_les = sum(f["num_lesions"] for f in agg["folds"])
    rows.append(["mean ± sd", str(n_cases), str(n_les)] + vals)
    pooled = agg.get("pooled")
    if pooled:
        vals = [format_cell(pooled["sensitivity_at"][k]) for k in rates]
        vals += [format_cell(pooled["cpm"]), format_cell(pooled.get("cpm_interp"))]
        rows.append(["pooled", str(pooled["num_cases"]), str(pooled["num_lesions"])] + vals)
    headers = ["Fold", "Cases", "Masses"] + [f"sens@{k}" for k in rates]
    headers += ["CPM (step)", "CPM (interp.)"]
    align = ["left"] + ["right"] * (len(headers) - 1)
    text = markdown_table(headers, rows, align)
    if pooled and pooled.get("sensitivity_by_size"):
        text += "\n\nPooled cases, sensitivity by mass size (largest extent, mm)\n\n"
        text += format_size_table(pooled["sensitivity_by_size"])
    return text
