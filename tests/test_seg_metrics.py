"""Tests of breast_d2.segmentation.metrics and report (hand-computed masks)."""
import math

import numpy as np
import pytest

from breast_d2.segmentation import (
    dice,
    jaccard,
    markdown_report,
    overlap_metrics,
    per_fold_rows,
    seg_sensitivity,
    summarize,
)


def _masks():
    # A: 2x3 block (6 px), B: 2x4 block (8 px) overlapping in 2x2 = 4 px, in a 2-slice volume
    a = np.zeros((2, 5, 6), bool)
    b = np.zeros((2, 5, 6), bool)
    a[0, 1:3, 0:3] = True
    b[0, 1:3, 1:5] = True
    return a, b


def test_hand_computed_overlap():
    a, b = _masks()
    assert dice(a, b) == pytest.approx(2 * 4 / (6 + 8))
    assert jaccard(a, b) == pytest.approx(4 / (6 + 8 - 4))
    assert seg_sensitivity(a, b) == pytest.approx(4 / 8)
    assert overlap_metrics(a, b) == pytest.approx({"dsc": 8 / 14, "jaccard": 0.4, "ss": 0.5})
    # DSC and Jaccard are symmetric; SS is not
    assert dice(b, a) == dice(a, b) and seg_sensitivity(b, a) == pytest.approx(4 / 6)


def test_identical_and_disjoint():
    a, b = _masks()
    assert overlap_metrics(a, a) == {"dsc": 1.0, "jaccard": 1.0, "ss": 1.0}
    c = np.zeros_like(a)
    c[1, 0, 0] = True
    assert overlap_metrics(a, c) == {"dsc": 0.0, "jaccard": 0.0, "ss": 0.0}


def test_empty_masks():
    e = np.zeros((3, 4), bool)
    full = np.ones((3, 4), bool)
    m = overlap_metrics(e, e)
    assert m["dsc"] == 1.0 and m["jaccard"] == 1.0 and math.isnan(m["ss"])
    assert overlap_metrics(full, e)["dsc"] == 0.0 and math.isnan(overlap_metrics(full, e)["ss"])
    assert overlap_metrics(e, full) == {"dsc": 0.0, "jaccard": 0.0, "ss": 0.0}


def test_shape_mismatch():
    with pytest.raises(ValueError):
        dice(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


def test_summarize_ignores_nan():
    s = summarize([0.9, float("nan"), 0.7])
    assert s["n"] == 2 and s["mean"] == pytest.approx(0.8)
    assert s["sd"] == pytest.approx(np.std([0.9, 0.7], ddof=1))
    assert summarize([0.5]) == {"mean": 0.5, "sd": 0.0, "n": 1}
    assert summarize([])["n"] == 0


def test_per_fold_and_markdown():
    rows = [
        {"run": "U-Net", "arch": "unet", "fold": f, "case_id": c, "dsc": d, "jaccard": d - 0.1,
         "ss": d}
        for f, c, d in [(0, "A", 0.9), (0, "B", 0.8), (1, "C", 0.7)]
    ] + [{"run": "U-Net++", "arch": "unetplusplus", "fold": 0, "case_id": "A", "dsc": 0.95,
          "jaccard": 0.9, "ss": 0.9}]
    folds = per_fold_rows(rows)
    unet0 = [r for r in folds if r["run"] == "U-Net" and r["fold"] == 0][0]
    assert unet0["n_cases"] == 2 and unet0["dsc"] == pytest.approx(0.85)
    md = markdown_report(folds)
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in md.splitlines() if line.startswith("|")]  # cells, padding ignored
    assert ["Metric", "U-Net", "U-Net++"] in rows
    assert ["DSC", "0.775 ± 0.106", "0.950 ± 0.000"] in rows
    assert ["Performance", "Exp 1", "Exp 2", "Average"] in rows
