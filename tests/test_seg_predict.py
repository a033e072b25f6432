"""Tests of breast_d2.segmentation.predict / postprocess and the mask and eval tools."""
import hashlib
import json
import os
import tempfile

import cv2
import numpy as np
import pytest
import torch

from breast_d2.data.converted import read_fold
from breast_d2.segmentation import (
    BreastMaskPredictor,
    FoldLeakError,
    build_model,
    dilate_mm,
    fill_holes,
    keep_large_components,
    load_checkpoint,
    verify_fold_masks,
    write_fold_masks,
)
from breast_d2.segmentation.data import load_case_gt, read_mask
from helpers import load_tool, make_toy_converted

torch.set_num_threads(2)
TINY = dict(encoder_depth=3, decoder_channels=[16, 8, 8])


def _save_ckpt(path, fold, train_cases, seed=0):
    torch.manual_seed(seed)
    model = build_model("unetplusplus", "resnet18", **TINY)
    torch.save({"arch": "unetplusplus", "encoder": "resnet18", "in_channels": 3,
                "model": model.state_dict(), "fold": fold, "train_cases": list(train_cases),
                "epoch": 0, "best_dsc": 0.0, "optimizer": {}, "input_size": 32,
                "model_kwargs": TINY}, path)
    return path


@pytest.fixture(scope="module")
def toy():
    with tempfile.TemporaryDirectory() as d:
        make_toy_converted(d, num_cases=4, num_slices=4, height=48, width=64)
        for k in (0, 1):
            _save_ckpt(os.path.join(d, f"fold{k}.pth"), k, read_fold(d, k)[0])
        yield d


def _run_tool(name, args, capsys):
    try:
        code = load_tool(name).main(list(args))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


# ---- post-processing -------------------------------------------------------------------------
def test_keep_large_components():
    m = np.zeros((20, 30), bool)
    m[2:10, 2:10] = True  # 64 px
    m[2:9, 20:27] = True  # 49 px: the other breast, kept
    m[15, 15] = True  # 1 px speck, dropped
    out = keep_large_components(m, 0.1)
    assert out.sum() == 64 + 49 and not out[15, 15]
    assert keep_large_components(m, 1.0).sum() == 64
    assert not keep_large_components(np.zeros((3, 3), bool)).any()


def test_fill_holes_and_dilate_mm():
    m = np.zeros((2, 11, 11), bool)
    m[:, 2:9, 2:9] = True
    m[:, 5, 5] = False
    assert fill_holes(m)[:, 5, 5].all()
    p = np.zeros((21, 21), bool)
    p[10, 10] = True
    d = dilate_mm(p, 2.0, spacing_xy=(0.5, 1.0))  # 4 px along x, 2 px along y
    cols, rows = np.flatnonzero(d[10]), np.flatnonzero(d[:, 10])
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (6, 14, 8, 12)
    v = dilate_mm(np.stack([p, np.zeros_like(p)]), 1.0)
    assert not v[1].any()  # no dilation across slices
    assert (dilate_mm(p, 0) == p).all()


# ---- predictor -------------------------------------------------------------------------------
def test_predictor_shapes_and_formats(toy):
    pred = BreastMaskPredictor(os.path.join(toy, "fold0.pth"))
    assert pred.input_size == 32 and pred.fold == 0 and pred.train_cases
    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    mask = pred(img)
    assert mask.shape == (48, 64) and mask.dtype == bool
    case = pred.predict_case(np.stack([img, img, img]))
    assert case.shape == (3, 48, 64) and case.dtype == bool
    bgr = BreastMaskPredictor(os.path.join(toy, "fold0.pth"), input_format="BGR", input_size=64)
    assert np.allclose(bgr.predict_proba(img[None, ..., ::-1]), pred.__class__(
        os.path.join(toy, "fold0.pth"), input_size=64).predict_proba(img[None]), atol=1e-5)


# ---- fold-correct masks ----------------------------------------------------------------------
def test_fold_masks_are_fold_correct(toy):
    manifest = write_fold_masks(toy, 0, os.path.join(toy, "fold0.pth"), progress=False)
    train_ids, val_ids = read_fold(toy, 0)
    assert set(manifest["cases"]) == set(train_ids) | set(val_ids)
    # the check that matters: no validation mask from a model that trained on that case,
    # read from the checkpoint named in the manifest (its recorded train_cases)
    ckpt = load_checkpoint(manifest["weights"])
    for case_id in val_ids:
        assert manifest["cases"][case_id]["source"] == "model"
        assert case_id not in ckpt["train_cases"]
        assert case_id not in manifest["train_cases"]
        pngs = sorted(os.listdir(os.path.join(toy, "masks", "fold0", case_id)))
        assert pngs == [f"{z:04d}.png" for z in range(4)]
        values = np.unique(cv2.imread(os.path.join(toy, "masks", "fold0", case_id, pngs[0]), 0))
        assert set(values.tolist()) <= {0, 255}
    assert verify_fold_masks(toy, 0) == []


