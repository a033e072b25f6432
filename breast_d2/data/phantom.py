"""Synthetic DCE-MRI phantom cohort: the embedded default data of breast_d2.

Each case imitates one examination of the reference protocol (Duke-Breast-Cancer-MRI): axial prone
fat-suppressed T1-weighted gradient echo, matrix 320 x 320, FOV 320 mm (1 mm pixels), 96 slices of
1.4 mm, one pre-contrast and eight post-contrast phases. Smaller ``matrix`` / ``slices`` keep the
physical field of view and slab (pixel = fov / matrix, slice = 134.4 mm / slices), so a
128 x 128 x 32 case is a realistic low-resolution version of the same anatomy.

A case contains two breasts (half-ellipsoids hanging anteriorly, i.e. towards row 0), skin, fat,
textured fibroglandular tissue with slow persistent (type I) background parenchymal enhancement,
0-3 masses with fast wash-in and plateau (type II) or wash-out (type III) kinetics, and outside the
breasts the pectoral muscle, chest wall, lungs, heart, great vessels, internal mammary and lateral
thoracic vessels and axillary lymph nodes. The last four enhance early and strongly and look like
masses on post-contrast and subtraction images: they are what the breast mask has to remove.
Images get a smooth multiplicative coil bias field (strongest near the breast coil) and Rician
noise.

Arrays are NumPy in SimpleITK order ``[Z, Y, X]`` (slice, row, column); row 0 is anterior. Physical
coordinates (mm) are LPS with identity direction: ``x = origin_x + column * sx`` etc., the volume
centred on (0, 0, 0), so column 0 is the patient's right. Boxes follow docs/DATA_FORMAT.md:
``[x0, y0, z0, x1, y1, z1]`` half-open voxel indices.

On disk (:func:`write_cohort`) the cohort uses the input layout of docs/DATA_FORMAT.md::

    OUT/IMAGES/<case_id>/<case_id>_<phase:04d>.nii.gz   int16, arbitrary MR units (0 .. ~1500)
    OUT/MASKS/<case_id>.nii.gz                           uint8 breast mask (both breasts + skin)
    OUT/LABELS/<case_id>.nii.gz                          uint8 lesion labels (lesion i has value i)
    OUT/boxes.csv                                        Duke Annotation_Boxes (1-based, inclusive)
    OUT/phantom.json                                     parameters, phase times, per-case lesions
    OUT/.phantom/                                        resume bookkeeping (parameters, records)
"""

import csv
import io
import json
import logging
import contextlib
import functools
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..parallel import run_pool
from ..fileio import atomic_folder, atomic_path, write_atomic
from .boxes import DUKE_COLUMNS, label_boxes, largest_component

__all__ = [
    "GENERATOR_VERSION",
    "TISSUES",
    "BOXES_CSV_HEADER",
    "Lesion",
    "PhantomCase",
    "CohortSummary",
    "case_id_for",
    "phase_times",
    "make_case",
    "label_boxes",  # re-exported: its home is volumes.py (component and box helpers)
    "write_case",
    "write_cohort",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "1.0"
BOXES_CSV_HEADER = DUKE_COLUMNS  # the Duke Annotation_Boxes columns the converter reads
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
)
(AIR, FAT, FGT, SKIN, MUSCLE, CHEST, LUNG, MEDIAST, BLOOD, MYO, BONE, NODE, MASS) = range(13)

# Reference protocol: 96 slices of 1.4 mm; smaller --slices keep this slab coverage.
_SLAB_MM = 96 * 1.4
_MIN_DIAMETER_MM, _MAX_DIAMETER_MM = 10.7, 66.9  # range of the reference study
_LESION_COUNT_PROBS = (0.18, 0.45, 0.25, 0.12)  # P(0..3 masses per case)
_STATE_DIR = ".phantom"


# ----------------------------------------------------------------------------------------------
# Public data classes
# ----------------------------------------------------------------------------------------------
@dataclass
class Lesion:
    """One synthetic mass.

    Attributes:
        label: value of the mass in ``PhantomCase.lesion_labels`` (1-based).
        centre_voxel: label centroid ``(x, y, z)`` in voxel indices (float).
        centre_mm: the same centroid in physical LPS coordinates (mm).
        diameter_mm: nominal diameter (mm), within 10.7-66.9 after clipping to fit the breast.
        extent_mm: measured extent of the label along ``(x, y, z)`` (mm).
        shape: ``"ellipsoid"`` or ``"lobulated"``.
        side: ``"left"`` or ``"right"`` breast (patient side; left is on the image right).
        kinetics: curve type (``"II"`` plateau / ``"III"`` wash-out), wash-in time constant (s),
            late slope, peak enhancement (MR units), rim flag and the relative enhancement per
            phase ``(S_p - S_0) / S_0`` of the noise-free curve.
        box: ``[x0, y0, z0, x1, y1, z1]``, half-open voxel indices of the label extent.
        volume_ml: label volume (ml).
    """

    label: int
    centre_voxel: Tuple[float, float, float]
    centre_mm: Tuple[float, float, float]
    diameter_mm: float
    extent_mm: Tuple[float, float, float]
    shape: str
    side: str
    kinetics: Dict[str, object]
    box: Tuple[int, int, int, int, int, int]
    volume_ml: float


