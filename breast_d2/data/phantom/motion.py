"""Phantom patient motion between the pre-contrast and the first post-contrast phase.

The labels and the breast mask are in the geometry of the first post-contrast phase (the
annotation geometry: radiologists annotate post-contrast and subtraction images). Motion moves the
pre-contrast anatomy relative to it, so ``post1 - pre`` gets the bright / dark misregistration
edges of real subtractions at skin, fat / fibroglandular and chest-wall interfaces.

Conventions: a material point at ``X`` (mm, LPS, annotation geometry) sits at ``X + u(X)`` in the
pre-contrast phase, ``u`` the displacement (mm). The moved pre-contrast image is
``pre_moved(x) = pre(source(x))`` with ``source`` the inverse map, sampled with linear
interpolation. Kinds:

- ``"rigid"``: ``X -> R (X - c) + c + t`` (rotation ``R`` by a small angle about a random axis
  through the centre ``c`` between the breast bases, translation ``t``);
- ``"elastic"``: ``u(X) = t + sum_b a_b g_b(X)``, a small translation plus one smooth Gaussian
  bump per breast (the breasts sway in the coil, the chest wall hardly moves); the inverse is
  taken to first order, ``source(x) = x - u(x)`` (``|grad u| < 0.1``).
"""

import logging
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .anatomy import _Breast, _Grid

__all__ = []

logger = logging.getLogger(__name__)

# Fraction of examinations with motion between the pre-contrast and first post-contrast phase.
# Published: 83/237 = 35 % with image quality reduced by motion on the first subtraction (Clauser
# et al. 2020), 16/88 = 18 % with motion deficiency (Ruiz-Flores et al.); the middle of that range
# (docs/PHANTOM.md). 0.35 gave 36/75 moving cases for seed 0 (95 % CI 0.37-0.59),
# outside the published range.
MOTION_PREVALENCE = 0.27
_ELASTIC_SHARE = 0.5  # no published anchor: half of the moving cases rigid, half elastic


@dataclass(frozen=True)
class _Motion:
    """Motion of the pre-contrast phase relative to the annotation geometry (all mm / degrees)."""

    kind: str  # "none" | "rigid" | "elastic"
    translation: Tuple[float, float, float] = (0.0, 0.0, 0.0)  # t (x, y, z) mm
    rotation_deg: float = 0.0
    axis: Tuple[float, float, float] = (0.0, 0.0, 1.0)  # unit rotation axis (x, y, z)
    centre: Tuple[float, float, float] = (0.0, 0.0, 0.0)  # rotation centre c (x, y, z) mm
    bumps: Tuple[Tuple[Tuple[float, ...], Tuple[float, ...], Tuple[float, ...]], ...] = ()
    # elastic: (amplitude a_b (x, y, z) mm, centre (x, y, z) mm, sigma (x, y, z) mm) per breast


NO_MOTION = _Motion("none")


