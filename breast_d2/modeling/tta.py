"""Test-time horizontal flip of every slice, fused with weighted box fusion before 3D merging.

detectron2's ``GeneralizedRCNNWithTTA`` merges its augmented passes with NMS, which keeps one
of two overlapping boxes; :class:`BreastFlipTTA` runs the detector on each slice and on its
mirror image, un-flips the mirror's boxes and averages overlapping boxes of the two passes
(:func:`~breast_d2.modeling.fusion.weighted_box_fusion`). Switched on by
``TEST.BREAST_TTA.FLIP`` (breast_d2/config.py) through :func:`apply_test_time_flip`.
"""
import logging
from typing import Dict, List

import numpy as np
import torch
from torch import nn

from detectron2.structures import Boxes, Instances

from .fusion import weighted_box_fusion

__all__ = ["BreastFlipTTA", "apply_test_time_flip"]

logger = logging.getLogger(__name__)


def _unflip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Mirror ``[N, 4]`` XYXY boxes of an image ``width`` pixels wide (x -> width - x), as
    detectron2's ``HFlipTransform`` maps coordinates."""
    out = boxes.clone()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


class BreastFlipTTA(nn.Module):
    """A detector run on each image and its horizontal flip, boxes fused per class with WBF.

    Inference only. Inputs are detectron2's ``list[dict]`` with ``"image"`` a ``[C, H, W]``
    tensor (and optional ``"height"``/``"width"`` of the output frame); outputs are
    ``[{"instances": Instances}]`` with ``pred_boxes`` (XYXY_ABS in the output frame),
    ``scores`` and ``pred_classes``, sorted by score, at most ``max_detections`` per image.

    Args:
        model: a detectron2 detector (e.g. ``GeneralizedRCNN``) returning ``instances``.
        fusion_iou: boxes of the two passes fuse when their IoU is strictly above this.
        max_detections: keep this many fused boxes per image (<= 0: all).
    """

    def __init__(self, model: nn.Module, fusion_iou: float = 0.55, max_detections: int = 0):
        super().__init__()
        if not 0.0 <= fusion_iou < 1.0:
            raise ValueError(f"BreastFlipTTA: fusion_iou must be in [0, 1), got {fusion_iou}")
        self.model = model
        self.fusion_iou = float(fusion_iou)
        self.max_detections = int(max_detections)

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        if self.training:
            raise RuntimeError("BreastFlipTTA is for inference only: call .eval() first")
        flipped = [dict(inp, image=inp["image"].flip(-1)) for inp in batched_inputs]
        plain_out = self.model(batched_inputs)
        flip_out = self.model(flipped)
        return [
            {"instances": self._fuse(a["instances"], b["instances"])}
            for a, b in zip(plain_out, flip_out)
        ]

    def _fuse(self, plain: Instances, flipped: Instances) -> Instances:
        """Un-flip ``flipped``'s boxes and fuse them with ``plain``'s, class by class."""
        device = plain.pred_boxes.tensor.device
        height, width = plain.image_size
        mirror = _unflip_boxes(flipped.pred_boxes.tensor, width)
        passes = [
            (plain.pred_boxes.tensor, plain.scores, plain.pred_classes),
            (mirror, flipped.scores, flipped.pred_classes),
        ]
        passes = [tuple(t.detach().cpu().numpy() for t in p) for p in passes]
        boxes, scores, classes = [], [], []
        for c in np.union1d(passes[0][2], passes[1][2]):
            fused = weighted_box_fusion(
                [b[k == c] for b, _, k in passes], [s[k == c] for _, s, k in passes],
                self.fusion_iou,
            )
            boxes.append(fused[0])
            scores.append(fused[1])
            classes.append(np.full(len(fused[1]), c, np.int64))
        boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
        scores = np.concatenate(scores) if scores else np.zeros(0)
        classes = np.concatenate(classes) if classes else np.zeros(0, np.int64)
        order = np.argsort(-scores, kind="stable")
        if self.max_detections > 0:
            order = order[: self.max_detections]
        result = Instances((height, width))
        result.pred_boxes = Boxes(torch.as_tensor(boxes[order], dtype=torch.float32,
                                                  device=device))
        result.scores = torch.as_tensor(scores[order], dtype=torch.float32, device=device)
        result.pred_classes = torch.as_tensor(classes[order], dtype=torch.int64, device=device)
        return result


def apply_test_time_flip(cfg, model: nn.Module) -> nn.Module:
    """``model`` wrapped in :class:`BreastFlipTTA` when ``cfg.TEST.BREAST_TTA.FLIP``, else
    ``model`` itself (fusion IoU ``TEST.BREAST_TTA.FUSION_IOU``, at most
    ``TEST.DETECTIONS_PER_IMAGE`` boxes per slice, as without the flip).

    Raises:
        ConfigError: ``TEST.BREAST_TTA.FUSION_IOU`` outside [0, 1).
    """
    tta = cfg.TEST.get("BREAST_TTA")
    if tta is None or not tta.FLIP:
        return model
    if not 0.0 <= tta.FUSION_IOU < 1.0:
        from ..engine.defaults import ConfigError

        raise ConfigError(f"TEST.BREAST_TTA.FUSION_IOU must be in [0, 1), got {tta.FUSION_IOU}")
    logger.info("Test-time horizontal flip on: slice boxes fused by WBF at IoU > %s",
                tta.FUSION_IOU)
    return BreastFlipTTA(model, tta.FUSION_IOU, cfg.TEST.DETECTIONS_PER_IMAGE)
