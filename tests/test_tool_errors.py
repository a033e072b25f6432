"""Every tool turns bad input into one ``error: ...`` line on stderr and exit code 2 (no
traceback), before doing any work, and nothing is written outside its output folders."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from breast_d2.data.converted import read_fold
from breast_d2.segmentation import build_model
from helpers import QUICK, REPO, load_tool, make_toy_converted, tool_env, tool_path

TINY = dict(encoder_depth=3, decoder_channels=[16, 8, 8])


def _fails(entry, argv, capsys):
    """Run ``entry(argv)``; assert exit code 2 and one ``error:`` line; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        entry(list(map(str, argv)))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _main_fails(entry, argv, capsys):
    """For tools whose main() returns the exit code or calls fail()."""
    def run(args):
        code = entry(args)
        raise SystemExit(code)
    return _fails(run, argv, capsys)


@pytest.fixture
def fake_data(tmp_path):
    """A converted folder just complete enough for train_net's setup (no images)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "splits.json").write_text(json.dumps(
        {"num_folds": 1, "seed": 0, "folds": [{"fold": 0, "train": ["A"], "val": ["B"]}]}))
    (data / "cases.json").write_text(json.dumps({"cases": []}))
    for split in ("train", "val"):
        (data / f"fold0_{split}.json").write_text(
            json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "m"}]}))
    return str(data)


# ----------------------------------------------------------------------------- train_net.py


@pytest.fixture(scope="module")
def train_net():
    return load_tool("train_net")


def _train_argv(fake_data, tmp_path, *extra):
    return ["--config-file", QUICK, "--fold", "0", "--data", fake_data, *extra, "OUTPUT_DIR",
            str(tmp_path / "out"), "INPUT.BREAST_MASK.ENABLED", "False"]


def test_train_net_config_errors(train_net, fake_data, tmp_path, capsys):
    line = _fails(train_net.cli, _train_argv(fake_data, tmp_path, "SOLVER.NOPE", "1"), capsys)
    assert "Non-existent key: SOLVER.NOPE" in line
    line = _fails(train_net.cli, _train_argv(fake_data, tmp_path, "SOLVER.MAX_ITER", "x"), capsys)
    assert "SOLVER.MAX_ITER" in line
    missing = str(tmp_path / "missing.yaml")
    line = _fails(train_net.cli, ["--config-file", missing, "--data", fake_data], capsys)
    assert line == f"error: config file not found: {missing}"


def test_train_net_unsafe_config_does_not_run(train_net, fake_data, tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"_BASE_: {QUICK}\nSEED: !!python/object/apply:os.system ['touch {marker}']\n")
    line = _fails(train_net.cli, ["--config-file", evil, "--data", fake_data], capsys)
    assert "unsafe YAML tag" in line and not marker.exists()


def test_eval_only_refuses_empty_missing_and_garbage_weights(train_net, fake_data, tmp_path,
                                                             capsys):
    inference = tmp_path / "out" / "fold0" / "inference"
    line = _fails(train_net.cli, _train_argv(fake_data, tmp_path, "--eval-only"), capsys)
    assert "--eval-only needs trained weights" in line
    missing = tmp_path / "nope.pth"
    line = _fails(train_net.cli, _train_argv(fake_data, tmp_path, "--eval-only", "MODEL.WEIGHTS",
                                             missing), capsys)
    assert f"MODEL.WEIGHTS file not found: {missing}" in line
    for name in ("garbage.pth", "garbage.pkl"):
        garbage = tmp_path / name
        garbage.write_bytes(b"\x80\x04garbage, not weights")
        line = _fails(train_net.cli, _train_argv(fake_data, tmp_path, "--eval-only",
                                                 "MODEL.WEIGHTS", garbage), capsys)
        assert str(garbage) in line and "not a loadable" in line
    assert not inference.exists()  # no froc.json from a random model


def test_eval_only_refuses_a_pickle_payload(train_net, fake_data, tmp_path, capsys):
    import pickle

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "R-101.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"model": {"w": Payload()}, "__author__": "x"}, f)
    line = _fails(train_net.cli, _train_argv(fake_data, tmp_path, "--eval-only", "MODEL.WEIGHTS",
                                             evil), capsys)
    assert "refusing to load io.open" in line and not marker.exists()


# ----------------------------------------------------------------------------- predict.py


def test_predict_errors(tmp_path, capsys):
    predict = load_tool("predict")
    case = tmp_path / "CASE"
    case.mkdir()
    base = ["--config-file", QUICK, "--images", case, "--out", tmp_path / "pred"]
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"garbage")
    line = _fails(predict.main, base + ["--weights", weights, "SOLVER.NOPE", "1"], capsys)
    assert "Non-existent key: SOLVER.NOPE" in line
    line = _fails(predict.main, base + ["--weights", weights, "INPUT.BREAST_MASK.ENABLED", "False"],
                  capsys)
    assert str(weights) in line and "not a loadable PyTorch checkpoint" in line
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "out"  # cannot be created: its parent is a file
    line = _fails(predict.main, ["--config-file", QUICK, "--images", tmp_path / "no_such_case",
                                "--weights", weights, "--out", out], capsys)
    assert f"cannot write to output folder {out}" in line  # checked before reading the case


# ----------------------------------------------------------------------------- cross_validate.py


def test_cross_validate_folds_and_relative_paths(tmp_path, monkeypatch, capsys):
    cv = load_tool("cross_validate")
    line = _fails(cv.parse_args, ["--config-file", QUICK, "--data", "D", "--folds", "a,b"], capsys)
    assert "--folds" in line and "'a,b'" in line
    monkeypatch.chdir(tmp_path)
    args = cv.parse_args(["--config-file", "cfg.yaml", "--data", "D", "--out", "O",
                          "--folds", "1", "--masks", "gt"])
    assert (args.data, args.out) == (str(tmp_path / "D"), str(tmp_path / "O"))
    commands = [s.command for s in cv.build_steps(args)]
    train = commands[0]
    assert train[train.index("--data") + 1] == str(tmp_path / "D")
    assert train[train.index("--config-file") + 1] == str(tmp_path / "cfg.yaml")
    assert str(tmp_path / "O") in " ".join(commands[-1])


def test_job_steps_run_in_the_callers_directory(tmp_path, monkeypatch):
    from breast_d2.jobs import Step, run_steps

    monkeypatch.chdir(tmp_path)
    code = "open('written_here', 'w').close()"
    run_steps([Step("write", [sys.executable, "-c", code])], "job")
    assert (tmp_path / "written_here").exists() and (tmp_path / "job" / ".steps").is_dir()
    assert not os.path.exists(os.path.join(REPO, "written_here"))


# ----------------------------------------------------------------------------- segmentation tools


def _save_ckpt(path, train_cases):
    torch.manual_seed(0)
    model = build_model("unetplusplus", "resnet18", **TINY)
    torch.save({"arch": "unetplusplus", "encoder": "resnet18", "in_channels": 3,
                "model": model.state_dict(), "fold": 0, "train_cases": list(train_cases),
                "epoch": 0, "best_dsc": 0.0, "optimizer": {}, "input_size": 32,
                "model_kwargs": TINY}, path)
    return str(path)


@pytest.fixture
def toy(tmp_path):
    root = tmp_path / "toy"
    make_toy_converted(str(root), num_cases=4, num_slices=4, height=32, width=32)
    return str(root)


def test_segmentation_tools_refuse_a_folder_that_is_not_converted(tmp_path, capsys):
    (tmp_path / "cases.json").write_text('{"cases": []}')
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    for tool, argv in (("train_breast_seg", ["--fold", 0, "--out", tmp_path / "o"]),
                       ("predict_breast_masks", ["--fold", 0, "--weights", weights]),
                       ("eval_breast_seg", ["--run", f"u={weights}", "--out", tmp_path / "e"])):
        line = _main_fails(load_tool(tool).main, ["--data", tmp_path, *argv], capsys)
        assert f"{tmp_path} is not a converted folder" in line and "missing splits.json" in line


def test_segmentation_tools_refuse_unwritable_out_garbage_weights_bad_splits(toy, tmp_path,
                                                                             capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    train = load_tool("train_breast_seg").main
    line = _main_fails(train, ["--data", toy, "--fold", 0, "--out", blocker / "o"], capsys)
    assert f"cannot write to output folder {blocker / 'o'}" in line
    masks = load_tool("predict_breast_masks").main
    line = _main_fails(masks, ["--data", toy, "--fold", 0, "--weights", garbage], capsys)
    assert str(garbage) in line and "not a loadable breast segmentation checkpoint" in line
    evaluate = load_tool("eval_breast_seg").main
    line = _main_fails(evaluate, ["--data", toy, "--run", f"u={garbage}", "--folds", 0,
                                  "--out", tmp_path / "ev"], capsys)
    assert str(garbage) in line
    line = _main_fails(evaluate, ["--data", toy, "--run", f"u={garbage}", "--out",
                                  blocker / "ev"], capsys)
    assert "cannot write to output folder" in line

    splits = os.path.join(toy, "splits.json")
    for bad, needle in (("[]", 'expected an object with a "folds" list'),
                        ('{"folds": [{"fold": 0}]}', "'train' must be a list"),
                        ("{", "not valid JSON")):
        with open(splits, "w") as f:
            f.write(bad)
        for entry, argv in ((train, ["--out", tmp_path / "o"]), (masks, ["--weights", garbage]),
                            (evaluate, ["--run", f"u={garbage}", "--out", tmp_path / "ev"])):
            line = _main_fails(entry, ["--data", toy, "--fold" if entry is not evaluate else
                                       "--folds", 0, *argv], capsys)
            assert needle in line and splits in line


def test_predict_breast_masks_missing_slice_is_an_error(toy, tmp_path, capsys):
    masks = load_tool("predict_breast_masks").main
    train_ids, val_ids = read_fold(toy, 0)
    weights = _save_ckpt(tmp_path / "m.pth", train_ids)
    victim = val_ids[0]
    os.remove(os.path.join(toy, "slices", victim, "0002.png"))
    line = _main_fails(masks, ["--data", toy, "--fold", 0, "--weights", weights], capsys)
    assert f"case {victim} slice 2" in line and "0002.png" in line
    os.remove(os.path.join(toy, "slices", victim, "0003.png"))  # the last slice: from cases.json
    shutil.copy(os.path.join(toy, "slices", victim, "0001.png"),
                os.path.join(toy, "slices", victim, "0002.png"))
    line = _main_fails(masks, ["--data", toy, "--fold", 0, "--weights", weights], capsys)
    assert f"case {victim} slice 3" in line


def test_crafted_case_id_does_not_escape_the_data_folder(tmp_path, capsys):
    """A splits.json / cases.json case id "../evil" must not make the tool write outside."""
    data = tmp_path / "inner" / "data"
    make_toy_converted(str(data), num_cases=4, num_slices=4, height=32, width=32)
    train_ids, val_ids = read_fold(str(data), 0)
    weights = _save_ckpt(tmp_path / "m.pth", train_ids)
    evil = "../../../evil"
    # Read from data/slices/<id> = tmp_path/evil; the old code wrote data/masks/fold0/<id> =
    # tmp_path/inner/evil, outside --data.
    os.makedirs(data / "slices" / evil, exist_ok=True)
    for name in os.listdir(data / "slices" / val_ids[0]):
        shutil.copy(data / "slices" / val_ids[0] / name, data / "slices" / evil / name)
    splits = json.loads((data / "splits.json").read_text())
    splits["folds"][0]["val"][0] = evil
    (data / "splits.json").write_text(json.dumps(splits))
    cases = json.loads((data / "cases.json").read_text())
    cases["cases"][0]["case_id"] = evil
    (data / "cases.json").write_text(json.dumps(cases))
    before = sorted(os.listdir(tmp_path / "inner"))
    masks = load_tool("predict_breast_masks").main
    line = _main_fails(masks, ["--data", data, "--fold", 0, "--weights", weights], capsys)
    assert "'../../../evil' is not a plain file name" in line
    assert sorted(os.listdir(tmp_path / "inner")) == before
    for tool, argv in (("train_breast_seg", ["--fold", 0, "--out", tmp_path / "o"]),
                       ("eval_breast_seg", ["--run", f"u={weights}", "--out", tmp_path / "ev"])):
        line = _main_fails(load_tool(tool).main, ["--data", data, *argv], capsys)
        assert "is not a plain file name" in line
    assert sorted(os.listdir(tmp_path / "inner")) == before


def test_report_overlay_names_stay_in_the_output_folder(tmp_path):
    from breast_d2.data.errors import CohortError
    from breast_d2.job_report import write_overlays

    data = tmp_path / "data"
    make_toy_converted(str(data), num_cases=2, num_slices=4, height=32, width=32)
    cases = json.loads((data / "cases.json").read_text())
    cases["cases"][0]["case_id"] = "../x"
    (data / "cases.json").write_text(json.dumps(cases))
    froc = tmp_path / "froc"
    froc.mkdir()
    (froc / "candidates.json").write_text("[]")
    (froc / "froc.json").write_text(json.dumps({"case_ids": ["../x"]}))
    with pytest.raises(CohortError, match="not a plain file name"):
        write_overlays(str(froc), str(data), str(tmp_path / "report"))
    assert not (tmp_path / "overlay_..").exists() and not (tmp_path / "x").exists()


def test_subprocess_cli_is_one_line(tmp_path):
    """The real command line (``python tools/cross_validate.py``) as a user runs it."""
    proc = subprocess.run([sys.executable, tool_path("cross_validate"), "--config-file", QUICK,
                           "--data", "D", "--folds", "a,b"],
                          capture_output=True, text=True, env=tool_env(), cwd=str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    assert proc.stderr.count("\n") == 1
