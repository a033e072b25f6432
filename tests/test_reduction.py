"""The second-stage false-positive reducer (breast_d2/reduction, tools/reduce_fp.py).

A toy 3-fold cross-validation built here: 9 cases of 32 x 32 x 8 voxels with three NIfTI phases
each, two masses per case that enhance strongly (wash-in about 1.0) and four false-positive
candidates that barely enhance (0.05), every candidate with a random detector score. The
detector score says nothing, wash-in separates: the reducer must learn that, out of fold only.
"""
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import load_tool, make_toy_converted

from breast_d2.evaluation.candidates import CandidateArrays
from breast_d2.evaluation.froc import compute_froc
from breast_d2.reduction import (
    ReductionError,
    associate_detections,
    feature_names,
    find_fold_dirs,
    load_fold_run,
    load_reducer,
    out_of_fold,
)
from breast_d2.reduction.features import _int_box, _position, candidate_features

FOLDS, CASES, SHAPE = 3, 9, (8, 32, 32)  # Z, Y, X
SPACING = (0.7, 0.7, 2.0)  # make_toy_converted's spacing, x y z mm


def _cell_box(cell: int):
    cy, cx = divmod(cell, 4)
    return [cx * 8 + 1, cy * 8 + 1, 2, cx * 8 + 7, cy * 8 + 7, 5]


def make_toy_cv(root: str, seed: int = 0):
    """Converted folder ``root/coco`` and CV output ``root/cv`` (detector/fold{K}/inference/...)."""
    data, cv = os.path.join(root, "coco"), os.path.join(root, "cv")
    ids = make_toy_converted(data, num_cases=CASES, height=SHAPE[1], width=SHAPE[2],
                             num_slices=SHAPE[0], num_folds=FOLDS, seed=seed)
    rng = np.random.default_rng(seed)
    with open(os.path.join(data, "cases.json")) as f:
        cases = json.load(f)["cases"]
    cands, dets = {}, {}
    for case in cases:
        cid = case["case_id"]
        cells = rng.permutation(16)[:6].tolist()
        masses = [_cell_box(c) for c in cells[:2]]
        case["boxes"] = masses
        lesion = np.zeros(SHAPE, bool)
        for x0, y0, z0, x1, y1, z1 in masses:
            lesion[z0:z1, y0:y1, x0:x1] = True
        pre = rng.normal(100.0, 3.0, SHAPE)
        phases = [pre, pre * (1.05 + 0.95 * lesion), pre * (1.05 + 0.75 * lesion)]
        folder = os.path.join(root, "src", cid)
        os.makedirs(folder)
        case["phases"] = []
        for k, arr in enumerate(phases):
            path = os.path.join(folder, f"{cid}_{k:04d}.nii.gz")
            img = sitk.GetImageFromArray(arr.astype(np.float32))
            img.SetSpacing(SPACING)
            sitk.WriteImage(img, path)
            case["phases"].append({"phase": k, "source": path, "files": 1})
        case["num_phases"] = 3
        cands[cid] = [{"case_id": cid, "box": _cell_box(c), "score": float(rng.uniform(0.3, 1)),
                       "slices": 3} for c in cells]
        dets[cid] = [{"case_id": cid, "slice": z, "box": c["box"][:2] + c["box"][3:5],
                      "score": c["score"] - 0.01 * (z - 2)}
                     for c in cands[cid] for z in range(2, 5)]
    with open(os.path.join(data, "cases.json"), "w") as f:
        json.dump({"cases": cases}, f)
    by_id = {c["case_id"]: c for c in cases}
    for k in range(FOLDS):
        val = [c for i, c in enumerate(ids) if i % FOLDS == k]
        d = os.path.join(cv, "detector", f"fold{k}", "inference", f"breast_fold{k}_val")
        os.makedirs(d)
        fc = [c for cid in val for c in cands[cid]]
        res = compute_froc(fc, [by_id[c] for c in val], bootstrap=20)
        res["inputs"] = {"ground_truth": os.path.join(data, "cases.json")}
        res["merge"] = {"slice_gap": 1, "link_iou": 0.3, "score": "max", "score_thresh": 0.0}
        for name, obj in (("froc.json", res), ("candidates.json", fc),
                          ("detections.json", [x for cid in val for x in dets[cid]])):
            with open(os.path.join(d, name), "w") as f:
                json.dump(obj, f)
    return data, cv, ids


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("reduce"))
    data, cv, ids = make_toy_cv(root)
    out = os.path.join(root, "out")
    rc = load_tool("reduce_fp").main(["--cv", cv, "--data", data, "--out", out])
    assert rc == 0
    return {"root": root, "data": data, "cv": cv, "ids": ids, "out": out}


