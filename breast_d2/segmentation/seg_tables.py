"""Cross-validation report of breast-region segmentation: per-case rows -> per-fold -> tables.

A fold's value is the mean over its validation cases (the study's "Exp k"); the summary is the
mean ± sd (sample sd) of the fold values, as in the study's Tables 1 and 2.
"""
import csv
import logging
from typing import Dict, List, Sequence

import numpy as np

from ..evaluation.tables import MISSING, format_cell, format_mean_sd, markdown_table
from ..fileio import write_atomic
from .metrics import METRIC_NAMES, summarize

__all__ = ["ARCH_LABELS", "per_fold_rows", "write_csv", "markdown_report"]

logger = logging.getLogger(__name__)

ARCH_LABELS = {"unet": "U-Net", "unetplusplus": "U-Net++"}
_METRIC_LABELS = {"dsc": "DSC", "jaccard": "Jaccard", "ss": "Segmentation sensitivity"}


def per_fold_rows(case_rows: Sequence[dict]) -> List[dict]:
    """Average per-case rows (keys run, arch, fold, case_id, dsc, jaccard, ss) per (run, fold)."""
    groups: Dict[tuple, List[dict]] = {}
    for row in case_rows:
        groups.setdefault((row["run"], row["arch"], row["fold"]), []).append(row)
    out = []
    for (run, arch, fold), rows in groups.items():
        entry = {"run": run, "arch": arch, "fold": fold, "n_cases": len(rows)}
        for m in METRIC_NAMES:
            vals = [r[m] for r in rows if not np.isnan(r[m])]
            entry[m] = float(np.mean(vals)) if vals else float("nan")
        out.append(entry)
    return out


def write_csv(rows: Sequence[dict], path: str) -> None:
    """Write dict rows (same keys) as CSV atomically; floats with 6 decimals."""
    if not rows:
        raise ValueError(f"nothing to write to {path}")

    def write(f):
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})

    write_atomic(path, write)


def _mean_sd(values: Sequence[float]) -> str:
    s = summarize(values)
    return format_mean_sd(s["mean"], s["sd"]) if s["n"] else MISSING


def markdown_report(fold_rows: Sequence[dict], title: str = "Breast-region segmentation") -> str:
    """Side-by-side summary (mean ± sd over folds) then one study-style table per run."""
    runs = list(dict.fromkeys(r["run"] for r in fold_rows))
    by_run = {
        run: sorted((r for r in fold_rows if r["run"] == run), key=lambda r: r["fold"])
        for run in runs
    }
    rows = [
        [_METRIC_LABELS[m]] + [_mean_sd([r[m] for r in by_run[run]]) for run in runs]
        for m in METRIC_NAMES
    ]
    lines = [
        f"## {title}",
        "",
        "Validation cases of each fold, whole volumes; mean ± sd over folds.",
        "",
        markdown_table(["Metric"] + runs, rows),
    ]
    for run in runs:
        folds = by_run[run]
        headers = ["Performance"] + [f"Exp {r['fold'] + 1}" for r in folds] + ["Average"]
        rows = [
            [_METRIC_LABELS[m]]
            + [format_cell(r[m]) for r in folds]
            + [format_cell(summarize([r[m] for r in folds])["mean"])]
            for m in METRIC_NAMES
        ]
        lines += ["", f"### {run}: per fold (Exp k = fold k-1, mean over its validation cases)", ""]
        lines.append(markdown_table(headers, rows))
    return "\n".join(lines) + "\n"
