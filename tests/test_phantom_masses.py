"""Tests of the phantom's BI-RADS graded BPE and of the mass appearance (margins, internal
enhancement, kinetics, label extent), measured on generated cases."""
import numpy as np
from scipy import ndimage

from breast_d2.data import phantom as ph
from breast_d2.data.phantom import acquisition as acq
from breast_d2.data.phantom.motion import NO_MOTION
from breast_d2.data.phantom import lesions as phl
from breast_d2.data.phantom.bpe import BPE_CATEGORIES

TINY = {"matrix": 128, "slices": 32}
FAST = {"matrix": 96, "slices": 16}
RANGES = dict(zip(BPE_CATEGORIES, ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))))


def _cases(n, seed=21, **kw):
    return [ph.make_case(i, seed, **kw) for i in range(n)]


def test_bpe_fraction_in_category_range_and_symmetric():
    seen = set()
    for case in _cases(24, **FAST):
        bpe = case.info["bpe"]
        lo, hi = RANGES[bpe["category"]]
        right, left = bpe["enhancing_fgt_fraction"]
        assert lo <= right <= hi and lo <= left <= hi, bpe  # measured, per breast
        assert abs(right - left) < 0.1  # symmetric: same category, close fractions
        assert bpe["threshold"] == 0.2 and bpe["pattern"] in ("patchy", "nodular")
        seen.add(bpe["category"])
    assert len(seen) >= 3  # the categories are drawn, not fixed


def test_bpe_measured_on_the_image(monkeypatch):
    """The recorded fraction is what the (noisy) image shows, within noise (no motion: a moved
    pre-contrast phase changes the voxel-wise enhancement the test measures)."""
    monkeypatch.setitem(acq._TEST_OVERRIDES, "motion", NO_MOTION)
    case = ph.make_case(2, 21, **TINY)
    pre, last = case.phases[0], case.phases[-1]
    sm = lambda a: ndimage.uniform_filter(a, 3)  # noqa: E731
    re_last = (sm(last) - sm(pre)) / np.maximum(sm(pre), 1)
    for k, side in enumerate(("right", "left")):
        half = np.zeros(case.tissue.shape, bool)
        x_mid = case.tissue.shape[2] // 2
        half[..., :x_mid] = side == "right"
        half[..., x_mid:] = side == "left"
        fgt = ndimage.binary_erosion((case.tissue == ph.FGT) & (case.breast_mask > 0), iterations=1)
        measured = float((re_last[fgt & half] >= 0.2).mean())
        assert abs(measured - case.info["bpe"]["enhancing_fgt_fraction"][k]) < 0.2


def test_masses_enhance_more_than_bpe_at_post1():
    ratios = [
        les.lesion_to_parenchyma_post1 for case in _cases(12, **FAST) for les in case.lesions
    ]
    assert ratios and min(ratios) > 1.0


def test_benign_persistent_masses_rise_to_the_last_phase():
    found = 0
    for case in _cases(30, seed=4, **FAST):
        for les in case.lesions:
            assert les.kinetics["curve_type"] in ("I", "II", "III")
            assert isinstance(les.kinetics["benign"], bool)
            if les.kinetics["curve_type"] == "I":
                m = case.lesion_labels == les.label
                means = [case.phases[p][m].mean() for p in range(case.phases.shape[0])]
                assert means[-1] > means[2] > means[0]  # still rising after 150 s
                found += les.kinetics["benign"]
    assert found >= 1


def _surface_to_volume(label):
    surface = label & ~ndimage.binary_erosion(label)
    return surface.sum() / label.sum()


def test_spiculated_masses_have_a_larger_surface_to_volume_ratio():
    """A spiculated label vs the smooth (ellipsoid) label of its own core: same size, place."""
    grid = ph.anatomy._make_grid(400, 128, 320.0)  # 0.8 mm pixels, 1.05 mm slices
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(6):
        d = float(rng.uniform(14, 30))
        spic = phl._shape_params(rng, "spiculated", d)
        core = {"kind": "ellipsoid", "rot": spic["rot"], "semi": spic["semi"]}
        box = phl._blob_box(grid, (0.0, 0.0, 0.0), spic["reach"])
        sv = []
        for shape in (core, spic):
            label = phl.largest_component(phl._blob_sdf(grid, box, (0.0, 0.0, 0.0), shape) <= 0)
            sv.append(_surface_to_volume(label))
        ratios.append(sv[1] / sv[0])
    assert min(ratios) > 1.0 and np.mean(ratios) > 1.02, ratios
    margins = {les.margin for case in _cases(16, **FAST) for les in case.lesions}
    assert "spiculated" in margins and margins <= {"smooth", "irregular", "spiculated"}


def test_label_extent_in_study_range_at_every_resolution():
    for matrix, slices in ((64, 16), (96, 16), (128, 32), (160, 48)):
        n = 0
        for case in _cases(6, seed=8, matrix=matrix, slices=slices):
            for les in case.lesions:
                x0, y0, z0, x1, y1, z1 = les.box
                assert min(x1 - x0, y1 - y0, z1 - z0) >= 2, (matrix, slices, les.box)
                assert 10.7 <= max(les.extent_mm) <= 66.9, (matrix, slices, les.extent_mm)
                assert les.internal in ("homogeneous", "heterogeneous", "rim")
                n += 1
        assert n >= 3, (matrix, slices)
