"""Sensitivity by mass size, paired CPM comparison (library and tools/froc.py --compare)."""
import json
import os

import numpy as np
import pytest

from breast_d2.evaluation.compare import compare_froc
from breast_d2.evaluation.froc import FROCInputError, bootstrap_weights, compute_froc
from breast_d2.evaluation.sizes import lesion_sizes_mm, size_band_index
from helpers import load_tool

# Spacing 1 x 1 x 2 mm: a box 5 voxels wide in x is 5 mm, 3 slices deep is 6 mm.
CASES = [
    {"case_id": "a", "spacing": [1.0, 1.0, 2.0],
     "boxes": [[0, 0, 0, 5, 5, 2], [10, 10, 0, 40, 20, 3]]},  # 5 mm and 30 mm
    {"case_id": "b", "spacing": [0.5, 0.5, 1.0], "boxes": [[0, 0, 0, 100, 10, 5]]},  # 50 mm
    {"case_id": "c", "spacing": [1.0, 1.0, 1.0], "boxes": [[0, 0, 0, 12, 4, 4]]},  # 12 mm
]


def test_size_bands_edges():
    sizes = np.array([0.1, 9.999, 10.0, 19.9, 20.0, 50.0, 50.001, 200.0])
    assert size_band_index(sizes).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_lesion_sizes_from_boxes_and_spacing():
    gt_case = np.array([0, 0, 1, 2])
    boxes = np.array([b for c in CASES for b in c["boxes"]], dtype=float)
    sizes = lesion_sizes_mm(CASES, ["a", "b", "c"], gt_case, boxes)
    assert sizes.tolist() == [5.0, 30.0, 50.0, 12.0]
    no_spacing = [{k: v for k, v in c.items() if k != "spacing"} for c in CASES]
    assert lesion_sizes_mm(no_spacing, ["a", "b", "c"], gt_case, boxes) is None
    with pytest.raises(FROCInputError, match="'c' has no 'spacing'"):
        lesion_sizes_mm(CASES[:2] + no_spacing[2:], ["a", "b", "c"], gt_case, boxes)
    bad = CASES[:2] + [dict(CASES[2], spacing=[1.0, 0.0, 1.0])]
    with pytest.raises(FROCInputError, match="'c': spacing must be"):
        compute_froc([], bad, bootstrap=0)


def test_sensitivity_by_size_uses_the_cohort_thresholds():
    cands = [
        {"case_id": "a", "box": [0, 0, 0, 5, 5, 2], "score": 0.9},  # hits the 5 mm mass
        {"case_id": "b", "box": [60, 60, 0, 70, 70, 2], "score": 0.8},  # FP
        {"case_id": "a", "box": [10, 10, 0, 40, 20, 3], "score": 0.7},  # hits the 30 mm mass
        {"case_id": "c", "box": [50, 50, 0, 60, 60, 2], "score": 0.6},  # FP
        {"case_id": "c", "box": [0, 0, 0, 12, 4, 4], "score": 0.5},  # hits the 12 mm mass
    ]
    res = compute_froc(cands, CASES, bootstrap=0)
    by = res["sensitivity_by_size"]
    assert list(by) == ["<10", "10-20", "20-50", ">50"]
    assert [by[b]["num_lesions"] for b in by] == [1, 1, 2, 0]
    # 3 cases: FP/case 1/3 from score 0.8 on, 2/3 from 0.6 on. At 0.25 FP/case the threshold
    # is 0.9 (only the 5 mm mass); at 0.5 it is 0.7 (+ 30 mm); at 1 it is 0.5 (+ 12 mm).
    assert by["<10"]["sensitivity_at"]["0.25"] == 1.0
    assert by["20-50"]["sensitivity_at"]["0.25"] == 0.0
    assert by["20-50"]["sensitivity_at"]["0.5"] == 0.5
    assert by["10-20"]["sensitivity_at"]["0.5"] == 0.0 and by["10-20"]["sensitivity_at"]["1"] == 1
    assert res["sensitivity_at"]["0.5"] == 0.5 and res["sensitivity_at"]["1"] == 0.75
    assert by["20-50"]["cpm"] == pytest.approx((0 + 0 + 0.5 * 5) / 7)
    assert by["10-20"]["cpm"] == pytest.approx(4 / 7)
    # Interpolated: the 10-20 band's curve is 0 up to 2/3 FP/case, then 1 (a vertical rise).
    assert by["10-20"]["sensitivity_at_interp"]["0.5"] == 0.0
    assert by["10-20"]["sensitivity_at_interp"]["1"] == 1.0
    assert np.isnan(by[">50"]["cpm"]) and np.isnan(by[">50"]["sensitivity_at"]["1"])
    assert by["<10"]["curve"]["sensitivity"][0] == 1.0


