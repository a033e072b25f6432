"""Overlay montages: slices of a case with 3D candidates (and ground truth) drawn on them."""
import logging
from typing import Optional, Sequence

import cv2
import numpy as np

__all__ = ["case_montage"]

logger = logging.getLogger(__name__)

_CANDIDATE_BGR = (0, 215, 255)  # amber
_TRUTH_BGR = (80, 220, 60)  # green
_MASK_BGR = (255, 160, 40)  # blue-ish contour of the breast mask


def _panel_slices(candidates, gt_boxes, num_slices, max_panels):
    """Central slice of each GT box, then of each candidate by score; unique, in that order."""
    picks = [(b[2] + b[5] - 1) // 2 for b in gt_boxes]
    picks += [int((c["box"][2] + c["box"][5] - 1) // 2) for c in candidates]
    if not picks:
        picks = [num_slices // 2]
    unique = list(dict.fromkeys(min(max(z, 0), num_slices - 1) for z in picks))
    return sorted(unique[:max_panels])


def case_montage(
    slices_rgb: np.ndarray,
    candidates: Sequence[dict],
    gt_boxes: Sequence[Sequence[int]] = (),
    mask: Optional[np.ndarray] = None,
    max_panels: int = 8,
    columns: int = 4,
    scale: int = 2,
) -> np.ndarray:
    """A grid of slices with candidates (amber, with scores), GT boxes (green), mask contour.

    Args:
        slices_rgb: ``[Z, H, W, 3]`` uint8 slices (RGB).
        candidates: candidate dicts with ``box`` ``[x0, y0, z0, x1, y1, z1]`` (half-open) and
            ``score``; drawn on every panel slice they span.
        gt_boxes: ground-truth boxes in the same convention.
        mask: optional ``[Z, H, W]`` breast mask; its outline is drawn.
        max_panels, columns: grid size; panels are the central slices of GT and candidates.
        scale: integer upscaling of each panel (for legible labels).

    Returns:
        ``[rows*H*scale, columns*W*scale, 3]`` uint8 RGB image.
    """
    num_slices, height, width = slices_rgb.shape[:3]
    panels = []
    for z in _panel_slices(candidates, gt_boxes, num_slices, max_panels):
        img = cv2.resize(slices_rgb[z][..., ::-1], (width * scale, height * scale),
                         interpolation=cv2.INTER_NEAREST)
        img = np.ascontiguousarray(img)
        if mask is not None:
            m = cv2.resize(mask[z].astype(np.uint8), (width * scale, height * scale),
                           interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(img, contours, -1, _MASK_BGR, 1)
        for b in gt_boxes:
            if b[2] <= z < b[5]:
                cv2.rectangle(img, (b[0] * scale, b[1] * scale),
                              (b[3] * scale - 1, b[4] * scale - 1), _TRUTH_BGR, 1)
        for c in candidates:
            x0, y0, z0, x1, y1, z1 = c["box"]
            if z0 <= z < z1:
                p0 = (int(x0 * scale), int(y0 * scale))
                cv2.rectangle(img, p0, (int(x1 * scale) - 1, int(y1 * scale) - 1),
                              _CANDIDATE_BGR, 1)
                cv2.putText(img, f"{c['score']:.2f}", (p0[0], max(p0[1] - 3, 10)),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.35, _CANDIDATE_BGR, 1, cv2.LINE_AA)
        cv2.putText(img, f"z={z}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                    cv2.LINE_AA)
        panels.append(img)
    rows = -(-len(panels) // columns)
    columns = min(columns, len(panels))
    grid = np.zeros((rows * height * scale, columns * width * scale, 3), np.uint8)
    for i, panel in enumerate(panels):
        r, c = divmod(i, columns)
        grid[r * height * scale : (r + 1) * height * scale,
             c * width * scale : (c + 1) * width * scale] = panel
    return np.ascontiguousarray(grid[..., ::-1])
