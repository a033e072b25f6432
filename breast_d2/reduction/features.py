"""Features of 3D candidates for the second-stage false-positive reducer.

One row per candidate (a ``candidates.json`` entry), float64, NaN where a value cannot be
measured (LightGBM treats NaN as missing). Boxes are half-open voxel indices
``[x0, y0, z0, x1, y1, z1]`` (docs/DATA_FORMAT.md); spacings ``(sx, sy, sz)`` mm from
``cases.json``. The columns, in order (:func:`feature_names`):

Detector (the slice detections merged into the candidate, re-associated from
``detections.json``; see :func:`associate_detections`):
    ``cand_score`` the candidate's score in ``candidates.json``; ``det_max``, ``det_mean``,
    ``det_std`` of the associated detections' scores (population sd; the candidate score and 0
    when none is associated); ``det_count`` associated detections; ``slices`` the candidate's
    ``slices`` (slices with a member detection).
Size and shape:
    ``extent_x_mm``, ``extent_y_mm``, ``extent_z_mm`` box extents (mm); ``volume_ml`` box
    volume (ml = 1000 mm^3); ``aspect_xy`` larger / smaller in-plane extent (>= 1);
    ``aspect_z`` slice extent / geometric mean of the in-plane extents.
Position (breast mask PNGs of the converted folder, see :func:`case_mask`):
    ``mask_fraction`` fraction of the box's voxels inside the breast mask (0..1);
    ``mask_distance_mm`` in-plane distance of the box centre to the mask boundary on the
    candidate's centre slice, positive inside the breast, negative outside; ``skin_depth_mm``
    depth of the box centre below the anterior skin: rows (times ``sy``) from the first mask row
    of the centre column on the centre slice, the anterior side being row 0 (SimpleITK's
    ``[Z, Y, X]`` order of axial DCE-MRI, rows running anterior to posterior, as in the
    phantom and Duke; negative above the skin). NaN when the case has no mask, the centre
    slice has none or (depth) the centre column has none.
Kinetics (the source volumes of ``cases.json`` ``phases[*].source``, each case read once):
    ``S_in[k]`` = mean of phase k in the central half of the box (each axis: the middle half
    of the extent, at least one voxel), ``S_shell[k]`` = mean of phase k in a shell around the
    box (the box grown by a quarter of its extent per side, at least one voxel, minus the box).
    ``enh_k`` = (S_in[k] - S_in[0]) / S_in[0] for post-contrast phase k = 1..P-1 (relative
    enhancement; NaN for phases a case does not have); ``wash_in`` = ``enh_1``; ``peak_enh``
    = max_k ``enh_k``; ``ttp`` = the phase index k of that peak (time-to-peak, phase units);
    ``wash_out`` = (S_in[last] - S_in[peak]) / S_in[peak]; ``shell_wash_in``,
    ``shell_peak_enh`` the same for the shell; ``contrast_wash_in`` = ``wash_in`` -
    ``shell_wash_in``; ``contrast_peak`` = ``peak_enh`` - ``shell_peak_enh``;
    ``contrast_post1`` = (S_in[1] - S_shell[1]) / S_shell[0]. All ratios are dimensionless;
    NaN when the pre-contrast mean is not positive or the case has one phase.
"""
import logging
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
from scipy import ndimage

from ..data.readers import find_phase_sources, iter_source_images
from ..evaluation.candidates import CandidateArrays
from ..segmentation.data import case_dir, list_slices

__all__ = [
    "FEATURE_VERSION",
    "MASK_SOURCES",
    "ReductionError",
    "feature_names",
    "associate_detections",
    "case_mask",
    "candidate_features",
]

logger = logging.getLogger(__name__)

# Bump when a feature's definition changes: cached feature files of another version are redone.
FEATURE_VERSION = 1
# Where breast masks come from: "auto" = masks/fold{K}/<case> if present, else masks/gt/<case>.
MASK_SOURCES = ("auto", "fold", "gt", "none")
# A detection belongs to a candidate when at least this fraction of its 2D area is inside the
# candidate's cross-section (members of a merged candidate lie wholly inside: it is their union).
MIN_INSIDE = 0.5

DETECTOR = ("cand_score", "det_max", "det_mean", "det_std", "det_count", "slices")
SHAPE = ("extent_x_mm", "extent_y_mm", "extent_z_mm", "volume_ml", "aspect_xy", "aspect_z")
POSITION = ("mask_fraction", "mask_distance_mm", "skin_depth_mm")
KINETICS = ("wash_in", "peak_enh", "ttp", "wash_out", "shell_wash_in", "shell_peak_enh",
            "contrast_wash_in", "contrast_peak", "contrast_post1")


class ReductionError(ValueError):
    """Bad input or a refused use of the reducer; the message is one line naming the file/case."""


