"""RandomEnhancementGain: the channels it scales, by how much, and how the config maps them."""
import numpy as np
import pytest

from detectron2.data import transforms as T

from breast_d2.data import BreastMaskDatasetMapper
from breast_d2.data.augmentation import (
    EnhancementGainTransform,
    RandomEnhancementGain,
    build_intensity_augmentation,
)
from helpers import breast_cfg


def _image():
    image = np.zeros((6, 8, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 100, 200, 250
    return image


def test_transform_scales_only_its_channels_and_keeps_geometry():
    image = _image()
    transform = EnhancementGainTransform(0.5, (1, 2))
    out = transform.apply_image(image)
    assert out.dtype == np.uint8
    assert (out[..., 0] == 100).all() and (out[..., 1] == 100).all() and (out[..., 2] == 125).all()
    assert (image[..., 1] == 200).all()  # the input is not modified
    boxes = np.array([[1.0, 2.0, 5.0, 6.0]])
    assert np.array_equal(transform.apply_box(boxes), boxes)
    mask = (np.arange(48).reshape(6, 8) % 2).astype(np.uint8)
    assert np.array_equal(transform.apply_segmentation(mask), mask)
    # A gain above 1 saturates at 255 instead of wrapping around.
    assert EnhancementGainTransform(2.0, (2,)).apply_image(image)[..., 2].max() == 255


def test_random_gain_respects_probability_and_range():
    np.random.seed(0)
    never = RandomEnhancementGain((0.4, 1.0), (1,), prob=0.0)
    assert all(isinstance(never(T.AugInput(_image())), T.NoOpTransform) for _ in range(20))
    always = RandomEnhancementGain((0.4, 0.6), (0, 1), prob=1.0)
    gains = []
    for _ in range(50):
        aug_input = T.AugInput(_image())
        transform = always(aug_input)
        assert isinstance(transform, EnhancementGainTransform)
        gains.append(transform.gain)
        assert (aug_input.image[..., 2] == 250).all()  # the channel it was not given is untouched
        assert np.allclose(aug_input.image[..., 1], round(200 * transform.gain), atol=1)
    assert 0.4 <= min(gains) and max(gains) <= 0.6 and max(gains) - min(gains) > 0.1
    half = RandomEnhancementGain((0.5, 0.5), (0,), prob=0.5)
    scaled = sum(
        not isinstance(half(T.AugInput(_image())), T.NoOpTransform) for _ in range(400)
    )
    assert 150 < scaled < 250


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(gain_range=(0.0, 1.0), channels=(0,), prob=0.5), "0 < low <= high"),
        (dict(gain_range=(1.2, 1.0), channels=(0,), prob=0.5), "0 < low <= high"),
        (dict(gain_range=(0.4, 1.0), channels=(0,), prob=1.5), r"\[0, 1\]"),
        (dict(gain_range=(0.4, 1.0), channels=(), prob=0.5), "at least one channel"),
    ],
)
def test_random_gain_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandomEnhancementGain(**kwargs)


def test_random_gain_rejects_a_channel_the_image_lacks():
    aug = RandomEnhancementGain((0.4, 1.0), (3,), prob=1.0)
    with pytest.raises(ValueError, match=r"channels \[3\] out of range for a 3-channel image"):
        aug(T.AugInput(_image()))


def _cfg(**gain):
    return breast_cfg("INPUT.ENHANCEMENT_GAIN", **gain)


def test_config_is_off_by_default_and_maps_channels_to_the_read_order():
    assert build_intensity_augmentation(_cfg()) == []
    (aug,) = build_intensity_augmentation(_cfg(ENABLED=True))
    # The converter writes post 1, subtraction, pre as R, G, B; BGR reading reverses them.
    assert aug.channels == (2, 1) and aug.gain_range == (0.4, 1.0) and aug.prob == 0.5
    cfg = _cfg(ENABLED=True, CHANNELS=(1,))
    cfg.INPUT.FORMAT = "RGB"
    assert build_intensity_augmentation(cfg)[0].channels == (1,)
    with pytest.raises(ValueError, match=r"CHANNELS \[3\]"):
        build_intensity_augmentation(_cfg(ENABLED=True, CHANNELS=(0, 3)))
    cfg = _cfg(ENABLED=True)
    cfg.INPUT.FORMAT = "L"
    with pytest.raises(ValueError, match="INPUT.FORMAT BGR or RGB"):
        build_intensity_augmentation(cfg)


def test_mapper_uses_the_gain_for_training_only():
    cfg = _cfg(ENABLED=True)
    train = BreastMaskDatasetMapper(cfg, is_train=True).augmentations.augs
    test = BreastMaskDatasetMapper(cfg, is_train=False).augmentations.augs
    assert isinstance(train[-1], RandomEnhancementGain)
    assert not any(isinstance(aug, RandomEnhancementGain) for aug in test)
