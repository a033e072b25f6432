"""Tests for breast_d2.data.masks: masks from other tools read onto the images' voxel grid."""
import gzip
import logging
import os
import tempfile

import numpy as np
import pytest
import SimpleITK as sitk

from breast_d2.data.errors import CohortError
from breast_d2.data.masks import read_label_on_grid, read_mask_on_grid, same_grid, world_bounds
from breast_d2.data.readers import CaseGeometry

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# the images: 20 x 16 x 10 voxels (X, Y, Z) of 1 x 1 x 2 mm, origin (0, 0, 0)
REF = CaseGeometry((20, 16, 10), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), IDENTITY)
# a cube in world mm, its faces half-way between the images' voxel centres
CUBE_LO, CUBE_HI = np.array([3.5, 4.5, 5.0]), np.array([9.5, 11.5, 13.0])


def _centres(geom):
    """World (x, y, z) mm of every voxel centre, array [Z, Y, X, 3]."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in geom.shape_zyx], indexing="ij")
    index = np.stack([x, y, z], -1) * np.asarray(geom.spacing)
    return np.asarray(geom.origin) + index @ np.asarray(geom.direction).reshape(3, 3).T


def _cube_on(geom):
    """uint8 [Z, Y, X] of ``geom``: 1 where the voxel centre lies inside the world cube."""
    c = _centres(geom)
    return np.all((c > CUBE_LO) & (c < CUBE_HI), axis=-1).astype(np.uint8)


def _nn_lookup(array, geom, ref):
    """Independent nearest-neighbour resampling of ``array`` (on ``geom``) onto ``ref``."""
    axes = np.asarray(geom.direction).reshape(3, 3)
    index = (_centres(ref) - np.asarray(geom.origin)) @ axes / np.asarray(geom.spacing)
    ix, iy, iz = np.moveaxis(np.rint(index).astype(int), -1, 0)
    nz, ny, nx = array.shape
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (iz >= 0) & (iz < nz)
    out = np.zeros(ref.shape_zyx, array.dtype)
    out[inside] = array[iz[inside], iy[inside], ix[inside]]
    return out


def _write(array, geom, path):
    sitk.WriteImage(geom.to_image(array), path)
    return path


def _write_nrrd(path, layers_zyx, spacing, origin, space="left-posterior-superior"):
    """A 3D Slicer style .seg.nrrd with one segment per layer (``[L, Z, Y, X]`` uint8)."""
    n_layers, nz, ny, nx = layers_zyx.shape
    data = np.ascontiguousarray(layers_zyx.transpose(1, 2, 3, 0)).tobytes()  # layer fastest
    sx, sy, sz = spacing
    lines = ["NRRD0004", "type: unsigned char", "dimension: 4", f"space: {space}",
             f"sizes: {n_layers} {nx} {ny} {nz}",
             f"space directions: none ({sx},0,0) (0,{sy},0) (0,0,{sz})",
             "kinds: list domain domain domain", "encoding: gzip",
             "space origin: ({},{},{})".format(*origin)]
    for i in range(n_layers):
        lines += [f"Segment{i}_ID:=Segment_{i + 1}", f"Segment{i}_Layer:={i}",
                  f"Segment{i}_LabelValue:=1", f"Segment{i}_Name:=Breast{i}"]
    with open(path, "wb") as f:
        f.write(("\n".join(lines) + "\n\n").encode() + gzip.compress(data))
    return path


@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory() as d:
        yield d


def test_world_bounds_and_same_grid():
    lo, hi = world_bounds(REF)
    assert np.allclose(lo, [-0.5, -0.5, -1.0]) and np.allclose(hi, [19.5, 15.5, 19.0])
    flipped = CaseGeometry(REF.size, REF.spacing, (19.0, 0.0, 0.0), (-1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert np.allclose(world_bounds(flipped)[0], lo) and np.allclose(world_bounds(flipped)[1], hi)
    near = CaseGeometry(REF.size, (1.0005, 1.0, 2.0), (0.4, -0.4, 0.9), IDENTITY)
    assert same_grid(REF, near)  # under half a voxel, spacing within 1e-3
    for other in (CaseGeometry(REF.size, REF.spacing, (0.6, 0, 0), IDENTITY),
                  CaseGeometry(REF.size, (1.01, 1.0, 2.0), REF.origin, IDENTITY),
                  CaseGeometry((20, 16, 11), REF.spacing, REF.origin, IDENTITY), flipped):
        assert not same_grid(REF, other)


def test_same_grid_is_read_as_is(tmp, caplog):
    array = _cube_on(REF) * 7  # any non-zero value is breast
    path = _write(array.astype(np.int16), REF, os.path.join(tmp, "m.nii.gz"))
    with caplog.at_level(logging.INFO, logger="breast_d2.data.masks"):
        got = read_mask_on_grid(path, "C1", REF)
    assert got.dtype == np.uint8 and got.shape == REF.shape_zyx
    assert (got == (array != 0)).all() and got.sum() == 6 * 7 * 4
    assert not [r for r in caplog.records if "resampled" in r.getMessage()]
    assert (read_label_on_grid(path, "C1", REF) == array).all()  # labels keep their values


@pytest.mark.parametrize(
    "spacing,origin,direction",
    [
        ((0.5, 0.5, 1.0), (-3.2, 2.1, 1.3), IDENTITY),  # finer, shifted, cropped
        ((1.5, 0.7, 3.1), (22.1, -2.2, -1.7), (-1, 0, 0, 0, 1, 0, 0, 0, 1)),  # flipped x, coarser
        ((0.6, 0.5, 0.9), (1.1, -0.3, 21.2), (0, 1, 0, 1, 0, 0, 0, 0, -1)),  # axes permuted
    ],
)
def test_other_grid_is_resampled_by_world_position(tmp, caplog, spacing, origin, direction):
    size = tuple(int(np.ceil(e / s)) for e, s in zip((26, 18, 24), spacing))
    geom = CaseGeometry(size, spacing, origin, tuple(float(v) for v in direction))
    mask = _cube_on(geom)
    assert mask.any()
    path = _write(mask, geom, os.path.join(tmp, "m.nrrd"))
    with caplog.at_level(logging.INFO, logger="breast_d2.data.masks"):
        got = read_mask_on_grid(path, "C1", REF)
    assert got.shape == REF.shape_zyx
    assert (got == _nn_lookup(mask, geom, REF)).all()
    if max(spacing) <= 1.0:  # finer than the images: nearest neighbour gives the cube exactly
        assert (got == _cube_on(REF)).all()
    else:
        assert abs(int(got.sum()) - int(_cube_on(REF).sum())) < 0.5 * _cube_on(REF).sum()
    lines = [r.getMessage() for r in caplog.records if "resampled" in r.getMessage()]
    assert len(lines) == 1 and "case C1" in lines[0] and path in lines[0]


def test_slicer_seg_nrrd_layers_and_labelmap(tmp):
    """Slicer crops to the segments' extent and may store several layers (a vector image)."""
    crop = CaseGeometry((8, 9, 6), (1.0, 1.0, 2.0), (3.0, 4.0, 4.0), IDENTITY)
    cube = _cube_on(crop)
    half = cube.copy()
    half[:, :, :3] = 0  # layer 0 holds part of the cube, layer 1 the rest
    layers = np.stack([half, (cube - half) * 2])
    path = _write_nrrd(os.path.join(tmp, "Segmentation_C1_Breast.seg.nrrd"), layers,
                       crop.spacing, crop.origin)
    assert (read_mask_on_grid(path, "C1", REF) == _cube_on(REF)).all()
    with pytest.raises(CohortError, match="segment layers"):
        read_label_on_grid(path, "C1", REF)
    # RAS space: ITK turns it into LPS (x and y negated), so the same voxels sit elsewhere
    ras = _write_nrrd(os.path.join(tmp, "ras.seg.nrrd"), layers, crop.spacing,
                      (-3.0, -4.0, 4.0), space="right-anterior-superior")
    lps = CaseGeometry(crop.size, crop.spacing, (3.0, 4.0, 4.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    got = read_mask_on_grid(ras, "C1", REF)
    assert got.any() and (got == _nn_lookup(cube, lps, REF)).all()
    # one layer with two label values: a 3D labelmap; label variant keeps the values
    labelmap = _write(cube + half, crop, os.path.join(tmp, "labelmap.seg.nrrd"))
    assert (read_mask_on_grid(labelmap, "C1", REF) == _cube_on(REF)).all()
    assert set(np.unique(read_label_on_grid(labelmap, "C1", REF)).tolist()) == {0, 1, 2}


def test_mask_that_does_not_overlap_the_images(tmp):
    far = CaseGeometry((10, 10, 5), (1.0, 1.0, 2.0), (200.0, 0.0, 0.0), IDENTITY)
    path = _write(np.ones(far.shape_zyx, np.uint8), far, os.path.join(tmp, "far.nii.gz"))
    with pytest.raises(CohortError) as e:
        read_mask_on_grid(path, "C7", REF)
    msg = str(e.value)
    assert "\n" not in msg and "case C7" in msg and path in msg and "does not overlap" in msg
    # the grids overlap, but every mask voxel lies outside the images
    big = CaseGeometry((60, 20, 10), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), IDENTITY)
    mask = np.zeros(big.shape_zyx, np.uint8)
    mask[:, :, 40:] = 1
    path = _write(mask, big, os.path.join(tmp, "outside.nii.gz"))
    with pytest.raises(CohortError, match="no voxel of mask .* lands inside") as e:
        read_mask_on_grid(path, "C7", REF)
    assert "case C7" in str(e.value)


def test_partly_outside_warns(tmp, caplog):
    big = CaseGeometry((40, 16, 10), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), IDENTITY)
    mask = np.zeros(big.shape_zyx, np.uint8)
    mask[:, :, 10:30] = 1  # half of it beyond x = 19.5
    path = _write(mask, big, os.path.join(tmp, "wide.nii.gz"))
    with caplog.at_level(logging.INFO, logger="breast_d2.data.masks"):
        got = read_mask_on_grid(path, "C2", REF)
    assert got[:, :, 10:].all() and not got[:, :, :10].any()
    assert any(r.levelno == logging.WARNING and "50%" in r.getMessage() for r in caplog.records)