def feature_names(num_post: int) -> List[str]:
    """Column names for cases with up to ``num_post`` post-contrast phases (``enh_1..``)."""
    enh = [f"enh_{k}" for k in range(1, num_post + 1)]
    return list(DETECTOR + SHAPE + POSITION) + enh + list(KINETICS)


def associate_detections(
    cands: CandidateArrays,
    det_case: Sequence[str],
    det_slices: np.ndarray,
    det_boxes: np.ndarray,
    min_inside: float = MIN_INSIDE,
) -> List[np.ndarray]:
    """Indices of the slice detections belonging to each candidate.

    Rule: same case, slice ``z0 <= z < z1`` of the candidate, and at least ``min_inside`` of
    the detection's 2D box area inside the candidate's ``[x0, x1) x [y0, y1)``. A merged
    candidate's box is the union of its members', so every member qualifies; a detection that
    was dropped before merging (below ``score_thresh``) is excluded by the caller.

    Args:
        cands: the candidates.
        det_case: [N] case id of each detection.
        det_slices: [N] int slice z.
        det_boxes: [N, 4] ``x0, y0, x1, y1`` (``XYXY_ABS``).

    Returns:
        [M] int64 index arrays into the detections.
    """
    det_case = np.asarray(det_case, dtype=object)
    by_case: Dict[str, np.ndarray] = {}
    for cid in set(cands.case_ids):
        by_case[cid] = np.flatnonzero(det_case == cid)
    area = np.clip(det_boxes[:, 2] - det_boxes[:, 0], 0, None) * np.clip(
        det_boxes[:, 3] - det_boxes[:, 1], 0, None)
    out = []
    for i in range(len(cands)):
        idx = by_case[cands.case_ids[cands.case_index[i]]]
        x0, y0, z0, x1, y1, z1 = cands.boxes[i]
        b, z = det_boxes[idx], det_slices[idx]
        iw = np.clip(np.minimum(b[:, 2], x1) - np.maximum(b[:, 0], x0), 0, None)
        ih = np.clip(np.minimum(b[:, 3], y1) - np.maximum(b[:, 1], y0), 0, None)
        inside = iw * ih >= min_inside * area[idx] - 1e-9
        out.append(idx[(z >= z0) & (z < z1) & inside & (area[idx] > 0)])
    return out


def case_mask(
    data_root: str, case_id: str, shape_zyx: Tuple[int, int, int], fold: Optional[int],
    source: str = "auto",
) -> Tuple[Optional[np.ndarray], str]:
    """The breast mask of a case as ``[Z, Y, X]`` bool, and where it came from.

    Args:
        data_root: converted folder (``masks/fold{K}/<case>/``, ``masks/gt/<case>/`` PNGs).
        case_id: the case.
        shape_zyx: the case's ``(Z, Y, X)`` from ``cases.json``.
        fold: K of ``masks/fold{K}`` (None: no fold masks).
        source: one of :data:`MASK_SOURCES`; ``"auto"`` takes ``masks/fold{K}`` (the
            fold-correct predicted masks the detector used) when the case has them, else
            ``masks/gt``.

    Returns:
        ``(mask or None, "masks/fold{K}" | "masks/gt" | "none")``; None when no folder has all
        ``Z`` slices of the case (a warning names it).
    """
    subs = []
    if source in ("auto", "fold") and fold is not None:
        subs.append(f"masks/fold{int(fold)}")
    if source in ("auto", "gt"):
        subs.append("masks/gt")
    for sub in subs:
        folder = case_dir(data_root, sub, case_id)
        if list_slices(folder) != list(range(shape_zyx[0])):
            continue
        mask = np.zeros(shape_zyx, dtype=bool)
        for z in range(shape_zyx[0]):
            m = cv2.imread(os.path.join(folder, f"{z:04d}.png"), cv2.IMREAD_GRAYSCALE)
            if m is None or m.shape != shape_zyx[1:]:
                raise ReductionError(
                    f"case {case_id}: mask slice {folder}/{z:04d}.png is unreadable or not "
                    f"{shape_zyx[2]} x {shape_zyx[1]} pixels"
                )
            mask[z] = m > 0
        return mask, sub
    if source != "none":
        logger.warning("case %s: no breast mask in %s: position features are NaN", case_id,
                       " or ".join(subs) or "(none asked)")
    return None, "none"


def _int_box(box: np.ndarray, shape_zyx: Sequence[int]) -> np.ndarray:
    """``[x0, y0, z0, x1, y1, z1]`` int, outward-rounded, clipped to the volume, >= 1 voxel."""
    lo = np.floor(box[:3]).astype(int)
    hi = np.ceil(box[3:]).astype(int)
    size = np.array([shape_zyx[2], shape_zyx[1], shape_zyx[0]])
    lo = np.clip(lo, 0, size - 1)
    hi = np.clip(np.maximum(hi, lo + 1), 1, size)
    return np.r_[lo, hi]


