"""Training-slice sampling: repeat the slices of the least conspicuous masses.

A mass's *contrast* is measured on the converted slices themselves, so any cohort can use it
(no kinetic labels needed): on each slice of the mass, the median of one channel (default the
subtraction of the study's ``1,1-0,0``) inside the mass's box minus the median of a ring around
the box; the mass's contrast is the largest over its slices (its most conspicuous slice). The
masses in the lowest ``quantile`` of the training set's contrasts are the *low-contrast* ones;
every training slice that shows one gets the repeat factor ``factor``, all others 1, and
detectron2's :class:`RepeatFactorTrainingSampler` draws slices in proportion.

On the phantom benchmark the detector's misses are those masses: slow (type I) benign masses
whose first post-contrast enhancement barely exceeds the background parenchymal enhancement.
"""
import logging
from collections import defaultdict
from typing import Dict, Hashable, List, Sequence, Tuple

import numpy as np
import torch

from detectron2.data import detection_utils
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.structures import BoxMode

from .augmentation import array_channel_order

__all__ = ["slice_contrast", "mass_contrasts", "low_contrast_repeat_factors",
           "build_train_sampler"]

logger = logging.getLogger(__name__)


def slice_contrast(channel: np.ndarray, box_xyxy: Sequence[float]) -> float:
    """Median inside a box minus the median of the ring around it, on one ``[H, W]`` channel.

    Args:
        channel: ``[H, W]`` image channel (any numeric dtype; 8-bit units for converted slices).
        box_xyxy: ``[x0, y0, x1, y1]`` in pixels (x1, y1 exclusive), clipped to the image.

    The ring is the box grown by half its larger side (at least 2 px) on every side, minus the
    box, clipped to the image. Returns NaN for a box with no pixel inside the image; an empty
    ring (a box that fills the image) counts as background 0.
    """
    h, w = channel.shape
    x0, y0, x1, y1 = (int(round(float(v))) for v in box_xyxy)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return float("nan")
    margin = max(2, (max(x1 - x0, y1 - y0) + 1) // 2)
    gx0, gy0 = max(x0 - margin, 0), max(y0 - margin, 0)
    gx1, gy1 = min(x1 + margin, w), min(y1 + margin, h)
    ring = np.ones((gy1 - gy0, gx1 - gx0), dtype=bool)
    ring[y0 - gy0:y1 - gy0, x0 - gx0:x1 - gx0] = False
    inside = float(np.median(channel[y0:y1, x0:x1]))
    around = channel[gy0:gy1, gx0:gx1][ring]
    return inside - (float(np.median(around)) if around.size else 0.0)


def _mass_key(record: Dict, k: int, annotation: Dict) -> Hashable:
    """One key per mass: (case, lesion_index) when the converter wrote it, else the annotation."""
    if "lesion_index" in annotation and "case_id" in record:
        return (record["case_id"], int(annotation["lesion_index"]))
    return (record.get("image_id", record["file_name"]), k)


def mass_contrasts(
    dataset_dicts: Sequence[Dict], array_channel: int, image_format: str = "BGR"
) -> Tuple[Dict[Hashable, float], List[List[Hashable]]]:
    """Each mass's contrast (:func:`slice_contrast` at its most conspicuous slice).

    Args:
        dataset_dicts: detectron2 dataset dicts with ``annotations`` (``bbox`` in its
            ``bbox_mode``); masses are grouped by ``(case_id, lesion_index)``.
        array_channel: channel index of the image as read in ``image_format``.

    Returns:
        ``(contrast per mass key, the mass keys of each record)``, both in the records' order.
    """
    contrast: Dict[Hashable, float] = defaultdict(lambda: float("-inf"))
    keys_per_record: List[List[Hashable]] = []
    for record in dataset_dicts:
        annotations = record.get("annotations", [])
        keys = [_mass_key(record, k, a) for k, a in enumerate(annotations)]
        keys_per_record.append(keys)
        if not annotations:
            continue
        image = detection_utils.read_image(record["file_name"], format=image_format)
        channel = image[..., array_channel] if image.ndim == 3 else image
        for key, a in zip(keys, annotations):
            box = BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
            value = slice_contrast(channel, box)
            if np.isfinite(value):
                contrast[key] = max(contrast[key], value)
    return dict(contrast), keys_per_record


def low_contrast_repeat_factors(
    dataset_dicts: Sequence[Dict],
    array_channel: int,
    quantile: float,
    factor: float,
    image_format: str = "BGR",
) -> torch.Tensor:
    """Per-record repeat factors: ``factor`` for a slice that shows a low-contrast mass, else 1.

    A mass is low-contrast when its contrast is at most the ``quantile`` of all masses'
    contrasts (``numpy.quantile``, linear). Returns a float tensor of ``len(dataset_dicts)``.

    Raises:
        ValueError: ``quantile`` outside (0, 1) or ``factor`` < 1.
    """
    if not 0 < quantile < 1:
        raise ValueError(f"low-contrast quantile must be in (0, 1), got {quantile}")
    if factor < 1:
        raise ValueError(f"low-contrast repeat factor must be >= 1, got {factor}")
    contrast, keys_per_record = mass_contrasts(dataset_dicts, array_channel, image_format)
    factors = torch.ones(len(keys_per_record), dtype=torch.float32)
    if not contrast:
        logger.info("low-contrast repeat: no mass in the training set, every factor 1")
        return factors
    threshold = float(np.quantile(np.fromiter(contrast.values(), dtype=np.float64), quantile))
    low = {key for key, value in contrast.items() if value <= threshold}
    for i, keys in enumerate(keys_per_record):
        if any(key in low for key in keys):
            factors[i] = float(factor)
    logger.info(
        f"low-contrast repeat: {len(low)} of {len(contrast)} masses have contrast <= "
        f"{threshold:.1f} (quantile {quantile}); {int((factors > 1).sum())} of {len(factors)} "
        f"training slices repeated x{factor}"
    )
    return factors


def build_train_sampler(cfg, dataset_dicts: Sequence[Dict]):
    """The training sampler ``cfg.DATALOADER.LOW_CONTRAST_REPEAT`` asks for, or None (detectron2's
    default, ``DATALOADER.SAMPLER_TRAIN``)."""
    repeat_cfg = cfg.DATALOADER.LOW_CONTRAST_REPEAT
    if not repeat_cfg.ENABLED:
        return None
    (array_channel,) = array_channel_order(
        [repeat_cfg.CHANNEL], cfg.INPUT.FORMAT, "DATALOADER.LOW_CONTRAST_REPEAT.CHANNEL"
    )
    factors = low_contrast_repeat_factors(
        dataset_dicts, array_channel, repeat_cfg.QUANTILE, repeat_cfg.FACTOR, cfg.INPUT.FORMAT
    )
    return RepeatFactorTrainingSampler(factors)
