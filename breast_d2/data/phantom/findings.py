"""Phantom findings inside the breast that are NOT target masses (distractors inside the mask).

Five kinds, each drawn as one or two :class:`~.lesions._Blob` (partial-volume membership, own
pre-contrast signal, own enhancement curve) so :mod:`.acquisition` renders them like masses:

- ``focus``: enhancing dot < 5 mm (BI-RADS), fast (type II) or persistent (type I) kinetics;
- ``intramammary_node``: reniform 4-10 mm ellipsoid with a fatty hilum (a notch of fat signal that
  does not enhance), fast wash-in and wash-out (type III), upper-outer quadrant towards the axilla;
- ``vessel``: a tube of radius 0.8-2 mm, a trunk running antero-posteriorly and 1-3 branches,
  early arterial enhancement (blood-pool curve, strongest at the first post-contrast phase);
- ``nme``: non-mass enhancement restricted to fibroglandular tissue, ``linear``, ``segmental`` (a
  cone with its apex at the nipple) or ``regional``, clumped or heterogeneous, moderate type II;
- ``cyst``: round 5-20 mm, dark on every phase (T1 fat-sat), interior never enhances; some have a
  thin (about 1 mm) enhancing rim.

All of them lie inside the breast mask, in fat or fibroglandular tissue, at least one voxel away
from skin and anything outside the breast, outside a 2-voxel dilation of every mass and of every
other finding. None is a target: labels, boxes and the breast mask stay the masses' only. Every
random draw comes from the caller's ``rng`` (the findings stream). Arrays ``[Z, Y, X]``; points and
sizes in mm, ``(x, y, z)`` LPS as in :mod:`breast_d2.data.phantom`.
"""

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .anatomy import BLOOD, BVESSEL, CYST, FAT, FGT, FOCUS, IMNODE, NME, _Field, _Grid
from .kinetics import _curve_blood, _curve_persistent, _curve_wash
from .lesions import _blob_sdf, _Blob, _membership, _rand_rotation

__all__ = []

logger = logging.getLogger(__name__)

KINDS = ("focus", "intramammary_node", "vessel", "nme", "cyst")

# Per-case prevalences and counts (sources and reasons: docs/PHANTOM.md).
_P_NODE = 0.15  # intramammary node: ~5 % on mammograms; no MRI figure found (findings.md)
_P_NME = 0.20  # no published anchor: a minority of cases
_P_CYSTS = 0.30  # no published anchor: a minority of cases
_P_FOCI = 0.50  # no published anchor: "several per case in some cases"
_VESSEL_TREES_PROBS = (0.2, 0.6, 0.2)  # 0, 1, 2 visible vessel trees per breast (stated choice)
_NME_PATTERNS = ("linear", "segmental", "regional")
_FOCUS_DIAMETER_MM = (2.0, 4.0)  # < 5 mm (BI-RADS focus); < 4 keeps the measured extent < 5
_NODE_LONG_AXIS_MM = (4.0, 10.0)
_CYST_DIAMETER_MM = (5.0, 20.0)
_CYST_RIM_MM = 1.0
_P_CYST_RIM = 0.3
_VESSEL_RADIUS_MM = (0.8, 2.0)


@dataclass
class _Finding:
    """One finding: its blobs with the tissue class painted where each blob's member >= 0.5."""

    kind: str
    side: str
    parts: List[Tuple[_Blob, int]]
    pattern: Optional[str]
    curve_type: str
    record: Dict[str, object]


@dataclass
class _Ctx:
    """What every placer needs: grid, static maps, the blocked map (masses, earlier findings)."""

    grid: _Grid
    tissue: np.ndarray  # [Z, Y, X] uint8 (masses not painted yet)
    mask: np.ndarray  # [Z, Y, X] bool breast mask
    blocked: np.ndarray  # [Z, Y, X] bool: dilated masses and findings placed so far
    times: np.ndarray  # [P] s
    s0: np.ndarray  # per-tissue pre-contrast LUT
    field: Optional[_Field] = None  # texture of NME (created on first use)


