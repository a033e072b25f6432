"""FROC maths: hand-computed examples, validation, files, and a brute-force cross-check."""
import json
import math
import os
import random
import tempfile

import numpy as np
import pytest

from breast_d2.evaluation.froc import (
    CPM_RATES,
    FP_RATES,
    FROCInputError,
    aggregate_folds,
    compute_froc,
    curve_sensitivity,
    load_candidates_json,
    load_cases_json,
    save_froc,
)

CUBE = [0, 0, 0, 10, 10, 10]


def _cand(case, box, score):
    return {"case_id": case, "box": list(box), "score": score, "slices": box[5] - box[2]}


def _froc(cands, cases, **kw):
    kw.setdefault("bootstrap", 0)
    return compute_froc(cands, cases, **kw)


def test_ties_in_score_and_mass_free_case():
    cases = [{"case_id": "a", "boxes": [CUBE]}, {"case_id": "b", "boxes": []}]
    cands = [
        _cand("a", CUBE, 0.8),  # hits the mass
        _cand("a", [50, 50, 0, 60, 60, 5], 0.8),  # FP tied with the hit
        _cand("a", [70, 70, 0, 80, 80, 5], 0.5),
        _cand("b", CUBE, 0.8),  # FP in a case without masses
    ]
    r = _froc(cands, cases)
    assert r["num_cases"] == 2 and r["num_lesions"] == 1 and r["num_false_positives"] == 3
    assert r["curve"] == {"thresholds": [0.8, 0.5], "fp_per_case": [1.0, 1.5],
                          "sensitivity": [1.0, 1.0]}
    s = r["sensitivity_at"]
    assert (s["0.125"], s["0.25"], s["0.5"], s["1"], s["3.4"], s["8"]) == (0, 0, 0, 1, 1, 1)
    assert r["threshold_at"]["0.5"] is None and r["threshold_at"]["1"] == 0.8
    assert r["cpm"] == pytest.approx(4 / 7)
    # Interpolated from (0, 0) to (1, 1): sensitivity f at f < 1.
    si = r["sensitivity_at_interp"]
    assert (si["0.125"], si["0.5"], si["2"]) == pytest.approx((0.125, 0.5, 1.0))
    assert r["cpm_interp"] == pytest.approx((0.125 + 0.25 + 0.5 + 4) / 7)


def test_case_without_candidates_counts_in_denominator():
    cases = [{"case_id": "a", "boxes": [CUBE]}, {"case_id": "b", "boxes": []},
             {"case_id": "c", "boxes": [CUBE]}]
    r = _froc([_cand("a", CUBE, 0.9), _cand("a", [40, 40, 0, 50, 50, 3], 0.7)], cases)
    assert r["curve"]["fp_per_case"] == [0.0, pytest.approx(1 / 3)]
    assert r["curve"]["sensitivity"] == [0.5, 0.5]
    assert r["sensitivity_at"]["0.125"] == 0.5


def test_mass_hit_by_two_candidates():
    cases = [{"case_id": "a", "boxes": [CUBE]}]
    cands = [_cand("a", CUBE, 0.9), _cand("a", [0, 0, 1, 10, 10, 10], 0.4)]
    ignore = _froc(cands, cases)
    assert ignore["num_false_positives"] == 0 and ignore["sensitivity_at"]["0.125"] == 1.0
    fp = _froc(cands, cases, duplicates="fp")
    assert fp["num_false_positives"] == 1
    assert fp["curve"]["fp_per_case"] == [0.0, 1.0]
    assert fp["sensitivity_at"]["0.125"] == 1.0 and fp["threshold_at"]["8"] == 0.9


def test_candidate_hitting_two_masses_detects_both():
    cases = [{"case_id": "a", "boxes": [CUBE, [0, 0, 0, 10, 10, 9]]}]
    for dup in ("ignore", "fp"):
        r = _froc([_cand("a", CUBE, 0.6)], cases, duplicates=dup)
        assert r["num_false_positives"] == 0
        assert r["sensitivity_at"]["0.125"] == 1.0 and r["cpm"] == 1.0


def test_empty_candidate_list():
    r = _froc([], [{"case_id": "a", "boxes": [CUBE]}], bootstrap=20)
    assert r["curve"] == {"thresholds": [], "fp_per_case": [], "sensitivity": []}
    assert set(r["sensitivity_at"].values()) == {0.0} and r["cpm"] == 0.0
    assert set(r["threshold_at"].values()) == {None}
    assert r["ci95"]["cpm"] == [0.0, 0.0]


