"""Extent refinement of short 3D candidates (breast_d2/evaluation/refine.py, tools/froc.py).

A toy converted folder whose case TOY0000 holds, on a flat background of the subtraction channel:
mass A (6 x 6 pixels, slices 3-5, slice 3 at half the enhancement: a faint end), mass B (slices
4-5 only, no enhancement on 3 or 6) and a long enhancing structure C (slices 1-8). The "detector"
finds A and B on slices 4-5 and C on 2-7, with in-plane boxes one or two pixels too large.
"""
import json
import os

import cv2
import numpy as np
import pytest

from helpers import load_tool, make_toy_converted

from breast_d2.evaluation import compute_froc, merge_slice_detections
from breast_d2.evaluation.candidates import CandidateArrays, FROCInputError
from breast_d2.evaluation.refine import (
    ConvertedSlices,
    RefineParams,
    box_enhancement,
    refine_eval_dir,
    refine_extent,
)

CASE = "TOY0000"
SLICES = 10
MASS_A = [20, 20, 3, 26, 26, 6]  # slice 3 faint
MASS_B = [40, 20, 4, 46, 26, 6]
LONG_C = [20, 42, 1, 26, 48, 9]  # enhancing on 1..8
ENH = 100  # subtraction-channel enhancement of a mass core (background 30)
DETECTIONS = (
    [{"case_id": CASE, "slice": z, "box": [18, 18, 26, 26], "score": 0.9} for z in (4, 5)]
    + [{"case_id": CASE, "slice": z, "box": [38, 18, 46, 26], "score": 0.8} for z in (4, 5)]
    + [{"case_id": CASE, "slice": z, "box": [19, 41, 26, 48], "score": 0.7} for z in range(2, 8)]
)
PARAMS = RefineParams(enabled=True, max_slices=4, ratio=0.3, max_steps=1)


def _paint(root: str) -> None:
    """Flat background (30 +- noise) with masses A, B and structure C in channel 1 (G) of
    TOY0000's slices; boxes in cases.json."""
    rng = np.random.default_rng(1)
    folder = os.path.join(root, "slices", CASE)
    for z in range(SLICES):
        path = os.path.join(folder, f"{z:04d}.png")
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        g = 30.0 + rng.normal(0, 4, bgr.shape[:2])
        for box in (MASS_A, MASS_B, LONG_C):
            x0, y0, z0, x1, y1, z1 = box
            if z0 <= z < z1:
                faint = 0.5 if box is MASS_A and z == z0 else 1.0
                g[y0:y1, x0:x1] += ENH * faint
        bgr[:, :, 1] = np.clip(g, 0, 255).round().astype(np.uint8)  # G = channel 1 of R, G, B
        cv2.imwrite(path, bgr)
    with open(os.path.join(root, "cases.json")) as f:
        cases = json.load(f)
    for c in cases["cases"]:
        c["boxes"] = [MASS_A, MASS_B, LONG_C] if c["case_id"] == CASE else []
    with open(os.path.join(root, "cases.json"), "w") as f:
        json.dump(cases, f)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("toy"))
    make_toy_converted(root, num_cases=2, num_slices=SLICES, num_folds=2)
    _paint(root)
    return root


