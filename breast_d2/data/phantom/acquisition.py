"""Phantom acquisition: coil bias field, signal model of each phase, artefacts, Rician noise.

``S_p = bias * (s0 + slow * c_slow(t_p) + blood / myocardium terms + blobs) (+ Rician noise)``
on the whole ``[Z, Y, X]`` grid, float32, arbitrary MR units, then in this order:

- fat-suppression failure (some cases): ``s0`` of FAT voxels times a smooth gain field >= 1 near
  the lateral breast / axilla or the nipple (B0 inhomogeneity), the same in every phase;
- patient motion (some cases, :mod:`.motion`): the noise-free pre-contrast phase is moved
  relative to the annotation geometry (labels, mask, post-contrast phases);
- slice profile: every phase is averaged along z over a Gaussian slice profile of FWHM = slice
  thickness (partial volume at the ends of masses and at z-oblique edges);
- Rician noise, last.

Every random draw of these artefacts comes from the case's acquisition stream (``rng_acq``).
"""

import logging
from dataclasses import dataclass
from math import erf, sqrt
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .anatomy import BLOOD, FAT, MYO, _Breast, _Field, _Grid
from .bpe import _fgt_slow
from .kinetics import _curve_blood, _curve_slow, _curve_wash
from .motion import NO_MOTION, _Motion, _motion_record, _sample_motion, _warp

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


def _render_phases(st: _Static, blobs, times, sigma, rng, acq=None, grid=None) -> np.ndarray:
    """``[P, Z, Y, X]`` float32 noisy signal of every phase.

    With ``acq`` (an :class:`_Acquisition`, needs ``grid``): the noise-free pre-contrast phase
    (phase 0) is moved by ``acq.motion`` and every phase gets the slice profile, before noise.
    """
    c_slow = _curve_slow(times).astype(np.float32)
    out = np.empty((len(times),) + st.s0.shape, np.float32)
    motion = NO_MOTION if acq is None else acq.motion
    fwhm = None if acq is None else acq.slice_fwhm_mm
    weights = None if fwhm is None else _slice_profile_weights(fwhm, grid.spacing[2])
    tmp = None if weights is None and motion.kind == "none" else np.empty_like(st.s0)
    for p in range(len(times)):
        s = out[p]
        np.multiply(st.slow, c_slow[p], out=s)
        s += st.s0
        flat = s.reshape(-1)
        for idx, amp, curve in st.sparse:
            flat[idx] += amp * curve[p]
        for b in blobs:
            s[b.box] += b.amp * b.curve[p]
        if p == 0 and motion.kind != "none":
            tmp[...] = s
            _warp(tmp, motion, grid, out=s)
        if weights is not None:
            _apply_slice_profile(s, weights, tmp)
        _add_rician(s, sigma, rng)
    return out


# ----------------------------------------------------------------------------------------------
# Acquisition artefacts: fat-suppression failure, motion (see .motion), slice profile
# ----------------------------------------------------------------------------------------------
# Fraction of examinations with poor fat saturation (Sensakovic et al., AAPM 2018: 22 % of 98
# breast MRI studies), see docs/PHANTOM.md.
FAT_SAT_FAILURE_PREVALENCE = 0.22

# Tests only: replace a drawn artefact to render the same case without (or with other) artefacts.
# Keys: "motion" (a motion._Motion), "fat_sat" (a _FatSat), "slice_profile" (False: none).
_TEST_OVERRIDES: Dict[str, object] = {}


@dataclass(frozen=True)
class _FatSat:
    """Spectral fat-saturation failure: FAT signal x ``1 + (max_gain - 1) * w(x)``, ``w`` the
    largest of Gaussian lobes ``(centre (x, y, z) mm, radius mm)``, 0..1."""

    failure: bool
    max_gain: float = 1.0
    lobes: Tuple[Tuple[Tuple[float, float, float], float], ...] = ()


@dataclass(frozen=True)
class _Acquisition:
    motion: _Motion
    fat_sat: _FatSat
    slice_fwhm_mm: Optional[float]  # None: no slice profile (tests only)


def _fat_sat_site(br: _Breast, site: int, jitter: np.ndarray) -> Tuple[float, float, float]:
    """Lobe centre (mm): 0 lateral breast / axillary tail (off isocentre), 1 nipple (air-tissue
    interface at the breast apex)."""
    if site == 0:
        x = br.xc + np.sign(br.xc) * 0.85 * br.ax
        return (float(x), br.yb - (0.25 + 0.1 * jitter[1]) * br.ay, br.zc + 0.3 * jitter[2] * br.az)
    return (br.xc + 0.2 * jitter[0] * br.ax, br.yb - 0.95 * br.ay, br.zc + 0.2 * jitter[2] * br.az)


def _sample_fat_sat(rng: np.random.Generator, breasts: Sequence[_Breast]) -> _FatSat:
    """Draw the fat-saturation state of one case (a fixed number of draws)."""
    fails = rng.uniform() < FAT_SAT_FAILURE_PREVALENCE
    gain, n_lobes = rng.uniform(2.0, 4.0), 1 + int(rng.uniform() < 0.5)
    sides, sites = rng.integers(0, len(breasts), size=2), rng.integers(0, 2, size=2)
    radii, jitter = rng.uniform(25.0, 45.0, size=2), rng.uniform(-1.0, 1.0, size=(2, 3))
    if not fails:
        return _FatSat(False)
    lobes = tuple(
        (_fat_sat_site(breasts[sides[i]], int(sites[i]), jitter[i]), float(radii[i]))
        for i in range(n_lobes)
    )
    return _FatSat(True, float(gain), lobes)


