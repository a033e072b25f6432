"""benchmarks/ablation_table.py: one row per run, the paired CPM difference against the first."""
import json

import pytest
from helpers import load_tool


def _load():
    return load_tool("ablation_table", "benchmarks")


def _write(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)


def _run(root, name, found, cases_by_fold):
    """A run's fold folders; ``found``: does the case have a candidate on its mass (else none)?"""
    for fold, case_ids in enumerate(cases_by_fold):
        d = root / name / f"fold{fold}"
        d.mkdir(parents=True)
        sens = sum(found[c] for c in case_ids) / len(case_ids)
        _write(d / "froc.json", {"case_ids": case_ids, "cpm": sens,
                                 "sensitivity_at": {"1": sens, "3.4": sens}})  # fmt: skip
        _write(d / "candidates.json", [{"case_id": c, "box": [10, 10, 2, 20, 20, 6], "score": 0.9}
                                       for c in case_ids if found[c]])  # fmt: skip
    return str(root / name / "fold*")


@pytest.fixture()
def runs(tmp_path):
    ids = [f"P{i}" for i in range(8)]
    _write(tmp_path / "cases.json",
           {"cases": [{"case_id": c, "boxes": [[10, 10, 2, 20, 20, 6]]} for c in ids]})
    folds = [ids[:4], ids[4:]]
    base = _run(tmp_path, "base", {c: i % 2 == 0 for i, c in enumerate(ids)}, folds)
    better = _run(tmp_path, "better", {c: True for c in ids}, folds)
    return tmp_path, base, better


def test_rows_and_paired_difference(runs, capsys):
    root, base, better = runs
    out = root / "table.md"
    tool = _load()
    assert tool.main(["--ground-truth", str(root / "cases.json"), "--bootstrap", "200",
                      "--run", f"base={base}", "--run", f"better={better}",
                      "--out", str(out)]) == 0  # fmt: skip
    text = out.read_text()
    assert text == capsys.readouterr().out
    base_row, better_row = [line for line in text.splitlines() if line.startswith("| b")]
    assert "(baseline)" in base_row and "0.500 ± 0.000" in base_row
    # Half the masses found before, all of them after, no false positives: CPM +0.5, and every
    # resample gains (its interval lies above 0).
    assert "1.000 ± 0.000" in better_row and "| +0.500 " in better_row
    low, high = (float(v) for v in better_row.rstrip(" |").rsplit("|", 1)[1].split(" to "))
    assert 0 < low <= 0.5 <= high < 1


def test_bad_specs_fail_with_one_line(runs, capsys):
    root, base, _ = runs
    tool = _load()
    gt = str(root / "cases.json")
    for spec, message in [(base, "--run must be NAME=GLOB"),
                          (f"x={root}/none*", "none*: no folder with froc.json")]:  # fmt: skip
        with pytest.raises(SystemExit):
            tool.main(["--ground-truth", gt, "--run", spec])
        assert message in capsys.readouterr().err
    (root / "other").mkdir()
    other = _run(root / "other", "r", {"P0": True, "P1": True}, [["P0", "P1"]])
    with pytest.raises(SystemExit):
        tool.main(["--ground-truth", gt, "--run", f"base={base}", "--run", f"r={other}"])
    assert "r: evaluated on other cases than base" in capsys.readouterr().err
