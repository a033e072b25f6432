"""Every config under configs/ loads; epoch schedule; weights-unavailable message."""
import glob
import os

import pytest

from detectron2.config import get_cfg

from breast_d2.config import add_breast_config
from breast_d2.engine import WeightsUnavailableError, apply_epoch_schedule, resolve_weights
from helpers import REPO

CONFIG_DIR = os.path.join(REPO, "configs")
CONFIGS = sorted(  # every loadable config (Base-*.yaml files are only meant as _BASE_)
    f
    for f in glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True)
    if not os.path.basename(f).startswith("Base-")
)


def _load(path):
    cfg = get_cfg()
    add_breast_config(cfg)
    cfg.merge_from_file(path, allow_unsafe=False)
    return cfg


def test_configs_found():
    names = {os.path.basename(c) for c in CONFIGS}
    assert {"frcnn_r101.yaml", "frcnn_cpu_demo.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads(path):
    cfg = _load(path)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == "ROIAlignV2"
    assert cfg.MODEL.RPN.IOU_THRESHOLDS == [0.3, 0.7]
    assert cfg.INPUT.BREAST_MASK.ENABLED


def test_r101_is_the_study_schedule():
    cfg = _load(os.path.join(CONFIG_DIR, "frcnn_r101.yaml"))
    assert cfg.MODEL.RESNETS.DEPTH == 101
    assert cfg.SOLVER.IMS_PER_BATCH == 8 and cfg.SOLVER.BASE_LR == 0.001
    assert cfg.SOLVER.MOMENTUM == 0.9 and cfg.SOLVER.WEIGHT_DECAY == 0.0005
    assert (cfg.SOLVER.EPOCHS, cfg.SOLVER.EPOCH_DECAY, cfg.SOLVER.GAMMA) == (30, 10, 0.1)
    assert cfg.MODEL.WEIGHTS.endswith("R-101.pkl")


def test_epoch_schedule_follows_the_data():
    cfg = _load(os.path.join(CONFIG_DIR, "frcnn_r101.yaml"))
    apply_epoch_schedule(cfg, num_images=100)  # 13 iterations per epoch at batch 8
    assert cfg.SOLVER.MAX_ITER == 30 * 13
    assert tuple(cfg.SOLVER.STEPS) == (10 * 13, 20 * 13)
    apply_epoch_schedule(cfg, num_images=8)
    assert cfg.SOLVER.MAX_ITER == 30 and tuple(cfg.SOLVER.STEPS) == (10, 20)


def test_epoch_schedule_off_keeps_iterations():
    cfg = _load(os.path.join(CONFIG_DIR, "frcnn_cpu_demo.yaml"))
    max_iter, steps = cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)
    apply_epoch_schedule(cfg, num_images=1000)
    assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)) == (max_iter, steps)


def test_epoch_schedule_rejects_empty_training_set():
    cfg = _load(os.path.join(CONFIG_DIR, "frcnn_r101.yaml"))
    with pytest.raises(ValueError, match="empty"):
        apply_epoch_schedule(cfg, num_images=0)


def test_unreachable_weights_say_how_to_go_on():
    # Port 9 on loopback refuses at once: the same failure as an offline machine, no traffic out.
    with pytest.raises(WeightsUnavailableError) as e:
        resolve_weights("http://127.0.0.1:9/R-101.pkl", timeout_s=5)
    message = str(e.value)
    assert "MODEL.WEIGHTS /path/to/R-101.pkl" in message and "from scratch" in message


def test_missing_local_weights(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="not found"):
        resolve_weights(str(tmp_path / "nope.pth"))
    assert resolve_weights("") == ""


def test_froc_keys_take_their_defaults_from_froc_params():
    from breast_d2.evaluation.evaluator import BreastFROCEvaluator
    from breast_d2.evaluation.params import FROCParams

    cfg = get_cfg()
    add_breast_config(cfg)
    # The study's settings (but BOX_MERGE: the study's is "union"), written out once here so
    # that a changed default is noticed.
    expected = {"SLICE_GAP": 1, "LINK_IOU": 0.3, "SCORE": "max", "SCORE_THRESH": 0.0,
                "BOX_MERGE": "fused", "HIT": "iou3d", "IOU_THRESH": 0.5, "DUPLICATES": "ignore",
                "BOOTSTRAP": 1000}
    # Box fit (breast_d2/evaluation/boxfit.py).
    box_fit = {"BOX_FIT": True, "BOX_FIT_LEVEL": 0.4, "BOX_FIT_MARGIN": 0.5,
               "BOX_FIT_MIN_IOU": 0.05, "BOX_FIT_CHANNEL": 1, "BOX_FIT_CLOSED": True}
    # Extent refinement (breast_d2/evaluation/refine.py): off by default.
    refine = {"REFINE_EXTENT": False, "REFINE_MAX_SLICES": 4, "REFINE_RATIO": 0.4,
              "REFINE_MAX_STEPS": 1, "REFINE_RING": 2, "REFINE_CHANNEL": 1}
    assert dict(cfg.TEST.FROC) == dict(expected, **refine, **box_fit)
    assert {k.upper(): v for k, v in FROCParams().asdict().items()} == expected
    # The evaluator without a config uses the same defaults.
    from detectron2.data import MetadataCatalog

    try:
        MetadataCatalog.get("breast_froc_defaults_test").set(data_root="/nonexistent")
        ev = BreastFROCEvaluator("breast_froc_defaults_test", distributed=False)
        assert ev._params == FROCParams().asdict()
    finally:
        MetadataCatalog.pop("breast_froc_defaults_test", None)
