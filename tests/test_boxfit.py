"""Box fit of 3D candidates to the enhancing blob under them (breast_d2/evaluation/boxfit.py)."""
import numpy as np
import pytest

from breast_d2.evaluation.boxfit import BoxFitParams, fit_box, fit_boxes
from breast_d2.evaluation.candidates import CandidateArrays, FROCInputError
from breast_d2.evaluation.slices import ArraySlices

SHAPE = (12, 40, 40)  # Z, H, W
OPEN = BoxFitParams(closed=False)  # the fit before BOX_FIT_CLOSED
MASS = [10, 12, 3, 15, 18, 7]  # x0, y0, z0, x1, y1, z1 (half-open): 5 x 6 x 4 voxels


def _volume(seed=0, noise=3.0, extra=()):
    """Background 30 (+- noise) with MASS (and ``extra`` boxes) enhancing by 100."""
    vol = 30.0 + np.random.default_rng(seed).normal(0, noise, SHAPE)
    for x0, y0, z0, x1, y1, z1 in (MASS, *extra):
        vol[z0:z1, y0:y1, x0:x1] += 100
    return np.clip(vol, 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("candidate", [
    [9, 11, 3, 16, 19, 6],  # one pixel loose per side, one slice short
    [11, 13, 3, 14, 17, 7],  # one pixel tight per side
    [10.4, 11.6, 3, 15.2, 18.3, 7],  # sub-pixel edges
])
def test_loose_or_tight_boxes_snap_to_the_mass(candidate):
    assert fit_box(_volume(), np.array(candidate, float)).tolist() == [float(v) for v in MASS]


def test_level_decides_the_partial_volume_edge():
    # Edge voxels at a fraction of the peak's contrast are in the blob when >= level.
    vol = np.full(SHAPE, 30, np.uint8)
    vol[3:7, 12:18, 10:15] = 130
    vol[3:7, 12:18, 15] = 69  # 39 % of the contrast
    vol[3:7, 12:18, 9] = 71  # 41 %
    assert fit_box(vol, np.array(MASS, float)).tolist() == [9, 12, 3, 15, 18, 7]  # level 0.4
    assert fit_box(vol, np.array(MASS, float), BoxFitParams(level=0.35)).tolist() == \
        [9, 12, 3, 16, 18, 7]
    assert fit_box(vol, np.array(MASS, float), BoxFitParams(level=0.5)).tolist() == MASS


def test_no_contrast_or_another_structure_keeps_the_box():
    flat = np.full(SHAPE, 30, np.uint8)
    box = np.array([8, 10, 4, 17, 20, 6], float)
    assert fit_box(flat, box).tolist() == box.tolist()
    # A long bright vessel through a small candidate: its blob overlaps the box by IoU 0.08.
    vessel = _volume(extra=[(0, 30, 0, 40, 33, 12)])
    small = np.array([20, 29, 5, 23, 34, 6], float)
    assert fit_box(vessel, small, BoxFitParams(min_iou=0.1)).tolist() == small.tolist()
    # ... which the default min_iou (0.05) lets the open fit take; the blob is only searched
    # inside the grown region, which bounds the growth.
    assert fit_box(vessel, small, OPEN).tolist() == [18, 30, 3, 25, 33, 8]


def test_a_mass_found_on_its_central_slice_grows_to_its_blob():
    central = np.array([10, 12, 5, 15, 18, 6], float)  # MASS spans slices 3-6
    assert fit_box(_volume(), central).tolist() == MASS  # IoU 0.25 >= min_iou 0.05
    assert fit_box(_volume(), central, BoxFitParams(min_iou=0.3)).tolist() == central.tolist()


def test_the_blob_with_most_voxels_in_the_box_wins():
    # A second, separate mass inside the grown region but mostly outside the candidate.
    vol = _volume(extra=[(17, 12, 3, 20, 18, 7)])
    assert fit_box(vol, np.array([9, 11, 3, 16, 19, 7], float)).tolist() == MASS


class _Reader(ArraySlices):
    """ArraySlices that counts slice reads."""

    def __init__(self, volumes):
        super().__init__(volumes)
        self.reads = 0

    def read(self, case_id, z):
        self.reads += 1
        return super().read(case_id, z)


def test_fit_boxes_keeps_everything_but_the_boxes():
    reader = _Reader({"A": _volume(0), "B": np.full(SHAPE, 30, np.uint8)})
    cands = CandidateArrays(
        ["A", "B"], np.array([0, 1, 0]),
        np.array([[9, 11, 3, 16, 19, 6], [9, 11, 3, 16, 19, 6], [30, 30, 9, 34, 34, 10]], float),
        np.array([0.9, 0.8, 0.1]), np.array([2, 2, 1]))
    fitted, stats = fit_boxes(cands, reader)
    assert fitted.boxes[0].tolist() == MASS
    assert fitted.boxes[1].tolist() == cands.boxes[1].tolist()  # no contrast
    assert fitted.scores.tolist() == cands.scores.tolist()
    assert fitted.case_index.tolist() == [0, 1, 0] and fitted.slices.tolist() == [2, 2, 1]
    assert stats == {"candidates": 3, "fitted": 1}
    assert cands.boxes[0].tolist() == [9, 11, 3, 16, 19, 6]  # input untouched
    # Case A reads slices 1..11 (z 3 - 2 to z 10 + 2, clipped), case B 1..7: each once.
    assert reader.reads == 11 + 7
    with pytest.raises(FROCInputError, match="'C' has no volume"):
        fit_boxes(CandidateArrays(["C"], np.array([0]), cands.boxes[:1], np.array([0.5]),
                                  np.array([1])), reader)


CLOSED = BoxFitParams(closed=True)
assert CLOSED == BoxFitParams()  # the default


@pytest.mark.parametrize("candidate", [
    [9, 11, 3, 16, 19, 6], [11, 13, 3, 14, 17, 7], [10, 12, 5, 15, 18, 6]])
def test_closed_blobs_fit_as_before(candidate):
    # A blob that ends inside the search region gives the same box with and without the check.
    box = np.array(candidate, float)
    assert fit_box(_volume(), box, CLOSED).tolist() == fit_box(_volume(), box, OPEN).tolist() \
        == MASS


def test_closed_keeps_the_box_when_the_blob_runs_on():
    # The vessel through a small candidate leaves the grown region: the region's bounds are no
    # mass's box.
    vessel = _volume(extra=[(0, 30, 0, 40, 33, 12)])
    small = np.array([20, 29, 5, 23, 34, 6], float)
    assert fit_box(vessel, small, CLOSED).tolist() == small.tolist()
    # A well-boxed mass joined to enhancing tissue that runs out of the region (a band of
    # parenchyma along its right side): the open fit grows to the region's edge, the closed
    # fit keeps the detector's box.
    joined = _volume(extra=[(15, 0, 0, 17, 40, 12)])
    good = np.array(MASS, float)
    assert fit_box(joined, good, OPEN).tolist() == [10, 9, 1, 17, 21, 9]
    assert fit_box(joined, good, CLOSED).tolist() == MASS


def test_a_blob_at_the_image_edge_is_closed():
    vol = np.full(SHAPE, 30, np.uint8)
    vol[0:4, 0:6, 0:5] = 130  # touches the image's x and y edges (and the first slice)
    assert fit_box(vol, np.array([1, 1, 1, 4, 5, 3], float), CLOSED).tolist() == [0, 0, 0, 5, 6, 4]


def test_closed_is_in_plane_only():
    # A column enhancing through every slice, found on three: in z the blob is cut at the search
    # region's slices (z +- 2) with and without the check, so a mass found on its central slices
    # still grows to its height.
    vol = np.full(SHAPE, 30, np.uint8)
    vol[:, 12:18, 10:15] = 130
    found = np.array([10, 12, 4, 15, 18, 7], float)
    assert fit_box(vol, found, CLOSED).tolist() == fit_box(vol, found, OPEN).tolist() == \
        [10, 12, 2, 15, 18, 9]


def test_params_from_a_record():
    rec = dict(BoxFitParams(closed=True).asdict(), data_root="/x", candidates=3, fitted=1)
    assert BoxFitParams.from_record(rec) == BoxFitParams(closed=True)
    rec.pop("closed")  # written before the option: every blob was kept
    assert BoxFitParams.from_record(rec) == BoxFitParams(closed=False)
    rec.pop("level")
    with pytest.raises(FROCInputError, match="'level' is missing"):
        BoxFitParams.from_record(rec)
    with pytest.raises(FROCInputError, match="box fit closed"):
        BoxFitParams.from_record(dict(BoxFitParams().asdict(), closed="yes"))


def test_params_checked_and_from_config():
    assert BoxFitParams.from_config(None) == BoxFitParams()
    assert BoxFitParams.from_config({"BOX_FIT": False, "BOX_FIT_LEVEL": 0.5}) == \
        BoxFitParams(enabled=False, level=0.5)
    for bad in (dict(level=0.0), dict(level=1.0), dict(min_iou=True), dict(margin=-1),
                dict(channel=3), dict(channel=1.0)):
        with pytest.raises(FROCInputError, match="box fit"):
            BoxFitParams(**bad).checked()