def _fold_dir(cv, k):
    return os.path.join(cv, "detector", f"fold{k}", "inference", f"breast_fold{k}_val")


def _run(argv, capsys):
    try:
        rc = load_tool("reduce_fp").main(argv)
    except SystemExit as e:  # argparse errors: one line, exit 2, as in every tool
        rc = e.code
    return rc, capsys.readouterr()


def _one_line_error(captured):
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


# ----------------------------------------------------------------------------- features


def test_association_rule():
    cands = CandidateArrays.from_dicts(
        [{"case_id": "A", "box": [0, 0, 2, 10, 10, 5], "score": 0.9, "slices": 3}])
    case = ["A", "A", "A", "A", "B"]
    slices = np.array([3, 5, 2, 4, 3])
    boxes = np.array([[1, 1, 9, 9],      # inside, slice 3: member
                      [1, 1, 9, 9],      # slice 5 = z1: outside the half-open range
                      [6, 0, 16, 10],    # 40 % of its area inside: not associated
                      [4, 0, 12, 10],    # 75 % inside: associated
                      [1, 1, 9, 9]], float)  # another case
    (idx,) = associate_detections(cands, case, slices, boxes)
    assert idx.tolist() == [0, 3]


def test_position_signed_distance_and_skin_depth():
    mask = np.zeros((3, 20, 20), bool)
    mask[:, 5:16, :] = True  # breast rows 5..15 (anterior skin at row 5) on every slice
    spacing = (0.5, 2.0)  # sx, sy mm
    inside = np.array([8, 6, 0, 11, 9, 3], float)  # centre row 7.5 -> 7, column 9
    frac, dist, depth = _position(_int_box(inside, mask.shape), inside, mask, spacing, {})
    assert frac == 1.0 and dist == pytest.approx(3 * 2.0) and depth == pytest.approx(2 * 2.0)
    outside = np.array([8, 0, 0, 11, 5, 3], float)  # centre row 2.5 -> 2, 3 rows above the skin
    frac, dist, depth = _position(_int_box(outside, mask.shape), outside, mask, spacing, {})
    assert frac == 0.0 and dist == pytest.approx(-3 * 2.0) and depth == pytest.approx(-3 * 2.0)


def test_features_units_and_kinetics(tmp_path):
    data, cv, ids = make_toy_cv(str(tmp_path))
    run = load_fold_run(_fold_dir(cv, 0))
    with open(os.path.join(data, "cases.json")) as f:
        cases = {c["case_id"]: c for c in json.load(f)["cases"]}
    det = json.load(open(os.path.join(run.path, "detections.json")))
    boxes = np.array([d["box"] for d in det], float)
    assoc = associate_detections(run.arrays, [d["case_id"] for d in det],
                                 np.array([d["slice"] for d in det]), boxes)
    scores = np.array([d["score"] for d in det])
    x, used = candidate_features(run.arrays, assoc, scores, cases, data, 0, num_post=2)
    names = feature_names(2)
    col = {n: x[:, names.index(n)] for n in names}
    assert used == {"masks/gt": 3}  # the toy folder has ground-truth masks only
    # every candidate is 6 x 6 voxels x 3 slices: extents and volume from the spacing
    np.testing.assert_allclose(col["extent_x_mm"], 6 * 0.7)
    np.testing.assert_allclose(col["extent_z_mm"], 3 * 2.0)
    np.testing.assert_allclose(col["volume_ml"], 4.2 * 4.2 * 6.0 / 1000)
    np.testing.assert_allclose(col["det_count"], 3)
    np.testing.assert_allclose(col["det_max"], run.arrays.scores)
    assert np.all((col["mask_fraction"] >= 0) & (col["mask_fraction"] <= 1))
    hit = np.array([any(np.array_equal(b, m) for m in np.array(cases[c]["boxes"]))
                    for b, c in zip(run.arrays.boxes, run.row_case_ids)])
    # masses: wash-in ~1.0 and wash-out negative; false positives ~0.05; shell ~0.05 for all
    assert np.all(col["wash_in"][hit] > 0.9) and np.all(col["wash_in"][~hit] < 0.1)
    assert np.all(col["wash_out"][hit] < -0.05)
    assert np.all(col["contrast_wash_in"][hit] > 0.5)
    assert np.all(np.abs(col["contrast_wash_in"][~hit]) < 0.05)
    np.testing.assert_allclose(col["ttp"], 1)


# ----------------------------------------------------------------------------- out of fold


def test_out_of_fold_training_cases_are_disjoint(toy):
    for k in range(FOLDS):
        val = [c for i, c in enumerate(toy["ids"]) if i % FOLDS == k]
        others = sorted(c for i, c in enumerate(toy["ids"]) if i % FOLDS != k)
        with open(os.path.join(toy["out"], "models", f"fold{k}.txt.json")) as f:
            prov = json.load(f)
        assert not set(prov["training_case_ids"]) & set(val)
        assert prov["training_case_ids"] == others
        assert prov["training_folds"] == [j for j in range(FOLDS) if j != k]
        assert prov["fold"] == k and prov["feature_names"] == feature_names(2)


