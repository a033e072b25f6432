"""Training-time intensity augmentation: a random gain on the contrast-enhancement channels."""
from typing import Sequence, Tuple

import numpy as np

from detectron2.data import transforms as T

__all__ = [
    "RandomEnhancementGain",
    "EnhancementGainTransform",
    "array_channel_order",
    "build_intensity_augmentation",
]


class EnhancementGainTransform(T.Transform):
    """Multiply some channels of an ``[H, W, C]`` image by one factor; boxes and masks unchanged.

    ``channels`` index the image array as the mapper holds it (after ``INPUT.FORMAT``'s channel
    order is applied). A uint8 image stays uint8 (rounded; a gain <= 1 cannot overflow, a larger
    one is clipped at 255).
    """

    def __init__(self, gain: float, channels: Tuple[int, ...]):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        out = img.copy()
        sel = list(self.channels)
        scaled = img[..., sel].astype(np.float32) * self.gain
        if img.dtype == np.uint8:
            scaled = np.clip(np.rint(scaled), 0, 255)
        out[..., sel] = scaled.astype(img.dtype)
        return out

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> T.Transform:
        return T.NoOpTransform()


class RandomEnhancementGain(T.Augmentation):
    """With probability ``prob``, scale the enhancement channels by a gain ~ U(low, high).

    The enhancement a mass shows at the first post-contrast phase depends on its kinetics, the
    dose and the injection timing: slowly enhancing (type I) masses are dimmer there than the
    washing-out ones the detector sees most. One gain per slice multiplies every channel in
    ``channels`` (e.g. the first post-contrast phase and the subtraction), so their relation is
    kept; the pre-contrast channel is left alone.
    """

    def __init__(self, gain_range: Tuple[float, float], channels: Sequence[int], prob: float):
        super().__init__()
        low, high = (float(v) for v in gain_range)
        if not 0 < low <= high:
            raise ValueError(f"enhancement gain range needs 0 < low <= high, got {gain_range}")
        if not 0 <= prob <= 1:
            raise ValueError(f"enhancement gain probability must be in [0, 1], got {prob}")
        if not channels:
            raise ValueError("enhancement gain needs at least one channel")
        self.gain_range, self.prob = (low, high), float(prob)
        self.channels = tuple(int(c) for c in channels)

    def get_transform(self, image: np.ndarray) -> T.Transform:
        num_channels = image.shape[2] if image.ndim == 3 else 1
        bad = [c for c in self.channels if not 0 <= c < num_channels]
        if bad:
            raise ValueError(
                f"enhancement gain channels {bad} out of range for a {num_channels}-channel image"
            )
        if self._rand_range() >= self.prob:
            return T.NoOpTransform()
        gain = float(self._rand_range(*self.gain_range))
        return EnhancementGainTransform(gain, self.channels)


def build_intensity_augmentation(cfg) -> list:
    """The intensity augmentations ``cfg.INPUT.ENHANCEMENT_GAIN`` asks for (training only).

    ``CHANNELS`` index the converted PNG's channels in the converter's ``--channels`` order (R, G,
    B); they are mapped to the array order ``INPUT.FORMAT`` reads (``BGR`` reverses them).
    """
    gain_cfg = cfg.INPUT.ENHANCEMENT_GAIN
    if not gain_cfg.ENABLED:
        return []
    array_channels = array_channel_order(
        gain_cfg.CHANNELS, cfg.INPUT.FORMAT, "INPUT.ENHANCEMENT_GAIN.CHANNELS"
    )
    return [RandomEnhancementGain(tuple(gain_cfg.RANGE), array_channels, gain_cfg.PROB)]


def array_channel_order(spec_channels: Sequence[int], image_format: str, key: str) -> list:
    """Channel indexes of a converted slice (the converter's ``--channels`` order: R, G, B) as
    indexes of the array ``INPUT.FORMAT`` reads (``BGR`` reverses them).

    Raises:
        ValueError: an index outside 0-2, or a format other than BGR / RGB (``key``, the config
            key that holds the indexes, names them in the message).
    """
    spec_channels = [int(c) for c in spec_channels]
    bad = [c for c in spec_channels if not 0 <= c < 3]
    if bad:
        raise ValueError(f"{key} {bad}: a converted slice has channels 0-2")
    if image_format == "BGR":
        return [2 - c for c in spec_channels]
    if image_format == "RGB":
        return spec_channels
    raise ValueError(f"{key} needs INPUT.FORMAT BGR or RGB, got {image_format!r}")
