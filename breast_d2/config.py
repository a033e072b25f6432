"""Config keys that breast_d2 adds to detectron2's defaults."""
from detectron2.config import CfgNode as CN

from .evaluation.params import FROCParams
from .evaluation.boxfit import BoxFitParams
from .evaluation.refine import RefineParams

__all__ = ["add_breast_config"]


def add_breast_config(cfg: CN) -> None:
    """Add every breast_d2 key to ``cfg`` (a detectron2 config from ``get_cfg()``), in place."""
    _add_dataset_config(cfg)
    _add_mask_config(cfg)
    _add_augmentation_config(cfg)
    _add_solver_config(cfg)
    _add_froc_config(cfg)
    _add_tta_config(cfg)


def _add_dataset_config(cfg: CN) -> None:
    # Folder written by tools/convert_to_coco.py; "" = $BREAST_D2_DATA, else datasets/phantom_coco.
    cfg.DATASETS.BREAST_ROOT = ""
    # Patient-level fold K: DATASETS.TRAIN/TEST are set to breast_fold{K}_train/_val when K >= 0.
    cfg.DATASETS.FOLD = -1
    # Train only on slices that contain a mass (as the study did); validation sees every slice.
    cfg.DATALOADER.POSITIVE_SLICES_ONLY = True
    # Repeat the training slices of the least conspicuous masses (breast_d2/data/sampling.py):
    # a mass's contrast is the median of converter channel CHANNEL (1 = the subtraction of the
    # study's "1,1-0,0") in its box minus that of a ring around it, at its most conspicuous
    # slice; slices showing a mass in the lowest QUANTILE of the training masses' contrasts are
    # drawn FACTOR times as often (detectron2's RepeatFactorTrainingSampler). With 0.25 and 3
    # the low-contrast quarter of the masses makes up half of the mass slices drawn.
    # Off: on the 75-case benchmark it lowered the pooled CPM by 0.030 (paired 95 % interval
    # -0.071 to +0.009), by 0.021 behind the FP reducer, and saw no more dim masses (BENCHMARKS.md).
    cfg.DATALOADER.LOW_CONTRAST_REPEAT = CN()
    cfg.DATALOADER.LOW_CONTRAST_REPEAT.ENABLED = False
    cfg.DATALOADER.LOW_CONTRAST_REPEAT.CHANNEL = 1
    cfg.DATALOADER.LOW_CONTRAST_REPEAT.QUANTILE = 0.25
    cfg.DATALOADER.LOW_CONTRAST_REPEAT.FACTOR = 3.0


def _add_mask_config(cfg: CN) -> None:
    cfg.INPUT.BREAST_MASK = CN()
    # Zero every pixel outside the breast region before augmentation (the study's preprocessing).
    cfg.INPUT.BREAST_MASK.ENABLED = False
    # Where masks come from: "cached" (PNG folder DIR), "gt" (<root>/masks/gt), "model" (WEIGHTS).
    cfg.INPUT.BREAST_MASK.SOURCE = "cached"
    # Folder of <case_id>/<z:04d>.png masks for SOURCE=cached; "" means <root>/masks/fold{K}.
    cfg.INPUT.BREAST_MASK.DIR = ""
    # Segmentation checkpoint (tools/train_breast_seg.py) used when SOURCE=model.
    cfg.INPUT.BREAST_MASK.WEIGHTS = ""
    # Dilate the mask by this many millimetres (in-plane pixel spacing from cases.json) before use.
    cfg.INPUT.BREAST_MASK.DILATE_MM = 0.0


def _add_augmentation_config(cfg: CN) -> None:
    # Training-time gain on the contrast-enhancement channels (breast_d2/data/augmentation.py):
    # with probability PROB a slice's CHANNELS (indexes of the converter's --channels, e.g. 0 =
    # post 1 and 1 = the subtraction of the study's "1,1-0,0") are multiplied by one gain drawn
    # uniformly from RANGE, so that bright, fast-enhancing masses also teach the detector what a
    # slowly enhancing (type I) one looks like at the first post-contrast phase.
    # Off: on the 75-case benchmark it lowered the pooled CPM by 0.064 (paired 95 % interval
    # -0.128 to -0.013) and found no more type I masses (BENCHMARKS.md).
    cfg.INPUT.ENHANCEMENT_GAIN = CN()
    cfg.INPUT.ENHANCEMENT_GAIN.ENABLED = False
    cfg.INPUT.ENHANCEMENT_GAIN.RANGE = (0.4, 1.0)
    cfg.INPUT.ENHANCEMENT_GAIN.PROB = 0.5
    cfg.INPUT.ENHANCEMENT_GAIN.CHANNELS = (0, 1)


def _add_solver_config(cfg: CN) -> None:
    # Train for this many epochs over the training set; > 0 overrides SOLVER.MAX_ITER at setup.
    cfg.SOLVER.EPOCHS = 0
    # Multiply the LR by SOLVER.GAMMA every EPOCH_DECAY epochs (study: 10); 0 keeps SOLVER.STEPS.
    cfg.SOLVER.EPOCH_DECAY = 0