@dataclass
class PhantomCase:
    """One synthetic DCE-MRI examination (see the module docstring for conventions).

    Attributes:
        case_id: ``PH0000``, ``PH0001``, ...
        phases: ``[P, Z, Y, X]`` float32 signal (arbitrary MR units), phase 0 pre-contrast.
        breast_mask: ``[Z, Y, X]`` uint8, 1 inside both breasts (skin included; chest wall,
            pectoral muscle, axilla and everything behind excluded).
        lesion_labels: ``[Z, Y, X]`` uint8, lesion ``i`` has value ``i``, 0 background.
        tissue: ``[Z, Y, X]`` uint8 tissue class, an index into :data:`TISSUES`.
        spacing: ``(sx, sy, sz)`` voxel size in mm.
        origin: ``(x, y, z)`` physical position (mm) of the centre of voxel (0, 0, 0).
        phase_times_s: acquisition time of each phase after injection (s), 0 for pre-contrast.
        lesions: the masses, ordered by label.
        info: scalar description of the case (anatomy sizes, distractor counts, noise sigma).
    """

    case_id: str
    phases: np.ndarray
    breast_mask: np.ndarray
    lesion_labels: np.ndarray
    tissue: np.ndarray
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    phase_times_s: Tuple[float, ...]
    lesions: List[Lesion] = field(default_factory=list)
    info: Dict[str, object] = field(default_factory=dict)


@dataclass
class CohortSummary:
    """What :func:`write_cohort` did.

    Attributes:
        out_dir: the cohort folder.
        num_cases: cases in the cohort.
        generated: cases generated by this call.
        skipped: finished cases found and kept (resume).
        num_lesions: masses in the cohort.
        cases_without_lesions: cases with no mass.
    """

    out_dir: str
    num_cases: int
    generated: int
    skipped: int
    num_lesions: int
    cases_without_lesions: int


# ----------------------------------------------------------------------------------------------
# Grid, validation, small helpers
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


