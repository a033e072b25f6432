"""Background parenchymal enhancement (BPE) graded by the BI-RADS categories.

Each case draws one BI-RADS BPE category (minimal / mild / moderate / marked, from a published
prevalence, see docs/PHANTOM.md) and one pattern (patchy or nodular). The category sets
the fraction of fibroglandular tissue (FGT) that enhances (< 25 / 25-50 / 50-75 / > 75 %): a smooth
random field on the FGT of each breast is thresholded so that the enhancing fraction hits a value
drawn inside the category's range (the two breasts share the category; their fractions differ by a
few %). Enhancing FGT follows the slow persistent type I curve (``_curve_slow``) with a relative
enhancement at the last phase ``(S_last - S_0) / S_0`` of at least ``_RE_ENHANCING_MIN``;
non-enhancing FGT stays below ``_RE_FAINT_MAX``. The documented threshold between the two,
:data:`RE_THRESHOLD` = 0.2, lies between these bounds, so the fraction measured on the noise-free
model (:func:`_measure_bpe`) equals the drawn fraction up to mass partial volume.

Random draws come only from the BPE stream (child 6 of ``SeedSequence([seed, case_index])``).
Arrays are ``[Z, Y, X]``; amplitudes in MR units (before the bias field, which cancels in relative
enhancement).
"""

import logging
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .anatomy import FGT, _BreastPaint, _Field, _Grid
from .kinetics import _curve_slow

__all__ = ["RE_THRESHOLD", "BPE_CATEGORIES"]

logger = logging.getLogger(__name__)

BPE_CATEGORIES = ("minimal", "mild", "moderate", "marked")
# IMAGINE case-control study (Breast Cancer Res 2020, doi 10.1186/s13058-020-01375-7, table 2),
# pre- and postmenopausal women pooled: 488 / 803 / 372 / 135 of 1798.
_CATEGORY_COUNTS = (213 + 275, 538 + 265, 306 + 66, 119 + 16)
# BI-RADS MRI lexicon (2013): fraction of FGT that enhances.
_CATEGORY_RANGES = ((0.0, 0.25), (0.25, 0.50), (0.50, 0.75), (0.75, 1.0))
_RANGE_MARGIN = 0.03  # drawn fractions keep this distance from the category limits
_SIDE_JITTER = 0.02  # per-breast deviation from the case's fraction ("roughly symmetric")
# Jansen et al., Eur Radiol 2011 (doi 10.1007/s00330-011-2080-z): of the non-minimal parenchymal
# enhancement patterns, nodular 21.2 % vs homogeneous 13.7 % + heterogeneous 23.9 % (-> patchy).
_P_NODULAR = 21.2 / (21.2 + 13.7 + 23.9)
_PATTERN_SCALE_MM = {"patchy": 9.0, "nodular": 3.5}  # control spacing of the thresholded field

RE_THRESHOLD = 0.2  # enhancing FGT: relative enhancement at the last phase >= 20 %
_RE_ENHANCING_MIN = 0.3  # enhancing FGT: at least 30 % at the last phase
_RE_FAINT_MAX = 0.12  # non-enhancing FGT: at most 12 % at the last phase
# Relative enhancement at the last phase of enhancing FGT (patch centres), per category; no
# published anchor was found for these values (see docs/PHANTOM.md).
_RE_ENHANCING_MAX = {"minimal": 0.6, "mild": 0.9, "moderate": 1.2, "marked": 1.6}


@dataclass
class _Bpe:
    """One case's BPE draw: category, pattern, target fraction per breast, its random field."""

    category: str
    pattern: str
    fractions: Tuple[float, float]  # target enhancing FGT fraction, (right, left)
    re_max: float  # relative enhancement at the last phase in patch centres
    re_faint: float  # relative enhancement at the last phase of non-enhancing FGT
    field: _Field


def _sample_bpe(rng: np.random.Generator, grid: _Grid) -> _Bpe:
    """Draw the category (published prevalence), pattern, per-breast fractions and field."""
    probs = np.asarray(_CATEGORY_COUNTS, np.float64)
    k = int(rng.choice(len(BPE_CATEGORIES), p=probs / probs.sum()))
    category = BPE_CATEGORIES[k]
    lo, hi = _CATEGORY_RANGES[k]
    lo, hi = lo + _RANGE_MARGIN, hi - _RANGE_MARGIN
    f0 = rng.uniform(lo + _SIDE_JITTER, hi - _SIDE_JITTER)
    fractions = tuple(float(f0 + rng.uniform(-_SIDE_JITTER, _SIDE_JITTER)) for _ in range(2))
    pattern = "nodular" if rng.uniform() < _P_NODULAR else "patchy"
    re_max = max(float(rng.uniform(0.8, 1.0) * _RE_ENHANCING_MAX[category]), _RE_ENHANCING_MIN)
    re_faint = float(rng.uniform(0.03, _RE_FAINT_MAX))
    field = _Field(rng, grid, _PATTERN_SCALE_MM[pattern])
    return _Bpe(category, pattern, fractions, re_max, re_faint, field)