def _sample_acquisition(rng: np.random.Generator, grid: _Grid, breasts) -> _Acquisition:
    """Draw the acquisition artefacts of one case from its own stream ``rng`` (``rng_acq``)."""
    motion = _sample_motion(rng, breasts)
    fat_sat = _sample_fat_sat(rng, breasts)
    fwhm = float(grid.spacing[2])
    motion = _TEST_OVERRIDES.get("motion") or motion
    fat_sat = _TEST_OVERRIDES.get("fat_sat") or fat_sat
    if _TEST_OVERRIDES.get("slice_profile") is False:
        fwhm = None
    return _Acquisition(motion, fat_sat, fwhm)


def _fat_gain_box(grid: _Grid, fs: _FatSat):
    """``(box, gain [z, y, x] float32)``: the fat gain field on the box covering its lobes."""
    lo = np.min([[c[i] - 2.5 * r for i in range(3)] for c, r in fs.lobes], axis=0)
    hi = np.max([[c[i] + 2.5 * r for i in range(3)] for c, r in fs.lobes], axis=0)
    box = tuple(grid.span(i, lo[i], hi[i]) for i in (2, 1, 0))
    z, y, x = grid.coords(box)
    w = np.zeros(tuple(len(a) for a in (z[:, 0, 0], y[0, :, 0], x[0, 0, :])), np.float32)
    for c, r in fs.lobes:
        d2 = ((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / np.float32(r * r)
        np.maximum(w, np.exp(-0.5 * d2), out=w)
    return box, (1.0 + (fs.max_gain - 1.0) * w).astype(np.float32)


def _apply_fat_sat(st: _Static, tissue, mask, grid: _Grid, fs: _FatSat) -> Dict[str, object]:
    """In place: raise ``st.s0`` of FAT voxels where fat saturation fails; returns the record
    ``{"failure", "fraction_of_breast_fat_above_2x", "max_fat_gain"}`` measured on the noise-free
    pre-contrast signal (annotation geometry)."""
    max_gain = 1.0
    if fs.failure:
        box, gain = _fat_gain_box(grid, fs)
        fat = tissue[box] == FAT
        st.s0[box][fat] *= gain[fat]
        if fat.any():
            max_gain = float(gain[fat].max())
    breast_fat = st.s0[(tissue == FAT) & (mask > 0)]
    frac = 0.0
    if breast_fat.size:
        frac = float(np.mean(breast_fat >= 2.0 * np.median(breast_fat)))
    return {
        "failure": bool(fs.failure),
        "fraction_of_breast_fat_above_2x": round(frac, 4),
        "max_fat_gain": round(max_gain, 3),
    }


def _slice_profile_weights(fwhm_mm: float, thickness_mm: float) -> np.ndarray:
    """``[2r + 1]`` float32 weights of neighbouring slices: a Gaussian slice profile of FWHM
    ``fwhm_mm`` integrated over each slice (voxels are uniform cells of ``thickness_mm``)."""
    sigma = fwhm_mm / (2.0 * sqrt(2.0 * np.log(2.0))) / thickness_mm  # in slices
    cdf = lambda v: 0.5 * (1.0 + erf(v / (sqrt(2.0) * sigma)))  # noqa: E731
    w = np.array([cdf(j + 0.5) - cdf(j - 0.5) for j in range(-3, 4)])
    w = w[np.flatnonzero(w >= 1e-3).min() : np.flatnonzero(w >= 1e-3).max() + 1]
    return (w / w.sum()).astype(np.float32)


def _apply_slice_profile(s: np.ndarray, weights: np.ndarray, tmp: np.ndarray) -> None:
    """In place along z (axis 0): ``s[z] <- sum_j w_j s[z + j]``, edge slices repeated.

    ``weights`` is symmetric (``w_-j = w_j``); ``tmp`` is a scratch array shaped like ``s``. Works
    slice by slice so that each step stays in cache (the volume does not).
    """
    r, nz = len(weights) // 2, s.shape[0]
    tmp[...] = s
    pair = np.empty(s.shape[1:], s.dtype)
    for z in range(nz):
        np.multiply(tmp[z], weights[r], out=s[z])
        for j in range(1, r + 1):
            np.add(tmp[max(z - j, 0)], tmp[min(z + j, nz - 1)], out=pair)
            pair *= weights[r + j]
            s[z] += pair


def _acquisition_record(acq: _Acquisition, grid: _Grid, mask, fat_sat_record) -> Dict[str, object]:
    """``case.info["acquisition"]``: plain JSON values (motion, fat_sat, slice profile FWHM)."""
    fwhm = acq.slice_fwhm_mm
    return {
        "motion": _motion_record(acq.motion, grid, mask),
        "fat_sat": fat_sat_record,
        "slice_profile_fwhm_mm": None if fwhm is None else round(fwhm, 3),
    }