def _check_int(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")


def _check_params(seed, matrix, slices, fov_mm, num_phases, phase_interval_s) -> None:
    """Raise ValueError with a clear message for any unusable generator parameter."""
    _check_int("seed", seed, 0, 2**63 - 1)
    _check_int("matrix", matrix, 64, 1024)
    _check_int("slices", slices, 16, 512)
    _check_int("num_phases", num_phases, 2, 16)
    if not isinstance(fov_mm, (int, float)) or not 280.0 <= float(fov_mm) <= 400.0:
        raise ValueError(f"fov_mm must be a number in [280, 400] mm, got {fov_mm!r}")
    if not isinstance(phase_interval_s, (int, float)) or not 10 <= phase_interval_s <= 300:
        raise ValueError(f"phase_interval_s must be in [10, 300] s, got {phase_interval_s!r}")


def case_id_for(case_index: int) -> str:
    """Case id of a cohort index: ``0 -> "PH0000"``."""
    return f"PH{case_index:04d}"


def phase_times(num_phases: int = 9, phase_interval_s: float = 75.0) -> Tuple[float, ...]:
    """Acquisition time after injection (s) of each phase; phase 0 (pre-contrast) is at 0.

    Args:
        num_phases: 1 pre-contrast + ``num_phases - 1`` post-contrast phases.
        phase_interval_s: time between phase centres (the reference study: about 60-90 s).
    """
    return tuple(float(p * phase_interval_s) for p in range(num_phases))


def _rand_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random 3x3 rotation matrix (from a random unit quaternion)."""
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


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
    bpe: float


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
    density, bpe = rng.uniform(0.12, 0.6), 0.05 + 0.45 * rng.uniform() ** 2
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
                bpe=float(bpe * rng.uniform(0.8, 1.2)),
            )
        )
    return breasts


def _sample_intensities(rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Per-tissue look-up tables: pre-contrast signal and the amplitude of each enhancement curve.

    Fat-suppressed T1 GRE: fat dark (imperfect suppression), fibroglandular tissue intermediate,
    blood and enhancing tissue bright after contrast. Arbitrary units, peaks around 1000-1500.
    """
    gain = rng.uniform(0.85, 1.15)
    s0 = np.zeros(len(TISSUES), np.float32)
    s0[[FAT, FGT, SKIN, MUSCLE]] = [
        rng.uniform(90, 130),
        rng.uniform(300, 360),
        rng.uniform(330, 400),
        rng.uniform(260, 320),
    ]
    s0[[CHEST, LUNG, MEDIAST, BLOOD, MYO, BONE, NODE, MASS]] = [230, 25, 110, 0, 290, 160, 300, 0]
    s0[BLOOD] = rng.uniform(200, 300)
    slow = np.zeros(len(TISSUES), np.float32)  # type I persistent enhancement
    slow[[FAT, SKIN, MUSCLE, CHEST, LUNG, MEDIAST, BONE]] = [8, 90, 70, 60, 5, 15, 30]
    fast = np.zeros(len(TISSUES), np.float32)  # myocardium: fast, mild wash-out
    fast[MYO] = rng.uniform(300, 450)
    blood = np.zeros(len(TISSUES), np.float32)  # first pass + recirculation
    blood[BLOOD] = rng.uniform(850, 1150)
    luts = {"s0": s0, "slow": slow, "fast": fast, "blood": blood}
    return {k: (v * float(gain)).astype(np.float32) for k, v in luts.items()}


# ----------------------------------------------------------------------------------------------
# Enhancement curves (normalised, 0 at t = 0)
# ----------------------------------------------------------------------------------------------
def _curve_wash(t: np.ndarray, tau_in: float, slope: float) -> np.ndarray:
    """Fast wash-in then plateau (``slope ~ 0``) or wash-out (``slope < 0``) over ~600 s."""
    return (1.0 - np.exp(-t / tau_in)) * (1.0 + slope * t / 600.0)


def _curve_slow(t: np.ndarray) -> np.ndarray:
    """Type I: slow persistent enhancement (background parenchyma, muscle, skin)."""
    return 1.0 - np.exp(-t / 360.0)


def _curve_blood(t: np.ndarray) -> np.ndarray:
    """Blood pool: first pass peak at the first post-contrast phase, then partial wash-out."""
    return (1.0 - np.exp(-t / 10.0)) * (0.45 + 0.55 * np.exp(-t / 180.0))


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


# ----------------------------------------------------------------------------------------------
# Blobs: masses and lymph nodes (soft-edged, with their own enhancement curve)
# ----------------------------------------------------------------------------------------------
@dataclass
class _Blob:
    box: Tuple[slice, slice, slice]
    member: np.ndarray  # [z, y, x] float32 partial-volume membership 0..1 (label: >= 0.5)
    s0: float
    amp: np.ndarray  # [z, y, x] float32 enhancement amplitude (MR units)
    curve: np.ndarray  # [P] normalised enhancement curve


def _shape_params(rng, kind: str, diameter: float) -> Dict[str, object]:
    """Random shape of a blob of nominal ``diameter`` (mm): rotated ellipsoid or lobulated."""
    radius = diameter / 2
    if kind == "ellipsoid":
        q = np.sort(rng.uniform(0.65, 1.0, size=2))
        return {"kind": kind, "rot": _rand_rotation(rng), "semi": radius * np.array([1.0, *q])}
    spheres = [(np.zeros(3), 0.7 * radius)]
    for _ in range(rng.integers(3, 6)):
        v = rng.standard_normal(3)
        rk = radius * rng.uniform(0.35, 0.55)
        spheres.append((v / np.linalg.norm(v) * (radius - rk), rk))
    return {"kind": kind, "spheres": spheres}


def _blob_sdf(grid: _Grid, box, centre, shape: Dict[str, object]) -> np.ndarray:
    """Approximate signed distance (mm, < 0 inside) of a blob on a box."""
    z, y, x = grid.coords(box)
    d = (x - centre[0], y - centre[1], z - centre[2])
    if shape["kind"] == "ellipsoid":
        rot, semi = shape["rot"], shape["semi"]
        q = [rot[0, i] * d[0] + rot[1, i] * d[1] + rot[2, i] * d[2] for i in range(3)]
        rho = np.sqrt(sum((q[i] / semi[i]) ** 2 for i in range(3)))
        grad = np.sqrt(sum(q[i] ** 2 / semi[i] ** 4 for i in range(3))) / np.maximum(rho, 1e-6)
        return (rho - 1.0) / np.maximum(grad, 1e-6)
    sdf = None
    for c, r in shape["spheres"]:
        s = np.sqrt((d[0] - c[0]) ** 2 + (d[1] - c[1]) ** 2 + (d[2] - c[2]) ** 2) - r
        sdf = s if sdf is None else np.minimum(sdf, s)
    return sdf


def _blob_box(grid: _Grid, centre, radius: float):
    """Box around a blob with a 2-voxel margin, or None if it would leave the volume."""
    half = [radius + 2.0 * grid.spacing[i] for i in range(3)]
    box = grid.box(centre, half)
    for i, sl in zip((2, 1, 0), box):
        lo, hi = centre[i] - half[i], centre[i] + half[i]
        o, d, n = grid.origin[i], grid.spacing[i], grid.shape[2 - i]
        if lo < o + d or hi > o + (n - 2) * d:
            return None
    return box


def _membership(grid: _Grid, sdf: np.ndarray) -> np.ndarray:
    """Partial-volume membership from a signed distance: a one-voxel (in-plane) soft edge."""
    return np.clip(0.5 - sdf / grid.spacing[0], 0.0, 1.0).astype(np.float32)


def _fits(grid, box, label, allowed: np.ndarray) -> bool:
    """Whether ``label`` (dilated by one voxel) lies entirely in ``allowed`` on the box."""
    if not label.any():
        return False
    grown = ndimage.binary_dilation(label, iterations=1)
    return bool(np.all(allowed[box][grown]))


def _sample_diameter(rng: np.random.Generator) -> float:
    """Skewed towards small masses: median ~19 mm within the study's 10.7-66.9 mm range."""
    u = rng.uniform() ** 1.8
    return float(_MIN_DIAMETER_MM * (_MAX_DIAMETER_MM / _MIN_DIAMETER_MM) ** u)


def _lesion_kinetics(rng, s0: float, times: np.ndarray) -> Tuple[Dict[str, object], np.ndarray]:
    """Type II (plateau) or III (wash-out) kinetics; returns the description and the curve."""
    washout = rng.uniform() < 0.55
    tau = rng.uniform(20, 45)
    slope = rng.uniform(-0.40, -0.18) if washout else rng.uniform(-0.06, 0.06)
    amp = rng.uniform(450, 900)
    curve = _curve_wash(times, tau, slope)
    kin = {
        "curve_type": "III" if washout else "II",
        "name": "washout" if washout else "plateau",
        "wash_in_tau_s": round(float(tau), 2),
        "late_slope": round(float(slope), 4),
        "peak_enhancement": round(float(amp), 1),
        "relative_enhancement": [round(float(amp * c / s0), 3) for c in curve],
    }
    return kin, curve.astype(np.float32)


def _try_lesion(rng, grid, breast, diameter, shape_kind, allowed):
    """One placement attempt inside ``breast``; returns (centre, diameter, shape, box, label)."""
    u = rng.uniform(-0.7, 0.7, size=3)
    centre = (
        breast.xc + breast.ax * u[0],
        breast.yb - breast.ay * rng.uniform(0.15, 0.75),
        breast.zc + breast.az * u[2],
    )
    while diameter >= _MIN_DIAMETER_MM:
        shape = _shape_params(rng, shape_kind, diameter)
        box = _blob_box(grid, centre, diameter / 2)
        if box is not None:
            sdf = _blob_sdf(grid, box, centre, shape)
            label = largest_component(sdf <= 0)
            if _fits(grid, box, label, allowed):
                return centre, diameter, shape, box, sdf, label
        diameter *= 0.85  # clip to fit inside the breast
    return None


def _place_lesions(rng, grid, breasts, tissue, mask, times, fields, fgt_s0):
    """Sample 0-3 non-touching masses fully inside breast tissue (not skin, not the edge)."""
    n = int(rng.choice(len(_LESION_COUNT_PROBS), p=_LESION_COUNT_PROBS))
    vols = np.array([b.ax * b.ay * b.az for b in breasts])
    allowed = (mask > 0) & ((tissue == FAT) | (tissue == FGT))
    placed = []
    for _ in range(n):
        for _attempt in range(40):
            breast = breasts[int(rng.choice(len(breasts), p=vols / vols.sum()))]
            kind = "lobulated" if rng.uniform() < 0.4 else "ellipsoid"
            got = _try_lesion(rng, grid, breast, _sample_diameter(rng), kind, allowed)
            if got is not None:
                break
        else:
            logger.debug("could not place mass %d; case keeps %d", len(placed) + 1, len(placed))
            break
        centre, diameter, shape, box, sdf, label = got
        allowed[box][ndimage.binary_dilation(label, iterations=2)] = False
        s0 = float(fgt_s0 * rng.uniform(0.85, 1.05))
        kin, curve = _lesion_kinetics(rng, s0, times)
        member = _membership(grid, sdf) * label
        hetero = 1.0 + 0.2 * fields["fine"].sample_box(grid, box)
        rim = diameter > 20 and rng.uniform() < 0.35
        if rim:  # rim enhancement: the centre enhances less
            hetero *= np.clip(0.45 + 0.55 * (1.0 + sdf / (diameter / 2)), 0.45, 1.0)
        kin["rim"] = bool(rim)
        amp = kin["peak_enhancement"] * member * np.clip(hetero, 0.3, None)
        blob = _Blob(box, member, s0, amp.astype(np.float32), curve)
        placed.append((blob, label, diameter, shape["kind"], breast.side, kin))
    return placed


def _place_nodes(rng, grid, tissue, mask, depth2d, times) -> List[_Blob]:
    """1-3 axillary lymph nodes per side: 7-18 mm, lateral in the axillary fat, wash-out kinetics.

    They sit outside the breast mask and enhance like masses: the mask has to remove them.
    """
    x = grid.axis(0)
    region2d = (depth2d < -3) & (np.abs(x)[None, :] > 95)
    allowed = (tissue == FAT) & (mask == 0) & region2d[None]
    nodes = []
    for half in (slice(0, grid.shape[2] // 2), slice(grid.shape[2] // 2, grid.shape[2])):
        zyx = np.argwhere(allowed[:, :, half])
        zyx[:, 2] += half.start
        for _ in range(int(rng.integers(1, 4))):
            blob = _try_node(rng, grid, allowed, zyx, times)
            if blob is not None:
                nodes.append(blob)
                grown = ndimage.binary_dilation(blob.member >= 0.5, iterations=2)
                allowed[blob.box][grown] = False
    return nodes


def _try_node(rng, grid, allowed, zyx: np.ndarray, times) -> Optional[_Blob]:
    """Fit one node at a random candidate voxel ``zyx`` (30 attempts)."""
    for _ in range(30 if len(zyx) else 0):
        k, j, i = zyx[rng.integers(len(zyx))]
        centre = tuple(float(grid.origin[a] + grid.spacing[a] * v) for a, v in enumerate((i, j, k)))
        diameter = 7.0 + 11.0 * rng.uniform() ** 1.5
        shape = _shape_params(rng, "ellipsoid", diameter)
        box = _blob_box(grid, centre, diameter / 2)
        if box is None:
            continue
        sdf = _blob_sdf(grid, box, centre, shape)
        label = largest_component(sdf <= 0)
        if _fits(grid, box, label, allowed):
            member = _membership(grid, sdf) * label
            curve = _curve_wash(times, rng.uniform(20, 35), rng.uniform(-0.4, -0.15))
            amp = (rng.uniform(550, 950) * member).astype(np.float32)
            return _Blob(box, member, 300.0, amp, curve.astype(np.float32))
    return None


# ----------------------------------------------------------------------------------------------
# Signal: static maps, bias field, phases
# ----------------------------------------------------------------------------------------------
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
        bpe = br.bpe * lut["s0"][FGT] * np.clip(1.0 + 0.6 * paint.bpe_mod, 0.1, 2.5)
        slow[paint.box][paint.fgt] = bpe[paint.fgt]
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


# ----------------------------------------------------------------------------------------------
# make_case
# ----------------------------------------------------------------------------------------------
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


def _lesion_record(grid, labels, index, box, diameter, shape, side, kin) -> Lesion:
    sub = labels[box[2] : box[5], box[1] : box[4], box[0] : box[3]] == index
    cz, cy, cx = ndimage.center_of_mass(sub)
    vox = (cx + box[0], cy + box[1], cz + box[2])
    mm = tuple(grid.origin[i] + grid.spacing[i] * vox[i] for i in range(3))
    ext = tuple((box[i + 3] - box[i]) * grid.spacing[i] for i in range(3))
    vol = float(sub.sum()) * float(np.prod(grid.spacing)) / 1000.0
    return Lesion(
        label=index,
        centre_voxel=tuple(round(float(v), 3) for v in vox),
        centre_mm=tuple(round(float(v), 3) for v in mm),
        diameter_mm=round(float(diameter), 2),
        extent_mm=tuple(round(float(v), 2) for v in ext),
        shape=shape,
        side=side,
        kinetics=kin,
        box=tuple(int(v) for v in box),
        volume_ml=round(vol, 4),
    )


def make_case(
    case_index: int,
    seed: int,
    matrix: int = 320,
    slices: int = 96,
    fov_mm: float = 320.0,
    num_phases: int = 9,
    phase_interval_s: float = 75.0,
) -> PhantomCase:
    """Generate one synthetic DCE-MRI case (deterministic in ``seed`` and ``case_index``).

    Args:
        case_index: index in the cohort (case id ``PH{case_index:04d}``); with ``seed`` it seeds
            ``np.random.SeedSequence([seed, case_index])``, so cases are independent.
        seed: cohort seed (non-negative integer).
        matrix: in-plane matrix (X = Y = matrix); pixel size is ``fov_mm / matrix`` mm.
        slices: number of axial slices; slice thickness is ``134.4 / slices`` mm (96 x 1.4 mm slab).
        fov_mm: in-plane field of view (mm).
        num_phases: 1 pre-contrast + ``num_phases - 1`` post-contrast phases.
        phase_interval_s: time between phases (s), see :func:`phase_times`.

    Returns:
        PhantomCase with ``phases [P, Z, Y, X]`` float32, masks ``[Z, Y, X]`` uint8.
    """
    _check_params(seed, matrix, slices, fov_mm, num_phases, phase_interval_s)
    _check_int("case_index", case_index, 0, 999_999)
    grid = _make_grid(matrix, slices, float(fov_mm))
    seeds = np.random.SeedSequence([seed, case_index]).spawn(5)
    rng_anat, rng_tex, rng_les, rng_node, rng_noise = (np.random.default_rng(s) for s in seeds)
    times = np.asarray(phase_times(num_phases, phase_interval_s), np.float64)
    th = _sample_thorax(rng_anat)
    breasts = _sample_breasts(rng_anat, th, grid.fov_mm)
    lut = _sample_intensities(rng_anat)
    sigma = float(rng_anat.uniform(9, 15) * lut["s0"][FAT] / 110.0)
    fields = {name: _Field(rng_tex, grid, c) for name, c in (("fine", 2.5), ("coarse", 9.0))}
    fields["bias"] = _Field(rng_tex, grid, 80.0)
    tissue, mask, paints, depth2d, anat = _build_anatomy(grid, rng_anat, th, breasts, fields)
    placed = _place_lesions(rng_les, grid, breasts, tissue, mask, times, fields, lut["s0"][FGT])
    nodes = _place_nodes(rng_node, grid, tissue, mask, depth2d, times)
    labels = np.zeros(grid.shape, np.uint8)
    for i, (blob, label, *_rest) in enumerate(placed, start=1):
        labels[blob.box][label] = i
        tissue[blob.box][label] = MASS
    for blob in nodes:
        tissue[blob.box][blob.member >= 0.5] = NODE
    blobs = [p[0] for p in placed] + nodes
    bias = _bias_field(rng_anat, grid, breasts, fields["bias"])
    st = _static_maps(tissue, lut, paints, breasts, blobs, bias, times)
    del bias
    phases = _render_phases(st, blobs, times, sigma, rng_noise)
    boxes = label_boxes(labels)
    lesions = [
        _lesion_record(grid, labels, i, boxes[i], d, shape, side, kin)
        for i, (_b, _l, d, shape, side, kin) in enumerate(placed, start=1)
    ]
    info = {
        "breasts": [
            {
                "side": br.side,
                "width_mm": round(2 * br.ax, 1),
                "depth_mm": round(br.ay, 1),
                "height_mm": round(2 * br.az, 1),
                "fibroglandular_fraction": round(br.density, 3),
                "bpe": round(br.bpe, 3),
            }
            for br in breasts
        ],
        "lymph_nodes": len(nodes),
        "vessels": anat["vessels"],
        "heart_centre_mm": [round(anat["heart"][k], 1) for k in ("x", "y", "z")],
        "noise_sigma": round(sigma, 2),
    }
    return PhantomCase(
        case_id=case_id_for(case_index),
        phases=phases,
        breast_mask=mask.astype(np.uint8),
        lesion_labels=labels,
        tissue=tissue,
        spacing=grid.spacing,
        origin=grid.origin,
        phase_times_s=tuple(float(t) for t in times),
        lesions=lesions,
        info=info,
    )


# ----------------------------------------------------------------------------------------------
# Writing: one case (atomic), the cohort (resumable)
# ----------------------------------------------------------------------------------------------
def _write_nifti(array: np.ndarray, path: str, spacing, origin) -> None:
    """Write a ``[Z, Y, X]`` array as NIfTI (ITK's gzip header has mtime 0: repeatable bytes)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(v) for v in spacing))
    img.SetOrigin(tuple(float(v) for v in origin))
    sitk.WriteImage(img, path, True)


def _to_int16(phase: np.ndarray) -> np.ndarray:
    """Round and clip float signal to int16 (the stored format; arbitrary units, 0..32767)."""
    return np.clip(np.rint(phase), 0, 32767).astype(np.int16)


def _case_record(case: PhantomCase, case_index: int) -> Dict[str, object]:
    """JSON-ready description of a case (phantom.json ``cases`` entry)."""
    return {
        "case_id": case.case_id,
        "index": case_index,
        "num_lesions": len(case.lesions),
        "lesions": [asdict(lesion) for lesion in case.lesions],
        "info": case.info,
    }


def _write_text(path: str, text: str, tmp_dir: Optional[str] = None) -> None:
    """Write UTF-8 text with Unix line ends atomically (the same bytes on every platform)."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")), mode="wb", tmp_dir=tmp_dir)


