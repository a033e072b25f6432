"""benchmarks/misses_by_kinetics.py: detector misses and box misses by curve type."""
import json
import os

import pytest
from helpers import load_tool


def _load():
    return load_tool("misses_by_kinetics", "benchmarks")


def _lesion(curve, box, ratio=8.0):
    return {"kinetics": {"curve_type": curve}, "box": box, "diameter_mm": 12.0,
            "lesion_to_parenchyma_post1": ratio}


def _write(folder, name, obj):
    with open(os.path.join(folder, name), "w") as f:
        json.dump(obj, f)


@pytest.fixture()
def run_folder(tmp_path):
    phantom = {"cases": [
        {"case_id": "A", "lesions": [_lesion("I", [10, 10, 2, 16, 16, 6]),
                                     _lesion("III", [40, 40, 3, 48, 48, 7], ratio=2.0)]},
        {"case_id": "B", "lesions": [_lesion("I", [20, 20, 1, 26, 26, 4], ratio=4.0)]},
        {"case_id": "C", "lesions": [_lesion("II", [5, 5, 5, 9, 9, 9])]},  # not validated
    ]}
    _write(tmp_path, "phantom.json", phantom)
    fold = tmp_path / "fold0"
    fold.mkdir()
    _write(fold, "froc.json", {"case_ids": ["A", "B"]})
    _write(fold, "candidates.json", [
        {"case_id": "A", "box": [10, 10, 2, 16, 16, 6], "score": 0.9},  # hits A's type I mass
        {"case_id": "A", "box": [40, 40, 3, 44, 44, 5], "score": 0.8},  # too small for A's III
        {"case_id": "B", "box": [20, 20, 1, 26, 26, 4], "score": 0.1},  # hits B's, low score
    ])
    _write(fold, "detections.json", [
        {"case_id": "A", "slice": 3, "box": [9, 9, 17, 17], "score": 0.95},
        {"case_id": "A", "slice": 4, "box": [39, 39, 49, 49], "score": 0.7},
        {"case_id": "A", "slice": 9, "box": [9, 9, 17, 17], "score": 0.95},  # off the masses
        {"case_id": "B", "slice": 2, "box": [19, 19, 27, 27], "score": 0.3},  # below min score
    ])
    return tmp_path


def test_counts_seen_and_hit_by_curve_type(run_folder):
    tool = _load()
    with open(run_folder / "phantom.json") as f:
        lesions = {c["case_id"]: c["lesions"] for c in json.load(f)["cases"]}
    counts, not_seen = tool.run_counts([str(run_folder / "fold0")], lesions, min_score=0.5)
    assert dict(counts) == {"I": [2, 1, 2], "III": [1, 1, 0]}
    assert [(cid, curve) for cid, curve, _, _ in not_seen] == [("B", "I")]
    counts, _ = tool.run_counts([str(run_folder / "fold0")], lesions, min_score=0.25)
    assert counts["I"] == [2, 2, 2]


def test_main_prints_the_table_and_names_a_bad_glob(run_folder, capsys):
    tool = _load()
    phantom = str(run_folder / "phantom.json")
    tool.main(["--phantom", phantom, "--run", f"x={run_folder}/fold*", "--list"])
    out = capsys.readouterr().out
    assert "x: not seen B type I" in out and "| x     | III" in out
    with pytest.raises(SystemExit):
        tool.main(["--phantom", phantom, "--run", f"x={run_folder}/nothing*"])
    assert "nothing*: no folder with froc.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--phantom", phantom, "--run", f"{run_folder}/fold*"])
    assert "--run must be NAME=GLOB" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--phantom", str(run_folder / "missing.json"), "--run", f"x={run_folder}/fold*"])
    assert "missing.json" in capsys.readouterr().err


def test_a_matched_folder_without_froc_json_is_named(run_folder, capsys, caplog):
    (run_folder / "fold9").mkdir()  # matched by the glob, holds nothing
    _load().main(["--phantom", str(run_folder / "phantom.json"), "--run", f"x={run_folder}/fold*"])
    assert "| x     | III" in capsys.readouterr().out
    assert f"{run_folder / 'fold9'}: no froc.json, left out of {run_folder}/fold*" in caplog.text


def test_groups_by_contrast_band(run_folder, capsys):
    tool = _load()
    phantom = str(run_folder / "phantom.json")
    tool.main(["--phantom", phantom, "--run", f"x={run_folder}/fold*", "--by", "contrast"])
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in capsys.readouterr().out.splitlines()[2:]]
    assert rows == [["x", "< 3", "1", "1 (1.00)", "0 (0.00)"],  # in band order, not by text
                    ["x", "3-6", "1", "0 (0.00)", "1 (1.00)"],
                    ["x", ">= 6", "1", "1 (1.00)", "1 (1.00)"]]


def test_contrast_bands_need_the_phantoms_ratio(run_folder, capsys):
    with open(run_folder / "phantom.json") as f:
        phantom = json.load(f)
    del phantom["cases"][0]["lesions"][0]["lesion_to_parenchyma_post1"]
    _write(run_folder, "old_phantom.json", phantom)
    with pytest.raises(SystemExit):
        _load().main(["--phantom", str(run_folder / "old_phantom.json"), "--run",
                      f"x={run_folder}/fold*", "--by", "contrast"])
    err = capsys.readouterr().err
    assert "needs lesion_to_parenchyma_post1" in err and len(err.strip().splitlines()) == 1
