"""End to end on a tiny phantom: train_net (a few iterations), --eval-only FROC files,
predict.py on a new case (output geometry = input geometry), pipeline resume."""
import json
import os
import sys
import tempfile

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from breast_d2.data.readers import CaseGeometry
from breast_d2.inference import box_to_physical, candidate_label_volume
from breast_d2.jobs import Parallel, Step, StepFailed, run_steps
from breast_d2.reduction import load_reducer
from helpers import QUICK, load_tool


@pytest.fixture(scope="module")
def trained(converted):
    """Tiny cohort (6 cases, 96 x 96 x 16), converted with 3 folds, detector trained 4 iters."""
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        (cohort, data), out = converted, os.path.join(tmp, "out")
        train_net = load_tool("train_net")
        opts = ["OUTPUT_DIR", out, "INPUT.BREAST_MASK.SOURCE", "gt"]
        args = train_net.argument_parser().parse_args(
            ["--config-file", QUICK, "--fold", "0", "--data", data, *opts])
        train_net.main(args)
        yield {"tmp": tmp, "cohort": cohort, "data": data, "out": out, "train_net": train_net,
               "opts": opts}


def test_training_writes_a_checkpoint(trained):
    fold_dir = os.path.join(trained["out"], "fold0")
    assert os.path.isfile(os.path.join(fold_dir, "model_final.pth"))
    with open(os.path.join(fold_dir, "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    losses = [r["total_loss"] for r in records if "total_loss" in r]
    assert losses and all(np.isfinite(losses))
    # The end-of-training evaluation (DefaultTrainer's EvalHook) logged the FROC numbers too.
    assert any("froc/sens@3.4" in r for r in records)


def test_final_eval_can_be_left_to_a_separate_eval_only_step(trained):
    from detectron2.engine.hooks import EvalHook

    train_net = trained["train_net"]
    has_eval_hook = []
    for final_eval in ("True", "False"):
        args = train_net.argument_parser().parse_args(
            ["--config-file", QUICK, "--fold", "0", "--data", trained["data"], *trained["opts"],
             "TEST.FINAL_EVAL", final_eval])
        trainer = train_net.Trainer(train_net.setup(args))
        has_eval_hook.append(any(isinstance(h, EvalHook) for h in trainer._hooks))
    assert has_eval_hook == [True, False]


def test_eval_only_writes_froc_files(trained):
    weights = os.path.join(trained["out"], "fold0", "model_final.pth")
    train_net = trained["train_net"]
    args = train_net.argument_parser().parse_args(
        ["--config-file", QUICK, "--fold", "0", "--data", trained["data"], "--eval-only",
         *trained["opts"], "MODEL.WEIGHTS", weights])
    results = train_net.main(args)
    assert set(results["froc"]) >= {"sens@1", "sens@3.4", "cpm"}
    inference = os.path.join(trained["out"], "fold0", "inference", "breast_fold0_val")
    with open(os.path.join(inference, "froc.json")) as f:
        froc = json.load(f)
    with open(os.path.join(trained["data"], "splits.json")) as f:
        val_cases = json.load(f)["folds"][0]["val"]
    assert sorted(froc["case_ids"]) == sorted(val_cases)  # whole validation cases, no others
    for name in ("froc.csv", "froc.png", "candidates.json", "detections.json"):
        assert os.path.getsize(os.path.join(inference, name)) > 0
    with open(os.path.join(inference, "detections.json")) as f:
        detections = json.load(f)
    assert {d["case_id"] for d in detections} <= set(val_cases)
    assert "bbox" in results  # COCO AP as the secondary number


def _write_rotated_case(src_dir, case_id, dst_dir):
    """Copy a phantom case with an origin and a non-identity direction (LPS-like flips)."""
    os.makedirs(dst_dir)
    for name in sorted(os.listdir(src_dir)):
        image = sitk.ReadImage(os.path.join(src_dir, name))
        image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        image.SetOrigin((12.5, -40.0, 7.0))
        sitk.WriteImage(image, os.path.join(dst_dir, name))


def test_predict_output_geometry_matches_input(trained):
    from breast_d2.segmentation.models import build_model

    case_id = sorted(os.listdir(os.path.join(trained["cohort"], "IMAGES")))[0]
    case_dir = os.path.join(trained["tmp"], "newcase", case_id)
    _write_rotated_case(os.path.join(trained["cohort"], "IMAGES", case_id), case_id, case_dir)
    seg = build_model("unet", "resnet18", encoder_depth=3, decoder_channels=[16, 8, 8])
    seg_weights = os.path.join(trained["tmp"], "seg.pth")
    torch.save({"arch": "unet", "encoder": "resnet18", "in_channels": 3, "model": seg.state_dict(),
                "fold": 0, "train_cases": [], "input_size": 0,
                "model_kwargs": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]},
                "deep_supervision": False}, seg_weights)
    out = os.path.join(trained["tmp"], "pred")
    predict = load_tool("predict")
    predict.run(predict.parse_args([
        "--config-file", QUICK, "--weights", os.path.join(trained["out"], "fold0",
                                                          "model_final.pth"),
        "--seg-weights", seg_weights, "--images", case_dir, "--out", out]))
    reference = sitk.ReadImage(os.path.join(case_dir, f"{case_id}_0000.nii.gz"))
    labels = sitk.ReadImage(os.path.join(out, "candidates.nii.gz"))
    assert labels.GetSize() == reference.GetSize()
    np.testing.assert_allclose(labels.GetSpacing(), reference.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(labels.GetOrigin(), reference.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(labels.GetDirection(), reference.GetDirection(), atol=1e-6)
    with open(os.path.join(out, "candidates.json")) as f:
        candidates = json.load(f)
    for c in candidates:
        assert {"case_id", "box", "score", "slices", "box_mm", "center_mm"} <= set(c)
    assert os.path.getsize(os.path.join(out, "overlay.png")) > 0


def test_predict_refuses_masked_model_without_segmentation(trained, capsys):
    predict = load_tool("predict")
    case_dir = os.path.join(trained["cohort"], "IMAGES", "PH0000")
    weights = os.path.join(trained["out"], "fold0", "model_final.pth")
    args = predict.parse_args(["--config-file", QUICK, "--weights", weights, "--images",
                               case_dir, "--out", os.path.join(trained["tmp"], "p2")])
    with pytest.raises(ValueError, match="--seg-weights"):
        predict.run(args)


def test_box_to_physical_agrees_with_simpleitk():
    image = sitk.Image(20, 30, 10, sitk.sitkUInt8)
    image.SetSpacing((0.7, 0.8, 2.0))
    image.SetOrigin((10.0, -5.0, 3.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))  # rotated in-plane
    geometry = CaseGeometry.from_image(image)
    box = [2, 3, 1, 6, 9, 4]
    phys = box_to_physical(box, geometry)
    corners = [image.TransformContinuousIndexToPhysicalPoint((x - 0.5, y - 0.5, z - 0.5))
               for x in (2, 6) for y in (3, 9) for z in (1, 4)]
    np.testing.assert_allclose(phys["box_mm"][:3], np.min(corners, 0), atol=1e-3)
    np.testing.assert_allclose(phys["box_mm"][3:], np.max(corners, 0), atol=1e-3)
    centre = image.TransformContinuousIndexToPhysicalPoint((3.5, 5.5, 2.0))
    np.testing.assert_allclose(phys["center_mm"], centre, atol=1e-3)


def test_candidate_label_volume_paints_best_last():
    cands = [{"box": [0, 0, 0, 4, 4, 2], "score": 0.9}, {"box": [2, 2, 1, 6, 6, 3], "score": 0.5}]
    volume = candidate_label_volume(cands, (3, 8, 8))
    assert volume[1, 3, 3] == 1  # overlap goes to the higher score
    assert volume[2, 5, 5] == 2 and volume[0, 7, 7] == 0


def test_run_steps_resumes_and_reports_failures(tmp_path):
    log = tmp_path / "ran.txt"
    touch = [sys.executable, "-c", f"open({str(log)!r}, 'a').write('x')"]
    steps = [Step("first", touch), Step("second", touch)]
    run_steps(steps, str(tmp_path))
    run_steps(steps, str(tmp_path))  # both marked done: nothing runs again
    assert log.read_text() == "xx"
    with pytest.raises(StepFailed, match="step 'boom' failed"):
        run_steps([Step("boom", [sys.executable, "-c", "raise SystemExit(3)"])], str(tmp_path))


def test_parallel_lanes_run_side_by_side_with_one_thread_and_resume(tmp_path):
    def record(name):  # appends "name:OMP_NUM_THREADS" to ran.txt
        code = (f"import os; open({str(tmp_path / 'ran.txt')!r}, 'a')"
                f".write('{name}:' + os.environ.get('OMP_NUM_THREADS', '-') + ' ')")
        return Step(name, [sys.executable, "-c", code])

    # lane a waits until lane b's first step ran: only passes if the lanes overlap in time
    wait_b = [sys.executable, "-c", "import os, time\n"
              f"while 'b1' not in open({str(tmp_path / 'ran.txt')!r}).read(): time.sleep(0.05)"]
    (tmp_path / "ran.txt").write_text("")
    group = Parallel([[Step("a1", wait_b), record("a2")], [record("b1")]], threads=1)
    run_steps([record("first"), group, record("last")], str(tmp_path))
    ran = (tmp_path / "ran.txt").read_text().split()
    assert ran[0].startswith("first:")
    assert set(ran[1:3]) == {"b1:1", "a2:1"} and ran[3].startswith("last:")
    assert (tmp_path / "logs" / "a1.log").exists()
    run_steps([record("first"), group, record("last")], str(tmp_path))  # all done: no reruns
    assert (tmp_path / "ran.txt").read_text().split() == ran


def test_parallel_lane_failure_stops_the_other_lane_and_names_the_log(tmp_path):
    sleeper = Step("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    boom = Step("boom", [sys.executable, "-c", "import sys; print('bad input'); sys.exit(3)"])
    with pytest.raises(StepFailed, match=r"step 'boom' failed \(exit 3\) \(output: .*boom.log\)"):
        run_steps([Parallel([[sleeper], [boom]])], str(tmp_path))
    assert "bad input" in (tmp_path / "logs" / "boom.log").read_text()
    assert not (tmp_path / ".steps" / "sleeper.done").exists()


def test_demo_trains_the_two_detectors_side_by_side_unless_sequential():
    demo = load_tool("demo")
    *_, group = demo.build_steps(demo.parse_args(["--out", "O"]))
    assert isinstance(group, Parallel) and group.threads == 1
    names = [[s.name for s in lane] for lane in group.lanes]
    assert names == [["train detector (masked) fold0", "evaluate detector (masked) fold0",
                      "evaluate detector (masked + flip TTA) fold0", "study merge (masked) fold0",
                      "explain masses (masked) fold0", "FP reducer (masked) fold0"],
                     ["train detector (no mask) fold0", "evaluate detector (no mask) fold0"]]
    unmasked_train = group.lanes[1][0].command
    assert unmasked_train[unmasked_train.index("INPUT.BREAST_MASK.ENABLED") + 1] == "False"
    tta = group.lanes[0][2].command
    assert tta[tta.index("TEST.BREAST_TTA.FLIP") + 1] == "True" and "--eval-only" in tta
    weights = tta[tta.index("MODEL.WEIGHTS") + 1]
    assert weights == os.path.join(os.path.abspath("O"), "det_masked", "fold0", "model_final.pth")
    assert tta[tta.index("OUTPUT_DIR") + 1].endswith("det_masked_tta")
    study = group.lanes[0][3].command
    eval_dir = study[study.index("--detections") + 1]
    assert eval_dir.endswith(os.path.join("det_masked", "fold0", "inference", "breast_fold0_val"))
    assert study[study.index("--box-merge") + 1] == "union" and "--no-box-fit" in study
    assert study[study.index("--out") + 1].endswith("det_masked_study")
    explain = group.lanes[0][4].command
    trained_dir = os.path.join(os.path.abspath("O"), "det_masked", "fold0")
    assert explain[explain.index("--config-file") + 1] == os.path.join(trained_dir, "config.yaml")
    assert explain[explain.index("--weights") + 1] == weights
    assert explain[explain.index("--out") + 1] == demo.explain_path(os.path.abspath("O"))
    assert explain[explain.index("--json") + 1] == demo.explain_path(os.path.abspath("O"), "json")
    reducer = group.lanes[0][5].command
    assert reducer[reducer.index("--apply") + 1] == demo.DEMO_REDUCER
    assert reducer[reducer.index("--eval") + 1] == eval_dir
    assert reducer[reducer.index("--out") + 1].endswith("det_masked_fp")
    for flags in (["--sequential", "--no-tta"], ["--no-ablation", "--no-tta"]):
        steps = demo.build_steps(demo.parse_args(["--out", "O", *flags]))
        assert not any(isinstance(s, Parallel) for s in steps)
        assert steps[-1].name.startswith(("evaluate detector", "explain masses", "FP reducer"))


def test_demo_applies_the_saved_reducer_only_to_cases_it_never_saw():
    """The shipped reducer's provenance excludes the default demo cohort's ids; a larger cohort
    reaches its training ids and the demo leaves the reducer out (stated in the report)."""
    demo = load_tool("demo")
    reducer = load_reducer(demo.DEMO_REDUCER)
    prov = reducer.provenance
    demo_ids = {f"PH{i:04d}" for i in range(demo.parse_args([]).cases)}
    assert not demo_ids & set(prov["training_case_ids"])
    assert demo_ids <= set(prov["excluded_case_ids"])
    assert prov["fold"] is None and prov["training_folds"] == [0, 1, 2, 3, 4]
    assert demo.reducer_refusal(demo.parse_args(["--out", "O"])) is None
    assert "skipped" in demo.reducer_refusal(demo.parse_args(["--no-fp-reducer"]))
    refusal = demo.reducer_refusal(demo.parse_args(["--cases", "75"]))
    assert "refusing to score its own training cases" in refusal
    steps = demo.build_steps(demo.parse_args(["--out", "O", "--cases", "75"]))
    names = [s.name for lane in steps[-1].lanes for s in lane]
    assert "FP reducer (masked) fold0" not in names


def test_cross_validation_steps_are_fold_correct():
    cv = load_tool("cross_validate")
    args = cv.parse_args(["--config-file", QUICK, "--data", "D", "--folds", "0,2", "--out", "O"])
    steps = cv.build_steps(args)
    names = [s.name for s in steps]
    assert names[0] == "segmentation unetplusplus fold0"
    assert names[-3:] == ["cross-fold FROC report", "mass verdicts report",
                          "false-positive reducer (out of fold)"]
    # Each fold's masses are traced after its evaluation; the report pools the folds' verdicts.
    assert names[names.index("evaluate detector fold2") + 1] == "explain masses (detector) fold2"
    explain = [s for s in steps if s.name == "explain masses (detector) fold2"][0].command
    fold2 = os.path.join(os.path.abspath("O"), "detector", "fold2")
    assert explain[explain.index("--config-file") + 1] == os.path.join(fold2, "config.yaml")
    assert explain[explain.index("--json") + 1] == os.path.join(fold2, "verdicts.json")
    summary = steps[-2].command
    assert summary[summary.index("--summarize") + 1:summary.index("--out")] == [
        os.path.join(os.path.abspath("O"), "detector", f"fold{k}", "verdicts.json") for k in (0, 2)]
    reducer = steps[-1].command
    assert reducer[reducer.index("--cv") + 1] == os.path.abspath("O")
    assert reducer[reducer.index("--masks") + 1] == "fold"
    masks = [s for s in steps if s.name == "breast masks fold2"][0].command
    assert masks[masks.index("--weights") + 1].endswith(os.path.join("unetplusplus_fold2",
                                                                     "model_last.pth"))
    evaluate = [s for s in steps if s.name == "evaluate detector fold2"][0].command
    assert "--eval-only" in evaluate and evaluate[evaluate.index("--fold") + 1] == "2"
    train = [s for s in steps if s.name == "train detector fold2"][0].command
    assert train[-2:] == ["TEST.FINAL_EVAL", "False"]  # the next step evaluates

    args = cv.parse_args(["--config-file", QUICK, "--data", "D", "--folds", "0,1,2", "--out", "O",
                          "--lanes", "2", "--no-fp-reducer", "--no-explain"])
    group, report = cv.build_steps(args)
    assert isinstance(group, Parallel) and report.name == "cross-fold FROC report"
    assert not any(s.name.startswith("explain") for lane in group.lanes for s in lane)
    lanes = [[s.name for s in lane if s.name.startswith("evaluate")] for lane in group.lanes]
    assert lanes == [["evaluate detector fold0", "evaluate detector fold2"],
                     ["evaluate detector fold1"]]


def test_unreachable_weights_stop_training_setup_with_advice(trained):
    train_net = trained["train_net"]
    args = train_net.argument_parser().parse_args(
        ["--config-file", QUICK, "--fold", "0", "--data", trained["data"], *trained["opts"],
         "MODEL.WEIGHTS", "http://127.0.0.1:9/R-101.pkl"])
    from breast_d2.engine import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError, match="MODEL.WEIGHTS /path/to/R-101.pkl"):
        train_net.setup(args)


def test_missing_fold_masks_are_a_clear_error(trained):
    train_net = trained["train_net"]
    args = train_net.argument_parser().parse_args(
        ["--config-file", QUICK, "--fold", "1", "--data", trained["data"], "OUTPUT_DIR",
         os.path.join(trained["tmp"], "nomask")])  # cached fold1 masks were never written
    with pytest.raises(FileNotFoundError, match="predict_breast_masks"):
        train_net.main(args)


def test_job_cli_turns_a_failed_step_into_one_line(capsys):
    from breast_d2.jobs import run_job_cli

    def failing_job():
        raise StepFailed("step 'x' failed (exit 3): cmd")

    with pytest.raises(SystemExit) as e:
        run_job_cli(failing_job)
    assert e.value.code == 1
    assert capsys.readouterr().err == "error: step 'x' failed (exit 3): cmd\n"


def _traced_model(trained, *opts):
    from detectron2.modeling import build_model

    from breast_d2.engine import BreastCheckpointer, configure_fold, load_breast_config

    cfg = load_breast_config(QUICK, [*trained["opts"], *opts])
    configure_fold(cfg, 0, trained["data"])
    model = build_model(cfg).eval()
    BreastCheckpointer(model).load(os.path.join(trained["out"], "fold0", "model_final.pth"))
    return cfg, model


def test_trace_boxes_agrees_with_the_models_own_detections(trained):
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Boxes, pairwise_iou

    from breast_d2.data.mapper import BreastMaskDatasetMapper
    from breast_d2.modeling.introspect import trace_boxes

    # Every box the head keeps (score threshold 0), so the model returns detections to trace.
    cfg, model = _traced_model(trained, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    d = next(d for d in DatasetCatalog.get(cfg.DATASETS.TEST[0]) if d["annotations"])
    image_input = BreastMaskDatasetMapper(cfg, is_train=False)(dict(d))
    with torch.no_grad():  # the model's own forward pass, in the input's frame
        inst = model([{"image": image_input["image"]}])[0]["instances"]
    assert len(inst) > 0
    # Detections, the hulls of overlapping pairs of them (each can match several detections at
    # IoU >= 0.5, so the highest score must be picked), and a corner box matching nothing.
    dets = inst.pred_boxes.tensor
    pair_iou = pairwise_iou(inst.pred_boxes, inst.pred_boxes)
    i, j = torch.nonzero(torch.triu(pair_iou > 0.3, diagonal=1), as_tuple=True)
    hulls = torch.cat([torch.minimum(dets[i, :2], dets[j, :2]),
                       torch.maximum(dets[i, 2:], dets[j, 2:])], dim=1)[:40]
    boxes = torch.cat([dets[:6], hulls, torch.tensor([[0.0, 0.0, 1.0, 1.0]])])
    traces = trace_boxes(model, image_input, boxes)
    iou = pairwise_iou(Boxes(boxes), inst.pred_boxes)
    hit_scores = [inst.scores[row >= 0.5] for row in iou]
    assert any(len(h) >= 2 and h.max() > h.min() for h in hit_scores)  # the test can tell
    centres = Boxes(boxes).get_centers()
    for i, t in enumerate(traces):
        hits = iou[i] >= 0.5
        expected = float(inst.scores[hits].max()) if hits.any() else None
        if expected is None:
            assert t["detection_score"] is None
        else:
            assert t["detection_score"] == pytest.approx(expected, abs=1e-5)
        (x, y), d = centres[i], dets
        over = (d[:, 0] <= x) & (x <= d[:, 2]) & (d[:, 1] <= y) & (y <= d[:, 3])
        if over.any():
            k = int(torch.nonzero(over).flatten()[inst.scores[over].argmax()])
            assert t["centre_detection_score"] == pytest.approx(float(inst.scores[k]), abs=1e-5)
            assert t["centre_detection_iou"] == pytest.approx(float(iou[i, k]), abs=1e-5)
        else:
            assert t["centre_detection_score"] is None and t["centre_detection_iou"] is None
        assert t["proposals"] > 0
        if t["best_rank"] is None:  # no proposal overlaps the box
            assert t["best_iou"] == 0.0 and t["best_head_score"] is None
        else:
            assert 1 <= t["best_rank"] <= t["proposals"] and 0.0 < t["best_iou"] <= 1.0
            assert 0.0 <= t["best_head_score"] <= 1.0
        assert (t["matched_head_score"] is None) == (t["matched_proposals"] == 0)
    assert all(t["best_rank"] is not None for t in traces[:6])  # detections come from proposals
    assert traces[-1]["detection_score"] is None  # a 1-pixel box in the corner matches nothing
    model.train()
    with pytest.raises(ValueError, match="eval"):
        trace_boxes(model, image_input, boxes)


def test_explain_misses_gives_each_mass_a_verdict_and_names_a_bad_case(trained, capsys):
    from breast_d2.evaluation.verdicts import VERDICTS, mass_verdict

    explain_misses = load_tool("explain_misses")
    found = {"detection_score": 0.7, "centre_detection_score": 0.7, "matched_proposals": 1}
    low = {"detection_score": 0.3, "centre_detection_score": 0.3, "matched_proposals": 2}
    boxed_small = {"detection_score": None, "centre_detection_score": 0.9, "matched_proposals": 1}
    unproposed = {"detection_score": None, "centre_detection_score": None, "matched_proposals": 0}
    assert mass_verdict([unproposed, found], 0.5) == "found"
    assert mass_verdict([low, boxed_small], 0.5) == "box off"
    assert mass_verdict([low, unproposed], 0.5) == "box head"
    assert mass_verdict([unproposed, unproposed], 0.5) == "RPN"
    with open(os.path.join(trained["data"], "splits.json")) as f:
        folds = json.load(f)["folds"][0]
    with open(os.path.join(trained["data"], "fold0_val.json")) as f:
        coco = json.load(f)
    case_of_image = {im["id"]: im["case_id"] for im in coco["images"]}
    masses = {(case_of_image[a["image_id"]], a["lesion_index"]) for a in coco["annotations"]}
    case_id = sorted(masses)[0][0]
    weights = os.path.join(trained["out"], "fold0", "model_final.pth")
    base = ["--config-file", QUICK, "--weights", weights, "--data", trained["data"], "--fold", "0"]
    # A test-time resize (96 -> 144 px): the masses' boxes are scaled into the input's frame.
    opts = [*trained["opts"], "INPUT.MIN_SIZE_TEST", "144", "INPUT.MAX_SIZE_TEST", "144"]
    def verdict_rows(text, case_ids):
        return [line for line in text.splitlines() if line.startswith("|")
                and line.split("|")[1].strip() in case_ids
                and line.rstrip(" |").split("|")[-1].strip() in VERDICTS]

    assert explain_misses.main([*base, "--case", case_id, *opts]) == 0
    assert len(verdict_rows(capsys.readouterr().out, {case_id})) == sum(
        c == case_id for c, _ in masses)
    # No --case: every validation case with a mass; --out holds what was printed.
    out_md = os.path.join(trained["tmp"], "explain", "explain.md")
    out_json = os.path.join(trained["tmp"], "explain", "verdicts.json")
    assert explain_misses.main([*base, "--out", out_md, "--json", out_json, *opts]) == 0
    printed = capsys.readouterr().out
    rows = verdict_rows(printed, {c for c, _ in masses})
    assert len(rows) == len(masses)
    with open(out_md, encoding="utf-8") as f:
        assert f.read() == printed
    # --json: the same masses and verdicts as the printed table, in its order.
    with open(out_json, encoding="utf-8") as f:
        record = json.load(f)
    assert record["fold"] == 0 and record["min_score"] == 0.5
    assert [(m["case_id"], str(m["lesion_index"]), m["verdict"]) for m in record["masses"]] == [
        (r.split("|")[1].strip(), r.split("|")[2].strip(), r.rstrip(" |").split("|")[-1].strip())
        for r in rows]
    # --candidates: each mass's 3D outcome in the fold's evaluation, which adds up to its FROC.
    from breast_d2.jobs import fold_froc_dir

    eval_dir = fold_froc_dir(trained["out"], 0)
    with_3d = os.path.join(trained["tmp"], "explain", "verdicts_3d.json")
    assert explain_misses.main([*base, "--candidates", eval_dir, "--json", with_3d, *opts]) == 0
    assert "3D candidate" in capsys.readouterr().out
    with open(with_3d, encoding="utf-8") as f:
        record_3d = json.load(f)
    with open(os.path.join(eval_dir, "froc.json"), encoding="utf-8") as f:
        froc = json.load(f)
    assert record_3d["candidates"] == eval_dir and len(record_3d["masses"]) == froc["num_lesions"]
    fps = [m["candidate_fp_per_case"] for m in record_3d["masses"]]
    for rate, sens in froc["sensitivity_at"].items():
        assert sum(f is not None and f <= float(rate) for f in fps) / len(fps) == \
            pytest.approx(sens)
    assert [m["verdict"] for m in record_3d["masses"]] == [m["verdict"] for m in record["masses"]]
    with pytest.raises(SystemExit) as e:
        explain_misses.main([*base, "--candidates", out_md, *opts])
    assert e.value.code == 2 and "is not a folder" in capsys.readouterr().err
    # --summarize pools fold files; one fold given twice is refused.
    other = dict(record, fold=3, masses=record["masses"][:1])
    other_json = os.path.join(trained["tmp"], "explain", "fold3.json")
    with open(other_json, "w", encoding="utf-8") as f:
        json.dump(other, f)
    summary_md = os.path.join(trained["tmp"], "explain", "summary.md")
    assert explain_misses.main(["--summarize", out_json, other_json, "--out", summary_md]) == 0
    printed = capsys.readouterr().out
    pooled = [line for line in printed.splitlines() if line.startswith("| pooled")][0]
    counts = [c.strip() for c in pooled.strip("|").split("|")[1:]]
    verdicts = [m["verdict"] for m in record["masses"] + other["masses"]]
    assert counts == [str(len(verdicts))] + [str(verdicts.count(v)) for v in VERDICTS]
    with open(summary_md, encoding="utf-8") as f:
        assert f.read() == printed
    for argv, why in ((["--summarize", out_json, out_json], "fold 0 is given more than once"),
                      (["--summarize", out_md], "not JSON"),
                      (["--summarize", out_json, "--fold", "0"], "takes only --out, not --fold"),
                      (["--summarize", out_json, "--min-score", "0.3"],
                       "takes only --out, not --min-score"),
                      (["--summarize", out_json, "--candidates", eval_dir],
                       "takes only --out, not --candidates")):
        with pytest.raises(SystemExit) as e:
            explain_misses.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert why in err and len(err.splitlines()) == 1, err
    unlabelled = [{"case_id": "C1", "file_name": "slices/C1/0003.png",
                   "annotations": [{"bbox": [1, 2, 3, 4], "bbox_mode": 1}]}]
    with pytest.raises(ValueError, match="slices/C1/0003.png: an annotation has no lesion_index"):
        explain_misses.mass_slices(unlabelled, {"C1"})
    no_mass = [{"case_id": "C2", "file_name": "slices/C2/0000.png", "annotations": []}]
    with pytest.raises(ValueError, match="case C2 has no annotated mass in here"):
        explain_misses.cases_to_explain(no_mass, ["C2"], "here")
    # A fold without any mass (small cohorts): nothing to trace, not an error.
    assert explain_misses.cases_to_explain(no_mass, [], "here") == {}
    assert explain_misses.explain(None, None, {}, 0.5) == ([], [])
    capsys.readouterr()  # its empty progress bar
    missing = os.path.join(trained["tmp"], "none.pth")
    with pytest.raises(SystemExit) as e:
        explain_misses.main([*base[:2], "--weights", missing, *base[4:], *trained["opts"]])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {missing}: detector weights not found"
    for bad, why in ((folds["train"][0], "not a validation case of fold 0"),
                     ("NOPE", "case NOPE is not a validation case")):
        with pytest.raises(SystemExit) as e:
            explain_misses.main([*base, "--case", bad, *trained["opts"]])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert why in err and len(err.splitlines()) == 1


def test_demo_report_takes_the_per_mass_table_of_explain_misses(tmp_path):
    demo = load_tool("demo")
    verdicts = tmp_path / "det_masked_explain.json"
    mass = {"case_id": "PH0039", "lesion_index": 1, "slices": 5, "best_proposal_iou": 0.35,
            "slices_with_proposal": 0, "best_detection_score": 0.0, "best_centre_score": 0.21,
            "best_centre_iou": 0.3, "verdict": "RPN"}
    verdicts.write_text(json.dumps({"fold": 0, "min_score": 0.5, "match_iou": 0.5,
                                    "masses": [mass]}))
    section = demo.mass_verdict_section(str(verdicts))
    assert section.startswith("### ")
    row = section.rstrip().splitlines()[-1]
    assert [c.strip() for c in row.strip("|").split("|")] == ["PH0039", "1", "5", "0.35", "0",
                                                              "0.000", "0.210 (0.30)", "RPN"]
    assert demo.mass_verdict_section(str(tmp_path / "missing.json")) is None
    verdicts.write_text(json.dumps({"fold": 0, "masses": [dict(mass, verdict="lost")]}))
    with pytest.raises(ValueError, match="mass 0 has no verdict among found, box off, box head"):
        demo.mass_verdict_section(str(verdicts))


def test_trace_boxes_follows_cascade_heads_to_the_models_own_detections():
    """A cascade (three box stages): the traced detection scores are the model's own, and each
    proposal's head score is its stages' average, the score the cascade's inference ranks."""
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, pairwise_iou

    from breast_d2.engine import load_breast_config
    from breast_d2.modeling.introspect import trace_boxes

    cfg = load_breast_config(QUICK.replace("frcnn_r18_quick", "frcnn_r18_cascade_quick"),
                             ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg).eval()  # random weights: the stages still disagree, as they must
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 96, 96), np.uint8))
    image_input = {"image": image}
    with torch.no_grad():
        inst = model([{"image": image}])[0]["instances"]
    assert len(inst) > 1
    boxes = torch.cat([inst.pred_boxes.tensor[:8], torch.tensor([[0.0, 0.0, 1.0, 1.0]])])
    traces = trace_boxes(model, image_input, boxes)
    iou = pairwise_iou(Boxes(boxes), inst.pred_boxes)
    for i, t in enumerate(traces):
        hits = iou[i] >= 0.5
        if hits.any():
            assert t["detection_score"] == pytest.approx(float(inst.scores[hits].max()), abs=1e-5)
        else:
            assert t["detection_score"] is None
        if t["best_head_score"] is not None:
            assert 0.0 <= t["best_head_score"] <= 1.0
    # Every detection's score is some proposal's stage-averaged head score (one class here).
    head_scores = [t["matched_head_score"] for t in traces[:8] if t["matched_head_score"]]
    assert head_scores and max(head_scores) >= float(inst.scores.max()) - 1e-5

