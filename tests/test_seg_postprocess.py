"""The one mm-dilation of breast masks: a Euclidean ball of radius r mm in physical units."""
import numpy as np
import pytest

from breast_d2.segmentation.postprocess import dilate_mm, disk_mm


def _picture(rows):
    """Bool array from strings of '#' (True) and '.' (False)."""
    return np.array([[c == "#" for c in row] for row in rows])


def _dot(height, width, y, x):
    mask = np.zeros((height, width), bool)
    mask[y, x] = True
    return mask


def test_radius_below_the_spacing_grows_nothing():
    mask = _dot(9, 9, 4, 4)
    assert disk_mm(1.0, (1.5, 1.5)).shape == (1, 1)
    assert (dilate_mm(mask, 1.0, (1.5, 1.5)) == mask).all()  # nearest centre is 1.5 mm away


def test_3mm_at_1mm_is_the_exact_disc_of_radius_3():
    # counted by hand: x^2 + y^2 <= 9 holds for 1 + 5 + 5 + 7 + 5 + 5 + 1 = 29 offsets
    disc = _picture([
        "...#...",
        ".#####.",
        ".#####.",
        "#######",
        ".#####.",
        ".#####.",
        "...#...",
    ])  # fmt: skip
    assert disc.sum() == 29
    grown = dilate_mm(_dot(11, 11, 5, 5), 3.0, (1.0, 1.0))
    assert (grown[2:9, 2:9] == disc).all() and grown.sum() == 29


def test_anisotropic_spacing_is_physical_distance():
    # 2 mm at 0.5 mm columns, 1 mm rows: (dx/2)^2 + dy^2 <= 4 -> 9 + 7 + 7 + 1 + 1 = 25 pixels
    ball = _picture([
        "....#....",
        ".#######.",
        "#########",
        ".#######.",
        "....#....",
    ])  # fmt: skip
    grown = dilate_mm(_dot(9, 13, 4, 6), 2.0, spacing_xy=(0.5, 1.0))
    assert (grown[2:7, 2:11] == ball).all() and grown.sum() == ball.sum() == 25


def test_a_centre_exactly_at_the_radius_is_inside_despite_rounding():
    # 0.3 / 0.1 is 2.9999999999999996 in floats, 3 * 0.7 is 2.0999999999999996 < 2.1
    assert dilate_mm(_dot(1, 9, 0, 4), 0.3, (0.1, 1.0)).sum() == 7
    grown = dilate_mm(_dot(9, 9, 4, 4), 2.1, (0.7, 0.7))
    assert grown[4, 7] and grown[7, 4] and grown[2, 2]  # 2.1 mm, 2.1 mm, 1.98 mm
    assert not grown[3, 7]  # sqrt(10) * 0.7 = 2.21 mm


def test_matches_brute_force_distances_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(30):
        mask = rng.random((2, 13, 17)) < 0.04
        mm, sx, sy = rng.uniform(0.2, 4.0), rng.uniform(0.3, 2.0), rng.uniform(0.3, 2.0)
        ys, xs = np.mgrid[:13, :17]
        want = np.zeros_like(mask)
        for z, y, x in zip(*np.nonzero(mask)):  # every pixel within mm of a mask pixel
            want[z] |= ((xs - x) * sx) ** 2 + ((ys - y) * sy) ** 2 <= mm**2 * (1 + 1e-9)
        assert (dilate_mm(mask, mm, (sx, sy)) == want).all(), (mm, sx, sy)


def test_slices_stay_apart_and_zero_is_a_copy():
    volume = np.stack([_dot(7, 7, 3, 3), np.zeros((7, 7), bool)])
    assert not dilate_mm(volume, 2.0)[1].any()
    same = dilate_mm(volume, 0.0)
    assert (same == volume).all() and same is not volume
    assert dilate_mm(np.zeros((0, 4, 4), bool), 2.0).shape == (0, 4, 4)


@pytest.mark.parametrize("mm, spacing", [(float("nan"), (1, 1)), (1.0, (0, 1)), (1.0, (1, -2))])
def test_bad_radius_or_spacing_is_an_error(mm, spacing):
    with pytest.raises(ValueError, match="mm"):
        dilate_mm(_dot(3, 3, 1, 1), mm, spacing)