# ----------------------------------------------------------------------------------------------
# Geometry helpers
# ----------------------------------------------------------------------------------------------
def _pad(box, n: int, shape) -> Tuple[slice, slice, slice]:
    return tuple(slice(max(s.start - n, 0), min(s.stop + n, m)) for s, m in zip(box, shape))


def _inner(box, outer) -> Tuple[slice, slice, slice]:
    """``box`` expressed in the coordinates of ``outer`` (which contains it)."""
    return tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, outer))


def _allowed(ctx: _Ctx, box) -> np.ndarray:
    """``[z, y, x]`` bool on ``box``: breast fat or parenchyma, not blocked, one voxel from
    anything else (skin, chest wall, outside the mask)."""
    big = _pad(box, 1, ctx.grid.shape)
    t = ctx.tissue[big]
    ok = ctx.mask[big] & ((t == FAT) | (t == FGT)) & ~ctx.blocked[big]
    ok = ndimage.binary_erosion(ok, iterations=1, border_value=0)
    return ok[_inner(box, big)]


def _block(ctx: _Ctx, box, footprint: np.ndarray, iterations: int = 2) -> None:
    """Mark ``footprint`` (bool on ``box``) dilated by ``iterations`` voxels as blocked."""
    big = _pad(box, iterations, ctx.grid.shape)
    sub = np.zeros(tuple(s.stop - s.start for s in big), bool)
    sub[_inner(box, big)] = footprint
    ctx.blocked[big] |= ndimage.binary_dilation(sub, iterations=iterations)


def _box_around(grid: _Grid, points: np.ndarray, margin_mm: float):
    """Box covering ``points [N, 3]`` (x, y, z mm) +- ``margin_mm`` + 2 voxels, or None if empty."""
    lo = points.min(axis=0) - margin_mm
    hi = points.max(axis=0) + margin_mm
    half = [(hi[i] - lo[i]) / 2 + 2 * grid.spacing[i] for i in range(3)]
    box = grid.box(tuple((hi + lo) / 2), half)
    return box if all(s.stop > s.start for s in box) else None