def test_out_of_fold_refuses_a_case_in_two_folds(toy):
    runs = [load_fold_run(_fold_dir(toy["cv"], k)) for k in range(2)]
    runs[1].case_ids.append(runs[0].case_ids[0])  # fold 0's case also "validated" in fold 1
    for r in runs:
        r.x = np.zeros((len(r.arrays), 3))
    labels = [np.arange(len(r.arrays)) % 2 == 0 for r in runs]
    with pytest.raises(ReductionError, match="evaluated in both"):
        out_of_fold(runs, labels, ["a", "b", "c"], 5, 0)


def test_reducer_learns_wash_in(toy):
    with open(os.path.join(toy["out"], "summary.json")) as f:
        summary = json.load(f)
    before, after = summary["pooled_before"]["cpm"], summary["pooled_after"]["cpm"]
    assert after > before + 0.1 and after >= 0.9, (before, after)
    with open(os.path.join(toy["out"], "compare.json")) as f:
        assert json.load(f)["difference"]["cpm"] == pytest.approx(after - before)
    res = json.load(open(os.path.join(toy["out"], "fold0", "froc.json")))
    assert res["params"]["hit"] == "iou3d" and res["reducer"]["training_folds"] == [1, 2]
    cands = json.load(open(os.path.join(toy["out"], "fold0", "candidates.json")))
    assert all(0.0 <= c["score"] <= 1.0 and "det_score" in c for c in cands)
    table = open(os.path.join(toy["out"], "reduce_fp.md")).read()
    assert "| pooled" in table and "CPM after" in table


def test_rerun_reuses_the_feature_cache(toy, capsys):
    cache = os.path.join(toy["out"], "features", "fold0.npz")
    mtime = os.stat(cache).st_mtime_ns
    before = open(os.path.join(toy["out"], "fold1", "candidates.json")).read()
    rc, _ = _run(["--cv", toy["cv"], "--data", toy["data"], "--out", toy["out"]], capsys)
    assert rc == 0 and os.stat(cache).st_mtime_ns == mtime
    assert open(os.path.join(toy["out"], "fold1", "candidates.json")).read() == before


def test_cv_reads_the_folds_re_merged_by_froc(toy, tmp_path, capsys):
    # tools/froc.py --detections writes OUT/breast_fold{K}_val/: --cv takes that folder too, and
    # the reducer trained on it scores as on the cross-validation's own layout.
    flat = tmp_path / "remerged"
    for k in range(FOLDS):
        shutil.copytree(_fold_dir(toy["cv"], k), flat / f"breast_fold{k}_val")
    assert find_fold_dirs(str(flat)) == [str(flat / f"breast_fold{k}_val") for k in range(FOLDS)]
    rc, cap = _run(["--cv", str(flat), "--data", toy["data"], "--out", str(tmp_path / "o")],
                   capsys)
    assert rc == 0, cap.err
    for k in range(FOLDS):
        got = json.load(open(tmp_path / "o" / f"fold{k}" / "candidates.json"))
        want = json.load(open(os.path.join(toy["out"], f"fold{k}", "candidates.json")))
        assert [c["score"] for c in got] == pytest.approx([c["score"] for c in want])
    # The cross-validation layout wins over stray re-merged folders beside it.
    shutil.copytree(flat / "breast_fold0_val", os.path.join(toy["cv"], "x_fold0_val"))
    try:
        assert find_fold_dirs(toy["cv"])[0] == _fold_dir(toy["cv"], 0)
    finally:
        shutil.rmtree(os.path.join(toy["cv"], "x_fold0_val"))
    shutil.copytree(flat / "breast_fold1_val", flat / "other_fold1_val")
    with pytest.raises(ReductionError, match="fold 1 has two evaluations"):
        find_fold_dirs(str(flat))


# ----------------------------------------------------------------------------- --apply


