"""Phantom anatomy: voxel grid, smooth random fields, thorax, breasts, heart and vessels.

Everything here is static (no contrast): the tissue map ``[Z, Y, X]`` uint8 (an index into
:data:`TISSUES`), the breast mask and the per-breast texture fields that the signal model uses.
Conventions as in :mod:`breast_d2.data.phantom`: arrays ``[Z, Y, X]``, row 0 anterior, physical
coordinates (mm) LPS with identity direction, the volume centred on (0, 0, 0).
"""

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "TISSUES",
    "AIR",
    "FAT",
    "FGT",
    "SKIN",
    "MUSCLE",
    "CHEST",
    "LUNG",
    "MEDIAST",
    "BLOOD",
    "MYO",
    "BONE",
    "NODE",
    "MASS",
    "FOCUS",
    "IMNODE",
    "BVESSEL",
    "NME",
    "CYST",
]

logger = logging.getLogger(__name__)

# Tissue classes of PhantomCase.tissue (uint8 values).
TISSUES = (
    "air",
    "fat",
    "fibroglandular",
    "skin",
    "muscle",
    "chest_wall",
    "lung",
    "mediastinum",
    "blood",
    "myocardium",
    "bone",
    "lymph_node",
    "mass",
    # Findings inside the breast that are not targets (see breast_d2.data.phantom.findings).
    "focus",
    "intramammary_node",
    "breast_vessel",
    "non_mass_enhancement",
    "cyst",
)
(AIR, FAT, FGT, SKIN, MUSCLE, CHEST, LUNG, MEDIAST, BLOOD, MYO, BONE, NODE, MASS) = range(13)
(FOCUS, IMNODE, BVESSEL, NME, CYST) = range(13, 18)

# Reference protocol: 96 slices of 1.4 mm; smaller --slices keep this slab coverage.
_SLAB_MM = 96 * 1.4


# ----------------------------------------------------------------------------------------------
# Grid and smooth random fields
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Grid:
    """Voxel grid: shape ``(Z, Y, X)``, spacing/origin ``(x, y, z)`` mm, 1D voxel-centre coords."""

    shape: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    fov_mm: float

    def axis(self, i: int) -> np.ndarray:
        """Voxel-centre coordinates (mm, float32) along axis ``i`` of ``(x, y, z)``."""
        n = self.shape[2 - i]
        return (self.origin[i] + self.spacing[i] * np.arange(n)).astype(np.float32)

    def coords(self, box: Tuple[slice, slice, slice]):
        """Broadcastable ``(z [n,1,1], y [1,n,1], x [1,1,n])`` mm coordinates of a box."""
        z = self.axis(2)[box[0]][:, None, None]
        y = self.axis(1)[box[1]][None, :, None]
        x = self.axis(0)[box[2]][None, None, :]
        return z, y, x

    def span(self, i: int, lo: float, hi: float) -> slice:
        """Indices along axis ``i`` (x=0, y=1, z=2) whose voxel centres lie in ``[lo, hi]`` mm."""
        n, o, d = self.shape[2 - i], self.origin[i], self.spacing[i]
        i0 = max(int(np.ceil((lo - o) / d)), 0)
        i1 = min(int(np.floor((hi - o) / d)) + 1, n)
        return slice(i0, max(i0, i1))

    def box(self, centre, half) -> Tuple[slice, slice, slice]:
        """``(z, y, x)`` slices covering ``centre +- half`` (both ``(x, y, z)`` mm)."""
        return tuple(self.span(i, centre[i] - half[i], centre[i] + half[i]) for i in (2, 1, 0))


def _make_grid(matrix: int, slices: int, fov_mm: float) -> _Grid:
    s = fov_mm / matrix
    sz = _SLAB_MM / slices
    origin = (-fov_mm / 2 + s / 2, -fov_mm / 2 + s / 2, -_SLAB_MM / 2 + sz / 2)
    return _Grid((slices, matrix, matrix), (s, s, sz), origin, fov_mm)


