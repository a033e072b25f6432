"""Phantom contrast kinetics: phase times, per-tissue intensities and enhancement curves.

Curves are normalised (0 at injection, about 1 at the peak) and sampled at the phase times (s
after injection); a voxel's signal is its pre-contrast value plus amplitude x curve (see
:mod:`breast_d2.data.phantom.acquisition`).
"""

import logging
from typing import Dict, Tuple

import numpy as np

from .anatomy import (
    BLOOD,
    BONE,
    BVESSEL,
    CHEST,
    CYST,
    FAT,
    FGT,
    FOCUS,
    IMNODE,
    LUNG,
    MASS,
    MEDIAST,
    MUSCLE,
    MYO,
    NME,
    NODE,
    SKIN,
    TISSUES,
)

__all__ = ["phase_times"]

logger = logging.getLogger(__name__)


def phase_times(num_phases: int = 9, phase_interval_s: float = 75.0) -> Tuple[float, ...]:
    """Acquisition time after injection (s) of each phase; phase 0 (pre-contrast) is at 0.

    Args:
        num_phases: 1 pre-contrast + ``num_phases - 1`` post-contrast phases.
        phase_interval_s: time between phase centres (the reference study: about 60-90 s).
    """
    return tuple(float(p * phase_interval_s) for p in range(num_phases))


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
    _findings_s0(s0)  # no random draw: the anatomy stream stays as it was
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


# Kuhl et al., Radiology 1999;211(1):101-110 (101 malignant, 165 benign enhancing lesions):
# distribution of curve types I / II / III.
_CURVE_TYPES = ("I", "II", "III")
_CURVE_TYPE_PROBS = {False: (0.089, 0.336, 0.574), True: (0.830, 0.115, 0.055)}  # key: benign
_CURVE_NAMES = {"I": "persistent", "II": "plateau", "III": "washout"}


def _curve_params(rng, curve_type: str, benign: bool) -> Tuple[float, float]:
    """Wash-in time constant (s) and late slope (per 600 s) of a mass curve.

    Type I rises to the last phase: benign (fibroadenoma-like) with a slow wash-in, malignant with
    a fast wash-in and a steady late rise. Type II plateaus, type III washes out. Benign masses
    wash in more slowly than malignant ones (Jansen et al., JMRI 2011: longer time to peak).
    """
    if curve_type == "I":
        if benign:
            return rng.uniform(90, 180), rng.uniform(0.0, 0.1)
        return rng.uniform(30, 60), rng.uniform(0.2, 0.4)
    tau = rng.uniform(35, 70) if benign else rng.uniform(20, 45)
    if curve_type == "III":
        return tau, rng.uniform(-0.40, -0.18)
    return tau, rng.uniform(-0.06, 0.06)


def _lesion_kinetics(
    rng, s0: float, times: np.ndarray, benign: bool = False
) -> Tuple[Dict[str, object], np.ndarray]:
    """Curve type I / II / III drawn per Kuhl 1999 for a benign or malignant mass.

    Returns the description (the ``Lesion.kinetics`` dict) and the normalised curve ``[P]``.
    """
    probs = np.asarray(_CURVE_TYPE_PROBS[bool(benign)], np.float64)  # rounded: renormalise
    k = int(rng.choice(3, p=probs / probs.sum()))
    curve_type = _CURVE_TYPES[k]
    tau, slope = _curve_params(rng, curve_type, benign)
    amp = rng.uniform(400, 800) if benign else rng.uniform(450, 900)
    curve = _curve_wash(times, tau, slope)
    kin = {
        "curve_type": curve_type,
        "name": _CURVE_NAMES[curve_type],
        "benign": bool(benign),
        "wash_in_tau_s": round(float(tau), 2),
        "late_slope": round(float(slope), 4),
        "peak_enhancement": round(float(amp), 1),
        "relative_enhancement": [round(float(amp * c / s0), 3) for c in curve],
    }
    return kin, curve.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Findings inside the breast that are not targets (breast_d2.data.phantom.findings)
# ----------------------------------------------------------------------------------------------
_CYST_FLUID_OVER_FAT = 0.6  # T1 fat-sat: cyst fluid darker than suppressed fat (see findings.md)


def _findings_s0(s0: np.ndarray) -> None:
    """In place: pre-contrast LUT entries of the finding classes, from the entries drawn already.

    Each finding also carries its own ``s0`` (its blob); the LUT value only fills the partial-volume
    rest of its voxels, so it is set to what the finding is made of: parenchyma for foci and NME,
    lymph node, blood, cyst fluid.
    """
    s0[[FOCUS, NME]] = s0[FGT]
    s0[IMNODE] = s0[NODE]
    s0[BVESSEL] = s0[BLOOD]
    s0[CYST] = _CYST_FLUID_OVER_FAT * s0[FAT]


def _curve_persistent(t: np.ndarray, tau_s: float) -> np.ndarray:
    """Type I: persistent enhancement, faster than the background (foci, inflamed cyst rims)."""
    return 1.0 - np.exp(-t / tau_s)