def test_no_spacing_no_bands():
    cases = [{"case_id": "a", "boxes": [[0, 0, 0, 5, 5, 2]]}]
    assert compute_froc([], cases, bootstrap=0)["sensitivity_by_size"] is None


def _renamed(cands, cases, draw):
    """The resampled cohort as plain data: case k of the draw becomes case 'r{k}'."""
    new_cases, new_cands = [], []
    ids = sorted(c["case_id"] for c in cases)
    by_id = {c["case_id"]: c for c in cases}
    for k, idx in enumerate(draw):
        cid = ids[idx]
        new_cases.append(dict(by_id[cid], case_id=f"r{k:03d}"))
        new_cands += [dict(c, case_id=f"r{k:03d}") for c in cands if c["case_id"] == cid]
    return new_cands, new_cases


def test_compare_matches_brute_force_resampling():
    a = [{"case_id": "a", "box": [0, 0, 0, 5, 5, 2], "score": 0.9},
         {"case_id": "b", "box": [0, 0, 0, 100, 10, 5], "score": 0.4},
         {"case_id": "c", "box": [50, 50, 0, 60, 60, 2], "score": 0.7}]
    b = [{"case_id": "a", "box": [10, 10, 0, 40, 20, 3], "score": 0.8},
         {"case_id": "c", "box": [0, 0, 0, 12, 4, 4], "score": 0.3},
         {"case_id": "b", "box": [60, 60, 0, 70, 70, 2], "score": 0.95}]
    res = compare_froc(a, b, CASES, bootstrap=40, seed=3)
    fa, fb = compute_froc(a, CASES, bootstrap=0), compute_froc(b, CASES, bootstrap=0)
    assert res["a"]["cpm"] == fa["cpm"] and res["b"]["cpm_interp"] == fb["cpm_interp"]
    assert res["difference"]["cpm"] == pytest.approx(fa["cpm"] - fb["cpm"])
    rng = np.random.default_rng(3)
    draws = rng.integers(0, 3, size=(40, 3))  # what bootstrap_weights documents
    diffs, diffs_i = [], []
    for draw in draws:
        ra = compute_froc(*_renamed(a, CASES, draw), bootstrap=0)
        rb = compute_froc(*_renamed(b, CASES, draw), bootstrap=0)
        diffs.append(ra["cpm"] - rb["cpm"])
        diffs_i.append(ra["cpm_interp"] - rb["cpm_interp"])
    assert res["difference"]["ci95"] == pytest.approx(np.percentile(diffs, [2.5, 97.5]))
    assert res["difference"]["ci95_interp"] == pytest.approx(np.percentile(diffs_i, [2.5, 97.5]))
    assert res["difference"]["ci95"][0] < res["difference"]["ci95"][1]
    assert compare_froc(a, b, CASES, bootstrap=40, seed=3) == res  # fixed seed
    same = compare_froc(a, a, CASES, bootstrap=40, seed=3)["difference"]
    assert same["cpm"] == 0.0 and same["ci95"] == [0.0, 0.0]


def test_bootstrap_weights_count_draws():
    w = bootstrap_weights(3, 5, seed=1)
    draws = np.random.default_rng(1).integers(0, 3, size=(5, 3))
    assert w.tolist() == [np.bincount(d, minlength=3).tolist() for d in draws]


def test_compare_refuses_other_cases_or_ground_truth():
    with pytest.raises(FROCInputError, match="different cases .*'c' only in A"):
        compare_froc([], [], CASES, CASES[:2], bootstrap=5)
    moved = CASES[:2] + [dict(CASES[2], boxes=[[1, 0, 0, 12, 4, 4]])]
    with pytest.raises(FROCInputError, match="case 'c' has other mass boxes"):
        compare_froc([], [], CASES, moved, bootstrap=5)
    with pytest.raises(FROCInputError, match="needs --bootstrap >= 1"):
        compare_froc([], [], CASES, bootstrap=0)


