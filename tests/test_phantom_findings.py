"""Tests of the findings inside the breast that are not targets (breast_d2.data.phantom.findings).

Everything is measured on the rendered case (tissue map, phases, masks), not read back from the
generator's constants.
"""
import numpy as np
import pytest
from scipy import ndimage

from breast_d2.data import phantom as ph
from breast_d2.data.phantom import findings
from breast_d2.data.phantom.anatomy import BVESSEL, CYST, FOCUS, IMNODE, NME

TINY = {"matrix": 128, "slices": 32}  # 2.5 mm pixels, 4.2 mm slices
FINDING_CLASSES = (FOCUS, IMNODE, BVESSEL, NME, CYST)
IN_PLANE = np.array([np.zeros((3, 3)), ndimage.generate_binary_structure(2, 1), np.zeros((3, 3))])


def _summary(case):
    """The arrays the tests need (keeps the module fixture small)."""
    return {
        "pre": case.phases[0],
        "post1": case.phases[1],
        "curve_of": lambda m: case.phases[:, m].mean(axis=1),
        "tissue": case.tissue,
        "mask": case.breast_mask > 0,
        "labels": case.lesion_labels,
        "info": case.info,
        "n_lesions": len(case.lesions),
        "spacing": case.spacing,
    }


@pytest.fixture(scope="module")
def cohort():
    """Twelve small cases of one cohort, generated once."""
    return [_summary(ph.make_case(i, 0, **TINY)) for i in range(12)]


def test_new_tissue_classes_appended():
    assert ph.TISSUES[:13][-1] == "mass" and len(ph.TISSUES) == 18
    names = ("focus", "intramammary_node", "breast_vessel", "non_mass_enhancement", "cyst")
    assert [ph.TISSUES[c] for c in FINDING_CLASSES] == list(names)


def test_every_kind_occurs_and_records_are_consistent(cohort):
    seen = set()
    for c in cohort:
        records, counts = c["info"]["findings"], c["info"]["findings_count"]
        assert set(counts) == set(findings.KINDS)
        assert sum(counts.values()) == len(records)
        for r in records:
            assert set(r) == {
                "kind", "side", "size_mm", "pattern", "curve_type", "relative_enhancement_post1"
            }
            assert r["side"] in ("left", "right") and r["size_mm"] > 0
            if r["kind"] == "nme":
                assert r["pattern"] in ("linear", "segmental", "regional")
            elif r["kind"] == "cyst":
                assert r["pattern"] in ("rim", "plain")
                assert (r["relative_enhancement_post1"] == 0) == (r["pattern"] == "plain")
            else:
                assert r["pattern"] is None
            seen.add(r["kind"])
    assert seen == set(findings.KINDS)


def test_findings_inside_breast_away_from_masses_and_skin(cohort):
    for c in cohort:
        found = np.isin(c["tissue"], FINDING_CLASSES)
        assert np.all(c["mask"][found])
        near_mass = ndimage.binary_dilation(c["labels"] > 0, iterations=2)
        assert not np.any(found & near_mass)
        near_skin = ndimage.binary_dilation(c["tissue"] == ph.SKIN)
        assert not np.any(found & near_skin)
        # Not targets: labels are the masses only, one value per mass.
        assert set(np.unique(c["labels"])) == set(range(c["n_lesions"] + 1))


def test_foci_are_smaller_than_5_mm(cohort):
    n = 0
    for c in cohort:
        comps, k = ndimage.label(c["tissue"] == FOCUS)
        for sl in ndimage.find_objects(comps):
            extent = [(s.stop - s.start) * c["spacing"][2 - a] for a, s in enumerate(sl)]
            assert max(extent) < 5.0, extent
        n += k
        assert all(r["size_mm"] < 5 for r in c["info"]["findings"] if r["kind"] == "focus")
    assert n >= 2


