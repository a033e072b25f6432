"""tools/froc.py: single run, --splits/--fold, --folds aggregate, one-line errors (in-process)."""
import json
import os
import tempfile

import pytest

from helpers import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("froc")


@pytest.fixture
def data():
    cases = [{"case_id": f"P{i}", "boxes": [[10, 10, 2, 30, 30, 8]] if i % 3 else []}
             for i in range(6)]
    cands = []
    for i in range(6):
        cands.append({"case_id": f"P{i}", "box": [10, 10, 2, 30, 30, 8], "score": 0.5 + i / 20,
                      "slices": 6})
        cands.append({"case_id": f"P{i}", "box": [50, 50, 0, 60, 60, 2], "score": 0.3 + i / 50,
                      "slices": 2})
    splits = {"num_folds": 2, "seed": 0, "folds": [
        {"fold": 0, "train": ["P3", "P4", "P5"], "val": ["P0", "P1", "P2"]},
        {"fold": 1, "train": ["P0", "P1", "P2"], "val": ["P3", "P4", "P5"]}]}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, obj in (("cases", {"cases": cases}), ("splits", splits)):
            paths[name] = os.path.join(tmp, f"{name}.json")
            with open(paths[name], "w") as f:
                json.dump(obj, f)
        for k in range(2):  # per-fold candidates, as each fold's evaluator would write them
            val = splits["folds"][k]["val"]
            paths[f"cands{k}"] = os.path.join(tmp, f"cands{k}.json")
            with open(paths[f"cands{k}"], "w") as f:
                json.dump([c for c in cands if c["case_id"] in val], f)
        paths["all"] = os.path.join(tmp, "all.json")
        with open(paths["all"], "w") as f:
            json.dump(cands, f)
        paths["tmp"] = tmp
        yield paths


def _rows(table):
    """Cells of each markdown table row (format-agnostic: padding and alignment ignored)."""
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in table.splitlines() if line.startswith("|")]


def _error_line(capsys):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_single_run(tool, data, capsys):
    out = os.path.join(data["tmp"], "out")
    rc = tool.main(["--candidates", data["all"], "--ground-truth", data["cases"], "--out", out,
                    "--bootstrap", "20"])
    table = capsys.readouterr().out
    assert rc == 0 and "3.4" in [r[0] for r in _rows(table)] and "CPM" in table
    assert sorted(os.listdir(out)) == ["froc.csv", "froc.json", "froc.png"]
    with open(os.path.join(out, "froc.json")) as f:
        res = json.load(f)
    assert res["num_cases"] == 6 and res["num_lesions"] == 4
    assert res["inputs"]["ground_truth"] == os.path.abspath(data["cases"])
    assert res["ci95"]["sensitivity_at"]["3.4"] is not None


def test_split_restricts_cases_and_folds_aggregate(tool, data, capsys):
    dirs = []
    for k in range(2):
        dirs.append(os.path.join(data["tmp"], f"fold{k}"))
        rc = tool.main(["--candidates", data[f"cands{k}"], "--ground-truth", data["cases"],
                        "--splits", data["splits"], "--fold", str(k), "--out", dirs[-1],
                        "--bootstrap", "10", "--hit", "center"])
        assert rc == 0
        with open(os.path.join(dirs[-1], "froc.json")) as f:
            assert json.load(f)["num_cases"] == 3
    capsys.readouterr()
    agg_dir = os.path.join(data["tmp"], "agg")
    rc = tool.main(["--folds", *dirs, "--out", agg_dir, "--bootstrap", "10"])
    table = capsys.readouterr().out
    rows = _rows(table)
    assert rc == 0 and "mean ± sd" in table and ["pooled", "6", "4"] in [r[:3] for r in rows]
    assert ["fold0", "3", "2"] in [r[:3] for r in rows]
    assert sorted(os.listdir(agg_dir)) == ["froc_folds.json", "froc_folds.md", "froc_folds.png"]
    with open(os.path.join(agg_dir, "froc_folds.json")) as f:
        agg = json.load(f)
    assert agg["pooled"]["num_cases"] == 6 and agg["pooled"]["params"]["hit"] == "center"
    assert len(agg["mean_curve"]["sensitivity"]) == len(agg["mean_curve"]["fp_per_case"])
    # The same fold twice: a case would be counted twice in the pooled FROC.
    assert tool.main(["--folds", dirs[0], dirs[0], "--out", agg_dir]) == 2
    assert "evaluated in both" in _error_line(capsys)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--candidates", "missing.json"], "missing.json"),
        (["--candidates", "{bad}"], "candidate #1 (case 'P0')"),
        (["--candidates", "{stray}"], "case 'nobody'"),
        (["--candidates", "{all}", "--splits", "{splits}", "--fold", "7"], "no fold 7"),
        (["--candidates", "{all}", "--splits", "{splits}", "--fold", "0"], "case 'P3'"),
    ],
)
def test_bad_input_one_line_exit_2(tool, data, capsys, args, needle):
    with open(os.path.join(data["tmp"], "bad.json"), "w") as f:
        json.dump([{"case_id": "P0", "box": [0, 0, 0, 1, 1, 1], "score": 0.5},
                   {"case_id": "P0", "box": [5, 0, 0, 1, 1, 1], "score": 0.5}], f)
    with open(os.path.join(data["tmp"], "stray.json"), "w") as f:
        json.dump([{"case_id": "nobody", "box": [0, 0, 0, 1, 1, 1], "score": 0.5}], f)
    paths = dict(data, bad=os.path.join(data["tmp"], "bad.json"),
                 stray=os.path.join(data["tmp"], "stray.json"))
    args = [a.format(**paths) for a in args]
    out = os.path.join(data["tmp"], "out")
    rc = tool.main(args + ["--ground-truth", data["cases"], "--out", out, "--bootstrap", "0"])
    assert rc == 2
    assert needle in _error_line(capsys)