@pytest.fixture(scope="module")
def tool():
    return load_tool("froc")


def test_tool_compare(tool, tmp_path, capsys):
    gt = tmp_path / "cases.json"
    gt.write_text(json.dumps({"cases": CASES}))
    good = [{"case_id": c["case_id"], "box": box, "score": 0.9} for c in CASES
            for box in c["boxes"]]
    bad = [{"case_id": "a", "box": [60, 60, 0, 70, 70, 2], "score": 0.9}]
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    run_dir = tmp_path / "run"  # an evaluation folder, as the single run writes it
    assert tool.main(["--candidates", str(tmp_path / "good.json"), "--ground-truth", str(gt),
                      "--out", str(run_dir), "--bootstrap", "0"]) == 0
    capsys.readouterr()
    out = tmp_path / "cmp"
    rc = tool.main(["--compare", str(run_dir), str(tmp_path / "bad.json"), "--ground-truth",
                    str(gt), "--out", str(out), "--bootstrap", "50"])
    line = capsys.readouterr().out
    assert rc == 0 and line.count("\n") == 1
    assert line.startswith("CPM A 1.000, B 0.000, A - B +1.000 (95% CI +1.000 to +1.000")
    saved = json.loads((out / "compare.json").read_text())
    assert saved["difference"]["cpm"] == 1.0 and saved["bootstrap"]["resamples"] == 50
    assert saved["num_cases"] == 3 and saved["num_lesions"] == 4
    # Different case sets: the fold-0 split of B against the folder's 3 cases.
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"num_folds": 1, "seed": 0, "folds": [
        {"fold": 0, "train": ["c"], "val": ["a", "b"]}]}))
    rc = tool.main(["--compare", str(run_dir), str(tmp_path / "bad.json"), "--ground-truth",
                    str(gt), "--splits", str(splits), "--fold", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: the two runs are evaluated on different cases")
    assert err.count("\n") == 1
    rc = tool.main(["--compare", str(tmp_path / "bad.json"), str(run_dir), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "needs --ground-truth" in err and err.count("\n") == 1


def test_single_run_table_shows_size_bands(tool, tmp_path, capsys):
    gt = tmp_path / "cases.json"
    gt.write_text(json.dumps({"cases": CASES}))
    (tmp_path / "c.json").write_text(json.dumps(
        [{"case_id": "a", "box": [0, 0, 0, 5, 5, 2], "score": 0.9}]))
    assert tool.main(["--candidates", str(tmp_path / "c.json"), "--ground-truth", str(gt),
                      "--out", str(tmp_path / "o"), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith("|")]
    assert ["**CPM (step)**", "0.250", "n/a", "", "", ""] in rows
    band = next(r for r in rows if r[0] == "<10 mm")
    assert band[1] == "1" and band[-2:] == ["1.000", "1.000"]
    assert next(r for r in rows if r[0] == "20-50 mm")[-2:] == ["0.000", "0.000"]
    saved = json.loads((tmp_path / "o" / "froc.json").read_text())
    assert saved["sensitivity_by_size"]["20-50"]["num_lesions"] == 2
    assert os.path.exists(tmp_path / "o" / "froc.png")


def test_folds_table_shows_both_cpms():
    from breast_d2.evaluation.folds import aggregate_folds
    from breast_d2.evaluation.tables import format_folds_table

    r0 = dict(compute_froc([], CASES, bootstrap=0), cpm=0.5, cpm_interp=0.25)
    r1 = dict(r0, cpm=0.7, cpm_interp=0.45)
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in format_folds_table(aggregate_folds([r0, r1])).splitlines()]
    assert rows[0][-2:] == ["CPM (step)", "CPM (interp.)"]
    assert rows[2][-2:] == ["0.500", "0.250"] and rows[3][-2:] == ["0.700", "0.450"]
    assert rows[4][-2:] == ["0.600 ± 0.141", "0.350 ± 0.141"]