def _region(lo: np.ndarray, hi: np.ndarray) -> Tuple[slice, slice, slice]:
    """``[Z, Y, X]`` slices of an ``x, y, z`` half-open range."""
    return slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])


def _kinetic_regions(ib: np.ndarray, shape_zyx: Sequence[int]):
    """(central half, box, grown box) ``[Z, Y, X]`` slices of an int box."""
    lo, hi = ib[:3], ib[3:]
    ext = hi - lo
    c_lo = np.floor(lo + ext / 4.0).astype(int)
    c_hi = np.maximum(np.ceil(hi - ext / 4.0).astype(int), c_lo + 1)
    size = np.array([shape_zyx[2], shape_zyx[1], shape_zyx[0]])
    margin = np.maximum(1, np.ceil(ext / 4.0).astype(int))
    g_lo, g_hi = np.clip(lo - margin, 0, None), np.minimum(hi + margin, size)
    return _region(c_lo, c_hi), _region(lo, hi), _region(g_lo, g_hi)


def _phase_means(phase: np.ndarray, regions) -> np.ndarray:
    """[M, 2] (inside central half, shell) means of one phase ``[Z, Y, X]``."""
    out = np.full((len(regions), 2), np.nan)
    for i, (inner, box, grown) in enumerate(regions):
        out[i, 0] = float(phase[inner].mean())
        n_box, n_grown = phase[box].size, phase[grown].size
        if n_grown > n_box:
            out[i, 1] = (float(phase[grown].sum()) - float(phase[box].sum())) / (n_grown - n_box)
    return out


def _kinetics(s_in: np.ndarray, s_sh: np.ndarray, num_post: int) -> np.ndarray:
    """Kinetic features of one candidate from its [P] inside and shell means (see module)."""
    out = np.full(num_post + len(KINETICS), np.nan)
    p = s_in.size
    if p < 2 or not s_in[0] > 0:
        return out
    enh = (s_in[1:] - s_in[0]) / s_in[0]
    out[: min(num_post, p - 1)] = enh[:num_post]
    kp = int(np.argmax(s_in[1:])) + 1
    with np.errstate(invalid="ignore", divide="ignore"):
        wash_out = (s_in[-1] - s_in[kp]) / s_in[kp] if s_in[kp] > 0 else np.nan
        sh_ok = s_sh[0] > 0
        sh_enh = (s_sh[1:] - s_sh[0]) / s_sh[0] if sh_ok else np.full(p - 1, np.nan)
        c_post1 = (s_in[1] - s_sh[1]) / s_sh[0] if sh_ok else np.nan
    k = num_post
    out[k:] = [enh[0], enh[kp - 1], kp, wash_out, sh_enh[0], np.max(sh_enh),
               enh[0] - sh_enh[0], enh[kp - 1] - np.max(sh_enh), c_post1]
    return out


def _position(
    ib: np.ndarray, box: np.ndarray, mask: np.ndarray, spacing, edt_cache: Dict
) -> List[float]:
    """``mask_fraction``, ``mask_distance_mm``, ``skin_depth_mm`` of one candidate
    (``edt_cache``: the case's in-plane distance maps by (slice, inside), computed once)."""
    sx, sy = spacing[0], spacing[1]
    frac = float(mask[_region(ib[:3], ib[3:])].mean())
    zc = int(np.clip((box[2] + box[5]) / 2.0, 0, mask.shape[0] - 1))
    yc = int(np.clip((box[1] + box[4]) / 2.0, 0, mask.shape[1] - 1))
    xc = int(np.clip((box[0] + box[3]) / 2.0, 0, mask.shape[2] - 1))
    sl = mask[zc]
    if not sl.any():
        return [frac, np.nan, np.nan]
    inside = bool(sl[yc, xc])
    if (zc, inside) not in edt_cache:
        edt_cache[zc, inside] = ndimage.distance_transform_edt(sl if inside else ~sl,
                                                               sampling=(sy, sx))
    dist = float(edt_cache[zc, inside][yc, xc]) * (1.0 if inside else -1.0)
    rows = np.flatnonzero(sl[:, xc])
    depth = float((yc - rows[0]) * sy) if rows.size else np.nan
    return [frac, dist, depth]


