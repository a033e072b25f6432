"""Markdown report of a demo / cross-validation job: segmentation table, FROC table, plots,
example overlays. Reads only files that the tools wrote (froc.json, seg_table.md, slices)."""
import logging
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np

from .data.converted import read_cases, read_json
from .data.errors import check_case_id
from .evaluation.compare import compare_froc, load_run
from .evaluation.froc import FP_RATES, load_candidates_json, rate_key
from .evaluation.plots import plot_froc_runs
from .evaluation.tables import format_cell, format_range, markdown_table
from .fileio import atomic_path, path_inside, write_atomic
from .visualize import case_montage

__all__ = [
    "froc_table",
    "size_table",
    "paired_table",
    "write_overlays",
    "write_report",
    "STUDY_SENS_AT_3_4",
]

logger = logging.getLogger(__name__)

# The reference study's headline: mean sensitivity 0.874 at 3.4 false positives per case.
STUDY_SENS_AT_3_4 = 0.874
_STUDY_POINT = (3.4, STUDY_SENS_AT_3_4, "study")


def froc_table(runs: Mapping[str, Mapping]) -> str:
    """Markdown table, one row per run: sensitivity at each FP rate, "CPM (step)",
    "CPM (interp.)" and the 95% CI at 3.4.

    Args:
        runs: ``{run name: compute_froc result (froc.json)}``, one row each in this order.
    """
    rates = [rate_key(r) for r in FP_RATES]
    rows = []
    for name, res in runs.items():
        ci = ((res.get("ci95") or {}).get("sensitivity_at") or {}).get("3.4")
        rows.append(
            [name, str(res["num_cases"]), str(res["num_lesions"])]
            + [format_cell(res["sensitivity_at"].get(r)) for r in rates]
            + [format_cell(res.get("cpm")), format_cell(res.get("cpm_interp")), format_range(ci)]
        )
    headers = ["run", "cases", "masses"] + [f"sens@{r}" for r in rates]
    headers += ["CPM (step)", "CPM (interp.)", "95% CI sens@3.4"]
    return markdown_table(headers, rows) + "\n"


def size_table(runs: Mapping[str, Mapping], rate: str = "3.4") -> Optional[str]:
    """Markdown table, one row per run: sensitivity at ``rate`` FP per case in each mass-size
    band (``sensitivity_by_size`` of froc.json), each cell followed by the band's masses.

    Returns:
        The table, or None when no run has ``sensitivity_by_size``.
    """
    sized = {n: r["sensitivity_by_size"] for n, r in runs.items() if r.get("sensitivity_by_size")}
    if not sized:
        return None
    bands = list(next(iter(sized.values())))
    rows = [
        [name]
        + [f"{format_cell(by[b]['sensitivity_at'].get(rate))} ({by[b]['num_lesions']})"
           for b in bands]
        for name, by in sized.items()
    ]
    headers = ["run"] + [f"{b} mm" for b in bands]
    return markdown_table(headers, rows) + "\n"


def _signed_range(lo_hi: Sequence[float]) -> str:
    return f"{lo_hi[0]:+.3f} to {lo_hi[1]:+.3f}"


def paired_table(
    froc_runs: Mapping[str, str], pairs: Sequence[Tuple[str, str]], bootstrap: int = 1000
) -> str:
    """Markdown table of paired case-level bootstraps of ``CPM(A) - CPM(B)``, one row per pair.

    Args:
        froc_runs: ``{run name: evaluation folder with froc.json and candidates.json}``.
        pairs: ``(A, B)`` run names; both must be evaluated on the same cases.
        bootstrap: case resamples (seed 0, the same resamples for A and B).
    """
    rows = []
    for name_a, name_b in pairs:
        cand_a, cases_a = load_run(froc_runs[name_a])
        cand_b, cases_b = load_run(froc_runs[name_b])
        res = compare_froc(cand_a, cand_b, cases_a, cases_b, bootstrap=bootstrap)
        d = res["difference"]
        rows.append([
            f"{name_a} - {name_b}",
            f"{d['cpm']:+.3f}",
            _signed_range(d["ci95"]),
            f"{d['cpm_interp']:+.3f}",
            _signed_range(d["ci95_interp"]),
        ])
    headers = ["A - B", "CPM (step)", "95% CI", "CPM (interp.)", "95% CI (interp.)"]
    return markdown_table(headers, rows) + "\n"


def _read_case_slices(data_root: str, case_id: str, num_slices: int, sub: str) -> np.ndarray:
    folder = path_inside(os.path.join(data_root, sub), check_case_id(case_id))
    paths = [os.path.join(folder, f"{z:04d}.png") for z in range(num_slices)]
    flag = cv2.IMREAD_COLOR if sub == "slices" else cv2.IMREAD_GRAYSCALE
    images = [cv2.imread(p, flag) for p in paths]
    if any(im is None for im in images):
        return None
    stack = np.stack(images)
    return stack[..., ::-1] if sub == "slices" else stack > 0