def _add_froc_config(cfg: CN) -> None:
    # Evaluate after the last training iteration (DefaultTrainer's EvalHook). The job tools
    # (demo, cross_validate) set False because their next step is a separate --eval-only run.
    cfg.TEST.FINAL_EVAL = True
    cfg.TEST.FROC = CN()
    d = FROCParams()  # the defaults' one home, shared with the evaluator and tools/froc.py
    # Link detections whose slices differ by at most 1 + SLICE_GAP (1 bridges one missed slice).
    cfg.TEST.FROC.SLICE_GAP = d.slice_gap
    # ... and whose 2D IoU is at least LINK_IOU.
    cfg.TEST.FROC.LINK_IOU = d.link_iou
    # Candidate score from its members' scores: "max" or "mean".
    cfg.TEST.FROC.SCORE = d.score
    # Slice detections below this score are dropped before merging.
    cfg.TEST.FROC.SCORE_THRESH = d.score_thresh
    # Candidate box from its slice boxes: "union" spans them all (the study's merge); "fused"
    # first fuses each slice's boxes into their score-weighted mean.
    cfg.TEST.FROC.BOX_MERGE = d.box_merge
    # Hit criterion: "iou3d" (the study), "iou2d" or "center".
    cfg.TEST.FROC.HIT = d.hit
    # A candidate hits a mass when its IoU is strictly greater than this.
    cfg.TEST.FROC.IOU_THRESH = d.iou_thresh
    # Extra hits on an already detected mass: "ignore" (LUNA16) or "fp" (nnDetection, COCO).
    cfg.TEST.FROC.DUPLICATES = d.duplicates
    # Bootstrap resamples of cases for the 95% confidence interval (0 turns it off).
    cfg.TEST.FROC.BOOTSTRAP = d.bootstrap
    # Extent refinement of short candidates (breast_d2/evaluation/refine.py): extend a candidate
    # spanning <= REFINE_MAX_SLICES slices by the slice beyond each z-end (at most
    # REFINE_MAX_STEPS per end) where the subtraction channel REFINE_CHANNEL of the converted PNG
    # inside its in-plane box, minus a REFINE_RING-pixel background ring, enhances >=
    # REFINE_RATIO x the candidate's own slices' mean. Off: no gain on the 75-case benchmark
    # (pooled CPM 0.603 -> 0.601, BENCHMARKS.md).
    # Box fit (breast_d2/evaluation/boxfit.py): after merging, each candidate's box becomes the
    # box of the enhancing blob under it in the subtraction channel BOX_FIT_CHANNEL of the
    # converted PNG: the connected region above background + BOX_FIT_LEVEL x (peak - background)
    # inside the box grown by BOX_FIT_MARGIN x its size; kept when that box
    # overlaps the merged one by a 3D IoU below BOX_FIT_MIN_IOU, or (BOX_FIT_CLOSED) when the
    # blob runs on beyond the grown box. Level 0.4 and min IoU 0.05 were chosen without a
    # detector on an independent cohort (benchmarks/calibrate_box_fit.py).
    f = BoxFitParams()
    cfg.TEST.FROC.BOX_FIT = f.enabled
    cfg.TEST.FROC.BOX_FIT_LEVEL = f.level
    cfg.TEST.FROC.BOX_FIT_MARGIN = f.margin
    cfg.TEST.FROC.BOX_FIT_MIN_IOU = f.min_iou
    cfg.TEST.FROC.BOX_FIT_CHANNEL = f.channel
    cfg.TEST.FROC.BOX_FIT_CLOSED = f.closed
    r = RefineParams()
    cfg.TEST.FROC.REFINE_EXTENT = r.enabled
    cfg.TEST.FROC.REFINE_MAX_SLICES = r.max_slices
    cfg.TEST.FROC.REFINE_RATIO = r.ratio
    cfg.TEST.FROC.REFINE_MAX_STEPS = r.max_steps
    cfg.TEST.FROC.REFINE_RING = r.ring
    cfg.TEST.FROC.REFINE_CHANNEL = r.channel


def _add_tta_config(cfg: CN) -> None:
    # Test-time flip (breast_d2/modeling/tta.py). Not detectron2's TEST.AUG, which is its own
    # multi-scale TTA merged by NMS (and has FLIP True by default).
    cfg.TEST.BREAST_TTA = CN()
    # Also run each test slice mirrored left-right, fusing the two passes' boxes by weighted box
    # fusion before 3D merging. Off: it doubles test time, and on the 75-case phantom benchmark
    # it lowered the pooled CPM by 0.066 (paired 95 % interval -0.159 to +0.025, BENCHMARKS.md).
    cfg.TEST.BREAST_TTA.FLIP = False
    # Boxes of the two passes fuse when their IoU is > this (ZFTurbo's WBF default, 0.55).
    cfg.TEST.BREAST_TTA.FUSION_IOU = 0.55