def test_leaking_checkpoint_is_refused(toy, capsys):
    train_ids, val_ids = read_fold(toy, 0)
    leak = _save_ckpt(os.path.join(toy, "leak.pth"), 0, train_ids + val_ids[:1])
    with pytest.raises(FoldLeakError, match=val_ids[0]):
        write_fold_masks(toy, 0, leak, progress=False)
    code, out = _run_tool("predict_breast_masks", ["--data", toy, "--fold", "0", "--weights", leak],
                          capsys)
    assert code == 2 and len(out.err.strip().splitlines()) == 1
    assert out.err.startswith("error: refusing") and val_ids[0] in out.err
    # the fold-1 model trained on fold 0's validation cases: refused for fold 0 as well
    with pytest.raises(FoldLeakError):
        write_fold_masks(toy, 0, os.path.join(toy, "fold1.pth"), progress=False)


def test_verify_detects_a_tampered_manifest(toy):
    write_fold_masks(toy, 1, os.path.join(toy, "fold1.pth"), progress=False)
    path = os.path.join(toy, "masks", "fold1", "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    _, val_ids = read_fold(toy, 1)
    manifest["weights"] = os.path.join(toy, "fold0.pth")  # a model that trained on fold 1's val
    with open(manifest["weights"], "rb") as f:
        manifest["weights_sha256"] = hashlib.sha256(f.read()).hexdigest()
    with open(path, "w") as f:
        json.dump(manifest, f)
    problems = verify_fold_masks(toy, 1)
    assert any("trained on it" in p for p in problems) and val_ids[0] in " ".join(problems)


def test_gt_source_resume_and_dilation(toy, capsys):
    weights = os.path.join(toy, "fold0.pth")
    code, _ = _run_tool("predict_breast_masks", ["--data", toy, "--fold", "0", "--weights", weights,
                                                 "--source", "gt"], capsys)
    assert code == 0
    train_ids, val_ids = read_fold(toy, 0)
    fold_dir = os.path.join(toy, "masks", "fold0")
    with open(os.path.join(fold_dir, "manifest.json")) as f:
        manifest = json.load(f)
    assert {manifest["cases"][c]["source"] for c in train_ids} == {"gt"}
    assert {manifest["cases"][c]["source"] for c in val_ids} == {"model"}
    c = train_ids[0]
    got = np.stack([read_mask(os.path.join(fold_dir, c, f"{z:04d}.png")) for z in range(4)])
    assert (got == load_case_gt(toy, c, range(4))).all()
    # resume skips finished cases; other settings are refused
    stamp = os.path.getmtime(os.path.join(fold_dir, c, "0000.png"))
    write_fold_masks(toy, 0, weights, source="gt", resume=True, progress=False)
    assert os.path.getmtime(os.path.join(fold_dir, c, "0000.png")) == stamp
    with pytest.raises(ValueError, match="dilate_mm"):
        write_fold_masks(toy, 0, weights, source="gt", dilation_mm=2, resume=True, progress=False)
    assert not [n for n in os.listdir(fold_dir) if n.startswith(".")]  # no temp leftovers


def test_eval_tool(toy, capsys):
    out = os.path.join(toy, "eval")
    tmpl = os.path.join(toy, "fold{fold}.pth")
    code, res = _run_tool("eval_breast_seg", ["--data", toy, "--run", f"unetplusplus={tmpl}",
                                              "--run", f"unet={tmpl}", "--out", out], capsys)
    assert code == 0, res.err
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in res.out.splitlines() if line.startswith("|")]  # cells, padding aside
    assert ["Metric", "U-Net++", "U-Net"] in rows
    assert "scoring: 100%" in res.err and "8/8" in res.err  # the bar: 4 cases x 2 runs
    assert not res.err.startswith("error")
    lines = open(os.path.join(out, "seg_per_case.csv")).read().splitlines()
    assert lines[0] == "run,arch,fold,case_id,dsc,jaccard,ss" and len(lines) == 1 + 2 * 4
    assert len(open(os.path.join(out, "seg_per_fold.csv")).read().splitlines()) == 1 + 2 * 2
    leak = os.path.join(toy, "leak.pth")
    _save_ckpt(leak, 0, [c for f in (0, 1) for c in read_fold(toy, f)[1]])
    code, res = _run_tool("eval_breast_seg", ["--data", toy, "--run", f"unet={leak}", "--folds",
                                              "0", "--out", out], capsys)
    assert code == 2 and res.err.startswith("error: run unet fold 0")
    code, res = _run_tool("eval_breast_seg", ["--data", toy, "--run", "nonsense", "--out", out],
                          capsys)
    assert code == 2 and res.err.strip() == "error: --run must be NAME=PATH, got 'nonsense'"


# ---- cohorts where only some cases have a ground-truth mask ----------------------------------
@pytest.fixture
def partial(tmp_path):
    """4 cases; TOY0001 and TOY0002 have no GT mask; fold 0: train TOY0001/3, val TOY0000/2."""
    root = str(tmp_path)
    make_toy_converted(root, num_cases=4, num_slices=4, height=48, width=64,
                       unmasked=["TOY0001", "TOY0002"])
    return root