def _case_paths(out_dir: str, case_id: str) -> Dict[str, str]:
    return {
        "images": os.path.join(out_dir, "IMAGES", case_id),
        "mask": os.path.join(out_dir, "MASKS", f"{case_id}.nii.gz"),
        "labels": os.path.join(out_dir, "LABELS", f"{case_id}.nii.gz"),
        "record": os.path.join(out_dir, _STATE_DIR, "cases", f"{case_id}.json"),
    }


def write_case(
    case: PhantomCase, out_dir: str, case_index: Optional[int] = None
) -> Dict[str, object]:
    """Write one case into a cohort folder, atomically (temp dir, then renames).

    Files: ``IMAGES/<id>/<id>_<p:04d>.nii.gz`` (int16), ``MASKS/<id>.nii.gz`` and
    ``LABELS/<id>.nii.gz`` (uint8), all with the case's spacing and origin and identity direction,
    plus a small record in ``.phantom/cases/<id>.json`` written last (it marks the case finished).

    Args:
        case: the case from :func:`make_case`.
        out_dir: cohort folder (created if needed).
        case_index: cohort index stored in the record (default: parsed from the case id).

    Returns:
        The case record (as in phantom.json).
    """
    cid = case.case_id
    index = int(cid[2:]) if case_index is None else case_index
    paths = _case_paths(out_dir, cid)
    tmp_dir = os.path.join(out_dir, _STATE_DIR, "tmp")  # write_cohort removes it at the end
    with contextlib.ExitStack() as stack:
        images = stack.enter_context(atomic_folder(paths["images"], tmp_dir))
        for p, phase in enumerate(case.phases):
            path = os.path.join(images, f"{cid}_{p:04d}.nii.gz")
            _write_nifti(_to_int16(phase), path, case.spacing, case.origin)
        for key, volume in (("mask", case.breast_mask), ("labels", case.lesion_labels)):
            tmp = stack.enter_context(atomic_path(paths[key], tmp_dir))
            _write_nifti(volume, tmp, case.spacing, case.origin)
        if os.path.exists(paths["record"]):  # unfinished until the record is back
            os.remove(paths["record"])
    record = _case_record(case, index)
    _write_text(paths["record"], json.dumps(record, indent=1), tmp_dir)
    return record