def _unit_vector(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _sample_motion(rng: np.random.Generator, breasts: Sequence[_Breast]) -> _Motion:
    """Draw the motion of one case; always the same number of draws, whatever the outcome."""
    moves, elastic = rng.uniform() < MOTION_PREVALENCE, rng.uniform() < _ELASTIC_SHARE
    direction, axis = _unit_vector(rng), _unit_vector(rng)
    shift_rigid, shift_elastic = rng.uniform(1.0, 3.0), rng.uniform(0.0, 1.0)
    angle = rng.uniform(0.2, 1.0)
    amps = [_unit_vector(rng) * rng.uniform(1.0, 3.0) for _ in breasts]
    if not moves:
        return NO_MOTION
    centre = (0.0, float(np.mean([b.yb for b in breasts])), float(np.mean([b.zc for b in breasts])))
    if not elastic:
        t = tuple(float(v) for v in direction * shift_rigid)
        return _Motion("rigid", t, float(angle), tuple(float(v) for v in axis), centre)
    bumps = tuple(
        (
            tuple(float(v) for v in a),
            (br.xc, br.yb - 0.4 * br.ay, br.zc),
            (0.7 * br.ax, 0.5 * br.ay, 0.7 * br.az),
        )
        for a, br in zip(amps, breasts)
    )
    t = tuple(float(v) for v in direction * shift_elastic)
    return _Motion("elastic", t, 0.0, (0.0, 0.0, 1.0), centre, bumps)


def _rotation_matrix(axis: Sequence[float], angle_deg: float) -> np.ndarray:
    """``[3, 3]`` rotation (Rodrigues) acting on ``(x, y, z)`` vectors."""
    k = np.asarray(axis, np.float64)
    a = np.deg2rad(angle_deg)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx


def _voxel_affine(motion: _Motion, grid: _Grid) -> Tuple[np.ndarray, np.ndarray]:
    """``(M, offset)`` in ``(z, y, x)`` voxel indices with ``source = M @ index + offset``."""
    r_inv = _rotation_matrix(motion.axis, motion.rotation_deg).T
    sp, org = np.asarray(grid.spacing), np.asarray(grid.origin)
    c, t = np.asarray(motion.centre), np.asarray(motion.translation)
    # mm: source = R^T (x - c - t) + c, x = org + sp * index (x, y, z order)
    m_xyz = r_inv * sp[None, :] / sp[:, None]
    off_xyz = (r_inv @ (org - c - t) + c - org) / sp
    perm = [2, 1, 0]
    return m_xyz[np.ix_(perm, perm)], off_xyz[perm]


def _bump_displacement(motion: _Motion, grid: _Grid, zsl: slice) -> np.ndarray:
    """``[3, z, Y, X]`` float32 elastic displacement ``u`` (x, y, z components, mm) on slices."""
    shape = (zsl.stop - zsl.start,) + grid.shape[1:]
    u = np.empty((3,) + shape, np.float32)
    u[:] = np.asarray(motion.translation, np.float32)[:, None, None, None]
    ax = [grid.axis(0), grid.axis(1), grid.axis(2)[zsl]]
    for amp, centre, sigma in motion.bumps:
        gx, gy, gz = (np.exp(-0.5 * ((ax[i] - centre[i]) / sigma[i]) ** 2) for i in range(3))
        g = gz[:, None, None] * (gy[:, None] * gx[None, :])[None]
        for i in range(3):
            u[i] += np.float32(amp[i]) * g
    return u


def _displacement_mm(motion: _Motion, grid: _Grid, zsl: slice) -> np.ndarray:
    """``[z, Y, X]`` float32 ``|x - source(x)|`` (mm) on slices ``zsl``: the displacement of each
    voxel's content between the pre-contrast and the annotation geometry."""
    shape = (zsl.stop - zsl.start,) + grid.shape[1:]
    if motion.kind == "none":
        return np.zeros(shape, np.float32)
    if motion.kind == "elastic":
        return np.sqrt((_bump_displacement(motion, grid, zsl) ** 2).sum(axis=0))
    m, off = _voxel_affine(motion, grid)
    idx = np.indices(shape, np.float32)
    idx[0] += zsl.start
    src = np.tensordot(m.astype(np.float32), idx, axes=1)
    src += off.astype(np.float32)[:, None, None, None]
    sp = np.asarray(grid.spacing[::-1], np.float32)[:, None, None, None]  # (z, y, x) mm per voxel
    return np.sqrt((((src - idx) * sp) ** 2).sum(axis=0))


def _max_displacement_mm(motion: _Motion, grid: _Grid, mask: np.ndarray) -> float:
    """Largest displacement (mm) of any breast-mask voxel between pre-contrast and post 1."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if motion.kind == "none" or zs.size == 0:
        return 0.0
    best = 0.0
    for z0 in range(int(zs[0]), int(zs[-1]) + 1, 8):
        zsl = slice(z0, min(z0 + 8, int(zs[-1]) + 1))
        m = mask[zsl]
        if m.any():
            best = max(best, float(_displacement_mm(motion, grid, zsl)[m].max()))
    return best


def _warp(volume: np.ndarray, motion: _Motion, grid: _Grid, out: np.ndarray) -> None:
    """``out[x] = volume[source(x)]`` (linear interpolation, edge values outside the volume)."""
    if motion.kind == "rigid":
        m, off = _voxel_affine(motion, grid)
        ndimage.affine_transform(volume, m, off, output=out, order=1, mode="nearest")
        return
    sp = np.asarray(grid.spacing, np.float32)
    for z0 in range(0, grid.shape[0], 8):
        zsl = slice(z0, min(z0 + 8, grid.shape[0]))
        u = _bump_displacement(motion, grid, zsl)
        coords = np.empty_like(u)
        n = zsl.stop - zsl.start
        coords[0] = np.arange(z0, z0 + n, dtype=np.float32)[:, None, None] - u[2] / sp[2]
        coords[1] = np.arange(grid.shape[1], dtype=np.float32)[None, :, None] - u[1] / sp[1]
        coords[2] = np.arange(grid.shape[2], dtype=np.float32)[None, None, :] - u[0] / sp[0]
        ndimage.map_coordinates(volume, coords, output=out[zsl], order=1, mode="nearest")


def _motion_record(motion: _Motion, grid: _Grid, mask: np.ndarray) -> Dict[str, object]:
    """``case.info["acquisition"]["motion"]``: kind, measured max displacement, parameters."""
    return {
        "kind": motion.kind,
        "max_displacement_mm": round(_max_displacement_mm(motion, grid, mask), 3),
        "translation_mm": [round(v, 3) for v in motion.translation],
        "rotation_deg": round(motion.rotation_deg, 3),
    }