def test_naive_threshold_finds_non_mass_candidates_inside_the_breast(cohort):
    """Half the median mass subtraction, inside the mask: components that are not masses.

    No opening: noise (sigma ~10-20) and background enhancement stay far below the threshold, and
    an opening would erase the thin vessels and the one-voxel foci that this is about.
    """
    cases, hits = 0, 0
    for c in cohort:
        if c["n_lesions"] == 0:
            continue
        sub = c["post1"] - c["pre"]
        thr = 0.5 * np.median(sub[c["labels"] > 0])
        comps, n = ndimage.label((sub > thr) & c["mask"])
        mass_ids = set(np.unique(comps[c["labels"] > 0]))
        not_mass = np.isin(comps, [j for j in range(1, n + 1) if j not in mass_ids])
        cases += 1
        hits += bool(np.any(not_mass & np.isin(c["tissue"], FINDING_CLASSES)))
    assert cases >= 5 and hits >= cases // 2, (hits, cases)


def _cases_with(monkeypatch, **constants):
    for name, value in constants.items():
        monkeypatch.setattr(findings, name, value)
    return [ph.make_case(i, 5, **TINY) for i in range(4)]


def test_cysts_dark_interior_never_enhances_rim_does(monkeypatch):
    shells, interiors, pre_in = {}, [], []
    for rim in (0.0, 1.0):
        shell_sub = []
        # Larger cysts (12-20 mm, still in the published range) so that 2.5 mm voxels have an
        # interior that the 1 mm rim does not reach.
        patch = {"_P_CYSTS": 1.0, "_P_CYST_RIM": rim, "_CYST_DIAMETER_MM": (12.0, 20.0)}
        for case in _cases_with(monkeypatch, **patch):
            sub = case.phases[1] - case.phases[0]
            cyst = case.tissue == CYST
            inner = ndimage.binary_erosion(cyst, IN_PLANE)
            shell = ndimage.binary_dilation(cyst, IN_PLANE) & ~inner
            interiors.append(sub[inner])
            pre_in.append(case.phases[0][inner])
            shell_sub.append(sub[shell])
            if not inner.any():
                continue
            fgt = case.phases[0][case.tissue == ph.FGT].mean()
            assert case.phases[0][inner].mean() < 0.5 * fgt  # dark on pre (T1 fat-sat)
            assert case.phases[1][inner].mean() < 0.5 * fgt  # ... and on post
        shells[rim] = np.concatenate(shell_sub)
    interior = np.concatenate(interiors)
    assert interior.size >= 40
    sigma = interior.std()
    assert abs(interior.mean()) < 3 * sigma / np.sqrt(interior.size) + 0.02 * np.mean(
        np.concatenate(pre_in)
    )
    # The rim enhances: its shell gains clearly more than the shell of plain cysts.
    assert shells[1.0].mean() > shells[0.0].mean() + 15.0


def test_intramammary_node_washes_out_and_has_a_fatty_hilum(monkeypatch):
    n = 0
    for case in _cases_with(monkeypatch, _P_NODE=1.0):
        node = case.tissue == IMNODE
        if not node.any():
            continue
        n += 1
        assert np.all(case.breast_mask[node])
        curve = case.phases[:, node].mean(axis=1)
        peak = curve[1:3].max()
        assert peak > 1.8 * curve[0]  # fast wash-in
        assert (curve[-1] - peak) / (peak - curve[0]) < -0.1  # wash-out (type III)
    assert n >= 3


def test_vessels_enhance_early_and_strongly(cohort):
    n = 0
    for c in cohort:
        m = c["tissue"] == BVESSEL
        if m.sum() < 5:
            continue
        n += 1
        curve = c["curve_of"](m)
        assert np.argmax(curve) == 1  # arterial: strongest at the first post-contrast phase
        assert curve[1] > 1.8 * curve[0]
    assert n >= 3


def test_make_case_deterministic_with_findings():
    a = ph.make_case(3, 9, matrix=96, slices=16)
    b = ph.make_case(3, 9, matrix=96, slices=16)
    np.testing.assert_array_equal(a.phases, b.phases)
    np.testing.assert_array_equal(a.tissue, b.tissue)
    assert a.info == b.info
