"""Tests of the synthetic DCE-MRI phantom (breast_d2.data.phantom and tools/make_phantom.py)."""
import csv
import filecmp
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from breast_d2.data import phantom as ph
from helpers import load_tool, tool_path

TINY = {"matrix": 128, "slices": 32}  # the realistic low-resolution setting
FAST = {"matrix": 96, "slices": 16}


@pytest.fixture(scope="module")
def cohort():
    """A 6-case 128 x 128 x 32 cohort written once for the file-level tests."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "phantom")
        summary = ph.write_cohort(out, 6, seed=3, **TINY)
        yield out, summary


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def _files(root):
    return sorted(
        os.path.relpath(os.path.join(dp, f), root) for dp, _, fs in os.walk(root) for f in fs
    )


def _case_with_lesions(min_lesions=1, **kw):
    for index in range(20):
        case = ph.make_case(index, seed=11, **kw)
        if len(case.lesions) >= min_lesions:
            return case
    raise AssertionError("no case with masses in 20 tries")


def test_same_seed_same_bytes_and_workers_independent():
    with tempfile.TemporaryDirectory() as d:
        a, b, c = (os.path.join(d, n) for n in "abc")
        ph.write_cohort(a, 3, seed=5, **FAST)
        ph.write_cohort(b, 3, seed=5, workers=2, **FAST)
        ph.write_cohort(c, 3, seed=6, **FAST)
        files = _files(a)
        assert files == _files(b) and len(files) == 3 * 12 + 3  # per case 11 NIfTI + record
        for f in files:
            assert filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False), f
        img = os.path.join("IMAGES", "PH0000", "PH0000_0001.nii.gz")
        assert not filecmp.cmp(os.path.join(a, img), os.path.join(c, img), shallow=False)


def test_layout_spacing_and_json(cohort):
    out, summary = cohort
    assert summary.num_cases == 6 and summary.generated == 6
    meta = json.load(open(os.path.join(out, "phantom.json")))
    assert meta["seed"] == 3 and meta["version"] == ph.GENERATOR_VERSION
    assert meta["phase_times_s"] == [75.0 * p for p in range(9)]
    assert [c["case_id"] for c in meta["cases"]] == [f"PH{i:04d}" for i in range(6)]
    spacing = (320 / 128, 320 / 128, 134.4 / 32)
    for case in meta["cases"]:
        cid = case["case_id"]
        paths = [os.path.join(out, "IMAGES", cid, f"{cid}_{p:04d}.nii.gz") for p in range(9)]
        paths += [os.path.join(out, d, f"{cid}.nii.gz") for d in ("MASKS", "LABELS")]
        for i, path in enumerate(paths):
            img = sitk.ReadImage(path)
            assert img.GetSize() == (128, 128, 32)
            np.testing.assert_allclose(img.GetSpacing(), spacing, rtol=1e-6)
            np.testing.assert_allclose(img.GetOrigin(), meta["origin"], atol=1e-4)
            assert img.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
            want = sitk.sitkInt16 if i < 9 else sitk.sitkUInt8
            assert img.GetPixelID() == want, path
    pre = _read(os.path.join(out, "IMAGES", "PH0000", "PH0000_0000.nii.gz"))
    assert 0 <= pre.min() and 200 < np.percentile(pre, 99.5) < 2000


def test_masses_inside_breast_mask(cohort):
    out, _ = cohort
    meta = json.load(open(os.path.join(out, "phantom.json")))
    for case in meta["cases"]:
        cid = case["case_id"]
        labels = _read(os.path.join(out, "LABELS", f"{cid}.nii.gz"))
        mask = _read(os.path.join(out, "MASKS", f"{cid}.nii.gz"))
        assert set(np.unique(mask)) <= {0, 1} and mask.sum() > 0
        assert np.all(mask[labels > 0] == 1), cid
        # Each lesion is one connected component with its own value (the converter relies on it).
        assert ndimage.label(labels > 0)[1] == case["num_lesions"]
        assert sorted(np.unique(labels[labels > 0])) == list(range(1, case["num_lesions"] + 1))
        for lesion in case["lesions"]:
            assert 10.7 <= lesion["diameter_mm"] <= 66.9


def test_boxes_csv_matches_label_extents(cohort):
    out, _ = cohort
    meta = json.load(open(os.path.join(out, "phantom.json")))
    with open(os.path.join(out, "boxes.csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == ph.BOXES_CSV_HEADER
    by_case = {}
    for r in rows[1:]:
        by_case.setdefault(r[0], []).append([int(v) for v in r[1:]])
    for case in meta["cases"]:
        cid = case["case_id"]
        labels = _read(os.path.join(out, "LABELS", f"{cid}.nii.gz"))
        expected = []
        for i in range(1, case["num_lesions"] + 1):
            z, y, x = np.nonzero(labels == i)  # 1-based inclusive, rows=y, columns=x, slices=z
            row = [y.min() + 1, y.max() + 1, x.min() + 1, x.max() + 1, z.min() + 1, z.max() + 1]
            expected.append(row)
        assert by_case.get(cid, []) == expected, cid
        for (r0, r1, c0, c1, s0, s1), lesion in zip(expected, case["lesions"]):
            assert lesion["box"] == [c0 - 1, r0 - 1, s0 - 1, c1, r1, s1]  # DATA_FORMAT round trip
    assert all(cid in {c["case_id"] for c in meta["cases"] if c["num_lesions"]} for cid in by_case)


def test_label_boxes_half_open():
    labels = np.zeros((5, 6, 7), np.uint8)
    labels[1:3, 2:5, 4:6] = 1
    labels[4, 0, 0] = 2
    assert ph.label_boxes(labels) == {1: (4, 2, 1, 6, 5, 3), 2: (0, 0, 4, 1, 1, 5)}


def test_enhancement_kinetics_and_distractors():
    case = _case_with_lesions(**TINY)
    pre, post1, last = case.phases[0], case.phases[1], case.phases[-1]
    sub = post1 - pre
    for lesion in case.lesions:
        m = case.lesion_labels == lesion.label
        peak = max(case.phases[1][m].mean(), case.phases[2][m].mean())  # early peak (<= 150 s)
        change = (last[m].mean() - peak) / (peak - pre[m].mean())
        if lesion.kinetics["curve_type"] == "I":  # persistent (mostly benign): still rising
            assert change > 0.05
            continue
        assert post1[m].mean() > 1.8 * pre[m].mean()  # fast wash-in
        if lesion.kinetics["curve_type"] == "III":
            assert change < -0.1  # wash-out
        else:
            assert abs(change) < 0.15  # plateau
    fgt = (case.tissue == ph.FGT) & (case.breast_mask > 0)
    assert (last - pre)[fgt].mean() > 2 * sub[fgt].mean()  # background: slow, persistent
    # A naive threshold on the subtraction finds mass-like candidates outside the breast.
    lesion_sub = np.median(sub[case.lesion_labels > 0])
    outside = (sub > 0.5 * lesion_sub) & (case.breast_mask == 0)
    comps, n = ndimage.label(ndimage.binary_opening(outside))
    assert n >= 3
    blood = (case.tissue == ph.BLOOD) & (case.breast_mask == 0)
    assert np.median(sub[blood]) > 0.6 * lesion_sub  # heart and vessels: as bright as masses
    nodes = case.tissue == ph.NODE
    assert nodes.any() and not np.any(case.breast_mask[nodes])
    assert np.median(sub[nodes]) > 0.5 * lesion_sub


def test_cohort_has_cases_without_masses():
    counts = [len(ph.make_case(i, seed=7, matrix=64, slices=16).lesions) for i in range(24)]
    assert max(counts) <= 3 and any(c >= 2 for c in counts)
    assert 1 <= counts.count(0) <= 10, counts


def test_low_resolution_keeps_physical_anatomy():
    lo = ph.make_case(2, seed=4, matrix=64, slices=16)
    hi = ph.make_case(2, seed=4, **TINY)
    assert hi.spacing == pytest.approx((2.5, 2.5, 4.2)) and lo.spacing == pytest.approx((5, 5, 8.4))
    vol = [c.breast_mask.sum() * np.prod(c.spacing) for c in (lo, hi)]
    assert vol[0] == pytest.approx(vol[1], rel=0.15)
    assert lo.info["breasts"] == hi.info["breasts"]


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="matrix"):
        ph.make_case(0, 0, matrix=32)
    with pytest.raises(ValueError, match="num_cases"):
        ph.write_cohort("/nonexistent/never", 0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        ph.make_case(0, -1)


def test_resume_skips_finished_cases_and_rejects_other_parameters():
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "c")
        ph.write_cohort(out, 3, seed=1, **FAST)
        kept = os.path.join(out, "MASKS", "PH0000.nii.gz")
        mtime = os.stat(kept).st_mtime_ns
        redo = os.path.join(out, "IMAGES", "PH0001", "PH0001_0004.nii.gz")
        before = open(redo, "rb").read()
        os.remove(redo)  # an interrupted case: regenerated
        seen = []
        summary = ph.write_cohort(out, 3, seed=1, progress=lambda c, g: seen.append((c, g)), **FAST)
        assert sorted(seen) == [("PH0000", False), ("PH0001", True), ("PH0002", False)]
        assert summary.generated == 1 and summary.skipped == 2
        assert os.stat(kept).st_mtime_ns == mtime and open(redo, "rb").read() == before
        assert not os.path.exists(os.path.join(out, ".phantom", "tmp"))
        with pytest.raises(ValueError, match="other parameters: seed=1"):
            ph.write_cohort(out, 3, seed=2, **FAST)


def test_cli_exit_code_and_one_line_errors(capsys):
    with tempfile.TemporaryDirectory() as d:
        # One real process: the shell sees exit code 2 and a single error line, no traceback.
        cmd = [sys.executable, tool_path("make_phantom")]
        cmd += ["--out", os.path.join(d, "x"), "--cases", "0"]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert res.returncode == 2 and len(errors) == 1 and "num_cases" in errors[0], res.stderr
        assert "Traceback" not in res.stderr
        cli = load_tool("make_phantom")
        assert cli.main(["--out", os.path.join(d, "x"), "--cases", "2", "--matrix", "32"]) == 2
        with pytest.raises(SystemExit) as exc:
            cli.main(["--out", os.path.join(d, "x"), "--cases", "two"])
        assert exc.value.code == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2 and "matrix" in err[0] and "--cases" in err[1]
        assert all(line.startswith("error: ") for line in err)
        assert not os.path.exists(os.path.join(d, "x"))
        out = os.path.join(d, "ok")
        assert cli.main(["--out", out, "--cases", "1", "--matrix", "64", "--slices", "16"]) == 0
        assert capsys.readouterr().out.strip().count("\n") == 0
        assert cli.main(["--out", out, "--cases", "1", "--matrix", "64", "--slices", "32"]) == 2
        assert "other parameters: slices=16" in capsys.readouterr().err