def _iou3d(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    inter = np.prod(np.clip(np.minimum(a[3:], b[3:]) - np.maximum(a[:3], b[:3]), 0, None))
    vol = np.prod(a[3:] - a[:3]) + np.prod(b[3:] - b[:3]) - inter
    return float(inter / vol)


def _merged() -> CandidateArrays:
    return CandidateArrays.from_dicts(merge_slice_detections(DETECTIONS))


def _box_of(cands: CandidateArrays, x0: float, y0: float = 18) -> list:
    """The box of the one candidate whose in-plane box starts at (x0, y0)."""
    (i,) = np.flatnonzero((cands.boxes[:, 0] == x0) & (cands.boxes[:, 1] == y0))
    return cands.boxes[i].tolist()


def test_box_enhancement_subtracts_the_ring():
    image = np.full((20, 20), 10, np.int64)
    image[5:10, 5:10] = 50
    sat = np.zeros((21, 21), np.int64)
    sat[1:, 1:] = image.cumsum(0).cumsum(1)
    boxes = np.array([[5, 5, 10, 10], [0, 0, 3, 3], [0, 0, 20, 20]])
    enh = box_enhancement(sat, boxes, ring=2)
    assert enh[0] == pytest.approx(40.0)  # 50 inside, 10 in the ring
    assert enh[1] == pytest.approx(0.0)  # ring clipped at the corner, still background
    assert enh[2] == pytest.approx(image.mean())  # no ring left inside the slice: no background


def test_faint_end_slice_is_taken_and_turns_a_miss_into_a_hit(toy):
    cands = _merged()
    before = _box_of(cands, 18)
    assert before[2:6:3] == [4, 6] and _iou3d(before, MASS_A) < 0.5
    refined, stats = refine_extent(cands, ConvertedSlices(toy), PARAMS)
    after = _box_of(refined, 18)
    assert after == [18, 18, 3, 26, 26, 6]  # faint slice 3 taken, nothing beyond slice 5
    assert _iou3d(after, MASS_A) > 0.5
    assert stats["extended_low"] == 1 and stats["extended_high"] == 0
    gt = [{"case_id": CASE, "boxes": [MASS_A, MASS_B, LONG_C]}]
    sens = [compute_froc(c, gt, bootstrap=0)["sensitivity_at"]["8"] for c in (cands, refined)]
    assert sens[1] > sens[0]
    # Geometric rule: only z moved, by whole slices; scores, order and slices untouched.
    assert np.array_equal(refined.boxes[:, [0, 1, 3, 4]], cands.boxes[:, [0, 1, 3, 4]])
    assert np.array_equal(refined.scores, cands.scores)
    assert np.array_equal(refined.slices, cands.slices)
    assert np.array_equal(cands.boxes[:, 2], [2, 4, 4])  # the input is not modified


def test_non_enhancing_neighbour_slices_are_not_taken(toy):
    refined, _ = refine_extent(_merged(), ConvertedSlices(toy), PARAMS)
    assert _box_of(refined, 38) == [38, 18, 4, 46, 26, 6]  # B: slices 3 and 6 are flat


def test_ratio_decides_and_steps_are_bounded(toy):
    reader = ConvertedSlices(toy)
    strict = RefineParams(enabled=True, ratio=0.9)  # slice 3 has ~half the enhancement
    assert _box_of(refine_extent(_merged(), reader, strict)[0], 18)[2] == 4
    two = RefineParams(enabled=True, ratio=0.3, max_steps=2)
    assert _box_of(refine_extent(_merged(), reader, two)[0], 18)[2:6:3] == [3, 6]  # 2 is flat


def test_long_candidates_are_untouched(toy):
    cands = _merged()
    (c,) = np.flatnonzero(cands.boxes[:, 1] == 41)
    assert cands.boxes[c, 5] - cands.boxes[c, 2] == 6  # slices 2-7, next to enhancing 1 and 8
    refined, stats = refine_extent(cands, ConvertedSlices(toy), PARAMS)
    assert refined.boxes[c].tolist() == cands.boxes[c].tolist()
    assert stats["eligible"] == 2
    # ... but the same structure is extended when the size limit admits it.
    wide = RefineParams(enabled=True, max_slices=6, ratio=0.3)
    assert refine_extent(cands, ConvertedSlices(toy), wide)[0].boxes[c, 2:6:3].tolist() == [1, 9]


def test_volume_edges_and_missing_slices(toy, tmp_path):
    dets = [{"case_id": CASE, "slice": z, "box": [19, 41, 26, 48], "score": 0.5} for z in (0, 1)]
    cands = CandidateArrays.from_dicts(merge_slice_detections(dets))
    refined, _ = refine_extent(cands, ConvertedSlices(toy), PARAMS)
    assert refined.boxes[0, 2] == 0  # no slice -1
    with pytest.raises(FROCInputError, match="not in"):
        refine_extent(CandidateArrays.from_dicts([{"case_id": "NOPE", "box": [0, 0, 0, 2, 2, 1],
                                                   "score": 1.0}]), ConvertedSlices(toy), PARAMS)
    os.makedirs(tmp_path / "slices" / CASE)
    with open(os.path.join(toy, "cases.json")) as f:
        (tmp_path / "cases.json").write_text(f.read())
    with pytest.raises(FROCInputError, match="cannot read slice .*0003.png"):
        refine_extent(_merged(), ConvertedSlices(str(tmp_path)), PARAMS)


def test_params_from_config_default_off_and_checked():
    from detectron2.config import get_cfg

    from breast_d2.config import add_breast_config

    cfg = get_cfg()
    add_breast_config(cfg)
    assert RefineParams.from_config(cfg.TEST.FROC) == RefineParams()
    assert RefineParams().enabled is False
    cfg.TEST.FROC.REFINE_EXTENT = True
    cfg.TEST.FROC.REFINE_RATIO = 0.7
    assert RefineParams.from_config(cfg.TEST.FROC).ratio == 0.7
    for bad in ({"ratio": 0.0}, {"max_slices": 0}, {"channel": 3}, {"max_steps": 1.5}):
        with pytest.raises(FROCInputError):
            RefineParams(**bad).checked()


def _eval_folder(toy, out, refine, **froc_cfg):
    """Run BreastFROCEvaluator on the toy split with fake outputs of DETECTIONS
    (``froc_cfg``: more ``cfg.TEST.FROC`` keys)."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.data import MetadataCatalog
    from detectron2.structures import Boxes, Instances

    from breast_d2.config import add_breast_config
    from breast_d2.evaluation import BreastFROCEvaluator

    name = f"refine_test_val_{int(refine)}"
    MetadataCatalog.get(name).set(cases_json=os.path.join(toy, "cases.json"), data_root=toy,
                                  case_ids=[CASE, "TOY0001"])  # fmt: skip
    cfg = get_cfg()
    add_breast_config(cfg)
    cfg.TEST.FROC.BOOTSTRAP = 0
    cfg.TEST.FROC.REFINE_EXTENT = refine
    cfg.TEST.FROC.REFINE_RATIO = PARAMS.ratio
    cfg.TEST.FROC.BOX_FIT = False  # on by default; these tests look at the refinement alone
    for key, value in froc_cfg.items():
        cfg.TEST.FROC[key] = value
    try:
        ev = BreastFROCEvaluator(name, cfg, out, distributed=False)
        ev.reset()
        for z in range(SLICES):
            dets = [d for d in DETECTIONS if d["slice"] == z]
            inst = Instances((64, 64))
            inst.pred_boxes = Boxes(torch.tensor([d["box"] for d in dets], dtype=torch.float32)
                                    .reshape(-1, 4))  # fmt: skip
            inst.scores = torch.tensor([d["score"] for d in dets], dtype=torch.float32)
            ev.process([{"case_id": CASE, "slice_index": z}], [{"instances": inst}])
        return ev.evaluate()
    finally:
        MetadataCatalog.pop(name)


def _read(path):
    with open(path) as f:
        return json.load(f)


def test_evaluator_off_is_bit_identical_and_on_refines(toy, tmp_path):
    off, on = str(tmp_path / "off"), str(tmp_path / "on")
    _eval_folder(toy, off, refine=False)
    _eval_folder(toy, on, refine=True)
    # Off: the candidates are today's merge of the detections the evaluator saw, bit for bit.
    today = merge_slice_detections(_read(os.path.join(off, "detections.json")))
    with open(os.path.join(off, "candidates.json"), "rb") as f:
        assert f.read() == json.dumps(today).encode()
    assert "refine_extent" not in _read(os.path.join(off, "froc.json"))["merge"]
    froc_on = _read(os.path.join(on, "froc.json"))
    assert froc_on["merge"]["refine_extent"]["extended_low"] == 1
    assert froc_on["num_lesions"] == 3
    sens = [_read(os.path.join(p, "froc.json"))["sensitivity_at"]["8"] for p in (off, on)]
    assert sens[1] > sens[0]


def test_post_hoc_tool_on_eval_folders(toy, tmp_path, capsys):
    fold = str(tmp_path / "run" / "fold0" / "inference" / "breast_fold0_val")
    _eval_folder(toy, fold, refine=False)
    tool = load_tool("froc")
    out = str(tmp_path / "refined")
    assert tool.main(["--detections", fold, "--refine-extent", toy, "--refine-ratio", "0.3",
                      "--out", out, "--bootstrap", "0"]) == 0  # fmt: skip
    assert "| breast_fold0_val" in capsys.readouterr().out
    res = _read(os.path.join(out, "breast_fold0_val", "froc.json"))
    saved = _read(os.path.join(fold, "froc.json"))
    assert res["merge"]["refine_extent"]["ratio"] == 0.3
    assert res["sensitivity_at"]["8"] > saved["sensitivity_at"]["8"]
    assert res["case_ids"] == saved["case_ids"]
    assert os.path.exists(os.path.join(out, "froc_folds.json"))
    # Default DATA_ROOT: the recorded cases.json's folder; same result.
    out2 = str(tmp_path / "refined2")
    assert tool.main(["--detections", fold, "--refine-extent", "--refine-ratio", "0.3",
                      "--out", out2, "--bootstrap", "0"]) == 0  # fmt: skip
    res2 = _read(os.path.join(out2, "breast_fold0_val", "froc.json"))
    assert res2["cpm"] == res["cpm"]
    # Without --refine-extent: a plain re-merge reproduces the saved candidates bit for bit.
    out3 = str(tmp_path / "remerged")
    assert tool.main(["--detections", fold, "--out", out3, "--bootstrap", "0"]) == 0
    with open(os.path.join(fold, "candidates.json"), "rb") as a, \
            open(os.path.join(out3, "breast_fold0_val", "candidates.json"), "rb") as b:
        assert a.read() == b.read()
    assert _read(os.path.join(out3, "breast_fold0_val", "froc.json"))["cpm"] == saved["cpm"]


def test_box_fit_in_the_evaluator_and_post_hoc(toy, tmp_path):
    fold = str(tmp_path / "run" / "breast_fold0_val")
    _eval_folder(toy, fold, refine=False)
    saved = CandidateArrays.from_dicts(_read(os.path.join(fold, "candidates.json")))
    assert _box_of(saved, 38) == [38, 18, 4, 46, 26, 6]  # B as detected: 2 px loose in x and y
    out = str(tmp_path / "fitted")
    assert load_tool("froc").main(["--detections", fold, "--box-fit", "--box-merge", "fused",
                                   "--out", out, "--bootstrap", "0"]) == 0  # fmt: skip
    res = _read(os.path.join(out, "breast_fold0_val", "froc.json"))
    assert res["merge"]["box_merge"] == "fused"
    assert res["merge"]["box_fit"]["fitted"] == 3 and res["merge"]["box_fit"]["level"] == 0.4
    fitted = CandidateArrays.from_dicts(
        _read(os.path.join(out, "breast_fold0_val", "candidates.json")))
    # B and the long structure C snap to their enhancing boxes, from the image alone.
    assert _box_of(fitted, 40, 20) == MASS_B
    assert _box_of(fitted, 20, 42) == LONG_C
    assert res["sensitivity_at"]["8"] == 1.0
    # The evaluator with TEST.FROC.BOX_FIT gives the same candidates as the post-hoc fit.
    live = str(tmp_path / "live")
    _eval_folder(toy, live, refine=False, BOX_FIT=True, BOX_MERGE="fused")
    with open(os.path.join(live, "candidates.json"), "rb") as a, \
            open(os.path.join(out, "breast_fold0_val", "candidates.json"), "rb") as b:
        assert a.read() == b.read()
    assert _read(os.path.join(live, "froc.json"))["merge"]["box_fit"]["fitted"] == 3
    # Post hoc without options: merged and fitted as recorded, the saved candidates bit for bit.
    again = str(tmp_path / "again")
    assert load_tool("froc").main(["--detections", live, "--out", again,
                                   "--bootstrap", "0"]) == 0  # fmt: skip
    with open(os.path.join(live, "candidates.json"), "rb") as a, \
            open(os.path.join(again, "live", "candidates.json"), "rb") as b:
        assert a.read() == b.read()
    # The study's merge: union, no fit; B keeps its detected (loose) box.
    study = str(tmp_path / "study")
    assert load_tool("froc").main(["--detections", live, "--box-merge", "union", "--no-box-fit",
                                   "--out", study, "--bootstrap", "0"]) == 0  # fmt: skip
    res = _read(os.path.join(study, "live", "froc.json"))
    assert res["merge"]["box_merge"] == "union" and "box_fit" not in res["merge"]
    unfitted = CandidateArrays.from_dicts(_read(os.path.join(study, "live", "candidates.json")))
    assert _box_of(unfitted, 38) == [38, 18, 4, 46, 26, 6]


def test_post_hoc_tool_bad_input_is_one_line(toy, tmp_path, capsys):
    tool = load_tool("froc")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert tool.main(["--detections", str(empty), "--refine-extent", "--out",
                      str(tmp_path / "o")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "froc.json" in err and err.count("\n") == 1
    fold = str(tmp_path / "f")
    os.makedirs(fold)
    with open(os.path.join(fold, "froc.json"), "w") as f:
        json.dump({"case_ids": [CASE], "curve": {}}, f)
    assert tool.main(["--detections", fold, "--out", str(tmp_path / "o")]) == 2
    assert "records no merge parameters" in capsys.readouterr().err
    assert tool.main(["--refine-extent", toy, "--out", str(tmp_path / "o")]) == 2
    assert "need --detections" in capsys.readouterr().err
    # A froc.json whose recorded box fit or box merge is malformed: one line naming the file.
    good = str(tmp_path / "good")
    _eval_folder(toy, good, refine=False)
    saved = _read(os.path.join(good, "froc.json"))
    for bad_merge, needle in (({"box_fit": {"level": 0.4}}, "bad merge.box_fit"),
                              ({"box_merge": "mean"}, "box_merge")):
        bad = str(tmp_path / f"bad_{needle.replace(' ', '_')}")
        os.makedirs(bad)
        with open(os.path.join(bad, "froc.json"), "w") as f:
            json.dump(dict(saved, merge=dict(saved["merge"], **bad_merge)), f)
        with open(os.path.join(good, "detections.json")) as a, \
                open(os.path.join(bad, "detections.json"), "w") as b:
            b.write(a.read())
        assert tool.main(["--detections", bad, "--out", str(tmp_path / "o2")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
        assert "froc.json" in err and needle in err


def test_refine_eval_dir_disabled_keeps_recorded_params(toy, tmp_path):
    fold = str(tmp_path / "fold")
    _eval_folder(toy, fold, refine=False)
    res = refine_eval_dir(fold, str(tmp_path / "o"), RefineParams())
    assert res["merge"] == _read(os.path.join(fold, "froc.json"))["merge"]


def test_fold_output_names_are_unique_and_plain():
    from breast_d2.evaluation.refine import fold_output_names

    dirs = ["r/fold0/inference/breast_fold0_val", "r/fold1/x/breast_fold1_val/"]
    assert fold_output_names(dirs) == ["breast_fold0_val", "breast_fold1_val"]
    with pytest.raises(FROCInputError, match="same folder name"):
        fold_output_names(["a/val", "b/val"])
    with pytest.raises(FROCInputError, match="cannot name"):
        fold_output_names(["/"])
