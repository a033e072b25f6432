"""Detect masses in one new DCE-MRI case: segment the breast, detect on every slice, merge in 3D.

The same preprocessing as training: phases -> 3 channels (``compose_channels``, the converter's
windowing), breast mask from the segmentation model, pixels outside the mask zeroed, detectron2
test-time resize, then :func:`merge_slice_detections` and the box fit
(:mod:`breast_d2.evaluation.boxfit`) with the config's ``TEST.FROC`` keys.
"""
import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from detectron2.data import transforms as T
from detectron2.modeling import build_model

from .data.channels import compose_channels
from .data.readers import CaseGeometry, read_phases_from_dir
from .engine.checkpoint import BreastCheckpointer
from .evaluation.boxfit import BoxFitParams, fit_boxes
from .evaluation.candidates import CandidateArrays, merge_slice_detections
from .evaluation.slices import ArraySlices
from .modeling.tta import apply_test_time_flip
from .segmentation.postprocess import dilate_mm

__all__ = ["CaseResult", "CaseDetector", "candidate_label_volume", "box_to_physical"]

logger = logging.getLogger(__name__)


@dataclass
class CaseResult:
    """Everything predicted for one case.

    Attributes:
        case_id: the case name.
        geometry: the input's geometry (size X, Y, Z; spacing, origin, direction).
        slices_rgb: ``[Z, Y, X, 3]`` uint8 composed slices (PNG channel order), before masking.
        breast_mask: ``[Z, Y, X]`` bool, or None when masking is off.
        detections: slice detections ``{"case_id", "slice", "box" [x0,y0,x1,y1], "score"}``.
        candidates: merged 3D candidates (candidates-JSON dicts, plus ``box_mm`` and
            ``center_mm``: physical coordinates in mm of the box corners and centre).
    """

    case_id: str
    geometry: CaseGeometry
    slices_rgb: np.ndarray
    breast_mask: Optional[np.ndarray]
    detections: List[Dict]
    candidates: List[Dict]


def box_to_physical(box: Sequence[float], geometry: CaseGeometry) -> Dict[str, List[float]]:
    """Physical (world, mm) extent of a half-open voxel box ``[x0, y0, z0, x1, y1, z1]``.

    Voxel centres sit at integer indices, so the box's outer edges are at continuous indices
    ``x0 - 0.5`` and ``x1 - 0.5``. Returns ``{"box_mm": [min xyz, max xyz], "center_mm": xyz}``
    after applying spacing, direction and origin (the NIfTI/DICOM world frame SimpleITK uses).
    """
    lo = np.asarray(box[:3], float) - 0.5
    hi = np.asarray(box[3:], float) - 0.5
    direction = np.asarray(geometry.direction, float).reshape(3, 3)
    spacing, origin = np.asarray(geometry.spacing), np.asarray(geometry.origin)

    def to_world(index):
        return origin + direction @ (index * spacing)

    corners = np.array([to_world(np.where(m, hi, lo)) for m in np.ndindex(2, 2, 2)])
    return {
        "box_mm": np.concatenate([corners.min(0), corners.max(0)]).round(3).tolist(),
        "center_mm": to_world((lo + hi) / 2).round(3).tolist(),
    }


def candidate_label_volume(candidates: Sequence[Dict], shape_zyx: Sequence[int]) -> np.ndarray:
    """``[Z, Y, X]`` uint16 volume where candidate i (in the given order) fills its box with i+1.

    Higher-scoring candidates are painted last, so they win where boxes overlap.
    """
    volume = np.zeros(tuple(shape_zyx), np.uint16)
    order = sorted(range(len(candidates)), key=lambda i: candidates[i]["score"])
    for i in order:
        x0, y0, z0, x1, y1, z1 = (int(round(v)) for v in candidates[i]["box"])
        volume[max(z0, 0) : z1, max(y0, 0) : y1, max(x0, 0) : x1] = i + 1
    return volume