def test_apply_scores_unseen_cases_and_refuses_training_cases(toy, tmp_path, capsys):
    model = os.path.join(toy["out"], "models", "fold0.txt")
    rc, cap = _run(["--apply", model, "--eval", _fold_dir(toy["cv"], 1), "--data", toy["data"],
                    "--out", str(tmp_path / "leak")], capsys)
    assert rc == 2 and "refusing to score its own training cases" in _one_line_error(cap)
    assert not os.path.exists(tmp_path / "leak" / "candidates.json")
    # the models folder holds fold 1's and 2's models, trained on fold 0's cases: refused
    rc, cap = _run(["--apply", os.path.dirname(model), "--eval", _fold_dir(toy["cv"], 0),
                    "--data", toy["data"], "--out", str(tmp_path / "all")], capsys)
    assert rc == 2 and "fold1.txt was trained on case" in _one_line_error(cap)
    rc, cap = _run(["--apply", model, "--eval", _fold_dir(toy["cv"], 0), "--data", toy["data"],
                    "--out", str(tmp_path / "ok")], capsys)
    assert rc == 0, cap.err
    got = [c["score"] for c in json.load(open(tmp_path / "ok" / "candidates.json"))]
    cv = [c["score"] for c in json.load(open(os.path.join(toy["out"], "fold0",
                                                         "candidates.json")))]
    np.testing.assert_allclose(got, cv)
    red = load_reducer(model)
    with pytest.raises(ReductionError, match="trained on case"):
        red.check_unseen([toy["ids"][1]])


# ----------------------------------------------------------------------------- errors


def test_one_line_errors(toy, tmp_path, capsys):
    data, cv = toy["data"], toy["cv"]
    rc, cap = _run(["--data", data, "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "exactly one of --cv and --apply" in _one_line_error(cap)
    rc, cap = _run(["--cv", str(tmp_path), "--data", data, "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "holds no fold evaluation" in _one_line_error(cap)
    rc, cap = _run(["--cv", cv, "--data", data, "--out", _fold_dir(cv, 0)], capsys)
    assert rc == 2 and "lies inside the input folder" in _one_line_error(cap)
    rc, cap = _run(["--apply", str(tmp_path / "none.txt"), "--eval", _fold_dir(cv, 0),
                    "--data", data, "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "none.txt" in _one_line_error(cap)


def test_bad_inputs_name_the_file_or_case(tmp_path, capsys):
    data, cv, ids = make_toy_cv(str(tmp_path))
    cand = os.path.join(_fold_dir(cv, 1), "candidates.json")
    with open(cand, "w") as f:
        f.write("[{")
    rc, cap = _run(["--cv", cv, "--data", data, "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and cand in _one_line_error(cap)
    with open(cand, "w") as f:
        json.dump([], f)
    os.remove(os.path.join(tmp_path, "src", ids[0], f"{ids[0]}_0002.nii.gz"))
    rc, cap = _run(["--cv", cv, "--data", data, "--out", str(tmp_path / "o")], capsys)
    line = _one_line_error(cap)
    assert rc == 2 and ids[0] in line and "0002" in line


# ----------------------------------------------------------------------------- --final


def test_final_model_excludes_cases_and_scores_only_those(toy, tmp_path, capsys):
    """``--final``: one model on every fold's candidates minus ``--exclude-cases``; it scores the
    excluded cases and refuses the others; an id no fold evaluates is an error, not a no-op."""
    val0 = [c for i, c in enumerate(toy["ids"]) if i % FOLDS == 0]
    ids_file = tmp_path / "exclude.txt"
    ids_file.write_text("# fold 0's cases\n" + "\n".join(val0) + "\n\n")
    out = str(tmp_path / "final")
    rc, cap = _run(["--cv", toy["cv"], "--data", toy["data"], "--final", "--exclude-cases",
                    f"@{ids_file}", "--out", out], capsys)
    assert rc == 0, cap.err
    model = os.path.join(out, "models", "final.txt")
    prov = load_reducer(model).provenance
    assert prov["excluded_case_ids"] == sorted(val0) and prov["training_folds"] == [0, 1, 2]
    assert prov["training_case_ids"] == sorted(set(toy["ids"]) - set(val0))
    assert prov["fold"] is None and "final.md" in os.listdir(out)
    rc, cap = _run(["--apply", model, "--eval", _fold_dir(toy["cv"], 0), "--data", toy["data"],
                    "--out", str(tmp_path / "ok")], capsys)
    assert rc == 0, cap.err
    rc, cap = _run(["--apply", model, "--eval", _fold_dir(toy["cv"], 1), "--data", toy["data"],
                    "--out", str(tmp_path / "leak")], capsys)
    assert rc == 2 and "refusing to score its own training cases" in _one_line_error(cap)
    rc, cap = _run(["--cv", toy["cv"], "--data", toy["data"], "--final", "--exclude-cases",
                    "NOPE", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "'NOPE'" in _one_line_error(cap)
    rc, cap = _run(["--cv", toy["cv"], "--data", toy["data"], "--exclude-cases", val0[0],
                    "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "--exclude-cases goes with --final" in _one_line_error(cap)
    rc, cap = _run(["--cv", toy["cv"], "--data", toy["data"], "--final", "--exclude-cases",
                    f"@{tmp_path / 'missing.txt'}", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "missing.txt" in _one_line_error(cap)