def test_unreadable_truncated_and_wrong_dimension(tmp):
    garbage = os.path.join(tmp, "g.nrrd")
    with open(garbage, "wb") as f:
        f.write(b"not an image at all")
    crop = CaseGeometry((8, 9, 6), (1.0, 1.0, 2.0), (3.0, 4.0, 4.0), IDENTITY)
    seg = _write_nrrd(os.path.join(tmp, "t.seg.nrrd"), _cube_on(crop)[None], crop.spacing,
                      crop.origin)
    with open(seg, "rb") as f:
        data = f.read()
    with open(seg, "wb") as f:
        f.write(data[:-20])
    nii = _write(_cube_on(REF), REF, os.path.join(tmp, "t.nii.gz"))
    with open(nii, "rb") as f:
        data = f.read()
    with open(nii, "wb") as f:
        f.write(data[: len(data) // 2])
    missing = os.path.join(tmp, "missing.nii.gz")
    with pytest.raises(CohortError, match="missing mask file"):
        read_mask_on_grid(missing, "C3", REF)
    for path in (garbage, seg, nii, missing):
        with pytest.raises(CohortError) as e:
            read_mask_on_grid(path, "C3", REF)
        assert "\n" not in str(e.value) and "case C3" in str(e.value) and path in str(e.value)
    flat = os.path.join(tmp, "2d.nrrd")
    sitk.WriteImage(sitk.Image(5, 5, sitk.sitkUInt8), flat)
    with pytest.raises(CohortError, match="is 2D"):
        read_mask_on_grid(flat, "C3", REF)
