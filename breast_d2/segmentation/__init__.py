"""Breast-region segmentation: U-Net++ (deep supervision) and U-Net, losses, training, metrics,
masks.

The detection side uses :class:`BreastMaskPredictor` (``INPUT.BREAST_MASK.SOURCE=model``) and
the fold-correct mask folders written by :func:`write_fold_masks`.
"""
from .data import (
    BreastSliceDataset,
    has_gt_mask,
    labelled_slices,
    letterbox,
    split_by_gt_mask,
    unletterbox,
)
from .losses import bce_dice_loss, bce_loss, deep_supervision_loss, get_loss, soft_dice
from .metrics import dice, jaccard, overlap_metrics, seg_sensitivity, summarize
from .models import ARCHS, BreastSegModel, build_model, build_model_from_checkpoint
from .postprocess import dilate_mm, fill_holes, keep_large_components, postprocess_mask
from .predict import (
    BreastMaskPredictor,
    FoldLeakError,
    check_no_fold_leak,
    load_checkpoint,
    predict_proba,
    verify_fold_masks,
    write_fold_masks,
)
from .seg_tables import ARCH_LABELS, markdown_report, per_fold_rows, write_csv
from .train import SegTrainConfig, evaluate_cases, train_segmentation

__all__ = [
    "ARCHS",
    "ARCH_LABELS",
    "BreastMaskPredictor",
    "BreastSegModel",
    "BreastSliceDataset",
    "FoldLeakError",
    "SegTrainConfig",
    "bce_dice_loss",
    "bce_loss",
    "build_model",
    "build_model_from_checkpoint",
    "check_no_fold_leak",
    "deep_supervision_loss",
    "dice",
    "dilate_mm",
    "evaluate_cases",
    "fill_holes",
    "get_loss",
    "has_gt_mask",
    "jaccard",
    "keep_large_components",
    "labelled_slices",
    "letterbox",
    "load_checkpoint",
    "markdown_report",
    "overlap_metrics",
    "per_fold_rows",
    "postprocess_mask",
    "predict_proba",
    "seg_sensitivity",
    "soft_dice",
    "split_by_gt_mask",
    "summarize",
    "train_segmentation",
    "unletterbox",
    "verify_fold_masks",
    "write_csv",
    "write_fold_masks",
]
