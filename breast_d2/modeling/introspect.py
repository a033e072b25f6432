"""Why a detector missed a box: what its RPN proposed there and what its box head made of it.

A slice detector can miss a mass at two stages of Faster R-CNN. The region proposal network may
never propose a box over it (no proposal overlaps it), or it proposes one that the box head
scores as background. :func:`trace_boxes` runs one image through the model's stages once and
reports, for each given box, what each stage did with it. ``tools/explain_misses.py``
prints these per mass and slice of a converted cohort.

Works with detectron2's ``GeneralizedRCNN`` with ``StandardROIHeads`` (the study's Faster R-CNN)
or ``CascadeROIHeads``. A cascade's "head score" of a proposal is what its inference ranks: the
foreground probability averaged over the stages, each stage scoring the box the previous one
regressed from that proposal.
"""
import logging
from typing import Dict, List

import torch

from detectron2.modeling.roi_heads import CascadeROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, Instances, pairwise_iou

__all__ = ["trace_boxes"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def trace_boxes(
    model, image_input: Dict, boxes_xyxy: torch.Tensor, match_iou: float = 0.5
) -> List[Dict]:
    """Follow ``boxes_xyxy`` through the RPN, the box head and the final detections of one image.

    Args:
        model: a ``GeneralizedRCNN`` in eval mode with ``StandardROIHeads`` or
            ``CascadeROIHeads``.
        image_input: detectron2's input dict with ``"image"`` a ``[C, H, W]`` tensor as the test
            mapper returns it (already resized; no ``"height"``/``"width"`` rescaling is done).
        boxes_xyxy: ``[N, 4]`` float boxes ``(x0, y0, x1, y1)`` in pixels of ``image_input``'s
            image (x = column), e.g. a mass's ground-truth box on this slice.
        match_iou: a proposal or detection matches a box at IoU >= this.

    Returns:
        One dict per box:
          ``proposals``: the number of RPN proposals of the image (after NMS and top-k);
          ``best_iou``: the highest IoU of any proposal with the box (0.0 when no proposal
          overlaps it; the three ``best_*`` fields below are then None);
          ``best_rank``: that proposal's 1-based rank by objectness among all proposals;
          ``best_objectness``: its objectness logit;
          ``best_head_score``: the box head's foreground probability for that proposal (the
          highest over classes, before box regression and NMS; a cascade's is averaged over its
          stages);
          ``matched_proposals``: proposals at IoU >= ``match_iou``;
          ``matched_head_score``: the highest head score among those, or None;
          ``detection_score``: the highest score of a final detection (after regression,
          score threshold and NMS, as ``model(...)`` returns them) at IoU >= ``match_iou``,
          or None;
          ``centre_detection_score``: the highest score of a final detection whose box
          contains the box's centre, whatever its IoU, or None; ``centre_detection_iou``: that
          detection's IoU with the box (a found mass boxed too small or too large has a high
          score here and an IoU < ``match_iou``).

    Raises:
        ValueError: the model is not a two-stage detector, or is in training mode.
    """
    if model.training:
        raise ValueError("trace_boxes: call model.eval() first")
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is None or getattr(model, "proposal_generator", None) is None:
        raise ValueError("trace_boxes needs a two-stage detector (GeneralizedRCNN with an RPN)")
    images = model.preprocess_image([image_input])
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    props = proposals[0]
    head_features = [features[f] for f in roi_heads.box_in_features]
    if isinstance(roi_heads, CascadeROIHeads):
        class_probs, dets = _cascade_head(roi_heads, head_features, props)
    else:
        predictions = roi_heads.box_predictor(
            roi_heads.box_head(roi_heads.box_pooler(head_features, [props.proposal_boxes]))
        )
        class_probs = roi_heads.box_predictor.predict_probs(predictions, [props])[0]
        dets = roi_heads.box_predictor.inference(predictions, [props])[0][0]
    # class_probs: [R, K + 1] with background last; the foreground score is the best class.
    head_scores = class_probs[:, :-1].max(dim=1).values  # [R]

    gt = Boxes(boxes_xyxy.to(dtype=torch.float32, device=props.proposal_boxes.device))
    order = torch.argsort(props.objectness_logits, descending=True)
    rank_of = torch.empty_like(order)
    rank_of[order] = torch.arange(len(order), device=order.device)
    prop_iou = pairwise_iou(gt, props.proposal_boxes)  # [N, R]
    det_iou = pairwise_iou(gt, dets.pred_boxes)  # [N, D]
    centres = gt.get_centers()  # [N, 2] (x, y)
    det_xyxy = dets.pred_boxes.tensor  # [D, 4]
    # covers[i, d]: detection d's box contains box i's centre (edges included). [N, D]
    covers = ((det_xyxy[None, :, 0] <= centres[:, None, 0])
              & (centres[:, None, 0] <= det_xyxy[None, :, 2])
              & (det_xyxy[None, :, 1] <= centres[:, None, 1])
              & (centres[:, None, 1] <= det_xyxy[None, :, 3]))
    traces = []
    for i in range(len(gt)):
        trace = {"proposals": len(props), "best_iou": 0.0, "best_rank": None,
                 "best_objectness": None, "best_head_score": None, "matched_proposals": 0,
                 "matched_head_score": None, "detection_score": None,
                 "centre_detection_score": None, "centre_detection_iou": None}  # fmt: skip
        if len(props) and float(prop_iou[i].max()) > 0.0:
            j = int(prop_iou[i].argmax())
            matched = prop_iou[i] >= match_iou
            trace.update(
                best_iou=float(prop_iou[i, j]),
                best_rank=int(rank_of[j]) + 1,
                best_objectness=float(props.objectness_logits[j]),
                best_head_score=float(head_scores[j]),
                matched_proposals=int(matched.sum()),
                matched_head_score=float(head_scores[matched].max()) if matched.any() else None,
            )
        if len(dets):
            hits = det_iou[i] >= match_iou
            if hits.any():
                trace["detection_score"] = float(dets.scores[hits].max())
            over_centre = torch.nonzero(covers[i]).flatten()
            if len(over_centre):
                k = over_centre[dets.scores[over_centre].argmax()]
                trace.update(centre_detection_score=float(dets.scores[k]),
                             centre_detection_iou=float(det_iou[i, k]))
        traces.append(trace)
    return traces


def _cascade_head(roi_heads: CascadeROIHeads, head_features, props: Instances):
    """``([R, K + 1] class probabilities averaged over the stages, final detections)`` of one
    image's proposals, as ``CascadeROIHeads._forward_box`` computes them at inference."""
    image_sizes = [props.image_size]
    stage_props, stage_probs, regressed = [props], [], None
    for k in range(roi_heads.num_cascade_stages):
        if k > 0:  # each stage scores the boxes the previous one regressed
            stage_props = roi_heads._create_proposals_from_boxes(regressed, image_sizes)
        predictions = roi_heads._run_stage(head_features, stage_props, k)
        predictor = roi_heads.box_predictor[k]
        stage_probs.append(predictor.predict_probs(predictions, stage_props)[0])
        regressed = predictor.predict_boxes(predictions, stage_props)  # per image [R, 4 or 4K]
    class_probs = sum(stage_probs) / roi_heads.num_cascade_stages
    # The last stage's boxes and predictor settings, as the cascade's own inference uses.
    dets, _ = fast_rcnn_inference(regressed, [class_probs], image_sizes,
                                  predictor.test_score_thresh, predictor.test_nms_thresh,
                                  predictor.test_topk_per_image)
    return class_probs, dets[0]
