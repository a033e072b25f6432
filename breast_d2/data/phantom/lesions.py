"""Phantom findings: masses (the targets) and axillary lymph nodes (distractors).

Both are soft-edged blobs (partial-volume membership, their own enhancement curve) placed where
they fit: masses inside breast fat or fibroglandular tissue, nodes in the axillary fat outside the
breast mask. :class:`Lesion` is the record of a mass that :func:`make_case` returns.
"""

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage

from ..boxes import largest_component
from .anatomy import FAT, FGT, _Grid
from .kinetics import _curve_wash, _lesion_kinetics

__all__ = ["Lesion"]

logger = logging.getLogger(__name__)

_MIN_DIAMETER_MM, _MAX_DIAMETER_MM = 10.7, 66.9  # range of the reference study
_LESION_COUNT_PROBS = (0.18, 0.45, 0.25, 0.12)  # P(0..3 masses per case)
# Jansen et al., JMRI 2011 (doi 10.1002/jmri.22567): 552 MRI masses, 396 malignant, 156 benign.
_P_BENIGN = 156 / 552
_MARGINS = ("smooth", "irregular", "spiculated")
_SHAPE_OF_MARGIN = {"smooth": "ellipsoid", "irregular": "lobulated", "spiculated": "spiculated"}
# "High-spatial-resolution MR imaging of focal breast masses" (49 malignant, 14 benign masses):
# malignant irregular 47 %, spiculated 43 % (rest smooth / lobulated); benign 93 % smooth or
# lobulated (split evenly here between smooth and our lobulated "irregular").
_MARGIN_PROBS = {False: (0.10, 0.47, 0.43), True: (0.50, 0.43, 0.07)}  # key: benign
_INTERNALS = ("homogeneous", "heterogeneous", "rim")
# No published frequencies found: heterogeneous and rim enhancement are the malignant descriptors,
# homogeneous the benign one (BI-RADS MRI lexicon). Rim only for masses > 20 mm.
_INTERNAL_PROBS = {False: (0.25, 0.45, 0.30), True: (0.65, 0.30, 0.05)}
_SPICULE_COUNT = (4, 10)  # spicules per spiculated mass (inclusive)
_SPICULE_LENGTH_MM = (3.0, 12.0)
_SPICULE_THICKNESS_MM = (1.0, 2.0)


