"""Cascade box refinement (configs/*cascade*.yaml): the configs select detectron2's
CascadeROIHeads, and the quick one trains 2 iterations and evaluates FROC on the tiny phantom."""
import json
import os
import tempfile

import torch

from detectron2.modeling.roi_heads import CascadeROIHeads

from breast_d2.engine import load_breast_config
from helpers import REPO, load_tool

QUICK_CASCADE = os.path.join(REPO, "configs", "quick_schedules", "frcnn_r18_cascade_quick.yaml")
R101_CASCADE = os.path.join(REPO, "configs", "frcnn_r101_cascade.yaml")


def test_cascade_configs_keep_the_study_detector_but_the_box_heads():
    study = load_breast_config(os.path.join(REPO, "configs", "frcnn_r101.yaml"))
    cascade = load_breast_config(R101_CASCADE)
    assert cascade.MODEL.ROI_HEADS.NAME == "CascadeROIHeads"
    assert cascade.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG
    assert tuple(cascade.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) == (0.5, 0.6, 0.7)
    assert cascade.MODEL.ROI_BOX_CASCADE_HEAD.IOUS[0] == cascade.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]
    assert len(cascade.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS) == 3
    assert cascade.MODEL.RESNETS.DEPTH == study.MODEL.RESNETS.DEPTH == 101
    assert cascade.SOLVER.EPOCHS == study.SOLVER.EPOCHS
    quick = load_breast_config(QUICK_CASCADE)
    assert quick.MODEL.ROI_HEADS.NAME == "CascadeROIHeads" and quick.MODEL.RESNETS.DEPTH == 18
    demo = load_breast_config(os.path.join(REPO, "configs", "frcnn_cpu_demo.yaml"))
    demo_cascade = load_breast_config(os.path.join(REPO, "configs", "frcnn_cpu_demo_cascade.yaml"))
    assert demo_cascade.MODEL.ROI_HEADS.NAME == "CascadeROIHeads"
    assert demo.MODEL.ROI_HEADS.NAME == "StandardROIHeads"
    for key in ("MODEL.RESNETS.DEPTH", "SOLVER.MAX_ITER", "SEED", "INPUT.MIN_SIZE_TRAIN"):
        a, b = demo, demo_cascade
        for part in key.split("."):
            a, b = getattr(a, part), getattr(b, part)
        assert a == b, key  # only the box heads differ


def test_quick_cascade_trains_and_evaluates(converted):
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        train_net = load_tool("train_net")
        args = train_net.argument_parser().parse_args(
            ["--config-file", QUICK_CASCADE, "--fold", "0", "--data", converted.data,
             "OUTPUT_DIR", tmp, "INPUT.BREAST_MASK.SOURCE", "gt", "SOLVER.MAX_ITER", "2",
             "SOLVER.WARMUP_ITERS", "1", "TEST.FROC.BOOTSTRAP", "0"])
        trainer = train_net.Trainer(train_net.setup(args))
        assert isinstance(trainer.model.roi_heads, CascadeROIHeads)
        assert len(trainer.model.roi_heads.box_predictor) == 3
        trainer.resume_or_load(resume=False)
        trainer.train()
        fold_dir = os.path.join(tmp, "fold0")
        assert os.path.isfile(os.path.join(fold_dir, "model_final.pth"))
        with open(os.path.join(fold_dir, "metrics.json")) as f:
            records = [json.loads(line) for line in f]
        assert any("loss_box_reg_stage2" in r for r in records)  # the third stage trained
        assert any("froc/cpm" in r for r in records)  # the end-of-training FROC ran
        inference = os.path.join(fold_dir, "inference", "breast_fold0_val")
        assert os.path.getsize(os.path.join(inference, "froc.json")) > 0
