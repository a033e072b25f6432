"""Weighted box fusion (WBF) of the 2D detections of several passes over one image, in NumPy.

The fusion of Solovyev, Wang and Gabruseva (ZFTurbo's ``ensemble_boxes``, "Weighted boxes
fusion", Image and Vision Computing 2021), restricted to what test-time augmentation needs:
boxes are visited in decreasing score order; each joins the fused box it overlaps most (IoU
strictly above ``iou_thresh``) or starts a new one. A fused box is the score-weighted mean of its
members' coordinates, and its score is the sum of its members' scores divided by the number of
passes: the mean over the passes, where a pass that did not find the box counts 0. So a box
found by one of two passes keeps half its score, as in ZFTurbo's WBF with two models
(``conf_type="avg"``).

One difference from ZFTurbo: a fused box takes at most one box from each pass (two boxes of one
pass are two findings, never averaged into one), so a fused score is always a mean over passes.
"""
import logging
from typing import List, Sequence, Tuple

import numpy as np

__all__ = ["box_iou_one_to_many", "weighted_box_fusion"]

logger = logging.getLogger(__name__)


def box_iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box ``[4]`` with ``boxes [N, 4]``, all ``XYXY`` (continuous coordinates).

    Returns:
        ``[N]`` float64 IoU in [0, 1]; 0 where the union is empty.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _check_pass(i: int, boxes, scores) -> Tuple[np.ndarray, np.ndarray]:
    boxes = np.asarray(boxes, np.float64)
    scores = np.asarray(scores, np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (boxes.shape[0],):
        raise ValueError(
            f"pass {i}: boxes must be [N, 4] and scores [N], got {boxes.shape} and {scores.shape}"
        )
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError(f"pass {i}: boxes and scores must be finite")
    return boxes, scores


def weighted_box_fusion(
    boxes_per_pass: Sequence[np.ndarray],
    scores_per_pass: Sequence[np.ndarray],
    iou_thresh: float = 0.55,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse the boxes of ``P`` passes over the same image (one class).

    Args:
        boxes_per_pass: P arrays ``[N_p, 4]`` ``XYXY`` boxes, all in the same image frame
            (undo each pass's augmentation first).
        scores_per_pass: P arrays ``[N_p]`` scores in [0, 1].
        iou_thresh: a box joins a fused box when their IoU is strictly greater than this.

    Returns:
        ``(boxes [M, 4] float64, scores [M] float64, num_passes [M] int64)``, sorted by score,
        highest first; ``num_passes`` counts the passes that found each fused box.

    Raises:
        ValueError: (one line) no pass, P differs between boxes and scores, a malformed pass,
            or ``iou_thresh`` outside [0, 1).
    """
    if len(boxes_per_pass) == 0 or len(boxes_per_pass) != len(scores_per_pass):
        raise ValueError(
            f"weighted_box_fusion needs one scores array per boxes array and at least one pass, "
            f"got {len(boxes_per_pass)} and {len(scores_per_pass)}"
        )
    if not 0.0 <= iou_thresh < 1.0:
        raise ValueError(f"weighted_box_fusion: iou_thresh must be in [0, 1), got {iou_thresh}")
    checked = [_check_pass(i, b, s) for i, (b, s) in enumerate(zip(boxes_per_pass,
                                                                     scores_per_pass))]
    num_passes = len(checked)
    all_boxes = np.concatenate([b for b, _ in checked])
    all_scores = np.concatenate([s for _, s in checked])
    pass_of = np.concatenate([np.full(len(s), i) for i, (_, s) in enumerate(checked)])
    order = np.argsort(-all_scores, kind="stable")

    fused = np.zeros((len(order), 4))  # running score-weighted mean of each cluster
    weighted_sum = np.zeros((len(order), 4))
    score_sum = np.zeros(len(order))
    passes: List[set] = []
    for i in order:
        box, score, p = all_boxes[i], all_scores[i], pass_of[i]
        n = len(passes)
        iou = box_iou_one_to_many(box, fused[:n])
        iou[[p in members for members in passes]] = -1.0  # one box per pass per cluster
        k = int(np.argmax(iou)) if n else -1
        if k < 0 or iou[k] <= iou_thresh:
            k = n
            passes.append(set())
        passes[k].add(p)
        weighted_sum[k] += score * box
        score_sum[k] += score
        fused[k] = weighted_sum[k] / score_sum[k] if score_sum[k] > 0 else box
    n = len(passes)
    out_scores = score_sum[:n] / num_passes
    counts = np.array([len(m) for m in passes], np.int64)
    keep = np.argsort(-out_scores, kind="stable")
    return fused[:n][keep], out_scores[keep], counts[keep]