def test_no_masses_at_all_gives_nan_and_null_in_json():
    r = _froc([_cand("a", CUBE, 0.5)], [{"case_id": "a", "boxes": []}], bootstrap=10)
    assert math.isnan(r["cpm"]) and math.isnan(r["sensitivity_at"]["3.4"])
    assert r["curve"]["fp_per_case"] == [1.0]
    with tempfile.TemporaryDirectory() as d:
        save_froc(r, d, plot=False)
        with open(os.path.join(d, "froc.json")) as f:
            data = json.load(f)
    assert data["cpm"] is None and data["ci95"]["cpm"] == [None, None]


def test_hit_criteria_and_strict_threshold():
    cases = [{"case_id": "a", "boxes": [[0, 0, 0, 10, 10, 2]]}]
    half = [_cand("a", [0, 0, 0, 10, 10, 1], 0.5)]  # 3D IoU exactly 0.5, 2D IoU 1 on slice 0
    assert _froc(half, cases)["cpm"] == 0.0
    assert _froc(half, cases, iou_thresh=0.49)["cpm"] == 1.0
    assert _froc(half, cases, hit="iou2d")["cpm"] == 1.0
    # No shared slice: never an iou2d hit.
    assert _froc([_cand("a", [0, 0, 2, 10, 10, 3], 0.5)], cases, hit="iou2d")["cpm"] == 0.0
    small = [_cand("a", [4, 4, 0, 6, 6, 2], 0.5)]
    assert _froc(small, cases)["cpm"] == 0.0
    assert _froc(small, cases, hit="center")["cpm"] == 1.0
    outside = [_cand("a", [8, 8, 0, 14, 14, 2], 0.5)]  # centre x = 11 outside [0, 10)
    assert _froc(outside, cases, hit="center")["cpm"] == 0.0


@pytest.mark.parametrize(
    "cands, cases, needle",
    [
        ([_cand("zz", CUBE, 0.5)], [{"case_id": "a", "boxes": []}], "candidate #0 (case 'zz')"),
        ([_cand("a", CUBE, float("nan"))], [{"case_id": "a", "boxes": []}], "not finite"),
        ([_cand("a", [5, 0, 0, 5, 1, 1], 0.5)], [{"case_id": "a", "boxes": []}], "malformed"),
        ([], [{"case_id": "a", "boxes": [[0, 0, 0, 1, 1]]}], "case 'a'"),
        ([], [{"case_id": "a", "boxes": [[0, 0, 4, 1, 1, 4]]}], "box #0"),
        ([], [{"case_id": "a", "boxes": []}, {"case_id": "a", "boxes": []}], "twice"),
        ([], [], "no cases"),
    ],
)
def test_errors_name_the_entry(cands, cases, needle):
    with pytest.raises(FROCInputError) as e:
        _froc(cands, cases)
    assert needle in str(e.value)


def test_load_json_validation():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "c.json")
        with open(path, "w") as f:
            json.dump([_cand("a", CUBE, 0.5), {"case_id": "b", "box": CUBE}], f)
        with pytest.raises(FROCInputError, match=r"c.json: candidate #1 \(case 'b'\) has no"):
            load_candidates_json(path)
        with open(path, "w") as f:
            f.write("[{")
        with pytest.raises(FROCInputError, match="not valid JSON"):
            load_candidates_json(path)
        with open(path, "w") as f:
            json.dump({"cases": [{"case_id": "a", "boxes": [[0, 0, 0, 1, 1, 1]]}]}, f)
        assert load_cases_json(path)[0]["case_id"] == "a"
        with open(path, "w") as f:
            json.dump([], f)
        with pytest.raises(FROCInputError, match="cases"):
            load_cases_json(path)


