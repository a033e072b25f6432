"""Test-time horizontal flip: weighted box fusion on hand-made boxes, the BreastFlipTTA wrapper on
a fake detector, and an eval-only run with TEST.BREAST_TTA.FLIP on the tiny phantom."""
import json
import os
import tempfile

import numpy as np
import pytest
import torch
from torch import nn

from detectron2.structures import Boxes, Instances

from breast_d2.engine import ConfigError, load_breast_config
from breast_d2.modeling import BreastFlipTTA, apply_test_time_flip, weighted_box_fusion
from helpers import QUICK, load_tool


# ---------------------------------------------------------------------------------------------
# weighted_box_fusion
# ---------------------------------------------------------------------------------------------
def test_wbf_averages_overlapping_boxes_by_score():
    boxes, scores, counts = weighted_box_fusion(
        [np.array([[10.0, 10, 30, 30]]), np.array([[12.0, 10, 32, 30]])],
        [np.array([0.9]), np.array([0.3])],
    )
    np.testing.assert_allclose(boxes, [[(0.9 * 10 + 0.3 * 12) / 1.2, 10, (0.9 * 30 + 0.3 * 32)
                                        / 1.2, 30]])
    np.testing.assert_allclose(scores, [0.6])  # mean over the two passes
    assert counts.tolist() == [2]


def test_wbf_box_of_one_pass_keeps_half_its_score():
    boxes, scores, counts = weighted_box_fusion(
        [np.array([[0.0, 0, 10, 10], [50, 50, 60, 60]]), np.zeros((0, 4))],
        [np.array([0.8, 0.4]), np.zeros(0)],
    )
    np.testing.assert_allclose(boxes, [[0, 0, 10, 10], [50, 50, 60, 60]])
    np.testing.assert_allclose(scores, [0.4, 0.2])
    assert counts.tolist() == [1, 1]


def test_wbf_threshold_is_strict_and_passes_do_not_fuse_with_themselves():
    a, b = np.array([[0.0, 0, 10, 10]]), np.array([[0.0, 0, 10, 5]])  # IoU exactly 0.5
    _, scores, _ = weighted_box_fusion([a, b], [np.array([0.6]), np.array([0.6])], iou_thresh=0.5)
    np.testing.assert_allclose(scores, [0.3, 0.3])  # not fused at IoU == threshold
    _, scores, _ = weighted_box_fusion([a, b], [np.array([0.6]), np.array([0.6])], iou_thresh=0.4)
    np.testing.assert_allclose(scores, [0.6])
    # Two identical boxes of one pass are two findings, each joined by at most one other box.
    same = np.array([[0.0, 0, 10, 10], [0.0, 0, 10, 10]])
    _, scores, counts = weighted_box_fusion([same, a], [np.array([0.9, 0.5]), np.array([0.7])])
    np.testing.assert_allclose(scores, [0.8, 0.25])
    assert counts.tolist() == [2, 1]


def test_wbf_refuses_malformed_input():
    with pytest.raises(ValueError, match="pass 1"):
        weighted_box_fusion([np.zeros((1, 4)), np.zeros((2, 3))], [np.ones(1), np.ones(2)])
    with pytest.raises(ValueError, match="iou_thresh"):
        weighted_box_fusion([np.zeros((0, 4))], [np.zeros(0)], iou_thresh=1.0)