def _case_done(out_dir: str, case_id: str, num_phases: int) -> bool:
    """A case is finished when its record exists (written last) and all its files exist."""
    paths = _case_paths(out_dir, case_id)
    images = [os.path.join(paths["images"], f"{case_id}_{p:04d}.nii.gz") for p in range(num_phases)]
    files = [paths["record"], paths["mask"], paths["labels"], *images]
    return all(os.path.isfile(f) for f in files)


def _cohort_params(num_cases, seed, matrix, slices, fov_mm, num_phases, phase_interval_s) -> Dict:
    _check_int("num_cases", num_cases, 1, 100_000)
    _check_params(seed, matrix, slices, fov_mm, num_phases, phase_interval_s)
    return {
        "generator": __name__,
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "num_cases": int(num_cases),
        "matrix": int(matrix),
        "slices": int(slices),
        "fov_mm": float(fov_mm),
        "num_phases": int(num_phases),
        "phase_interval_s": float(phase_interval_s),
    }


def _prepare_out_dir(out_dir: str, params: Dict[str, object]) -> None:
    """Create ``out_dir`` or check that it holds a cohort with the same parameters (resume)."""
    state = os.path.join(out_dir, _STATE_DIR, "params.json")
    if os.path.isfile(state):
        with open(state, encoding="utf-8") as f:
            old = json.load(f)
        diff = [f"{k}={old.get(k)!r} (now {v!r})" for k, v in params.items() if old.get(k) != v]
        if diff:
            raise ValueError(
                f"{out_dir} holds a phantom cohort made with other parameters: {', '.join(diff)}; "
                "use a new output folder or delete it"
            )
        return
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ValueError(f"{out_dir} exists and is not an empty folder or a phantom cohort")
    os.makedirs(os.path.join(out_dir, _STATE_DIR), exist_ok=True)
    _write_text(state, json.dumps(params, indent=1))