def test_files_written():
    cases = [{"case_id": "a", "boxes": [CUBE]}, {"case_id": "b", "boxes": [CUBE]}]
    r = compute_froc([_cand("a", CUBE, 0.9), _cand("b", [30, 30, 0, 40, 40, 3], 0.3)], cases,
                     bootstrap=50)
    with tempfile.TemporaryDirectory() as d:
        paths = save_froc(r, d, candidates=[_cand("a", CUBE, 0.9)])
        assert sorted(os.listdir(d)) == ["candidates.json", "froc.csv", "froc.json", "froc.png"]
        assert len(paths) == 4
        with open(os.path.join(d, "froc.csv")) as f:
            assert f.readline().strip() == "threshold,fp_per_case,sensitivity"
        with open(os.path.join(d, "froc.png"), "rb") as f:
            assert f.read(4) == b"\x89PNG"


def test_order_independent_and_seeded():
    rng = random.Random(1)
    cases, cands = _random_problem(rng, n_cases=6, n_cands=60)
    r1 = compute_froc(cands, cases, bootstrap=40, seed=3)
    r2 = compute_froc(list(reversed(cands)), list(reversed(cases)), bootstrap=40, seed=3)
    assert r1 == r2
    r3 = compute_froc(cands, cases, bootstrap=40, seed=4)
    assert r3["ci95"] != r1["ci95"] and r3["cpm"] == r1["cpm"]


def test_aggregate_folds():
    cases = [{"case_id": "a", "boxes": [CUBE]}, {"case_id": "b", "boxes": [CUBE]}]
    r1 = _froc([_cand("a", CUBE, 0.9), _cand("b", CUBE, 0.8)], cases)  # sens 1 everywhere
    r2 = _froc([_cand("a", CUBE, 0.9)], cases)  # sens 0.5 everywhere
    agg = aggregate_folds([r1, r2])
    assert [f["name"] for f in agg["folds"]] == ["fold0", "fold1"]
    assert agg["mean"]["sensitivity_at"]["3.4"] == pytest.approx(0.75)
    assert agg["sd"]["cpm"] == pytest.approx(np.std([1.0, 0.5], ddof=1))
    assert agg["mean_curve"]["sensitivity"][0] == pytest.approx(0.75)


# ----------------------------------------------------------------------------- brute force


def _random_problem(rng, n_cases, n_cands, continuous=False):
    cases = []
    for i in range(n_cases):
        boxes = []
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            x, y, z = rng.randint(0, 8), rng.randint(0, 8), rng.randint(0, 4)
            size = [rng.randint(2, 6), rng.randint(2, 6), rng.randint(1, 4)]
            boxes.append([x, y, z, x + size[0], y + size[1], z + size[2]])
        cases.append({"case_id": f"c{i}", "boxes": boxes})
    cands = []
    for _ in range(n_cands):
        case = rng.choice(cases)
        if case["boxes"] and rng.random() < 0.4:  # near a mass: jittered copy
            g = rng.choice(case["boxes"])
            box = [g[0] + rng.randint(-1, 1), g[1] + rng.randint(-1, 1), g[2],
                   g[3] + rng.randint(-1, 1), g[4] + rng.randint(-1, 1), g[5] + rng.randint(0, 1)]
            box[3:] = [max(hi, lo + 1) for lo, hi in zip(box[:3], box[3:])]
        else:
            x, y, z = rng.randint(0, 10), rng.randint(0, 10), rng.randint(0, 5)
            box = [x, y, z, x + rng.randint(1, 6), y + rng.randint(1, 6), z + rng.randint(1, 3)]
        score = rng.random() if continuous else rng.choice([0.1, 0.2, 0.35, 0.5, 0.7, 0.9])
        cands.append(_cand(case["case_id"], box, score))
    return cases, cands


def _brute_hit(c, g, hit, thr):
    if hit == "center":
        return all(g[k] <= (c[k] + c[k + 3]) / 2 < g[k + 3] for k in range(3))
    ov = [max(0, min(c[k + 3], g[k + 3]) - max(c[k], g[k])) for k in range(3)]
    vol = lambda b, dims: math.prod(b[k + 3] - b[k] for k in dims)  # noqa: E731
    dims = (0, 1, 2) if hit == "iou3d" else (0, 1)
    inter = math.prod(ov[k] for k in dims)
    iou = inter / (vol(c, dims) + vol(g, dims) - inter)
    return iou > thr and (hit == "iou3d" or ov[2] > 0)