class _Field:
    """Smooth Gaussian random field (unit variance) defined in mm, sampled at any resolution.

    White noise on a control grid of spacing ``control_mm`` covering the whole FOV and slab is
    interpolated with a separable Gaussian kernel (three small matrix products), so the same seed
    gives the same anatomy at every matrix size and sampling a sub-box costs only that box.
    """

    def __init__(self, rng: np.random.Generator, grid: _Grid, control_mm: float):
        half = (grid.fov_mm / 2, grid.fov_mm / 2, _SLAB_MM / 2)
        self.c = control_mm
        c = control_mm
        self.nodes = [np.arange(-h - 3 * c, h + 3.5 * c, c) for h in half]
        shape = tuple(len(self.nodes[i]) for i in (2, 1, 0))
        self.coef = rng.standard_normal(shape).astype(np.float32)

    def _weights(self, i: int, coords: np.ndarray) -> np.ndarray:
        w = np.exp(-0.5 * ((coords[:, None] - self.nodes[i][None, :]) / self.c) ** 2)
        return (w / np.sqrt((w * w).sum(axis=1, keepdims=True))).astype(np.float32)

    def sample(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Field values ``[len(z), len(y), len(x)]`` float32 at 1D mm coordinates."""
        wz, wy, wx = self._weights(2, z), self._weights(1, y), self._weights(0, x)
        t = self.coef @ wx.T  # [cz, cy, X]
        t = np.matmul(wy, t)  # [cz, Y, X]
        out = wz @ t.reshape(t.shape[0], -1)
        return out.reshape(len(z), len(y), len(x))

    def sample_box(self, grid: _Grid, box) -> np.ndarray:
        """Field values on a ``(z, y, x)`` slice box of ``grid``."""
        return self.sample(grid.axis(2)[box[0]], grid.axis(1)[box[1]], grid.axis(0)[box[2]])


# ----------------------------------------------------------------------------------------------
# Anatomy parameters
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Thorax:
    """Thorax cross-section (z-invariant): ellipse centre ``(0, yc)``, semi-axes ``wt, ht`` mm."""

    yc: float
    wt: float
    ht: float
    t_sub_ant: float  # subcutaneous fat in front of the sternum (mm)
    t_sub_lat: float  # axillary / lateral fat (mm)
    t_skin: float
    t_muscle: float  # pectoral muscle
    t_chest: float  # ribs and intercostal muscles
    sternum_half: float
    rib_period: float
    med: Tuple[float, float, float, float]  # mediastinum ellipse x, y, half-width, half-height

    def surface_y(self, x: float) -> float:
        """y (mm) of the anterior thorax surface (pectoral muscle front) at ``x``."""
        return self.yc - self.ht * float(np.sqrt(max(1.0 - (x / self.wt) ** 2, 0.0)))


@dataclass(frozen=True)
class _Breast:
    """Half-ellipsoid breast: base centre ``(xc, yb, zc)``, semi-axes mm, ``power`` of the depth
    term (< 2: more conical, pendulous prone breast)."""

    side: str
    xc: float
    yb: float
    zc: float
    ax: float
    ay: float
    az: float
    power: float
    t_skin: float
    fat_margin: float
    density: float


def _sample_thorax(rng: np.random.Generator) -> _Thorax:
    ht = float(rng.uniform(100, 120))
    y_front = float(rng.uniform(-10, 20))  # anterior chest surface at the midline (mm)
    med = (float(rng.uniform(0, 10)), y_front + float(rng.uniform(75, 95)), 50.0, 90.0)
    return _Thorax(
        yc=y_front + ht,
        wt=float(rng.uniform(145, 165)),
        ht=ht,
        t_sub_ant=float(rng.uniform(6, 12)),
        t_sub_lat=float(rng.uniform(28, 40)),
        t_skin=float(rng.uniform(1.5, 2.5)),
        t_muscle=float(rng.uniform(8, 14)),
        t_chest=float(rng.uniform(8, 12)),
        sternum_half=float(rng.uniform(11, 15)),
        rib_period=float(rng.uniform(22, 28)),
        med=med,
    )


def _sample_breasts(rng: np.random.Generator, th: _Thorax, fov: float) -> List[_Breast]:
    base = (rng.uniform(52, 72), rng.uniform(70, 130), rng.uniform(48, 64))
    xc0, zc0 = rng.uniform(68, 86), rng.uniform(-8, 8)
    density = rng.uniform(0.12, 0.6)
    rng.uniform()  # former BPE amplitude draw (now in bpe.py): kept so the stream is unchanged
    breasts = []
    for sign, side in ((-1.0, "right"), (1.0, "left")):
        asym = rng.uniform(0.88, 1.12, size=3)  # left/right asymmetry per axis
        xc = sign * (xc0 + rng.uniform(-4, 4))
        yb = th.surface_y(xc) + rng.uniform(2, 8)
        ax = min(base[0] * asym[0], abs(xc) - 6, fov / 2 - 6 - abs(xc))
        ay = min(base[1] * asym[1], yb + fov / 2 - 8)
        breasts.append(
            _Breast(
                side=side,
                xc=float(xc),
                yb=float(yb),
                zc=float(zc0 + rng.uniform(-3, 3)),
                ax=float(ax),
                ay=float(ay),
                az=float(base[2] * asym[2]),
                power=float(rng.uniform(1.5, 2.2)),
                t_skin=th.t_skin,
                fat_margin=float(rng.uniform(4, 10)),
                density=float(density * rng.uniform(0.9, 1.1)),
            )
        )
        rng.uniform()  # former per-breast BPE draw (now in bpe.py): kept, stream unchanged
    return breasts


# ----------------------------------------------------------------------------------------------
# Static anatomy: tissue map
# ----------------------------------------------------------------------------------------------
def _thorax_depth(grid: _Grid, th: _Thorax) -> np.ndarray:
    """``[Y, X]`` float32 signed depth (mm) below the thorax surface, > 0 inside (first order)."""
    x = grid.axis(0)[None, :]
    y = grid.axis(1)[:, None]
    u, v = x / th.wt, (y - th.yc) / th.ht
    f = u * u + v * v - 1.0
    g = 2.0 * np.sqrt((u / th.wt) ** 2 + (v / th.ht) ** 2)
    return (-f / np.maximum(g, 1e-6)).astype(np.float32)


def _thorax_slice(grid: _Grid, th: _Thorax, depth: np.ndarray) -> np.ndarray:
    """``[Y, X]`` uint8 tissue of the (z-invariant) body and thorax cross-section."""
    x = grid.axis(0)[None, :]
    y = grid.axis(1)[:, None]
    ramp = np.clip((np.abs(x) - 70.0) / 60.0, 0.0, 1.0)
    t_sub = th.t_sub_ant + (th.t_sub_lat - th.t_sub_ant) * ramp * ramp * (3 - 2 * ramp)
    t2 = np.zeros(depth.shape, np.uint8)
    t2[depth > -t_sub] = FAT
    t2[(depth > -t_sub) & (depth < -t_sub + max(th.t_skin, grid.spacing[0]))] = SKIN
    t2[depth > 0] = MUSCLE
    t2[depth > th.t_muscle] = CHEST
    t2[(depth > 0) & (depth <= th.t_muscle + th.t_chest) & (np.abs(x) < th.sternum_half)] = BONE
    inner = depth > th.t_muscle + th.t_chest
    t2[inner] = LUNG
    mx, my, mw, mh = th.med
    t2[inner & (((x - mx) / mw) ** 2 + ((y - my) / mh) ** 2 <= 1.0)] = MEDIAST
    return t2


def _add_ribs(tissue: np.ndarray, grid: _Grid, th: _Thorax) -> None:
    """Ribs: periodic bands along z in the chest-wall layer, obliquely descending laterally."""
    z = grid.axis(2)[:, None, None]
    x = grid.axis(0)[None, None, :]
    rib = np.cos(2 * np.pi * (z + 0.35 * np.abs(x)) / th.rib_period) > 0.35
    tissue[rib & (tissue == CHEST)] = BONE


@dataclass
class _BreastPaint:
    box: Tuple[slice, slice, slice]
    inside: np.ndarray
    fgt: np.ndarray
    tex: np.ndarray  # fine texture field on the box (unit variance)
    bpe_mod: np.ndarray  # coarse field on the box (unit variance)
    bpe_slow: Optional[np.ndarray] = None  # [N_fgt] type I amplitude of FGT (set by bpe.py)


def _breast_shape(grid: _Grid, br: _Breast, box, depth2d: np.ndarray):
    """Inside mask, normalised radius ``f`` (0 centre .. 1 surface) and surface distance (mm)."""
    z, y, x = grid.coords(box)
    dx, dz = (x - br.xc) / br.ax, (z - br.zc) / br.az
    dy = np.maximum(br.yb - y, 0.0) / br.ay
    f = dx * dx + dy**br.power + dz * dz
    gx, gz = 2 * dx / br.ax, 2 * dz / br.az
    gy = br.power * dy ** (br.power - 1) / br.ay
    dist = (1.0 - f) / np.maximum(np.sqrt(gx * gx + gy * gy + gz * gz), 1e-6)
    inside = (f <= 1.0) & (y <= br.yb) & (depth2d[box[1], box[2]][None] < 0)
    return inside, f, dist


def _paint_breast(tissue, mask, grid, br: _Breast, depth2d, fields) -> _BreastPaint:
    """Paint one breast (fat, textured fibroglandular tissue, skin) into tissue and mask."""
    box = grid.box((br.xc, br.yb - br.ay / 2, br.zc), (br.ax, br.ay / 2, br.az))
    inside, f, dist = _breast_shape(grid, br, box, depth2d)
    tex, coarse = fields["fine"].sample_box(grid, box), fields["coarse"].sample_box(grid, box)
    # Fibroglandular tissue: smoothed noise thresholded, denser centrally, behind a fat layer.
    g = 0.6 * tex + 0.9 * coarse + 2.2 * (1.0 - f)
    cand = inside & (dist > br.fat_margin)
    fgt = np.zeros_like(inside)
    if cand.any():
        thr = np.quantile(g[cand], 1.0 - br.density)
        fgt = cand & (g > thr)
    skin = inside & (dist < max(br.t_skin, grid.spacing[0]))
    sub = tissue[box]
    sub[inside] = FAT
    sub[fgt] = FGT
    sub[skin] = SKIN
    mask[box] |= inside
    return _BreastPaint(box, inside, fgt & ~skin, tex, coarse)


def _ellipsoid_xy_rot(grid, centre, semi, angle, box):
    """Normalised radius of an ellipsoid rotated by ``angle`` in the x-y plane, on a box."""
    z, y, x = grid.coords(box)
    dx, dy = x - centre[0], y - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / semi[0]) ** 2 + (v / semi[1]) ** 2 + ((z - centre[2]) / semi[2]) ** 2, u


def _paint_heart(tissue, grid, rng, th: _Thorax) -> Dict[str, float]:
    """Heart (caudal part of the slab): myocardium shell, two blood-filled chambers, septum."""
    y_front = th.yc - th.ht
    centre = (rng.uniform(10, 30), y_front + rng.uniform(75, 95), rng.uniform(-75, -35))
    semi = (rng.uniform(50, 62), rng.uniform(40, 50), rng.uniform(45, 55))
    angle, wall = -np.deg2rad(rng.uniform(20, 40)), rng.uniform(7, 11)
    r = max(semi[:2])
    box = grid.box(centre, (r, r, semi[2]))
    f, u = _ellipsoid_xy_rot(grid, centre, semi, angle, box)
    inner = [a - wall for a in semi]
    f_in, _ = _ellipsoid_xy_rot(grid, centre, inner, angle, box)
    sub = tissue[box]
    allowed = (sub == LUNG) | (sub == MEDIAST)
    sub[allowed & (f <= 1.0)] = MYO
    sub[allowed & (f_in <= 1.0) & (np.abs(u) > 3.0)] = BLOOD
    return {"x": centre[0], "y": centre[1], "z": centre[2], "top_z": centre[2] + semi[2]}


def _tubes(rng, th: _Thorax, heart: Dict[str, float], breasts: Sequence[_Breast], fov: float):
    """Vessels running along z: ``(name, x, y, radius, dx/dz, dy/dz, z_lo, allowed tissues)``."""
    hx, hy, top = heart["x"], heart["y"], heart["top_z"]
    mediast = (LUNG, MEDIAST)
    d = lambda: rng.uniform(-0.15, 0.15)  # noqa: E731  drift (mm per mm of z)
    tubes = [
        ("ascending_aorta", hx - rng.uniform(15, 30), hy - 15, rng.uniform(13, 17), d(), d()),
        ("pulmonary_trunk", hx + rng.uniform(0, 12), hy - 30, rng.uniform(11, 14), d(), d()),
        ("superior_vena_cava", hx - rng.uniform(40, 55), hy - 5, rng.uniform(8, 11), d(), d()),
    ]
    tubes = [t + (top - 25, mediast) for t in tubes]
    y_desc = min(th.yc - th.ht + rng.uniform(165, 185), fov / 2 - 18)
    tubes.append(("descending_aorta", rng.uniform(20, 35), y_desc, rng.uniform(11, 13), 0, 0))
    tubes[-1] = tubes[-1] + (-1e9, mediast)
    for sign in (-1.0, 1.0):
        for name in ("internal_mammary_artery", "internal_mammary_vein"):
            x, r = sign * rng.uniform(22, 36), rng.uniform(1.5, 2.6)
            y = th.surface_y(x) + th.t_muscle + th.t_chest + r + 1.5
            tubes.append((name, x, y, r, d(), d(), -1e9, (LUNG, MEDIAST, CHEST, BONE)))
    for br in breasts:
        x = np.sign(br.xc) * rng.uniform(100, 125)
        y = br.yb + rng.uniform(8, 22)
        tubes.append(("lateral_thoracic", x, y, rng.uniform(1.5, 2.6), d(), d(), -1e9, (FAT,)))
    return tubes


def _paint_tube(tissue, mask, grid, tube) -> None:
    """Paint a straight vessel (centre drifting linearly with z) into allowed, non-breast voxels."""
    _, x0, y0, r, dxdz, dydz, z_lo, allowed = tube
    zs = grid.axis(2)
    zsel = grid.span(2, z_lo, 1e9)
    if zsel.stop <= zsel.start:
        return
    cx, cy = x0 + dxdz * zs[zsel], y0 + dydz * zs[zsel]
    bx = grid.span(0, cx.min() - r, cx.max() + r)
    by = grid.span(1, cy.min() - r, cy.max() + r)
    box = (zsel, by, bx)
    z, y, x = grid.coords(box)
    inside = (x - cx[:, None, None]) ** 2 + (y - cy[:, None, None]) ** 2 <= r * r
    sub = tissue[box]
    ok = np.isin(sub, allowed) & (mask[box] == 0)
    sub[inside & ok] = BLOOD


def _build_anatomy(grid, rng, th, breasts, fields):
    """Tissue map ``[Z, Y, X]`` uint8, breast mask, breast paints, heart and vessel parameters."""
    depth2d = _thorax_depth(grid, th)
    tissue = np.empty(grid.shape, np.uint8)
    tissue[...] = _thorax_slice(grid, th, depth2d)[None]
    _add_ribs(tissue, grid, th)
    mask = np.zeros(grid.shape, bool)
    paints = [_paint_breast(tissue, mask, grid, br, depth2d, fields) for br in breasts]
    heart = _paint_heart(tissue, grid, rng, th)
    tubes = _tubes(rng, th, heart, breasts, grid.fov_mm)
    for tube in tubes:
        _paint_tube(tissue, mask, grid, tube)
    return tissue, mask, paints, depth2d, {"heart": heart, "vessels": [t[0] for t in tubes]}
