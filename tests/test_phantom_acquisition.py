"""Tests of the phantom's acquisition artefacts: motion, fat-saturation failure, slice profile."""
import numpy as np
import pytest
from scipy import ndimage, optimize

from breast_d2.data import phantom as ph
from breast_d2.data.phantom import acquisition as acq
from breast_d2.data.phantom.motion import NO_MOTION, _Motion

TINY = {"matrix": 128, "slices": 32}
FAST = {"matrix": 96, "slices": 16}
SEED = 11


def _render(index, overrides, monkeypatch, **grid):
    """``make_case(index, SEED)`` with some drawn artefacts replaced (tests-only switch)."""
    with monkeypatch.context() as m:
        for key, value in overrides.items():
            m.setitem(acq._TEST_OVERRIDES, key, value)
        return ph.make_case(index, SEED, **grid)


def _first(predicate, **grid):
    for index in range(40):
        case = ph.make_case(index, SEED, **grid)
        if predicate(case):
            return index, case
    raise AssertionError("no such case in 40 tries")


def _skin_edge(mask):
    """Voxels within one voxel (in-plane) of the breast surface, both sides."""
    st = np.zeros((1, 3, 3), bool)
    st[0] = True
    return ndimage.binary_dilation(mask, st) & ~ndimage.binary_erosion(mask, st)


def test_motion_makes_edge_artefacts_only_in_the_pre_contrast_phase(monkeypatch):
    index, moved = _first(lambda c: c.info["acquisition"]["motion"]["kind"] != "none", **FAST)
    still = _render(index, {"motion": NO_MOTION}, monkeypatch, **FAST)
    assert still.info["acquisition"]["motion"]["max_displacement_mm"] == 0.0
    # Labels, mask and post-contrast phases keep the annotation geometry; only pre moves.
    assert np.array_equal(moved.lesion_labels, still.lesion_labels)
    assert np.array_equal(moved.phases[1:], still.phases[1:])
    assert not np.array_equal(moved.phases[0], still.phases[0])
    edge = _skin_edge(moved.breast_mask > 0)
    art = [np.abs(c.phases[1] - c.phases[0])[edge].mean() for c in (moved, still)]
    assert art[0] > 1.5 * art[1], art
    rec = moved.info["acquisition"]["motion"]
    assert rec["max_displacement_mm"] >= np.linalg.norm(rec["translation_mm"]) - 1e-3
    assert 0.5 < rec["max_displacement_mm"] < 10.0


def _estimate_shift(moving, fixed, spacing_zyx, box):
    """Translation (z, y, x) mm that best maps ``fixed`` onto ``moving`` on ``box`` (SSE)."""
    target = moving[box]

    def cost(t_mm):
        shifted = ndimage.shift(fixed, np.asarray(t_mm) / spacing_zyx, order=1, mode="nearest")
        return float(((shifted[box] - target) ** 2).mean())

    res = optimize.minimize(cost, np.zeros(3), method="Powell", options={"xtol": 0.05})
    return res.x


def test_measured_displacement_matches_record(monkeypatch):
    t = (2.0, -1.5, 3.0)  # (x, y, z) mm: a pure translation, recoverable by registration
    rigid = _Motion("rigid", t, 0.0)
    moved = _render(1, {"motion": rigid}, monkeypatch, **TINY)
    still = _render(1, {"motion": NO_MOTION}, monkeypatch, **TINY)
    zs, ys, xs = np.nonzero(moved.breast_mask)
    box = (slice(zs.min(), zs.max() + 1), slice(ys.min(), ys.max() + 1), slice(None))
    spacing = np.asarray(moved.spacing[::-1])
    est = _estimate_shift(moved.phases[0], still.phases[0], spacing, box)  # (z, y, x) mm
    assert est[::-1] == pytest.approx(t, abs=0.6)
    rec = moved.info["acquisition"]["motion"]
    assert rec["kind"] == "rigid" and rec["translation_mm"] == pytest.approx(t)
    assert rec["max_displacement_mm"] == pytest.approx(np.linalg.norm(est), abs=0.6)


