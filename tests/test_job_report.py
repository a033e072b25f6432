"""breast_d2.job_report: the demo / cross-validation REPORT.md, its tables, figure and overlays."""
import json
import os

from breast_d2.evaluation.froc import compute_froc, load_cases_json, save_froc
from breast_d2.job_report import write_report
from helpers import make_toy_converted


def _cells(markdown):
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in markdown.splitlines() if line.startswith("|")]


def test_write_report_tables_figure_and_overlay(tmp_path):
    data = tmp_path / "data"
    make_toy_converted(str(data), num_cases=2, num_slices=4, height=32, width=32)
    cases = json.loads((data / "cases.json").read_text())
    cases["cases"][0]["boxes"] = [[4, 4, 1, 12, 12, 3]]
    (data / "cases.json").write_text(json.dumps(cases))
    cands = [{"case_id": "TOY0000", "box": [4, 4, 1, 12, 12, 3], "score": 0.9, "slices": 2},
             {"case_id": "TOY0001", "box": [0, 0, 0, 5, 5, 2], "score": 0.4, "slices": 2}]
    res = compute_froc(cands, load_cases_json(str(data / "cases.json")), bootstrap=20)
    run = tmp_path / "run"
    run.mkdir()
    save_froc(res, str(run), candidates=cands, plot=False)
    out = tmp_path / "report"
    out.mkdir()
    path = write_report(str(out / "REPORT.md"), "Toy report", {"masked": str(run)}, str(data),
                        step_times={"train": 12.4})
    rows = _cells(open(path).read())
    header = rows[0]
    assert header[:3] == ["run", "cases", "masses"]
    assert header[-3:] == ["CPM (step)", "CPM (interp.)", "95% CI sens@3.4"]
    masked = rows[2]
    assert masked[:3] == ["masked", "2", "1"]
    assert masked[header.index("sens@3.4")] == "1.000"
    assert masked[header.index("CPM (step)")] == "1.000"
    assert masked[header.index("CPM (interp.)")] == "1.000"
    # Size bands: the toy spacing is 0.7 x 0.7 x 2 mm, the 8 x 8 x 2 voxel mass is 5.6 mm.
    sizes = rows[rows.index(["run", "<10 mm", "10-20 mm", "20-50 mm", ">50 mm"]) + 2]
    assert sizes == ["masked", "1.000 (1)", "n/a (0)", "n/a (0)", "n/a (0)"]
    assert ["train", "12"] in rows
    assert sorted(os.listdir(out)) == ["REPORT.md", "froc_runs.png", "overlay_TOY0000.png"]


def test_write_report_paired_comparison(tmp_path):
    """A run that finds the mass against one that only has a false positive: CPM 1 - 0."""
    data = tmp_path / "data"
    make_toy_converted(str(data), num_cases=3, num_slices=4, height=32, width=32)
    cases = json.loads((data / "cases.json").read_text())
    for case in cases["cases"]:
        case["boxes"] = [[4, 4, 1, 12, 12, 3]]
    (data / "cases.json").write_text(json.dumps(cases))
    gt = load_cases_json(str(data / "cases.json"))
    runs = {}
    for name, box in (("hit", [4, 4, 1, 12, 12, 3]), ("miss", [20, 20, 0, 28, 28, 2])):
        cands = [{"case_id": c["case_id"], "box": box, "score": 0.9, "slices": 2} for c in gt]
        res = compute_froc(cands, gt, bootstrap=0)
        res["inputs"] = {"ground_truth": str(data / "cases.json")}
        run = tmp_path / name
        run.mkdir()
        save_froc(res, str(run), candidates=cands, plot=False)
        runs[name] = str(run)
    out = tmp_path / "report"
    out.mkdir()
    path = write_report(str(out / "REPORT.md"), "Toy", runs, str(data),
                        pairs=[("hit", "miss"), ("miss", "hit")])
    rows = _cells(open(path).read())
    head = rows.index(["A - B", "CPM (step)", "95% CI", "CPM (interp.)", "95% CI (interp.)"])
    assert rows[head + 2][:3] == ["hit - miss", "+1.000", "+1.000 to +1.000"]
    assert rows[head + 3][:2] == ["miss - hit", "-1.000"]