def _brute_froc(cands, cases, hit, thr, duplicates, rates):
    """Plain-Python reference: returns (curve points, sens_at, threshold_at, interp)."""
    n = len(cases)
    masses = [(c["case_id"], k, g) for c in cases for k, g in enumerate(c["boxes"])]
    hits = [[m for m in masses if m[0] == c["case_id"] and _brute_hit(c["box"], m[2], hit, thr)]
            for c in cands]
    best = {}
    for i, c in enumerate(cands):
        for m in hits[i]:
            key = (m[0], m[1])
            prev = best.get(key)
            rank = lambda j: (-cands[j]["score"], cands[j]["box"])  # noqa: E731
            if prev is None or rank(i) < rank(prev):
                best[key] = i
    if duplicates == "ignore":
        is_fp = [not h for h in hits]
    else:
        chosen = set(best.values())
        is_fp = [i not in chosen for i in range(len(cands))]
    points = []
    for t in sorted({c["score"] for c in cands}, reverse=True):
        fp = sum(1 for i, c in enumerate(cands) if is_fp[i] and c["score"] >= t)
        tp = sum(1 for i in best.values() if cands[i]["score"] >= t)
        points.append((t, fp / n, tp / len(masses) if masses else float("nan")))
    sens_at, thr_at, interp = [], [], []
    for f in rates:
        ok = [p for p in points if p[1] <= f]
        s = max((p[2] for p in ok), default=0.0)
        sens_at.append(s)
        thr_at.append(max(p[0] for p in ok if p[2] == s) if ok and s > 0 else None)
        xs, ys = [0.0], [0.0]
        for _, x, y in points:
            if x == xs[-1]:
                ys[-1] = max(ys[-1], y)
            else:
                xs.append(x)
                ys.append(y)
        if f >= xs[-1]:
            interp.append(ys[-1])
        else:
            j = max(k for k in range(len(xs)) if xs[k] <= f)
            interp.append(ys[j] + (ys[j + 1] - ys[j]) * (f - xs[j]) / (xs[j + 1] - xs[j]))
    if not masses:  # sensitivity undefined
        nan = [float("nan")] * len(rates)
        return points, nan, [None] * len(rates), nan
    return points, sens_at, thr_at, interp


@pytest.mark.parametrize("seed", range(12))
def test_random_against_brute_force(seed):
    rng = random.Random(seed)
    hit = ["iou3d", "iou2d", "center"][seed % 3]
    duplicates = ["ignore", "fp"][seed % 2]
    thr = [0.5, 0.3][seed % 2]
    cases, cands = _random_problem(rng, n_cases=rng.randint(1, 8), n_cands=rng.randint(0, 80))
    r = compute_froc(cands, cases, hit=hit, iou_thresh=thr, duplicates=duplicates, bootstrap=0)
    points, sens_at, thr_at, interp = _brute_froc(cands, cases, hit, thr, duplicates, FP_RATES)
    keys = [f"{f:g}" for f in FP_RATES]
    assert [r["sensitivity_at"][k] for k in keys] == pytest.approx(sens_at, nan_ok=True)
    assert [r["threshold_at"][k] for k in keys] == thr_at
    assert [r["sensitivity_at_interp"][k] for k in keys] == pytest.approx(interp, nan_ok=True)
    _, cpm_sens, _, cpm_interp = _brute_froc(cands, cases, hit, thr, duplicates, CPM_RATES)
    assert r["cpm"] == pytest.approx(np.mean(cpm_sens), nan_ok=True)
    assert r["cpm_interp"] == pytest.approx(np.mean(cpm_interp), nan_ok=True)
    # The stored (compressed) curve is a subset of the full curve and reads the same.
    full = {t: (x, y) for t, x, y in points}
    for t, x, y in zip(*(r["curve"][k] for k in ("thresholds", "fp_per_case", "sensitivity"))):
        np.testing.assert_allclose((x, y), full[t])
    if r["num_lesions"]:
        assert curve_sensitivity(r["curve"], FP_RATES).tolist() == pytest.approx(sens_at)