def write_overlays(
    froc_dir: str, data_root: str, out_dir: str, mask_dir: Optional[str] = None,
    max_cases: int = 3, max_candidates: int = 5,
) -> List[str]:
    """Montages of validation cases with masses: GT (green), top candidates (amber), mask."""
    candidates = load_candidates_json(os.path.join(froc_dir, "candidates.json"))
    cases = read_cases(data_root)  # case ids validated: they become file names below
    evaluated = read_json(os.path.join(froc_dir, "froc.json"))["case_ids"]
    written = []
    for case_id in [c for c in evaluated if cases[c]["boxes"]][:max_cases]:
        case = cases[case_id]
        slices = _read_case_slices(data_root, case_id, case["shape"][2], "slices")
        if slices is None:
            continue
        mask = None
        if mask_dir:
            mask = _read_case_slices(os.path.dirname(mask_dir), case_id, case["shape"][2],
                                     os.path.basename(mask_dir))
        top = sorted((c for c in candidates if c["case_id"] == case_id),
                     key=lambda c: -c["score"])[:max_candidates]
        montage = case_montage(slices, top, case["boxes"], mask=mask, max_panels=4)
        path = path_inside(out_dir, f"overlay_{case_id}.png")
        with atomic_path(path) as tmp:
            cv2.imwrite(tmp, montage[..., ::-1])
        written.append(path)
    return written


def write_report(
    path: str,
    title: str,
    froc_runs: Mapping[str, str],
    data_root: str,
    seg_table: Optional[str] = None,
    mask_dir: Optional[str] = None,
    notes: Sequence[str] = (),
    step_times: Optional[Mapping[str, float]] = None,
    pairs: Sequence[Tuple[str, str]] = (),
    sections: Sequence[str] = (),
) -> str:
    """Write ``REPORT.md`` (and its figures beside it) and return its path.

    Args:
        path: the markdown file.
        title: report title.
        froc_runs: ``{run name: folder with froc.json, candidates.json}``; the first run's
            cases get example overlays.
        data_root: converted folder (for slices and ground truth).
        seg_table: markdown of tools/eval_breast_seg.py (seg_table.md), if any.
        mask_dir: masks used by the first run (drawn as outlines).
        notes: extra paragraphs (what was run, what differs from the study).
        step_times: seconds per step, listed at the end.
        pairs: ``(A, B)`` run names whose CPM difference gets a paired case-level bootstrap
            interval (:func:`paired_table`).
        sections: further markdown sections (each with its own heading), after the size table.
    """
    out_dir = os.path.dirname(os.path.abspath(path))
    runs: Dict[str, Dict] = {}
    for name, froc_dir in froc_runs.items():
        runs[name] = read_json(os.path.join(froc_dir, "froc.json"))
    plot_froc_runs(runs, os.path.join(out_dir, "froc_runs.png"), reference=_STUDY_POINT)
    overlays = write_overlays(next(iter(froc_runs.values())), data_root, out_dir, mask_dir)
    lines = [f"# {title}", ""]
    lines += [n + "\n" for n in notes]
    if seg_table:
        lines += [seg_table, ""]  # tools/eval_breast_seg.py's table comes with its own heading
    lines += [
        "## Mass detection: FROC on whole validation cases",
        "",
        "Slice detections merged into 3D candidates; a candidate is a true positive when its 3D "
        f"IoU with a mass is > 0.5. The study reports {STUDY_SENS_AT_3_4} at 3.4 FP per case "
        "(real DCE-MRI, R101 pretrained on ImageNet, 5 folds).",
        "",
        froc_table(runs),
        "![FROC curves](froc_runs.png)",
        "",
    ]
    if pairs:
        lines += [
            "### Paired comparisons",
            "",
            "CPM difference of two runs on the same validation cases, with the 95 % interval of "
            "a paired case-level bootstrap (1000 resamples, seed 0; `tools/froc.py --compare`).",
            "",
            paired_table(froc_runs, pairs),
        ]
    sizes = size_table(runs)
    if sizes:
        lines += [
            "### Sensitivity at 3.4 FP per case by mass size",
            "",
            "Size: the largest extent of the mass's box in mm (masses of the band in brackets); "
            "FP per case counts every case's false positives.",
            "",
            sizes,
        ]
    for section in sections:
        lines += [section, ""]
    if overlays:
        lines += ["## Examples (green: ground truth, amber: candidates with scores, blue: breast "
                  "mask outline)", ""]
        lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in overlays] + [""]
    if step_times:
        rows = [[k, format_cell(v, 0)] for k, v in step_times.items()]
        lines += ["## Steps", "", markdown_table(["step", "seconds"], rows), ""]
    write_atomic(path, lambda f: f.write("\n".join(lines)))
    return path