def _manifest(root, fold):
    with open(os.path.join(root, "masks", f"fold{fold}", "manifest.json")) as f:
        return json.load(f)


def test_fold_masks_for_cases_without_gt(partial, capsys):
    weights = _save_ckpt(os.path.join(partial, "f0.pth"), 0, ["TOY0003"])  # the masked train case
    code, res = _run_tool("predict_breast_masks", ["--data", partial, "--fold", "0", "--weights",
                                                   weights, "--source", "gt"], capsys)
    assert code == 0, res.err
    cases = _manifest(partial, 0)["cases"]
    assert set(cases) == {"TOY0000", "TOY0001", "TOY0002", "TOY0003"}
    assert {c: e["source"] for c, e in cases.items()} == {
        "TOY0000": "model", "TOY0002": "model",  # validation: always the model
        "TOY0001": "model",  # a training case without a GT mask
        "TOY0003": "gt"}
    for case_id in cases:
        assert len(os.listdir(os.path.join(partial, "masks", "fold0", case_id))) == 4
    assert verify_fold_masks(partial, 0) == []


def test_all_unseen_writes_cases_outside_the_fold_the_model_never_saw(partial, capsys):
    # a held-out set: TOY0002 and TOY0003 leave fold 0's splits
    splits_path = os.path.join(partial, "splits.json")
    with open(splits_path) as f:
        splits = json.load(f)
    splits["folds"][0] = {"fold": 0, "train": ["TOY0001"], "val": ["TOY0000"]}
    with open(splits_path, "w") as f:
        json.dump(splits, f)
    weights = _save_ckpt(os.path.join(partial, "f0.pth"), 0, ["TOY0001", "TOY0003"])
    args = ["--data", partial, "--fold", "0", "--weights", weights]
    assert _run_tool("predict_breast_masks", args, capsys)[0] == 0
    assert set(_manifest(partial, 0)["cases"]) == {"TOY0000", "TOY0001"}
    code, res = _run_tool("predict_breast_masks", args + ["--all-unseen"], capsys)
    assert code == 0, res.err
    manifest = _manifest(partial, 0)
    # TOY0003 is outside the fold but the checkpoint trained on it: no mask for it
    assert {c: e["role"] for c, e in manifest["cases"].items()} == {
        "TOY0000": "val", "TOY0001": "train", "TOY0002": "unseen"}
    assert manifest["cases"]["TOY0002"]["source"] == "model" and manifest["all_unseen"] is True
    assert "TOY0002" not in manifest["train_cases"]
    # the leak guarantee holds as before
    leak = _save_ckpt(os.path.join(partial, "leak.pth"), 0, ["TOY0000"])
    code, res = _run_tool("predict_breast_masks", ["--data", partial, "--fold", "0", "--weights",
                                                   leak, "--all-unseen"], capsys)
    assert code == 2 and res.err.startswith("error: refusing") and "TOY0000" in res.err


def test_eval_tool_scores_only_masked_validation_cases(partial, capsys):
    for k in (0, 1):
        _save_ckpt(os.path.join(partial, f"fold{k}.pth"), k, ["TOY0003"] if k == 0 else [])
    out = os.path.join(partial, "eval")
    tmpl = os.path.join(partial, "fold{fold}.pth")
    code, res = _run_tool("eval_breast_seg", ["--data", partial, "--run", f"unet={tmpl}",
                                              "--out", out], capsys)
    assert code == 0, res.err
    rows = open(os.path.join(out, "seg_per_case.csv")).read().splitlines()[1:]
    # fold 0 val: TOY0000 (mask), TOY0002 (none); fold 1 val: TOY0001 (none), TOY0003 (mask)
    assert sorted(r.split(",")[3] for r in rows) == ["TOY0000", "TOY0003"]
    cases_path = os.path.join(partial, "cases.json")
    with open(cases_path) as f:
        cases = json.load(f)
    for c in cases["cases"]:
        c["has_mask"] = c["case_id"] == "TOY0000"
    with open(cases_path, "w") as f:
        json.dump(cases, f)
    code, res = _run_tool("eval_breast_seg", ["--data", partial, "--run", f"unet={tmpl}",
                                              "--folds", "1", "--out", out], capsys)
    assert code == 2 and res.err.strip().splitlines()[-1] == (
        "error: no validation case of the selected folds has a ground-truth breast mask")


def test_eval_tool_missing_slice_is_a_one_line_error(partial, capsys):
    for k in (0, 1):
        _save_ckpt(os.path.join(partial, f"fold{k}.pth"), k, ["TOY0003"] if k == 0 else [])
    os.remove(os.path.join(partial, "slices", "TOY0000", "0002.png"))
    code, res = _run_tool("eval_breast_seg", ["--data", partial, "--run",
                                              "unet=" + os.path.join(partial, "fold{fold}.pth"),
                                              "--folds", "0", "--out", os.path.join(partial, "e")],
                          capsys)  # fmt: skip
    error = res.err.strip().splitlines()[-1]  # after the progress bar's last state
    assert code == 2 and error.startswith("error: ") and "0002.png" in error, res.err
    assert "Traceback" not in res.err