@pytest.mark.parametrize("continuous", [False, True])
def test_bootstrap_against_brute_force(continuous):
    """Each resample is the data set with cases drawn with replacement (duplicates renamed)."""
    rng = random.Random(7)
    # Many distinct-score false positives for few cases: exercises the truncated (top events
    # first, then doubled) path of the bootstrap.
    cases, cands = _random_problem(rng, n_cases=4, n_cands=400, continuous=continuous)
    resamples, seed = 12, 5
    r = compute_froc(cands, cases, bootstrap=resamples, seed=seed)
    ids = sorted(c["case_id"] for c in cases)
    by_id = {c["case_id"]: c for c in cases}
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(resamples, len(ids)))
    step, interp = [], []
    for row in draws:
        rs_cases, rs_cands = [], []
        for k, idx in enumerate(row):
            name = f"{ids[idx]}#{k}"
            rs_cases.append({"case_id": name, "boxes": by_id[ids[idx]]["boxes"]})
            rs_cands += [dict(c, case_id=name) for c in cands if c["case_id"] == ids[idx]]
        _, s, _, i = _brute_froc(rs_cands, rs_cases, "iou3d", 0.5, "ignore", FP_RATES)
        step.append(s)
        interp.append(i)
    lo, hi = np.nanpercentile(np.array(step, dtype=float), [2.5, 97.5], axis=0)
    got = np.array([r["ci95"]["sensitivity_at"][f"{f:g}"] for f in FP_RATES])
    assert got[:, 0] == pytest.approx(lo) and got[:, 1] == pytest.approx(hi)
    lo, hi = np.nanpercentile(np.array(interp, dtype=float), [2.5, 97.5], axis=0)
    got = np.array([r["ci95"]["sensitivity_at_interp"][f"{f:g}"] for f in FP_RATES])
    assert got[:, 0] == pytest.approx(lo) and got[:, 1] == pytest.approx(hi)


def test_bootstrap_retry_path_is_exact(monkeypatch):
    """Starting from a one-event cut forces every resample through the doubling retries."""
    from breast_d2.evaluation import froc as mod

    cases, cands = _random_problem(random.Random(3), n_cases=5, n_cands=300, continuous=True)
    ref = compute_froc(cands, cases, bootstrap=30, seed=1)
    monkeypatch.setattr(mod, "_initial_cut", lambda ev_fp, fmax: 1)
    assert compute_froc(cands, cases, bootstrap=30, seed=1) == ref


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"iou_thresh": -1.0}, "got -1.0"),
        ({"iou_thresh": float("nan")}, "got nan"),
        ({"iou_thresh": 1.0}, "got 1.0"),
        ({"iou_thresh": "0.5"}, "got '0.5'"),
        ({"iou_thresh": True}, "got True"),
        ({"bootstrap": -5}, "got -5"),
        ({"bootstrap": 2.5}, "got 2.5"),
    ],
)
def test_bad_parameters_name_the_value(kw, needle):
    cases = [{"case_id": "a", "boxes": [CUBE]}]
    with pytest.raises(FROCInputError) as e:
        _froc([_cand("a", [50, 50, 0, 60, 60, 5], 0.9)], cases, **kw)
    assert needle in str(e.value)


def test_negative_iou_would_have_counted_a_distant_fp_as_a_hit():
    """Why the range check matters: IoU 0 > -1, so a box far from the mass would be a hit."""
    cases = [{"case_id": "a", "boxes": [CUBE]}]
    far = [_cand("a", [50, 50, 0, 60, 60, 5], 0.9)]
    assert _froc(far, cases, iou_thresh=0.0)["cpm"] == 0.0  # no overlap: missed


@pytest.mark.parametrize("score", ["0.5", True, None])
def test_non_numeric_scores_and_boxes_are_refused(score):
    cases = [{"case_id": "a", "boxes": [CUBE]}]
    with pytest.raises(FROCInputError, match="candidate #0 \\(case 'a'\\): score"):
        _froc([_cand("a", CUBE, score)], cases)
    with pytest.raises(FROCInputError, match="box value '1' is not a number"):
        _froc([_cand("a", [0, 0, 0, "1", 1, 1], 0.5)], cases)
    with pytest.raises(FROCInputError, match="has no 'boxes'"):
        _froc([], [{"case_id": "a"}])


def test_slice_detection_scores_must_be_numbers():
    from breast_d2.evaluation.candidates import merge_slice_detections

    det = {"case_id": "a", "slice": 0, "box": [0, 0, 4, 4], "score": 0.5}
    assert len(merge_slice_detections([det])) == 1
    for key, value in (("score", "0.5"), ("score", False), ("slice", True)):
        with pytest.raises(FROCInputError, match=f"detection #0 \\(case 'a'\\): {key}"):
            merge_slice_detections([dict(det, **{key: value})])