@dataclass
class Lesion:
    """One synthetic mass.

    Attributes:
        label: value of the mass in ``PhantomCase.lesion_labels`` (1-based).
        centre_voxel: label centroid ``(x, y, z)`` in voxel indices (float).
        centre_mm: the same centroid in physical LPS coordinates (mm).
        diameter_mm: nominal diameter (mm), within 10.7-66.9 after clipping to fit the breast.
        extent_mm: measured extent of the label along ``(x, y, z)`` (mm).
        shape: ``"ellipsoid"``, ``"lobulated"`` or ``"spiculated"`` (kept for compatibility;
            ``margin`` says the same in BI-RADS words).
        side: ``"left"`` or ``"right"`` breast (patient side; left is on the image right).
        kinetics: curve type (``"I"`` persistent / ``"II"`` plateau / ``"III"`` wash-out),
            ``benign`` (bool), wash-in time constant (s), late slope, peak enhancement (MR units),
            rim flag and the relative enhancement per phase ``(S_p - S_0) / S_0`` of the
            noise-free curve.
        box: ``[x0, y0, z0, x1, y1, z1]``, half-open voxel indices of the label extent.
        volume_ml: label volume (ml).
        margin: ``"smooth"``, ``"irregular"`` or ``"spiculated"``.
        internal: internal enhancement, ``"homogeneous"``, ``"heterogeneous"`` or ``"rim"``.
        lesion_to_parenchyma_post1: mean noise-free relative enhancement of the label at phase 1
            over the mean one of the enhancing fibroglandular tissue of its breast (measured).
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
    margin: str = "smooth"
    internal: str = "homogeneous"
    lesion_to_parenchyma_post1: float = 0.0


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


def _shape_params(rng, kind: str, diameter: float) -> Dict[str, object]:
    """Random shape of a blob of nominal ``diameter`` (mm): rotated ellipsoid, lobulated or
    spiculated (an ellipsoid core plus thin radiating spicules)."""
    radius = diameter / 2
    if kind == "ellipsoid":
        q = np.sort(rng.uniform(0.65, 1.0, size=2))
        return {"kind": kind, "rot": _rand_rotation(rng), "semi": radius * np.array([1.0, *q])}
    if kind == "spiculated":
        return _spiculated_params(rng, radius)
    spheres = [(np.zeros(3), 0.7 * radius)]
    for _ in range(rng.integers(3, 6)):
        v = rng.standard_normal(3)
        rk = radius * rng.uniform(0.35, 0.55)
        spheres.append((v / np.linalg.norm(v) * (radius - rk), rk))
    return {"kind": kind, "spheres": spheres}


def _spiculated_params(rng, radius: float) -> Dict[str, object]:
    """Ellipsoid core of semi-major axis ``radius`` plus 4-10 tapered spicules (segments from
    inside the core outwards, 3-12 mm beyond its surface, 1-2 mm thick at the base)."""
    q = np.sort(rng.uniform(0.65, 1.0, size=2))  # the core: as a smooth (ellipsoid) mass
    rot, semi = _rand_rotation(rng), radius * np.array([1.0, *q])
    spicules = []
    for _ in range(int(rng.integers(_SPICULE_COUNT[0], _SPICULE_COUNT[1] + 1))):
        v = rng.standard_normal(3)
        v /= np.linalg.norm(v)
        local = rot.T @ v
        r_surf = 1.0 / np.sqrt(np.sum((local / semi) ** 2))  # core radius along v (mm)
        length = rng.uniform(*_SPICULE_LENGTH_MM)
        half_thick = 0.5 * rng.uniform(*_SPICULE_THICKNESS_MM)
        spicules.append((v * 0.6 * r_surf, v * (r_surf + length), half_thick))
    reach = radius + _SPICULE_LENGTH_MM[1]
    return {"kind": "spiculated", "rot": rot, "semi": semi, "spicules": spicules, "reach": reach}


def _ellipsoid_sdf(d, rot: np.ndarray, semi: np.ndarray) -> np.ndarray:
    """First-order signed distance (mm) to a rotated ellipsoid; ``d`` = offsets ``(x, y, z)``."""
    q = [rot[0, i] * d[0] + rot[1, i] * d[1] + rot[2, i] * d[2] for i in range(3)]
    rho = np.sqrt(sum((q[i] / semi[i]) ** 2 for i in range(3)))
    grad = np.sqrt(sum(q[i] ** 2 / semi[i] ** 4 for i in range(3))) / np.maximum(rho, 1e-6)
    return (rho - 1.0) / np.maximum(grad, 1e-6)


def _spicule_sdf(d, a: np.ndarray, b: np.ndarray, half_thick: float) -> np.ndarray:
    """Signed distance (mm) to a segment ``a -> b`` whose radius tapers to 50 % at the tip."""
    ab = b - a
    pa = [d[i] - a[i] for i in range(3)]
    h = np.clip(sum(pa[i] * ab[i] for i in range(3)) / float(ab @ ab), 0.0, 1.0)
    dist = np.sqrt(sum((pa[i] - h * ab[i]) ** 2 for i in range(3)))
    return dist - half_thick * (1.0 - 0.5 * h)


def _blob_sdf(grid: _Grid, box, centre, shape: Dict[str, object]) -> np.ndarray:
    """Approximate signed distance (mm, < 0 inside) of a blob on a box."""
    z, y, x = grid.coords(box)
    d = (x - centre[0], y - centre[1], z - centre[2])
    if shape["kind"] == "ellipsoid":
        return _ellipsoid_sdf(d, shape["rot"], shape["semi"])
    if shape["kind"] == "spiculated":
        sdf = _ellipsoid_sdf(d, shape["rot"], shape["semi"])
        for a, b, half_thick in shape["spicules"]:
            sdf = np.minimum(sdf, _spicule_sdf(d, a, b, half_thick))
        return sdf
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


def _label_extent_check(grid: _Grid, label: np.ndarray) -> int:
    """-1 if the label spans < 2 voxels on an axis or its longest extent (box voxels x spacing)
    is under the study's 10.7 mm, +1 if that extent is over 66.9 mm, 0 if it is in range."""
    spans = []
    for axis in range(3):  # label is [z, y, x]
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(label.any(axis=other))
        spans.append(int(idx[-1] - idx[0] + 1) if idx.size else 0)
    longest = max(n * grid.spacing[2 - a] for a, n in enumerate(spans))
    if min(spans) < 2 or longest < _MIN_DIAMETER_MM:
        return -1
    return 1 if longest > _MAX_DIAMETER_MM else 0