def test_argparse_errors_are_one_line(tool, capsys):
    with pytest.raises(SystemExit) as e:
        tool.main(["--out", "x", "--hit", "nope"])
    assert e.value.code == 2
    _error_line(capsys)


def _write(data, name, obj):
    path = os.path.join(data["tmp"], name)
    with open(path, "w") as f:
        json.dump(obj, f)
    return path


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--iou", "-1"], "got -1.0"),  # would count every FP as a hit
        (["--iou", "nan"], "got nan"),
        (["--iou", "1.5"], "got 1.5"),
        (["--iou", "1"], "0 <= t < 1"),  # IoU > 1 can never happen
        (["--bootstrap", "-5"], "--bootstrap) must be an integer >= 0, got -5"),
    ],
)
def test_bad_parameters_are_refused(tool, data, capsys, extra, needle):
    out = os.path.join(data["tmp"], "out_params")
    rc = tool.main(["--candidates", data["all"], "--ground-truth", data["cases"], "--out", out]
                   + extra)
    assert rc == 2 and needle in _error_line(capsys)
    assert not os.path.exists(os.path.join(out, "froc.json"))


def test_iou_zero_means_any_overlap(tool, data, capsys):
    out = os.path.join(data["tmp"], "out_zero")
    assert tool.main(["--candidates", data["all"], "--ground-truth", data["cases"], "--out", out,
                      "--iou", "0", "--bootstrap", "0"]) == 0


@pytest.mark.parametrize(
    "score, needle",
    [("0.5", "score '0.5' is not a number"), (True, "score True is not a number")],
)
def test_scores_must_be_numbers(tool, data, capsys, score, needle):
    cands = [{"case_id": "P1", "box": [10, 10, 2, 30, 30, 8], "score": 0.9},
             {"case_id": "P1", "box": [10, 10, 2, 30, 30, 8], "score": score}]
    path = _write(data, "typed.json", cands)
    rc = tool.main(["--candidates", path, "--ground-truth", data["cases"], "--out",
                    os.path.join(data["tmp"], "o"), "--bootstrap", "0"])
    assert rc == 2
    err = _error_line(capsys)
    assert needle in err and "candidate #1 (case 'P1')" in err


def test_ground_truth_case_without_boxes_is_an_error(tool, data, capsys):
    gt = _write(data, "gt_noboxes.json", {"cases": [{"case_id": "P0", "boxes": []},
                                                    {"case_id": "P1"}]})
    cands = _write(data, "c.json", [{"case_id": "P1", "box": [0, 0, 0, 4, 4, 4], "score": 0.5}])
    rc = tool.main(["--candidates", cands, "--ground-truth", gt, "--out",
                    os.path.join(data["tmp"], "o"), "--bootstrap", "0"])
    assert rc == 2 and "case 'P1' has no 'boxes'" in _error_line(capsys)
    gt = _write(data, "gt_strbox.json", {"cases": [{"case_id": "P1",
                                                    "boxes": [[0, 0, 0, "4", 4, 4]]}]})
    rc = tool.main(["--candidates", cands, "--ground-truth", gt, "--out",
                    os.path.join(data["tmp"], "o"), "--bootstrap", "0"])
    assert rc == 2 and "case 'P1'" in _error_line(capsys)


@pytest.mark.parametrize(
    "splits, needle",
    [
        ([1, 2], "expected an object with a \"folds\" list"),
        ({"folds": [{"fold": 0, "val": ["P0"]}]}, "folds[0]: 'train' must be a list"),
        ({"folds": [{"fold": "0", "train": [], "val": []}]}, "'fold' must be an integer"),
        ({"folds": [{"fold": 0, "train": [], "val": ["../evil"]}]}, "not a plain file name"),
        ("{not json", "not valid JSON"),
    ],
)
def test_malformed_splits_are_one_line(tool, data, capsys, splits, needle):
    path = os.path.join(data["tmp"], "bad_splits.json")
    with open(path, "w") as f:
        f.write(splits if isinstance(splits, str) else json.dumps(splits))
    rc = tool.main(["--candidates", data["all"], "--ground-truth", data["cases"], "--splits",
                    path, "--fold", "0", "--out", os.path.join(data["tmp"], "o")])
    assert rc == 2
    err = _error_line(capsys)
    assert needle in err and path in err
