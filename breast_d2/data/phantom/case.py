"""One phantom case: parameter checks, :class:`PhantomCase` and :func:`make_case`.

:func:`make_case` draws the anatomy (:mod:`.anatomy`), places the masses and nodes
(:mod:`.lesions`), the findings inside the breast that are not targets (:mod:`.findings`) and
renders the phases with their acquisition artefacts (:mod:`.acquisition`, :mod:`.motion`) from
independent random streams (children of ``SeedSequence([seed, case_index]).spawn(8)``: 0-4 as
before the split, 5 findings, 6 BPE, 7 acquisition), so a case depends only on its seed and index.
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np

from ..boxes import label_boxes
from .acquisition import (
    _acquisition_record,
    _apply_fat_sat,
    _bias_field,
    _render_phases,
    _sample_acquisition,
    _static_maps,
)
from .anatomy import (
    FAT,
    FGT,
    MASS,
    NODE,
    _build_anatomy,
    _Field,
    _make_grid,
    _sample_breasts,
    _sample_thorax,
)
from .bpe import _lesion_to_parenchyma, _measure_bpe, _paint_bpe, _sample_bpe
from .findings import _findings_info, _place_findings
from .kinetics import _sample_intensities, phase_times
from .lesions import Lesion, _lesion_record, _place_lesions, _place_nodes

__all__ = ["PhantomCase", "case_id_for", "make_case"]

logger = logging.getLogger(__name__)


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
    seeds = np.random.SeedSequence([seed, case_index]).spawn(8)  # first 5 as with spawn(5)
    rng_anat, rng_tex, rng_les, rng_node, rng_noise = (np.random.default_rng(s) for s in seeds[:5])
    rng_findings, rng_bpe, rng_acq = (np.random.default_rng(s) for s in seeds[5:])
    times = np.asarray(phase_times(num_phases, phase_interval_s), np.float64)
    th = _sample_thorax(rng_anat)
    breasts = _sample_breasts(rng_anat, th, grid.fov_mm)
    lut = _sample_intensities(rng_anat)
    sigma = float(rng_anat.uniform(9, 15) * lut["s0"][FAT] / 110.0)
    fields = {name: _Field(rng_tex, grid, c) for name, c in (("fine", 2.5), ("coarse", 9.0))}
    fields["bias"] = _Field(rng_tex, grid, 80.0)
    tissue, mask, paints, depth2d, anat = _build_anatomy(grid, rng_anat, th, breasts, fields)
    bpe = _sample_bpe(rng_bpe, grid)
    _paint_bpe(bpe, grid, paints, float(lut["s0"][FGT]), times)
    placed = _place_lesions(rng_les, grid, breasts, tissue, mask, times, fields, lut["s0"][FGT])
    nodes = _place_nodes(rng_node, grid, tissue, mask, depth2d, times)
    findings = _place_findings(rng_findings, grid, breasts, tissue, mask, placed, times, lut["s0"])
    labels = np.zeros(grid.shape, np.uint8)
    for i, (blob, label, *_rest) in enumerate(placed, start=1):
        labels[blob.box][label] = i
        tissue[blob.box][label] = MASS
    for blob in nodes:
        tissue[blob.box][blob.member >= 0.5] = NODE
    for finding in findings:
        for blob, cls in finding.parts:
            tissue[blob.box][blob.member >= 0.5] = cls
    blobs = [p[0] for p in placed] + nodes + [b for f in findings for b, _cls in f.parts]
    bias = _bias_field(rng_anat, grid, breasts, fields["bias"])
    st = _static_maps(tissue, lut, paints, breasts, blobs, bias, times)
    del bias
    acq = _sample_acquisition(rng_acq, grid, breasts)
    fat_sat = _apply_fat_sat(st, tissue, mask, grid, acq.fat_sat)
    boxes = label_boxes(labels)
    bpe_info = _measure_bpe(bpe, st, blobs, tissue, paints, times)
    sides = [p[4] for p in placed]
    ratios = _lesion_to_parenchyma(st, blobs, times, labels, boxes, sides, bpe_info)
    phases = _render_phases(st, blobs, times, sigma, rng_noise, acq, grid)
    lesions = [
        _lesion_record(grid, labels, i, boxes[i], d, shape, side, kin, look, ratios[i - 1])
        for i, (_b, _l, d, shape, side, kin, look) in enumerate(placed, start=1)
    ]
    info = {
        "breasts": [
            {
                "side": br.side,
                "width_mm": round(2 * br.ax, 1),
                "depth_mm": round(br.ay, 1),
                "height_mm": round(2 * br.az, 1),
                "fibroglandular_fraction": round(br.density, 3),
            }
            for br in breasts
        ],
        "lymph_nodes": len(nodes),
        "vessels": anat["vessels"],
        "heart_centre_mm": [round(anat["heart"][k], 1) for k in ("x", "y", "z")],
        "noise_sigma": round(sigma, 2),
        "bpe": bpe_info,
        "acquisition": _acquisition_record(acq, grid, mask, fat_sat),
    }
    info["findings"], info["findings_count"] = _findings_info(findings)
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