def _try_lesion(rng, grid, breast, diameter, shape_kind, allowed):
    """One placement attempt inside ``breast``; returns (centre, diameter, shape, box, label).

    The diameter shrinks until the mass fits the breast and its label extent is at most 66.9 mm;
    a label under 10.7 mm (or under 2 voxels on an axis) fails the attempt (None): the caller
    draws again rather than keep it.
    """
    u = rng.uniform(-0.7, 0.7, size=3)
    centre = (
        breast.xc + breast.ax * u[0],
        breast.yb - breast.ay * rng.uniform(0.15, 0.75),
        breast.zc + breast.az * u[2],
    )
    while diameter >= _MIN_DIAMETER_MM:
        shape = _shape_params(rng, shape_kind, diameter)
        box = _blob_box(grid, centre, shape.get("reach", diameter / 2))
        if box is not None:
            sdf = _blob_sdf(grid, box, centre, shape)
            label = largest_component(sdf <= 0)
            check = _label_extent_check(grid, label) if label.any() else -1
            if check < 0:
                return None
            if check == 0 and _fits(grid, box, label, allowed):
                return centre, diameter, shape, box, sdf, label
        diameter *= 0.85  # clip to fit inside the breast
    return None


def _internal_enhancement(internal: str, grid, box, sdf, diameter, fields) -> np.ndarray:
    """``[z, y, x]`` relative enhancement weight of a mass (1 = the curve's peak amplitude).

    Homogeneous: +-8 % texture; heterogeneous: a strong fine texture (+-55 %, floor 15 %); rim:
    the centre enhances down to 30 % of the periphery, with a mild texture.
    """
    tex = fields["fine"].sample_box(grid, box)
    if internal == "heterogeneous":
        return np.clip(1.0 + 0.55 * tex, 0.15, None)
    if internal == "rim":
        depth = np.clip(-sdf / (diameter / 2), 0.0, 1.0)  # 0 at the margin .. 1 at the centre
        return np.clip(1.0 + 0.1 * tex, 0.3, None) * (1.0 - 0.7 * np.clip(depth / 0.5, 0, 1))
    return np.clip(1.0 + 0.08 * tex, 0.3, None)


def _place_lesions(rng, grid, breasts, tissue, mask, times, fields, fgt_s0):
    """Sample 0-3 non-touching masses fully inside breast tissue (not skin, not the edge)."""
    n = int(rng.choice(len(_LESION_COUNT_PROBS), p=_LESION_COUNT_PROBS))
    vols = np.array([b.ax * b.ay * b.az for b in breasts])
    allowed = (mask > 0) & ((tissue == FAT) | (tissue == FGT))
    placed = []
    for _ in range(n):
        benign = bool(rng.uniform() < _P_BENIGN)
        margin = _MARGINS[int(rng.choice(3, p=_MARGIN_PROBS[benign]))]
        for _attempt in range(40):
            breast = breasts[int(rng.choice(len(breasts), p=vols / vols.sum()))]
            kind = _SHAPE_OF_MARGIN[margin]
            got = _try_lesion(rng, grid, breast, _sample_diameter(rng), kind, allowed)
            if got is not None:
                break
        else:
            logger.debug("could not place mass %d; case keeps %d", len(placed) + 1, len(placed))
            break
        centre, diameter, shape, box, sdf, label = got
        allowed[box][ndimage.binary_dilation(label, iterations=2)] = False
        s0 = float(fgt_s0 * rng.uniform(0.85, 1.05))
        kin, curve = _lesion_kinetics(rng, s0, times, benign)
        internal = _INTERNALS[int(rng.choice(3, p=_INTERNAL_PROBS[benign]))]
        if internal == "rim" and diameter <= 20:  # rim enhancement needs a visible centre
            internal = "homogeneous" if benign else "heterogeneous"
        kin["rim"] = internal == "rim"
        member = _membership(grid, sdf) * label
        weight = _internal_enhancement(internal, grid, box, sdf, diameter, fields)
        amp = kin["peak_enhancement"] * member * weight
        blob = _Blob(box, member, s0, amp.astype(np.float32), curve)
        look = {"margin": margin, "internal": internal}
        placed.append((blob, label, diameter, shape["kind"], breast.side, kin, look))
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


def _lesion_record(grid, labels, index, box, diameter, shape, side, kin, look, ratio) -> Lesion:
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
        margin=look["margin"],
        internal=look["internal"],
        lesion_to_parenchyma_post1=float(ratio),
    )