# ---------------------------------------------------------------------------------------------
# BreastFlipTTA on fake detectors
# ---------------------------------------------------------------------------------------------
class _BrightSpotDetector(nn.Module):
    """Finds the bright square of the image: a 4-pixel-wide box around its brightest columns and
    rows, in the output frame (height, width); a second, fixed box that does not follow the
    image (so it lands elsewhere once un-flipped)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, batched_inputs):
        self.calls += 1
        outputs = []
        for inp in batched_inputs:
            image = inp["image"].float().sum(0)
            ys, xs = torch.nonzero(image == image.max(), as_tuple=True)
            box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            inst = Instances((inp["height"], inp["width"]))
            inst.pred_boxes = Boxes(torch.tensor([[float(v) for v in box], [0.0, 0, 8, 8]]))
            inst.scores = torch.tensor([0.8 if self.calls == 1 else 0.6, 0.5])
            inst.pred_classes = torch.zeros(2, dtype=torch.int64)
            outputs.append({"instances": inst})
        return outputs


def test_flip_tta_fuses_a_box_and_its_flipped_twin_into_the_box():
    image = torch.zeros(3, 32, 40, dtype=torch.uint8)
    image[:, 5:11, 3:9] = 200  # off-centre: its mirror image is elsewhere
    detector = _BrightSpotDetector()
    tta = BreastFlipTTA(detector, fusion_iou=0.55).eval()
    (out,) = tta([{"image": image, "height": 32, "width": 40}])
    inst = out["instances"]
    assert detector.calls == 2
    assert inst.image_size == (32, 40)
    boxes, scores = inst.pred_boxes.tensor.numpy(), inst.scores.numpy()
    # The bright square, found in both passes: the box itself, at the mean score.
    np.testing.assert_allclose(boxes[0], [3, 5, 9, 11])
    assert scores[0] == pytest.approx(0.7)
    # The fixed box does not follow the flip: found once at each side, half its score each.
    assert sorted(map(tuple, boxes[1:].tolist())) == [(0, 0, 8, 8), (32, 0, 40, 8)]
    np.testing.assert_allclose(scores[1:], [0.25, 0.25])
    assert inst.pred_classes.tolist() == [0, 0, 0]


def test_flip_tta_is_inference_only_and_follows_the_config():
    tta = BreastFlipTTA(_BrightSpotDetector())
    with pytest.raises(RuntimeError, match="inference only"):
        tta([{"image": torch.zeros(3, 8, 8), "height": 8, "width": 8}])
    cfg = load_breast_config(QUICK)
    model = nn.Linear(1, 1)
    assert cfg.TEST.BREAST_TTA.FLIP is False and apply_test_time_flip(cfg, model) is model
    cfg.TEST.BREAST_TTA.FLIP = True
    wrapped = apply_test_time_flip(cfg, model)
    assert isinstance(wrapped, BreastFlipTTA) and wrapped.model is model
    assert wrapped.max_detections == cfg.TEST.DETECTIONS_PER_IMAGE
    cfg.TEST.BREAST_TTA.FUSION_IOU = 1.5
    with pytest.raises(ConfigError, match="TEST.BREAST_TTA.FUSION_IOU"):
        apply_test_time_flip(cfg, model)


# ---------------------------------------------------------------------------------------------
# Eval-only with the flip on
# ---------------------------------------------------------------------------------------------
def test_eval_only_with_flip_writes_froc(converted, monkeypatch):
    """An untrained quick model (its initial weights saved as a checkpoint) evaluated with
    TEST.BREAST_TTA.FLIP: the wrapper runs on every validation slice and froc.json is written."""
    from breast_d2.modeling import tta as tta_module

    torch.set_num_threads(1)
    calls = []
    forward = tta_module.BreastFlipTTA.forward
    monkeypatch.setattr(tta_module.BreastFlipTTA, "forward",
                        lambda self, inputs: calls.append(len(inputs)) or forward(self, inputs))
    with tempfile.TemporaryDirectory() as tmp:
        train_net = load_tool("train_net")
        opts = ["OUTPUT_DIR", tmp, "INPUT.BREAST_MASK.SOURCE", "gt", "TEST.FROC.BOOTSTRAP", "0"]
        base = ["--config-file", QUICK, "--fold", "0", "--data", converted.data]
        cfg = train_net.setup(train_net.argument_parser().parse_args(base + opts))
        weights = os.path.join(tmp, "init.pth")
        torch.save({"model": train_net.Trainer.build_model(cfg).state_dict()}, weights)
        args = train_net.argument_parser().parse_args(
            base + ["--eval-only"] + opts + ["MODEL.WEIGHTS", weights, "TEST.BREAST_TTA.FLIP",
                                             "True"])
        results = train_net.main(args)
        assert set(results["froc"]) >= {"sens@1", "cpm"}
        with open(os.path.join(tmp, "fold0", "inference", "breast_fold0_val", "froc.json")) as f:
            froc = json.load(f)
        with open(os.path.join(converted.data, "splits.json")) as f:
            val_cases = json.load(f)["folds"][0]["val"]
        assert sorted(froc["case_ids"]) == sorted(val_cases)
        with open(os.path.join(converted.data, "cases.json")) as f:
            num_slices = sum(c["shape"][2] for c in json.load(f)["cases"]
                             if c["case_id"] in val_cases)
        assert sum(calls) == num_slices  # every validation slice went through the flip wrapper


def test_case_detector_runs_the_flip_when_the_key_is_on(tmp_path):
    from detectron2.modeling import build_model

    from breast_d2.inference import CaseDetector

    torch.set_num_threads(1)
    cfg = load_breast_config(QUICK, ["INPUT.BREAST_MASK.ENABLED", "False", "MODEL.DEVICE", "cpu"])
    weights = str(tmp_path / "init.pth")
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    assert not isinstance(CaseDetector(cfg, weights).model, BreastFlipTTA)
    cfg.TEST.BREAST_TTA.FLIP = True
    detector = CaseDetector(cfg, weights)
    assert isinstance(detector.model, BreastFlipTTA) and not detector.model.training
    images = np.random.default_rng(0).integers(0, 255, (2, 40, 56, 3), dtype=np.uint8)
    detections = detector.detect_slices(images, "PH0000", progress=False)
    assert detections  # an untrained box head still scores its proposals above 0.05
    for d in detections:  # boxes in the input slice's frame, un-flipped
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 <= x1 <= 56 and 0 <= y0 <= y1 <= 40 and 0 <= d["score"] <= 1