def test_fat_sat_failure_raises_fat_not_fgt_and_cancels_in_subtraction(monkeypatch):
    case = ph.make_case(2, SEED, **TINY)
    zyx = np.argwhere(case.breast_mask > 0)
    lateral = zyx[zyx[:, 2] < zyx[:, 2].min() + 30.0 / case.spacing[0]]  # right breast, outer side
    centre = [case.origin[i] + lateral[:, 2 - i].mean() * case.spacing[i] for i in range(3)]
    fs = acq._FatSat(True, 3.0, ((tuple(centre), 40.0),))
    base = {"motion": NO_MOTION}
    bad = _render(2, {**base, "fat_sat": fs}, monkeypatch, **TINY)
    good = _render(2, {**base, "fat_sat": acq._FatSat(False)}, monkeypatch, **TINY)
    raised = (bad.tissue == ph.FAT) & (bad.phases[0] > 1.5 * good.phases[0])
    fat = (bad.tissue == ph.FAT) & (bad.breast_mask > 0)
    assert raised[fat].mean() > 0.02  # a region of the breast fat is bright
    gain = bad.phases[0][raised].mean() / good.phases[0][raised].mean()
    assert 1.5 < gain <= 3.05
    # Water tissue is unchanged (FGT whose z-neighbours are FGT too: no partial volume with fat).
    fgt = bad.tissue == ph.FGT
    fgt[1:-1] &= fgt[:-2] & fgt[2:]
    for p in (0, 1):
        assert np.array_equal(bad.phases[p][fgt], good.phases[p][fgt])
    # Same gain in every phase: the subtraction cancels it up to noise.
    rise = (bad.phases[0] - good.phases[0])[raised].mean()
    sub = [(c.phases[1] - c.phases[0])[raised] for c in (bad, good)]
    assert abs(sub[0].mean() - sub[1].mean()) < 0.05 * rise
    rec = bad.info["acquisition"]["fat_sat"]
    assert rec["failure"] and 2.0 < rec["max_fat_gain"] <= 3.0
    pre = bad.phases[0][fat]
    measured = float(np.mean(pre >= 2.0 * np.median(pre)))
    assert measured > 0.01
    assert rec["fraction_of_breast_fat_above_2x"] == pytest.approx(measured, abs=0.03)


def test_slice_profile_makes_mass_end_slices_partly_enhanced(monkeypatch):
    def has_mass(c):
        return any(les.box[5] - les.box[2] >= 3 for les in c.lesions)

    index, _ = _first(has_mass, **TINY)
    base = {"motion": NO_MOTION, "fat_sat": acq._FatSat(False)}
    soft = _render(index, base, monkeypatch, **TINY)
    hard = _render(index, {**base, "slice_profile": False}, monkeypatch, **TINY)
    assert soft.info["acquisition"]["slice_profile_fwhm_mm"] == pytest.approx(soft.spacing[2])
    assert hard.info["acquisition"]["slice_profile_fwhm_mm"] is None
    lesion = [les for les in soft.lesions if les.box[5] - les.box[2] >= 3][0]
    z0, z1 = lesion.box[2], lesion.box[5]
    m = soft.lesion_labels == lesion.label
    for end, step in ((z0, 1), (z1 - 1, -1)):
        foot = m[end]  # the mass's footprint on its end slice
        e = {}
        for name, c in (("soft", soft), ("hard", hard)):
            sub = c.phases[1] - c.phases[0]
            e[name] = [sub[z][foot].mean() for z in (end - step, end, end + step)]
        bg, inner = e["hard"][0], e["hard"][2]  # no partial volume: beyond the end is background
        # Beyond the end: partly enhanced, between the background and the mass.
        assert bg + 0.05 * (inner - bg) < e["soft"][0] < bg + 0.5 * (inner - bg), e
        # Enhancement falls off over the end slices: inner > end > beyond.
        assert e["soft"][0] < e["soft"][1] < e["soft"][2], e
    assert np.array_equal(soft.lesion_labels, hard.lesion_labels)


def test_acquisition_is_deterministic_and_recorded():
    a, b = (ph.make_case(4, SEED, **FAST) for _ in range(2))
    assert np.array_equal(a.phases, b.phases) and a.info == b.info
    recs = [ph.make_case(i, 5, matrix=64, slices=16).info["acquisition"] for i in range(30)]
    kinds = [r["motion"]["kind"] for r in recs]
    assert {"none", "rigid", "elastic"} <= set(kinds)
    assert 3 <= sum(k != "none" for k in kinds) <= 20  # prevalence 0.27
    assert 1 <= sum(r["fat_sat"]["failure"] for r in recs) <= 15  # prevalence 0.22
    for r in recs:
        assert set(r) == {"motion", "fat_sat", "slice_profile_fwhm_mm"}
        assert (r["motion"]["max_displacement_mm"] > 0) == (r["motion"]["kind"] != "none")
        if not r["fat_sat"]["failure"]:
            assert r["fat_sat"]["max_fat_gain"] == 1.0