def _segment_distance(grid: _Grid, box, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Distance (mm) of the voxel centres of ``box`` to the segment ``p0 -> p1`` (x, y, z mm)."""
    z, y, x = grid.coords(box)
    u = p1 - p0
    dx, dy, dz = x - p0[0], y - p0[1], z - p0[2]
    t = np.clip((dx * u[0] + dy * u[1] + dz * u[2]) / max(float(u @ u), 1e-6), 0.0, 1.0)
    return np.sqrt((dx - t * u[0]) ** 2 + (dy - t * u[1]) ** 2 + (dz - t * u[2]) ** 2)


def _tubes_sdf(grid: _Grid, box, segments) -> np.ndarray:
    """Signed distance (mm) of a union of tubes ``(p0, p1, radius)``."""
    sdf = None
    for p0, p1, r in segments:
        s = _segment_distance(grid, box, p0, p1) - r
        sdf = s if sdf is None else np.minimum(sdf, s)
    return sdf


def _breast_point(rng, br, lateral=(-0.75, 0.75), depth=(0.1, 0.8), vertical=(-0.75, 0.75)):
    """A point (x, y, z mm) inside breast ``br``: fractions of its semi-axes (depth from the base).

    ``lateral`` > 0 is towards the patient's side (away from the midline), ``vertical`` > 0 is
    cranial (upper).
    """
    return np.array(
        [
            br.xc + np.sign(br.xc) * br.ax * rng.uniform(*lateral),
            br.yb - br.ay * rng.uniform(*depth),
            br.zc + br.az * rng.uniform(*vertical),
        ]
    )


def _nipple(br) -> np.ndarray:
    return np.array([br.xc, br.yb - br.ay, br.zc])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _fits_all(ctx: _Ctx, box, member: np.ndarray) -> bool:
    """Whether every voxel the blob touches (member > 0) is allowed; at least one is >= 0.5."""
    if box is None or not np.any(member >= 0.5):
        return False
    return bool(np.all(_allowed(ctx, box)[member > 0]))


# ----------------------------------------------------------------------------------------------
# Record (measured on the grid)
# ----------------------------------------------------------------------------------------------
def _finding_record(grid: _Grid, f: _Finding, times: np.ndarray) -> Dict[str, object]:
    """The measured description of a finding (all parts share one box)."""
    member = np.zeros(f.parts[0][0].member.shape, np.float32)
    s0_num = np.zeros_like(member)
    s1_gain = np.zeros_like(member)
    for blob, _cls in f.parts:
        member += blob.member
        s0_num += blob.s0 * blob.member
        s1_gain += blob.amp * float(blob.curve[1])
    inside = member >= 0.5
    idx = np.argwhere(inside)
    size = 0.0
    if len(idx):
        span = idx.max(axis=0) - idx.min(axis=0) + 1  # (z, y, x) voxels
        size = max(float(span[a] * grid.spacing[2 - a]) for a in range(3))
    rel = 0.0
    if inside.any():
        s0 = s0_num[inside] / member[inside]
        rel = float(np.mean(s1_gain[inside] / np.maximum(s0, 1e-3)))
    return {
        "kind": f.kind,
        "side": f.side,
        "size_mm": round(size, 2),
        "pattern": f.pattern,
        "curve_type": f.curve_type,
        "relative_enhancement_post1": round(rel, 3),
    }


# ----------------------------------------------------------------------------------------------
# The five kinds
# ----------------------------------------------------------------------------------------------
def _try_focus(rng, ctx: _Ctx, br) -> Optional[_Finding]:
    """An enhancing dot of 2-4 mm centred on a voxel centre, fast or persistent kinetics."""
    g = ctx.grid
    for _ in range(20):
        p = _breast_point(rng, br)
        v = [int(round((p[i] - g.origin[i]) / g.spacing[i])) for i in range(3)]
        if not all(0 <= v[i] < g.shape[2 - i] for i in range(3)):
            continue
        centre = tuple(g.origin[i] + g.spacing[i] * v[i] for i in range(3))
        r = rng.uniform(*_FOCUS_DIAMETER_MM) / 2
        box = g.box(centre, [r + 2 * g.spacing[i] for i in range(3)])
        z, y, x = g.coords(box)
        sdf = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) - r
        member = _membership(g, sdf)
        if not _fits_all(ctx, box, member):
            continue
        fast = rng.uniform() < 0.5
        if fast:
            curve = _curve_wash(ctx.times, rng.uniform(20, 45), rng.uniform(-0.05, 0.05))
        else:
            curve = _curve_persistent(ctx.times, rng.uniform(120, 240))
        s0 = float(ctx.s0[FGT])
        amp = (rng.uniform(350, 700) * member).astype(np.float32)
        blob = _Blob(box, member, s0, amp, curve.astype(np.float32))
        return _Finding("focus", br.side, [(blob, FOCUS)], None, "II" if fast else "I", {})
    return None


def _try_node(rng, ctx: _Ctx, br) -> Optional[_Finding]:
    """Reniform node (ellipsoid minus a hilar notch of fat), upper-outer quadrant, wash-out."""
    g = ctx.grid
    for _ in range(25):
        centre = _breast_point(rng, br, lateral=(0.35, 0.8), depth=(0.1, 0.5), vertical=(0.1, 0.6))
        length = rng.uniform(*_NODE_LONG_AXIS_MM)
        semi = length / 2 * np.array([1.0, rng.uniform(0.45, 0.65), rng.uniform(0.45, 0.65)])
        rot = _rand_rotation(rng)
        box = g.box(tuple(centre), [length / 2 + 2 * g.spacing[i] for i in range(3)])
        if any(s.stop <= s.start for s in box):
            continue
        sdf_ell = _blob_sdf(g, box, centre, {"kind": "ellipsoid", "rot": rot, "semi": semi})
        hilum_c = centre + rot[:, 1] * semi[1]  # on the surface, middle of the concave side
        z, y, x = g.coords(box)
        d_hilum = np.sqrt((x - hilum_c[0]) ** 2 + (y - hilum_c[1]) ** 2 + (z - hilum_c[2]) ** 2)
        sdf_hilum = d_hilum - 0.9 * semi[1]
        cortex = _membership(g, np.maximum(sdf_ell, -sdf_hilum))
        hilum = _membership(g, np.maximum(sdf_ell, sdf_hilum))
        if not _fits_all(ctx, box, np.maximum(cortex, hilum)):
            continue
        curve = _curve_wash(ctx.times, rng.uniform(15, 30), rng.uniform(-0.4, -0.15))
        amp = (rng.uniform(500, 850) * cortex).astype(np.float32)
        node = _Blob(box, cortex, float(ctx.s0[IMNODE]), amp, curve.astype(np.float32))
        fat = _Blob(box, hilum, float(ctx.s0[FAT]), np.zeros_like(hilum), np.zeros_like(curve))
        parts = [(node, IMNODE), (fat, FAT)]
        return _Finding("intramammary_node", br.side, parts, None, "III", {})
    return None


def _vessel_segments(rng, br) -> List[Tuple[np.ndarray, np.ndarray, float]]:
    """Trunk (two segments, base to near the nipple) and 1-3 thinner branches ``(p0, p1, r)``."""
    start = _breast_point(rng, br, lateral=(-0.55, 0.55), depth=(0.05, 0.15), vertical=(-0.5, 0.5))
    end = _breast_point(rng, br, lateral=(-0.3, 0.3), depth=(0.6, 0.85), vertical=(-0.3, 0.3))
    mid = (start + end) / 2 + rng.uniform(-8, 8, size=3) * np.array([1.0, 0.3, 1.0])
    r = rng.uniform(1.0, _VESSEL_RADIUS_MM[1])
    segs = [(start, mid, r), (mid, end, r * 0.9)]
    trunk = end - start
    length = float(np.linalg.norm(trunk))
    for _ in range(int(rng.integers(1, 4))):
        a = start + trunk * rng.uniform(0.2, 0.75)
        perp = _unit(np.cross(_unit(trunk), rng.standard_normal(3)))
        ang = np.deg2rad(rng.uniform(25, 55))
        d = np.cos(ang) * _unit(trunk) + np.sin(ang) * perp
        rb = max(_VESSEL_RADIUS_MM[0], r * rng.uniform(0.55, 0.85))
        segs.append((a, a + d * length * rng.uniform(0.25, 0.5), rb))
    return segs


def _try_vessel(rng, ctx: _Ctx, br) -> Optional[_Finding]:
    """A branching vessel through the breast, clipped to the allowed region, blood-pool curve."""
    g = ctx.grid
    for _ in range(8):
        segs = _vessel_segments(rng, br)
        pts = np.array([p for s in segs for p in s[:2]])
        box = _box_around(g, pts, max(s[2] for s in segs))
        if box is None:
            continue
        full = _membership(g, _tubes_sdf(g, box, segs))
        member = full * _allowed(ctx, box)
        n_full = int(np.count_nonzero(full >= 0.5))
        if n_full == 0 or np.count_nonzero(member >= 0.5) < 0.6 * n_full:
            continue  # mostly outside the breast or cut by a mass: draw another
        amp = (rng.uniform(700, 1000) * member).astype(np.float32)
        curve = _curve_blood(ctx.times).astype(np.float32)
        blob = _Blob(box, member, float(ctx.s0[BLOOD]), amp, curve)
        return _Finding("vessel", br.side, [(blob, BVESSEL)], None, "III", {})
    return None


def _nme_region(rng, g: _Grid, br, pattern: str):
    """``(box, membership)`` of the NME envelope before restriction to parenchyma."""
    if pattern == "linear":  # a duct-like line towards the nipple, sometimes branching
        a = _breast_point(rng, br, lateral=(-0.5, 0.5), depth=(0.2, 0.5), vertical=(-0.5, 0.5))
        d = _unit(_nipple(br) - a)
        length = rng.uniform(20, 45)
        r = rng.uniform(1.5, 3.0)
        segs = [(a, a + d * length, r)]
        if rng.uniform() < 0.5:
            off = _unit(np.cross(d, rng.standard_normal(3)))
            b = a + d * length * rng.uniform(0.3, 0.6)
            segs.append((b, b + _unit(d + 0.7 * off) * length * 0.4, r))
        box = _box_around(g, np.array([p for s in segs for p in s[:2]]), r)
        return box, (None if box is None else _membership(g, _tubes_sdf(g, box, segs)))
    if pattern == "segmental":  # a cone with its apex at the nipple
        apex = _nipple(br)
        deep = _breast_point(rng, br, lateral=(-0.5, 0.5), depth=(0.1, 0.3), vertical=(-0.5, 0.5))
        axis = deep - apex
        length = float(np.linalg.norm(axis))
        half = np.deg2rad(rng.uniform(12, 22))
        reach = length * np.tan(half)
        box = _box_around(g, np.array([apex, deep]), reach)
        if box is None:
            return None, None
        z, y, x = g.coords(box)
        u = _unit(axis)
        t = (x - apex[0]) * u[0] + (y - apex[1]) * u[1] + (z - apex[2]) * u[2]
        d2 = (x - apex[0]) ** 2 + (y - apex[1]) ** 2 + (z - apex[2]) ** 2 - t * t
        radial = np.sqrt(np.maximum(d2, 0.0)) - np.tan(half) * np.maximum(t, 0.0)
        sdf = np.maximum(radial, np.maximum(0.15 * length - t, t - length))
        return box, _membership(g, sdf)
    # regional: a large ellipsoid over more than a quadrant
    centre = _breast_point(rng, br, lateral=(-0.45, 0.45), depth=(0.3, 0.6), vertical=(-0.4, 0.4))
    semi = np.array([0.45 * br.ax, 0.3 * br.ay, 0.45 * br.az]) * rng.uniform(0.85, 1.1, size=3)
    box = g.box(tuple(centre), [semi[i] + 2 * g.spacing[i] for i in range(3)])
    if any(s.stop <= s.start for s in box):
        return None, None
    shape = {"kind": "ellipsoid", "rot": np.eye(3), "semi": semi}
    return box, _membership(g, _blob_sdf(g, box, centre, shape))


def _try_nme(rng, ctx: _Ctx, br) -> Optional[_Finding]:
    """Clumped or heterogeneous non-mass enhancement in parenchyma, moderate plateau kinetics."""
    g = ctx.grid
    pattern = _NME_PATTERNS[int(rng.integers(len(_NME_PATTERNS)))]
    clumped = rng.uniform() < 0.5
    if ctx.field is None:
        ctx.field = _Field(rng, g, 3.0)
    for _ in range(15):
        box, envelope = _nme_region(rng, g, br, pattern)
        if box is None:
            continue
        fgt = (ctx.tissue[box] == FGT) & _allowed(ctx, box)
        tex = ctx.field.sample_box(g, box)
        if clumped:  # cobblestone aggregates separated by unenhanced tissue
            mod = np.clip((tex - 0.2) / 0.6, 0.0, 1.0)
        else:  # heterogeneous: patchy, rarely absent
            mod = np.clip(0.55 + 0.45 * tex, 0.0, 1.0)
        member = (envelope * fgt * mod).astype(np.float32)
        n_env = int(np.count_nonzero(envelope >= 0.5))
        if n_env == 0 or np.count_nonzero(member >= 0.5) < max(3, 0.08 * n_env):
            continue  # too little parenchyma in the envelope
        curve = _curve_wash(ctx.times, rng.uniform(45, 90), rng.uniform(-0.05, 0.05))
        amp = (rng.uniform(250, 450) * member).astype(np.float32)
        blob = _Blob(box, member, float(ctx.s0[FGT]), amp, curve.astype(np.float32))
        return _Finding("nme", br.side, [(blob, NME)], pattern, "II", {})
    return None


def _try_cyst(rng, ctx: _Ctx, br) -> Optional[_Finding]:
    """A round dark cyst; with a thin persistent enhancing rim in a minority."""
    g = ctx.grid
    for _ in range(20):
        centre = _breast_point(rng, br)
        lo, hi = _CYST_DIAMETER_MM
        diameter = lo * (hi / lo) ** (rng.uniform() ** 1.5)  # skewed towards small cysts
        semi = diameter / 2 * np.array([1.0, *np.sort(rng.uniform(0.8, 1.0, size=2))])
        box = g.box(tuple(centre), [diameter / 2 + 2 * g.spacing[i] for i in range(3)])
        if any(s.stop <= s.start for s in box):
            continue
        shape = {"kind": "ellipsoid", "rot": _rand_rotation(rng), "semi": semi}
        sdf = _blob_sdf(g, box, centre, shape)
        outer = _membership(g, sdf)
        if not _fits_all(ctx, box, outer):
            continue
        rim = rng.uniform() < _P_CYST_RIM
        fluid_s0 = float(ctx.s0[CYST] * rng.uniform(0.8, 1.2))
        flat = np.zeros(len(ctx.times), np.float32)
        core = _membership(g, sdf + _CYST_RIM_MM) if rim else outer
        parts = [(_Blob(box, core, fluid_s0, np.zeros_like(core), flat), CYST)]
        if rim:
            wall = np.clip(outer - core, 0.0, 1.0).astype(np.float32)
            curve = _curve_persistent(ctx.times, rng.uniform(90, 150)).astype(np.float32)
            amp = (rng.uniform(250, 400) * wall).astype(np.float32)
            parts.append((_Blob(box, wall, float(ctx.s0[FGT]), amp, curve), CYST))
        pattern = "rim" if rim else "plain"
        return _Finding("cyst", br.side, parts, pattern, "I" if rim else "none", {})
    return None


_PLACERS = {
    "nme": _try_nme,
    "cyst": _try_cyst,
    "intramammary_node": _try_node,
    "vessel": _try_vessel,
    "focus": _try_focus,
}


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------
def _sample_plan(rng, breasts: Sequence) -> List[Tuple[str, int]]:
    """``(kind, breast index)`` of every finding to place, in placement order."""
    nb = len(breasts)
    plan = []
    if rng.uniform() < _P_NME:
        plan.append(("nme", int(rng.integers(nb))))
    if rng.uniform() < _P_CYSTS:
        plan += [("cyst", int(rng.integers(nb))) for _ in range(int(rng.integers(1, 4)))]
    if rng.uniform() < _P_NODE:
        plan.append(("intramammary_node", int(rng.integers(nb))))
    for b in range(nb):
        n = int(rng.choice(len(_VESSEL_TREES_PROBS), p=_VESSEL_TREES_PROBS))
        plan += [("vessel", b)] * n
    if rng.uniform() < _P_FOCI:
        plan += [("focus", int(rng.integers(nb))) for _ in range(1 + int(rng.poisson(2.0)))]
    return plan


def _place_findings(rng, grid, breasts, tissue, mask, masses, times, s0) -> List[_Finding]:
    """Place the findings of one case (see the module docstring).

    Args:
        rng: the findings random stream (the only source of draws).
        grid, breasts, tissue, mask: the anatomy (``tissue`` without masses painted; not modified).
        masses: ``(blob, label, ...)`` tuples of :func:`.lesions._place_lesions`.
        times: ``[P]`` phase times (s).
        s0: per-tissue pre-contrast LUT (``_sample_intensities(...)["s0"]``).

    Returns:
        The findings in placement order, each with its ``record`` filled.
    """
    ctx = _Ctx(grid, tissue, mask.astype(bool, copy=False), np.zeros(grid.shape, bool), times, s0)
    for blob, label, *_rest in masses:
        _block(ctx, blob.box, label, iterations=2)
    findings = []
    for kind, b in _sample_plan(rng, breasts):
        f = _PLACERS[kind](rng, ctx, breasts[b])
        if f is None:
            logger.debug("could not place a %s in the %s breast", kind, breasts[b].side)
            continue
        box = f.parts[0][0].box
        _block(ctx, box, sum(p[0].member for p in f.parts) > 0, iterations=2)
        f.record = _finding_record(grid, f, times)
        findings.append(f)
    return findings


def _findings_info(findings: Sequence[_Finding]) -> Tuple[List[Dict[str, object]], Dict[str, int]]:
    """``case.info["findings"]`` and ``case.info["findings_count"]``."""
    records = [f.record for f in findings]
    return records, {k: sum(r["kind"] == k for r in records) for k in KINDS}
