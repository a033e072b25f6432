"""The FROC package's layout: re-exported API, one home for defaults, loaders, tables, figures."""
import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from breast_d2.evaluation import candidates, folds, froc, io, matching, tables
from breast_d2.evaluation.params import FROCParams
from helpers import load_tool, tool_env

CUBE = [0, 0, 0, 10, 10, 10]


def test_froc_module_re_exports_the_public_api():
    homes = {
        "match_candidates": matching,
        "HIT_CRITERIA": matching,
        "load_candidates_json": io,
        "load_cases_json": io,
        "subset_cases": io,
        "save_froc": io,
        "aggregate_folds": folds,
        "evaluate_fold_dirs": folds,
        "format_froc_table": tables,
        "format_folds_table": tables,
        "FROCInputError": candidates,
    }
    for name in froc.__all__:
        assert getattr(froc, name) is not None, name
    for name, module in homes.items():
        assert getattr(froc, name) is getattr(module, name), name
    ns = {}
    exec("from breast_d2.evaluation.froc import *", ns)
    assert set(froc.__all__) <= set(ns)
    assert "write_json_atomic" not in froc.__all__  # file helpers come from breast_d2.fileio
    with pytest.raises(AttributeError):
        froc.no_such_name


def test_froc_core_imports_neither_torch_nor_detectron2():
    code = ("import sys, breast_d2.evaluation.froc, breast_d2.evaluation.folds; "
            "bad = [m for m in ('torch', 'detectron2') if m in sys.modules]; "
            "sys.exit(str(bad) if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=tool_env())
    assert proc.returncode == 0, proc.stderr


def test_defaults_have_one_home():
    d = FROCParams()
    sig = inspect.signature(froc.compute_froc).parameters
    assert {k: sig[k].default for k in ("hit", "iou_thresh", "duplicates", "bootstrap")} == {
        "hit": d.hit, "iou_thresh": d.iou_thresh, "duplicates": d.duplicates,
        "bootstrap": d.bootstrap}
    for fn in (candidates.merge_slice_detections, candidates.merge_slice_arrays):
        sig = inspect.signature(fn).parameters
        for key in ("slice_gap", "link_iou", "score", "score_thresh"):
            assert sig[key].default == getattr(d, key), (fn.__name__, key)
    args = load_tool("froc").get_parser().parse_args(["--out", "x"])
    assert (args.hit, args.iou, args.duplicates, args.bootstrap) == (
        d.hit, d.iou_thresh, d.duplicates, d.bootstrap)
    with pytest.raises(Exception):  # frozen
        d.hit = "center"
    assert FROCParams.config_keys()["score_thresh"] == "SCORE_THRESH"


def test_chunked_pairs_enumerates_each_window():
    src = np.array([5, 6, 7])
    lo = np.array([0, 10, 3])
    counts = np.array([2, 0, 3])
    got = [(int(s), int(d)) for a, b in candidates.chunked_pairs(src, lo, counts)
           for s, d in zip(a, b)]
    assert got == [(5, 0), (5, 1), (7, 3), (7, 4), (7, 5)]
    assert list(candidates.chunked_pairs(src, lo, np.zeros(3, int))) == []


def test_matching_hits_hand_computed():
    # Candidate [0,0,0,10,10,5] vs the cube: 3D IoU 500/1000 = 0.5 (not > 0.5); 2D IoU 1.0.
    half = np.array([[0, 0, 0, 10, 10, 5]], float)
    gt = np.array([CUBE], float)
    args = (np.zeros(1, int), half, np.array([0.9]), np.zeros(1, int), gt, 1)
    is_fp, score = matching.match_candidates(*args, hit="iou3d")
    assert is_fp.tolist() == [True] and score.tolist() == [-np.inf]
    is_fp, score = matching.match_candidates(*args, hit="iou2d")
    assert is_fp.tolist() == [False] and score.tolist() == [0.9]
    is_fp, _ = matching.match_candidates(*args, hit="center")  # centre (5, 5, 2.5) inside
    assert is_fp.tolist() == [False]


def test_load_cases_json_uses_the_cohort_reader_and_keeps_froc_errors(tmp_path):
    path = tmp_path / "cases.json"
    for cases, needle in (
        ([{"case_id": "../x", "boxes": []}], "not a plain file name"),
        ([{"case_id": "a", "boxes": []}, {"case_id": "a", "boxes": []}], "'a' appears twice"),
        ([{"case_id": "a"}], "case 'a' has no 'boxes'"),
        ([{"case_id": "a", "boxes": [[0, 0, 0, "1", 1, 1]]}], "boxes must be a list"),
    ):
        path.write_text(json.dumps({"cases": cases}))
        with pytest.raises(froc.FROCInputError, match=needle) as e:
            froc.load_cases_json(str(path))
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    path.write_text("{oops")
    with pytest.raises(froc.FROCInputError, match="not valid JSON"):
        froc.load_cases_json(str(path))
    with pytest.raises(froc.FROCInputError, match="missing.json"):
        froc.load_candidates_json(str(tmp_path / "missing.json"))
    cases = [{"case_id": "b", "boxes": [CUBE]}, {"case_id": "a", "boxes": []}]
    path.write_text(json.dumps({"cases": cases}))
    assert froc.load_cases_json(str(path)) == cases  # file order kept
    assert froc.load_cases_json(str(tmp_path)) == cases  # the converted folder works too


def test_table_cells_and_markdown():
    assert tables.format_cell(0.87444) == "0.874"
    assert tables.format_cell(None) == tables.format_cell(float("nan")) == "n/a"
    assert tables.format_cell(0.5, 4) == "0.5000"
    assert tables.format_range([0.1, 0.25]) == "0.100–0.250"
    assert tables.format_range(None) == "n/a"
    assert tables.format_mean_sd(0.5, 0.125) == "0.500 ± 0.125"
    assert tables.format_mean_sd(float("nan"), float("nan")) == "n/a"
    md = tables.markdown_table(["FP/case", "sens"], [["3.4", "0.500"], ["8", "n/a"]],
                               ["right", "right"])
    lines = md.splitlines()
    assert len(lines) == 4 and all(line.startswith("|") and line.endswith("|") for line in lines)
    assert set(lines[1]) <= set("|-:") and lines[1].count(":") == 2  # right-aligned columns
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[2] == ["3.4", "0.500"]  # "3.4" not re-read as a number (3.400)


def _result(sens34, cpm):
    cases = [{"case_id": "a", "boxes": [CUBE]}, {"case_id": "b", "boxes": [CUBE]}]
    cands = [{"case_id": "a", "box": CUBE, "score": 0.9}]
    res = froc.compute_froc(cands, cases, bootstrap=20)
    assert res["sensitivity_at"]["3.4"] == sens34 and res["cpm"] == cpm
    return res


def test_report_froc_table_and_figure(tmp_path):
    pytest.importorskip("cv2")
    from breast_d2.evaluation.plots import plot_froc_runs
    from breast_d2.job_report import froc_table

    res = _result(0.5, 0.5)
    md = froc_table({"masked": res, "plain": dict(res, ci95=None)})
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.strip().splitlines()]
    assert rows[0][:4] == ["run", "cases", "masses", "sens@0.125"]
    assert rows[0][-3:] == ["CPM (step)", "CPM (interp.)", "95% CI sens@3.4"]
    assert len(rows[0]) == 3 + 8 + 3
    assert rows[2][:3] == ["masked", "2", "2"] and rows[2][3:11] == ["0.500"] * 8
    assert rows[2][11:13] == ["0.500", "0.500"] and "–" in rows[2][13]
    assert rows[3][13] == "n/a"  # no bootstrap: no CI
    step_only = dict(res, cpm=0.25, cpm_interp=0.375)  # the two CPMs land in their own columns
    cells = froc_table({"x": step_only}).splitlines()[2].strip("|").split("|")
    assert [c.strip() for c in cells][11:13] == ["0.250", "0.375"]
    out = tmp_path / "runs.png"
    plot_froc_runs({"masked": res}, str(out), reference=(3.4, 0.874, "study"))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["runs.png"]  # no temporary file left


def test_format_froc_table_keeps_numbers_and_columns():
    res = _result(0.5, 0.5)
    text = froc.format_froc_table(res)
    title, blank, *table = text.splitlines()
    assert title.startswith("FROC: 2 cases, 2 masses, 1 candidates (iou3d, IoU > 0.5")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    assert rows[0] == ["FP/case", "Sensitivity", "95% CI", "Threshold", "Sens. (interp.)",
                       "95% CI (interp.)"]
    labels = list(res["sensitivity_at"]) + ["**CPM (step)**", "**CPM (interp.)**"]
    assert [r[0] for r in rows[2:]] == labels
    assert rows[2][1] == "0.500" and rows[2][3] == "0.9000" and "–" in rows[2][5]
    assert rows[-2][1] == "0.500" and rows[-2][3] == "" and rows[-2][4] == ""
    assert rows[-1][1] == "" and rows[-1][4] == "0.500" and "–" in rows[-1][5]