def candidate_features(
    cands: CandidateArrays,
    assoc: Sequence[np.ndarray],
    det_scores: np.ndarray,
    cases: Mapping[str, Mapping],
    data_root: str,
    fold: Optional[int],
    num_post: int,
    mask_source: str = "auto",
    kinetics: bool = True,
) -> Tuple[np.ndarray, Dict[str, int]]:
    """The feature matrix of candidates (see the module docstring for every column).

    Args:
        cands: [M] candidates.
        assoc: [M] index arrays into ``det_scores`` (:func:`associate_detections`).
        det_scores: [N] slice detection scores.
        cases: ``{case_id: cases.json entry}`` (``shape`` [X, Y, Z], ``spacing``, ``phases``).
        data_root: converted folder (breast masks).
        fold: K of ``masks/fold{K}`` (None: none).
        num_post: post-contrast phases with an ``enh_k`` column.
        mask_source: one of :data:`MASK_SOURCES`.
        kinetics: read the source volumes (False: kinetic columns NaN).

    Returns:
        ``(X [M, F] float64, {mask source: number of cases})``.

    Raises:
        ReductionError: a candidate's case is not in ``cases`` or lacks shape/spacing, a mask
            slice is unreadable.
        CohortError: a source volume is missing, unreadable, or not on the recorded grid.
    """
    names = feature_names(num_post)
    x = np.full((len(cands), len(names)), np.nan)
    used: Dict[str, int] = {}
    case_rows: Dict[str, List[int]] = {}
    for i in range(len(cands)):
        case_rows.setdefault(cands.case_ids[cands.case_index[i]], []).append(i)
    nd, ns = len(DETECTOR), len(SHAPE)
    for cid, rows in case_rows.items():
        entry = cases.get(cid)
        if entry is None:
            raise ReductionError(f"case {cid!r} has candidates but is not in cases.json")
        try:
            sx, sy, sz = (float(v) for v in entry["spacing"])
            shape_zyx = tuple(int(v) for v in entry["shape"])[::-1]
        except (KeyError, TypeError, ValueError):
            raise ReductionError(f"case {cid}: cases.json has no valid shape/spacing") from None
        for i in rows:
            s = det_scores[assoc[i]]
            c = float(cands.scores[i])
            det = [c, s.max(), s.mean(), s.std(), s.size] if s.size else [c, c, c, 0.0, 0]
            x[i, :nd] = det + [float(cands.slices[i])]
            ext = (cands.boxes[i, 3:] - cands.boxes[i, :3]) * (sx, sy, sz)
            x[i, nd:nd + ns] = [ext[0], ext[1], ext[2], ext.prod() / 1000.0,
                                max(ext[:2]) / min(ext[:2]), ext[2] / np.sqrt(ext[0] * ext[1])]
        ibs = {i: _int_box(cands.boxes[i], shape_zyx) for i in rows}
        mask, src = case_mask(data_root, cid, shape_zyx, fold, mask_source)
        used[src] = used.get(src, 0) + 1
        if mask is not None:
            edt_cache: Dict = {}
            for i in rows:
                x[i, nd + ns:nd + ns + 3] = _position(ibs[i], cands.boxes[i], mask, (sx, sy),
                                                      edt_cache)
        if kinetics:
            kin = _case_kinetics(cid, entry, shape_zyx, [ibs[i] for i in rows], num_post)
            x[rows, nd + ns + 3:] = kin
    return x, used


def _case_kinetics(
    case_id: str, entry: Mapping, shape_zyx: Sequence[int], int_boxes: Sequence[np.ndarray],
    num_post: int,
) -> np.ndarray:
    """[R, num_post + len(KINETICS)] kinetic features of one case's candidates (phases read
    once, one at a time, by the project's readers; phases off phase 0's grid are resampled)."""
    phases = entry.get("phases")
    if not isinstance(phases, list) or not phases:
        raise ReductionError(
            f"case {case_id}: cases.json records no phases[*].source (pass --no-kinetics)")
    try:
        srcs = [str(p["source"]) for p in sorted(phases, key=lambda p: int(p["phase"]))]
    except (KeyError, TypeError, ValueError):
        raise ReductionError(f"case {case_id}: cases.json phases lack 'phase'/'source'") from None
    regions = [_kinetic_regions(ib, shape_zyx) for ib in int_boxes]
    sources = find_phase_sources(srcs, case_id)
    means = []
    for k, array, _ in iter_source_images(sources, case_id, resample=True):
        if tuple(array.shape) != tuple(shape_zyx):
            raise ReductionError(
                f"case {case_id}: phase {k} ({srcs[min(k, len(srcs) - 1)]}) has shape "
                f"{list(array.shape[::-1])} (XYZ), cases.json says {list(shape_zyx[::-1])}")
        means.append(_phase_means(array, regions))
    means = np.stack(means, axis=1)  # [R, P, 2]
    return np.stack([_kinetics(m[:, 0], m[:, 1], num_post) for m in means]) if len(means) else \
        np.zeros((0, num_post + len(KINETICS)))
