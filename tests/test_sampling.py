"""Low-contrast repeat sampling (breast_d2/data/sampling.py) on tiny slices written here."""
import math

import numpy as np
import pytest
from PIL import Image

from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.structures import BoxMode

from breast_d2.data.sampling import (
    build_train_sampler,
    low_contrast_repeat_factors,
    mass_contrasts,
    slice_contrast,
)
from helpers import breast_cfg


def test_slice_contrast_is_inside_minus_ring_median():
    img = np.full((40, 40), 50, dtype=np.uint8)
    img[10:20, 10:20] = 200
    assert slice_contrast(img, [10, 10, 20, 20]) == 150.0
    # A bright object in the ring (less than half of it) does not move the ring's median.
    img[5:7, 5:25] = 255
    assert slice_contrast(img, [10, 10, 20, 20]) == 150.0
    # Clipped to the image at an edge; a box outside the image has no contrast.
    edge = np.full((40, 40), 10, dtype=np.uint8)
    edge[0:6, 0:6] = 90
    assert slice_contrast(edge, [-3, -3, 6, 6]) == 80.0
    assert math.isnan(slice_contrast(edge, [50, 50, 60, 60]))
    # A box that fills the image: no ring, background 0.
    assert slice_contrast(np.full((8, 8), 7, dtype=np.uint8), [0, 0, 8, 8]) == 7.0


def _slice(tmp_path, name, masses, background=40, blue=0):
    """A 64 x 64 RGB PNG: G (converter channel 1) holds each (box, value) mass on a flat
    background; R holds the inverse image and B the constant ``blue``, so reading the wrong channel
    gives other contrasts."""
    g = np.full((64, 64), background, dtype=np.uint8)
    for (x0, y0, x1, y1), value in masses:
        g[y0:y1, x0:x1] = value
    rgb = np.stack([255 - g, g, np.full_like(g, blue)], axis=-1)
    path = tmp_path / f"{name}.png"
    Image.fromarray(rgb).save(path)
    return str(path)


def _record(tmp_path, case_id, z, masses):
    """A dataset dict with one annotation per ((box, value), lesion_index); bbox in XYWH_ABS."""
    return {
        "file_name": _slice(tmp_path, f"{case_id}_{z}", [m for m, _ in masses]),
        "image_id": f"{case_id}_{z}",
        "case_id": case_id,
        "slice_index": z,
        "annotations": [
            {"bbox": [x0, y0, x1 - x0, y1 - y0], "bbox_mode": BoxMode.XYWH_ABS,
             "category_id": 0, "lesion_index": lesion}
            for ((x0, y0, x1, y1), _), lesion in masses
        ],
    }


@pytest.fixture
def records(tmp_path):
    """Masses: A/0 on two slices (contrast 30, then 80), A/1 (120), B/0 (20), C/0 (160), D/0
    (100); one slice without a mass."""
    box, other = (8, 8, 18, 18), (30, 30, 44, 40)
    return [
        _record(tmp_path, "A", 3, [((box, 70), 0)]),
        _record(tmp_path, "A", 4, [((box, 120), 0), ((other, 160), 1)]),
        _record(tmp_path, "B", 7, [((other, 60), 0)]),
        _record(tmp_path, "C", 2, [((box, 200), 0)]),
        _record(tmp_path, "D", 5, [((other, 140), 0)]),
        {"file_name": str(tmp_path / "missing.png"), "image_id": "E_0", "case_id": "E",
         "annotations": []},  # never read: a slice without a mass costs nothing
    ]


def test_mass_contrast_is_the_most_conspicuous_slice_per_case_and_lesion(records):
    contrast, keys = mass_contrasts(records, array_channel=1, image_format="BGR")
    assert contrast == {("A", 0): 80.0, ("A", 1): 120.0, ("B", 0): 20.0, ("C", 0): 160.0,
                        ("D", 0): 100.0}
    assert keys == [[("A", 0)], [("A", 0), ("A", 1)], [("B", 0)], [("C", 0)], [("D", 0)], []]


def test_repeat_factors_mark_every_slice_of_a_low_contrast_mass(records):
    # Quantile 0.25 of (20, 80, 100, 120, 160) is 80: masses B/0 and A/0 (both of its slices).
    factors = low_contrast_repeat_factors(records, 1, quantile=0.25, factor=3.0)
    assert factors.tolist() == [3.0, 3.0, 3.0, 1.0, 1.0, 1.0]
    factors = low_contrast_repeat_factors(records, 1, quantile=0.1, factor=2.0)
    assert factors.tolist() == [1.0, 1.0, 2.0, 1.0, 1.0, 1.0]
    for bad in ({"quantile": 0.0, "factor": 3.0}, {"quantile": 1.0, "factor": 3.0},
                {"quantile": 0.25, "factor": 0.5}):
        with pytest.raises(ValueError, match="low-contrast"):
            low_contrast_repeat_factors(records, 1, **bad)
    assert low_contrast_repeat_factors(records[-1:], 1, 0.25, 3.0).tolist() == [1.0]


def _cfg(**repeat):
    return breast_cfg("DATALOADER.LOW_CONTRAST_REPEAT", **repeat)


def test_sampler_is_off_by_default_and_reads_the_configured_channel(records):
    assert build_train_sampler(_cfg(), records) is None
    sampler = build_train_sampler(_cfg(ENABLED=True), records)
    assert isinstance(sampler, RepeatFactorTrainingSampler)
    assert sampler._int_part.tolist() == [3.0, 3.0, 3.0, 1.0, 1.0, 1.0]
    # Converter channel 0 (R, read as BGR array channel 2) is the inverse image: there the
    # masses are dark: the lowest contrasts are now the brightest-in-G masses (C/0, A/1).
    sampler = build_train_sampler(_cfg(ENABLED=True, CHANNEL=0), records)
    assert sampler._int_part.tolist() == [1.0, 3.0, 1.0, 3.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"LOW_CONTRAST_REPEAT.CHANNEL \[3\]"):
        build_train_sampler(_cfg(ENABLED=True, CHANNEL=3), records)


def test_repeated_slices_are_drawn_in_proportion(records):
    sampler = build_train_sampler(_cfg(ENABLED=True), records[2:4])  # B/0 (x3), C/0 (x1)
    draws = iter(sampler)
    counts = np.bincount([next(draws) for _ in range(4000)], minlength=2)
    assert abs(counts[0] / counts.sum() - 0.75) < 0.03


def test_train_loader_gets_the_sampler(records, monkeypatch):
    from breast_d2.engine import defaults

    captured = {}
    monkeypatch.setattr(defaults, "train_dataset_dicts", lambda cfg: records)
    monkeypatch.setattr(defaults, "build_detection_train_loader",
                        lambda cfg, **kwargs: captured.update(kwargs))
    defaults.build_breast_train_loader(_cfg(ENABLED=True))
    assert captured["dataset"] is records
    assert captured["sampler"]._int_part.tolist() == [3.0, 3.0, 3.0, 1.0, 1.0, 1.0]
    defaults.build_breast_train_loader(_cfg())
    assert captured["sampler"] is None  # detectron2's DATALOADER.SAMPLER_TRAIN
