"""A tiny synthetic converted folder for segmentation tests and quick benchmarks.

Writes the docs/DATA_FORMAT.md converted layout (``slices/``, ``masks/gt/``, ``cases.json``,
``splits.json``) with no detection files. Each slice shows two bright half-ellipse "breasts" at
the top (anterior) of the image, which form the mask, over a dark body with a bright "heart"
disc below them that is *not* breast, plus noise. Not a realistic phantom (see
``breast_d2.data.phantom`` for that); it only has to be learnable in seconds.
"""
import json
import logging
import os
from typing import List, Sequence

import cv2
import numpy as np

__all__ = ["make_toy_converted"]

logger = logging.getLogger(__name__)


def _case_slices(rng: np.random.Generator, height: int, width: int, num_slices: int):
    cy = int(height * rng.uniform(0.40, 0.5))  # chest wall row
    ax, ay = width * rng.uniform(0.17, 0.22), height * rng.uniform(0.25, 0.33)
    centres = [width * rng.uniform(0.25, 0.3), width * rng.uniform(0.7, 0.75)]
    yy, xx = np.mgrid[:height, :width]
    images, masks = [], []
    for z in range(num_slices):
        f = 0.55 + 0.45 * np.sin(np.pi * (z + 0.5) / num_slices)  # smaller at the ends
        mask = np.zeros((height, width), bool)
        for cx in centres:
            mask |= (((xx - cx) / (ax * f)) ** 2 + ((yy - cy) / (ay * f)) ** 2 <= 1) & (yy <= cy)
        heart = (xx - width / 2) ** 2 + (yy - cy - height * 0.22) ** 2 <= (height * 0.12) ** 2
        body = yy > cy
        pre = 0.15 * body + 0.55 * mask + 0.35 * heart
        post = pre + 0.25 * heart + 0.1 * mask
        chans = [post, post - pre, pre]
        img = np.stack([c + rng.normal(0, 0.05, c.shape) for c in chans], -1)
        images.append(np.clip(img * 255, 0, 255).astype(np.uint8))
        masks.append(mask)
    return images, masks


def make_toy_converted(
    root: str,
    num_cases: int = 6,
    height: int = 64,
    width: int = 64,
    num_slices: int = 8,
    num_folds: int = 2,
    seed: int = 0,
    unmasked: Sequence[str] = (),
) -> List[str]:
    """Write a toy converted folder into ``root`` and return its case ids.

    Args:
        root: output folder (created).
        num_cases: cases TOY0000 ...
        height, width: slice size in pixels (rows, columns).
        num_slices: slices per case.
        num_folds: patient-level folds (case i is in the validation set of fold i % num_folds).
        seed: random seed.
        unmasked: case ids written without a ground-truth mask (``"has_mask": false``).

    Returns:
        case ids.
    """
    rng = np.random.default_rng(seed)
    case_ids = [f"TOY{i:04d}" for i in range(num_cases)]
    cases = []
    for case_id in case_ids:
        images, masks = _case_slices(rng, height, width, num_slices)
        has_mask = case_id not in set(unmasked)
        outputs = [("slices", images)] + [(os.path.join("masks", "gt"), masks)] * has_mask
        for sub, arrays in outputs:
            folder = os.path.join(root, sub, case_id)
            os.makedirs(folder, exist_ok=True)
            for z, a in enumerate(arrays):
                out = cv2.cvtColor(a, cv2.COLOR_RGB2BGR) if a.ndim == 3 else a.astype(np.uint8) * 255
                cv2.imwrite(os.path.join(folder, f"{z:04d}.png"), out)
        cases.append(
            {"case_id": case_id, "shape": [width, height, num_slices], "spacing": [0.7, 0.7, 2.0],
             "boxes": [], "has_mask": has_mask}
        )
    folds = [
        {"fold": k, "train": [c for i, c in enumerate(case_ids) if i % num_folds != k],
         "val": [c for i, c in enumerate(case_ids) if i % num_folds == k]}
        for k in range(num_folds)
    ]
    with open(os.path.join(root, "cases.json"), "w") as f:
        json.dump({"cases": cases}, f, indent=1)
    with open(os.path.join(root, "splits.json"), "w") as f:
        json.dump({"num_folds": num_folds, "seed": seed, "folds": folds}, f, indent=1)
    return case_ids
