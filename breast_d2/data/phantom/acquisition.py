"""Phantom acquisition: coil bias field, signal model of each phase, Rician noise.

``S_p = bias * (s0 + slow * c_slow(t_p) + blood / myocardium terms + blobs) (+ Rician noise)``
on the whole ``[Z, Y, X]`` grid, float32, arbitrary MR units.
"""

import logging
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from .anatomy import BLOOD, MYO, _Breast, _Field, _Grid
from .bpe import _fgt_slow
from .kinetics import _curve_blood, _curve_slow, _curve_wash

__all__ = []

logger = logging.getLogger(__name__)


def _bias_field(rng, grid: _Grid, breasts: Sequence[_Breast], smooth: _Field) -> np.ndarray:
    """``[Z, Y, X]`` float32 multiplicative coil sensitivity, ~1 at the breast centres.

    Four Gaussian coil elements around each breast (prone breast coil) make the signal strongest
    near the breast surface and weaker deep in the thorax; a smooth random field adds +-8 %.
    """
    alpha, s = float(rng.uniform(0.2, 0.45)), float(rng.uniform(60, 90))
    elems = []
    for br in breasts:
        ye = br.yb - 0.35 * br.ay
        dx, dz = br.ax + 15, br.az + 15
        elems += [(br.xc - dx, ye, br.zc), (br.xc + dx, ye, br.zc)]
        elems += [(br.xc, ye, br.zc - dz), (br.xc, ye, br.zc + dz)]
    e = np.array(elems, np.float32)  # [K, 3] (x, y, z)
    g = [np.exp(-0.5 * ((grid.axis(i)[None, :] - e[:, i : i + 1]) / s) ** 2) for i in range(3)]
    plane = g[1][:, :, None] * g[0][:, None, :]  # [K, Y, X]
    coil = (g[2].T @ plane.reshape(len(e), -1)).reshape(grid.shape)
    bias = (1.0 + alpha * coil) * np.exp(0.08 * smooth.sample_box(grid, (slice(None),) * 3))
    ref = []
    for br in breasts:
        idx = [int(np.clip(round(v), 0, n - 1)) for v, n in zip(_to_voxel(grid, br), grid.shape)]
        ref.append(bias[tuple(idx)])
    bias /= np.float32(np.mean(ref))
    return bias.astype(np.float32, copy=False)


def _to_voxel(grid: _Grid, br: _Breast) -> Tuple[float, float, float]:
    """``(z, y, x)`` voxel index of a breast's centre of mass (roughly)."""
    c = (br.xc, br.yb - 0.4 * br.ay, br.zc)
    return tuple((c[i] - grid.origin[i]) / grid.spacing[i] for i in (2, 1, 0))


@dataclass
class _Static:
    """Bias-weighted signal model: ``S_p = s0 + slow * c_slow(t_p) + sparse terms + blobs``."""

    s0: np.ndarray  # [Z, Y, X] pre-contrast signal x bias
    slow: np.ndarray  # [Z, Y, X] amplitude of the type I curve x bias
    sparse: List[Tuple[np.ndarray, np.ndarray, np.ndarray]]  # (flat index, amplitude, curve)


def _take(lut: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """``lut[tissue]`` in z-chunks (keeps the index conversion in cache)."""
    out = np.empty(tissue.shape, np.float32)
    for z0 in range(0, tissue.shape[0], 8):
        np.take(lut, tissue[z0 : z0 + 8], out=out[z0 : z0 + 8])
    return out


def _static_maps(tissue, lut, paints, breasts, blobs, bias, times) -> _Static:
    """Per-voxel pre-contrast signal and enhancement amplitudes, multiplied by the bias field."""
    s0, slow = _take(lut["s0"], tissue), _take(lut["slow"], tissue)
    for paint, br in zip(paints, breasts):
        s0[paint.box][paint.inside] *= 1.0 + 0.06 * paint.tex[paint.inside]
        slow[paint.box][paint.fgt] = _fgt_slow(paint)  # BI-RADS graded BPE, see bpe.py
    for b in blobs:
        keep = 1.0 - b.member
        s0[b.box] = s0[b.box] * keep + b.s0 * b.member
        slow[b.box] *= keep
        b.amp *= bias[b.box]
    s0 *= bias
    slow *= bias
    sparse = []  # blood pool and myocardium: few voxels, early curves
    for cls, name, curve in ((BLOOD, "blood", _curve_blood(times)), (MYO, "fast", None)):
        idx = np.flatnonzero(tissue == cls)
        curve = _curve_wash(times, 15.0, -0.25) if curve is None else curve
        sparse.append((idx, lut[name][cls] * bias.ravel()[idx], curve.astype(np.float32)))
    return _Static(s0, slow, sparse)


def _add_rician(s: np.ndarray, sigma: float, rng: np.random.Generator) -> None:
    """In place: ``s <- |s + sigma * (n1 + i n2)|`` (magnitude of complex Gaussian noise)."""
    for z0 in range(0, s.shape[0], 4):  # z-chunks: the eight passes stay in cache
        c = s[z0 : z0 + 4]
        tmp = rng.standard_normal(c.shape, dtype=np.float32)
        tmp *= sigma
        c += tmp
        np.square(c, out=c)
        rng.standard_normal(dtype=np.float32, out=tmp)
        tmp *= sigma
        np.square(tmp, out=tmp)
        c += tmp
        np.sqrt(c, out=c)


def _render_phases(st: _Static, blobs, times, sigma, rng) -> np.ndarray:
    """``[P, Z, Y, X]`` float32 noisy signal of every phase."""
    c_slow = _curve_slow(times).astype(np.float32)
    out = np.empty((len(times),) + st.s0.shape, np.float32)
    for p in range(len(times)):
        s = out[p]
        np.multiply(st.slow, c_slow[p], out=s)
        s += st.s0
        flat = s.reshape(-1)
        for idx, amp, curve in st.sparse:
            flat[idx] += amp * curve[p]
        for b in blobs:
            s[b.box] += b.amp * b.curve[p]
        _add_rician(s, sigma, rng)
    return out