def _fgt_slow_amplitude(
    bpe: _Bpe, grid: _Grid, paint: _BreastPaint, side_index: int, fgt_s0: float, times
) -> np.ndarray:
    """Type I amplitude (MR units, before bias) of each FGT voxel of one breast, ``[N_fgt]``.

    The field is thresholded on the breast's FGT at the quantile that leaves the drawn fraction
    above it; above the threshold the relative enhancement at the last phase rises smoothly from
    ``_RE_ENHANCING_MIN`` to ``re_max``, below it it is ``re_faint`` (small, not zero).
    """
    g = bpe.field.sample_box(grid, paint.box)[paint.fgt]
    if g.size == 0:
        return np.zeros(0, np.float32)
    thr = np.quantile(g, 1.0 - bpe.fractions[side_index])
    above = np.clip((g - thr) / 1.0, 0.0, 1.0)
    re_last = np.where(
        g > thr, _RE_ENHANCING_MIN + (bpe.re_max - _RE_ENHANCING_MIN) * above, bpe.re_faint
    )
    s0 = fgt_s0 * (1.0 + 0.06 * paint.tex[paint.fgt])  # as painted in _static_maps
    c_last = float(_curve_slow(np.asarray([times[-1]], np.float64))[0])
    return (re_last * s0 / max(c_last, 1e-6)).astype(np.float32)


def _paint_bpe(bpe: _Bpe, grid: _Grid, paints: Sequence[_BreastPaint], fgt_s0: float, times):
    """Store each breast's FGT type I amplitude in ``paint.bpe_slow`` (right breast first)."""
    for k, paint in enumerate(paints):
        paint.bpe_slow = _fgt_slow_amplitude(bpe, grid, paint, k, fgt_s0, times)


def _fgt_slow(paint: _BreastPaint) -> np.ndarray:
    """The FGT type I amplitudes of :func:`_paint_bpe` (``[N_fgt]``, MR units, before bias)."""
    return paint.bpe_slow


# ----------------------------------------------------------------------------------------------
# Measurement on the noise-free model
# ----------------------------------------------------------------------------------------------
def _relative_enhancement(st, blobs, times, phase: int, box) -> np.ndarray:
    """Noise-free ``(S_p - S_0) / S_0`` on a ``(z, y, x)`` box (bias cancels), float32."""
    c = float(_curve_slow(np.asarray(times, np.float64))[phase])
    delta = st.slow[box] * np.float32(c)
    for b in blobs:
        inter, a_sl, b_sl = _intersect(box, b.box)
        if inter:
            delta[a_sl] += b.amp[b_sl] * b.curve[phase]
    return delta / np.maximum(st.s0[box], 1e-3)


def _intersect(a, b):
    """Whether two slice boxes overlap, and the overlap as slices relative to each box."""
    rel_a, rel_b = [], []
    for sa, sb in zip(a, b):
        lo, hi = max(sa.start, sb.start), min(sa.stop, sb.stop)
        if hi <= lo:
            return False, None, None
        rel_a.append(slice(lo - sa.start, hi - sa.start))
        rel_b.append(slice(lo - sb.start, hi - sb.start))
    return True, tuple(rel_a), tuple(rel_b)


def _measure_bpe(bpe: _Bpe, st, blobs, tissue, paints, times) -> Dict[str, object]:
    """``case.info["bpe"]``: category, pattern and the figures measured per breast.

    ``enhancing_fgt_fraction``: fraction of FGT voxels (tissue map) whose noise-free relative
    enhancement at the last phase is >= :data:`RE_THRESHOLD`; ``relative_enhancement_post1``: the
    mean relative enhancement at phase 1 over those enhancing voxels. Both ``[right, left]``.
    """
    last = len(times) - 1
    fractions, post1 = [], []
    for paint in paints:
        fgt = paint.fgt & (tissue[paint.box] == FGT)
        re_last = _relative_enhancement(st, blobs, times, last, paint.box)[fgt]
        enh = re_last >= RE_THRESHOLD
        fractions.append(round(float(enh.mean()) if enh.size else 0.0, 4))
        re1 = _relative_enhancement(st, blobs, times, min(1, last), paint.box)[fgt][enh]
        post1.append(round(float(re1.mean()) if re1.size else 0.0, 4))
    return {
        "category": bpe.category,
        "pattern": bpe.pattern,
        "enhancing_fgt_fraction": fractions,
        "threshold": RE_THRESHOLD,
        "relative_enhancement_post1": post1,
    }


def _lesion_to_parenchyma(st, blobs, times, labels, boxes, sides, bpe_info) -> List[float]:
    """Mean noise-free relative enhancement at phase 1 of each mass label over that of the
    enhancing FGT of its breast (``sides``: ``"right"`` / ``"left"`` per label, 1-based order)."""
    out = []
    for i, side in enumerate(sides, start=1):
        x0, y0, z0, x1, y1, z1 = boxes[i]
        box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
        re1 = _relative_enhancement(st, blobs, times, 1, box)[labels[box] == i]
        ref = bpe_info["relative_enhancement_post1"][0 if side == "right" else 1]
        out.append(round(float(re1.mean()) / max(ref, 1e-6), 3))
    return out