def _generate(index: int, out_dir: str, params: Dict[str, object]) -> Dict[str, object]:
    """Worker job: make and write one case; returns its record."""
    case = make_case(
        index,
        params["seed"],
        matrix=params["matrix"],
        slices=params["slices"],
        fov_mm=params["fov_mm"],
        num_phases=params["num_phases"],
        phase_interval_s=params["phase_interval_s"],
    )
    record = write_case(case, out_dir, index)
    logger.info("%s: %d mass(es)", case.case_id, len(case.lesions))
    return record


def run_case_jobs(
    job: Callable[[int, str, Dict[str, object]], Dict[str, object]],
    todo: Sequence[int],
    out_dir: str,
    params: Dict[str, object],
    workers: int,
    done: Callable[[Dict[str, object]], None],
) -> None:
    """Run ``job(index, out_dir, params)`` for each case index, serially or in ``workers``
    processes, calling ``done(record)`` as each finishes (every phantom layout writes this way).

    The first failing case stops the run (:func:`~breast_d2.parallel.run_pool`); no progress bar
    here: the callers' ``progress`` callback drives the tool's bar, which counts kept cases too.
    """
    run_pool(functools.partial(job, out_dir=out_dir, params=params), todo, workers,
             on_result=lambda index, record: done(record), progress=False)  # fmt: skip