class CaseDetector:
    """Breast segmentation + Faster R-CNN on every slice of a case + 3D merging.

    Args:
        cfg: detectron2 config with breast_d2 keys (the one the detector was trained with).
        weights: detector checkpoint.
        mask_predictor: callable ``[Z, H, W, 3] uint8 RGB -> [Z, H, W] bool`` (e.g.
            ``BreastMaskPredictor(...).predict_case``); required when
            ``cfg.INPUT.BREAST_MASK.ENABLED`` — a model trained on masked slices must see
            masked slices.
        channels: the converter's channel spec the detector was trained with.
        batch_size: slices per detector forward pass.
    """

    def __init__(
        self,
        cfg,
        weights: str,
        mask_predictor: Optional[Callable[[np.ndarray], np.ndarray]] = None,
        channels: str = "1,1-0,0",
        batch_size: int = 4,
    ):
        if cfg.INPUT.BREAST_MASK.ENABLED and mask_predictor is None:
            raise ValueError(
                "the detector was trained on breast-masked slices (INPUT.BREAST_MASK.ENABLED): "
                "pass a segmentation checkpoint (--seg-weights)"
            )
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        BreastCheckpointer(self.model).load(weights)  # no code from the file runs
        # TEST.BREAST_TTA.FLIP: each slice and its mirror image, boxes fused (modeling/tta.py).
        self.model = apply_test_time_flip(self.cfg, self.model).eval()
        self.mask_predictor = mask_predictor
        self.channels = channels
        self.batch_size = batch_size
        self.resize = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )

    def __call__(self, src, case_id: str, progress: bool = True) -> CaseResult:
        """Predict one case from a case folder or a list of phase files (see volumes.py)."""
        phases, spacing, geometry = read_phases_from_dir(src, case_id)
        slices_rgb = compose_channels(phases, self.channels)
        del phases
        mask = None
        images = slices_rgb
        if self.mask_predictor is not None and self.cfg.INPUT.BREAST_MASK.ENABLED:
            mask = self.mask_predictor(slices_rgb).astype(bool)
            dilate = self.cfg.INPUT.BREAST_MASK.DILATE_MM
            if dilate > 0:
                mask = dilate_mm(mask, dilate, spacing[:2])
            images = slices_rgb * mask[..., None]
        detections = self.detect_slices(images, case_id, progress)
        froc = self.cfg.TEST.FROC
        candidates = merge_slice_detections(
            detections, froc.SLICE_GAP, froc.LINK_IOU, froc.SCORE, froc.SCORE_THRESH,
            box_merge=froc.BOX_MERGE,
        )
        fit = BoxFitParams.from_config(froc)
        if fit.enabled and candidates:
            # The same fit as the evaluator's, on the same (unmasked) composed slices.
            reader = ArraySlices({case_id: slices_rgb[..., fit.channel]})
            fitted, _ = fit_boxes(CandidateArrays.from_dicts(candidates), reader, fit)
            candidates = fitted.to_dicts()
        candidates.sort(key=lambda c: -c["score"])
        for c in candidates:
            c.update(box_to_physical(c["box"], geometry))
        return CaseResult(case_id, geometry, slices_rgb, mask, detections, candidates)

    @torch.no_grad()
    def detect_slices(self, images_rgb: np.ndarray, case_id: str, progress: bool = True):
        """Slice detections for ``[Z, H, W, 3]`` uint8 RGB slices (already masked if needed)."""
        from tqdm import tqdm

        z_count, height, width = images_rgb.shape[:3]
        detections = []
        bar = tqdm(total=z_count, desc=f"{case_id} slices", unit="slice", disable=not progress)
        for start in range(0, z_count, self.batch_size):
            batch = []
            for image in images_rgb[start : start + self.batch_size]:
                if self.cfg.INPUT.FORMAT == "BGR":
                    image = image[..., ::-1]
                image = self.resize.get_transform(image).apply_image(np.ascontiguousarray(image))
                tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
                batch.append({"image": tensor, "height": height, "width": width})
            outputs = self.model(batch)
            for z, out in enumerate(outputs, start=start):
                inst = out["instances"].to("cpu")
                for box, score in zip(inst.pred_boxes.tensor.tolist(), inst.scores.tolist()):
                    detections.append(
                        {"case_id": case_id, "slice": z, "box": box, "score": float(score)}
                    )
            bar.update(len(batch))
        bar.close()
        return detections