def _boxes_csv(records: Sequence[Dict[str, object]]) -> str:
    """Duke Annotation_Boxes CSV text: 1-based inclusive rows (y), columns (x), slices (z)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(BOXES_CSV_HEADER)
    for rec in records:
        for lesion in rec["lesions"]:
            x0, y0, z0, x1, y1, z1 = lesion["box"]
            writer.writerow([rec["case_id"], y0 + 1, y1, x0 + 1, x1, z0 + 1, z1])
    return buf.getvalue()


def _phantom_json(params: Dict[str, object], records: Sequence[Dict[str, object]]) -> str:
    grid = _make_grid(params["matrix"], params["slices"], params["fov_mm"])
    doc = dict(params)
    doc.update(
        {
            "shape": [grid.shape[2], grid.shape[1], grid.shape[0]],
            "spacing": list(grid.spacing),
            "origin": list(grid.origin),
            "direction": "identity (LPS; x = column, y = row, z = slice)",
            "phase_times_s": list(phase_times(params["num_phases"], params["phase_interval_s"])),
            "sequence": "axial prone fat-suppressed T1 GRE (simulated), 1 pre + post-contrast",
            "image_dtype": "int16, arbitrary MR units",
            "box_convention": "[x0, y0, z0, x1, y1, z1] half-open voxel indices",
            "tissues": list(TISSUES),
            "cases": list(records),
        }
    )
    return json.dumps(doc, indent=1)


def write_cohort(
    out_dir: str,
    num_cases: int,
    seed: int,
    matrix: int = 320,
    slices: int = 96,
    fov_mm: float = 320.0,
    num_phases: int = 9,
    phase_interval_s: float = 75.0,
    workers: int = 1,
    progress: Optional[Callable[[str, bool], None]] = None,
) -> CohortSummary:
    """Generate (or finish) a phantom cohort in the input layout of docs/DATA_FORMAT.md.

    Cases are independent (``SeedSequence([seed, index])``), so the bytes do not depend on
    ``workers``. Finished cases of an interrupted or repeated run with the same parameters are
    kept; ``boxes.csv`` and ``phantom.json`` are (re)written atomically at the end.

    Args:
        out_dir: cohort folder; must be new, empty, or a cohort made with the same parameters.
        num_cases: number of cases ``PH0000 .. PH{num_cases-1:04d}``.
        seed: cohort seed.
        matrix, slices, fov_mm, num_phases, phase_interval_s: see :func:`make_case`.
        workers: processes generating cases in parallel.
        progress: called as ``progress(case_id, generated)`` after each case (``generated`` is
            False for a case kept from an earlier run).

    Returns:
        CohortSummary.

    Raises:
        ValueError: bad arguments, or ``out_dir`` holds something else.
    """
    params = _cohort_params(num_cases, seed, matrix, slices, fov_mm, num_phases, phase_interval_s)
    _check_int("workers", workers, 1, 256)
    out_dir = os.path.abspath(out_dir)
    _prepare_out_dir(out_dir, params)
    records: Dict[str, Dict[str, object]] = {}
    todo = []
    for index in range(num_cases):
        cid = case_id_for(index)
        if _case_done(out_dir, cid, num_phases):
            with open(_case_paths(out_dir, cid)["record"], encoding="utf-8") as f:
                records[cid] = json.load(f)
            if progress is not None:
                progress(cid, False)
        else:
            todo.append(index)
    logger.info("phantom cohort %s: %d to generate, %d kept", out_dir, len(todo), len(records))

    def done(record: Dict[str, object]) -> None:
        records[record["case_id"]] = record
        if progress is not None:
            progress(record["case_id"], True)

    run_case_jobs(_generate, todo, out_dir, params, workers, done)
    ordered = [records[case_id_for(i)] for i in range(num_cases)]
    _write_text(os.path.join(out_dir, "boxes.csv"), _boxes_csv(ordered))
    _write_text(os.path.join(out_dir, "phantom.json"), _phantom_json(params, ordered))
    shutil.rmtree(os.path.join(out_dir, _STATE_DIR, "tmp"), ignore_errors=True)
    return CohortSummary(
        out_dir=out_dir,
        num_cases=num_cases,
        generated=len(todo),
        skipped=num_cases - len(todo),
        num_lesions=sum(r["num_lesions"] for r in ordered),
        cases_without_lesions=sum(1 for r in ordered if r["num_lesions"] == 0),
    )
