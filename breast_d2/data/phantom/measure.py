"""What a phantom cohort measures, next to the published figures it must respect.

Reads the records of ``OUT/phantom.json`` (:func:`breast_d2.data.phantom.write_cohort`): per case
``info`` (BPE, findings, acquisition) and ``lesions`` (the masses). Each :class:`Anchor` names one
published figure, its source and how the cohort measures it; :func:`measure_cohort` returns one
:class:`Measured` row per anchor, with whether the measured figure lies inside the published range.
``docs/PHANTOM.md`` is this table for the default cohorts (``tools/phantom_stats.py``).

Two kinds of check:

- ``"range"``: every measured value (e.g. the enhancing fraction of fibroglandular tissue of each
  breast of a BPE category) lies inside ``[lo, hi]``;
- ``"proportion"``: a count over the cohort (e.g. cases with motion) is compatible with a
  published proportion ``p`` in ``[lo, hi]``: the measured proportion's 95 % Wilson interval
  overlaps ``[lo, hi]`` (a small cohort cannot hit a prevalence exactly). A proportion published
  as one figure of ``published_n`` cases (e.g. "57.4 % of 101") is itself a sample: its range is
  widened to its own 95 % Wilson interval (:meth:`Anchor.published_range`).
"""

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["Anchor", "Measured", "ANCHORS", "measure_cohort", "wilson_interval"]

logger = logging.getLogger(__name__)

Records = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Anchor:
    """One published figure and how a cohort measures it.

    Attributes:
        feature: what is anchored (table row title).
        published: the figure as published, in words.
        source: authors, journal, year (doi where known); ``"no published anchor"`` otherwise.
        lo, hi: the published range the measured figure must respect.
        kind: ``"range"`` (every value in ``values`` inside) or ``"proportion"`` (``values``
            returns ``(successes, trials)``).
        values: ``records -> list of floats`` (range) or ``(k, n)`` (proportion).
        unit: unit of the values, for the table.
        published_n: for a proportion measured in a published sample, that sample's size (0: the
            range is exact, e.g. a definition or a range over several studies).
    """

    feature: str
    published: str
    source: str
    lo: float
    hi: float
    kind: str
    values: Callable[[Records], Any]
    unit: str = ""
    published_n: int = 0

    @property
    def from_published_sample(self) -> bool:
        """A proportion measured in one published sample (``published_n`` > 0)."""
        return self.kind == "proportion" and self.published_n > 0

    def published_range(self) -> Tuple[float, float]:
        """``(lo, hi)`` the measured figure must respect: ``[lo, hi]``, or for a proportion of a
        published sample of ``published_n``, from the lower end of ``lo``'s 95 % Wilson interval
        to the upper end of ``hi``'s."""
        if not self.from_published_sample:
            return self.lo, self.hi
        n = self.published_n
        return wilson_interval(round(self.lo * n), n)[0], wilson_interval(round(self.hi * n), n)[1]


@dataclass
class Measured:
    """One row of the table: the anchor, the measured summary and whether it respects it."""

    anchor: Anchor
    summary: str
    n: int
    inside: Optional[bool]  # None: nothing to measure in this cohort


def wilson_interval(k: int, n: int, z: float = 1.96) -> Tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion ``k / n`` (``n`` >= 1)."""
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


# ----------------------------------------------------------------------------------------------
# Accessors of the records (each returns [] when the cohort does not record the figure)
# ----------------------------------------------------------------------------------------------
def _lesions(records: Records) -> List[Mapping[str, Any]]:
    return [lesion for rec in records for lesion in rec.get("lesions", [])]


def _info(records: Records, key: str) -> List[Any]:
    return [rec["info"][key] for rec in records if key in rec.get("info", {})]


def _mass_longest_extent(records: Records) -> List[float]:
    return [max(lesion["extent_mm"]) for lesion in _lesions(records)]


def _bpe_fraction(category: str) -> Callable[[Records], List[float]]:
    def values(records: Records) -> List[float]:
        return [
            float(f)
            for bpe in _info(records, "bpe")
            if bpe["category"] == category
            for f in bpe["enhancing_fgt_fraction"]
        ]

    return values


def _bpe_prevalence(category: str) -> Callable[[Records], Tuple[int, int]]:
    def values(records: Records) -> Tuple[int, int]:
        cats = [bpe["category"] for bpe in _info(records, "bpe")]
        return sum(c == category for c in cats), len(cats)

    return values


def _lesion_to_parenchyma(records: Records) -> List[float]:
    return [
        float(lesion["lesion_to_parenchyma_post1"])
        for lesion in _lesions(records)
        if lesion.get("lesion_to_parenchyma_post1") is not None
    ]


def _finding_sizes(kind: str) -> Callable[[Records], List[float]]:
    def values(records: Records) -> List[float]:
        return [
            float(f["size_mm"])
            for found in _info(records, "findings")
            for f in found
            if f["kind"] == kind
        ]

    return values


def _cases_with_finding(kind: str) -> Callable[[Records], Tuple[int, int]]:
    def values(records: Records) -> Tuple[int, int]:
        found = _info(records, "findings")
        return sum(any(f["kind"] == kind for f in fs) for fs in found), len(found)

    return values


def _motion_cases(records: Records) -> Tuple[int, int]:
    acq = _info(records, "acquisition")
    return sum(a["motion"]["kind"] != "none" for a in acq), len(acq)


def _motion_displacement(records: Records) -> List[float]:
    return [
        float(a["motion"]["max_displacement_mm"])
        for a in _info(records, "acquisition")
        if a["motion"]["kind"] != "none"
    ]


def _fat_sat_failures(records: Records) -> Tuple[int, int]:
    acq = _info(records, "acquisition")
    return sum(bool(a["fat_sat"]["failure"]) for a in acq), len(acq)


# ----------------------------------------------------------------------------------------------
# The anchors
# ----------------------------------------------------------------------------------------------
_STUDY = "Jiao et al., Comput Math Methods Med 2020, doi 10.1155/2020/2413706"
_BIRADS = "ACR BI-RADS Atlas, 5th ed., MRI (2013)"

_IMAGINE = "IMAGINE study, Breast Cancer Res 2020, doi 10.1186/s13058-020-01375-7, table 2"
_KUHL = "Kuhl et al., Radiology 1999;211(1):101-110"
_JANSEN_JMRI = "Jansen et al., JMRI 2011, doi 10.1002/jmri.22567"
_MARGINS = ("'High-spatial-resolution MR imaging of focal breast masses' (63 masses, 1.5 T; "
            "authors not verified)")
_MOTION = ("Clauser et al. 2020 (83/237 = 35 %); Ruiz-Flores et al., 'Variation in Technical "
           "Quality of Breast MRI' (16/88 = 18 %)")
_FAT_SAT = ("Sensakovic et al., AAPM 2018 abstract (22 % of 98 studies); Ruiz-Flores et al. "
            "(shimming 17/88 = 19 %)")


def _mass_share(key: str, value: Any, benign: Optional[bool]) -> Callable[[Records], Any]:
    """``(masses whose key == value, masses)`` among benign / malignant / all masses; the key is
    a Lesion field (``margin``) or one of its ``kinetics`` (``curve_type``, ``benign``)."""

    def values(records: Records) -> Tuple[int, int]:
        lesions = _lesions(records)
        if benign is not None:
            lesions = [les for les in lesions if bool(les["kinetics"].get("benign")) == benign]
        got = [les.get(key, les["kinetics"].get(key)) for les in lesions]
        return sum(g == value for g in got), len(got)

    return values


ANCHORS: List[Anchor] = [
    Anchor("mass size: longest label extent", "10.7-66.9 mm", _STUDY, 10.7, 66.9, "range",
           _mass_longest_extent, "mm"),
]
_BPE_RANGES = {"minimal": (0.0, 0.25), "mild": (0.25, 0.50), "moderate": (0.50, 0.75),
               "marked": (0.75, 1.0)}
# Premenopausal / postmenopausal prevalence of IMAGINE: the published range of each category.
_BPE_PREVALENCE = {"minimal": (0.18, 0.44), "mild": (0.43, 0.46), "moderate": (0.11, 0.26),
                   "marked": (0.026, 0.10)}
for _cat, (_lo, _hi) in _BPE_RANGES.items():
    ANCHORS.append(Anchor(
        f"BPE {_cat}: enhancing fraction of FGT (per breast)",
        f"{_lo:.0%}-{_hi:.0%} of FGT enhances", _BIRADS, _lo, _hi, "range", _bpe_fraction(_cat)))
for _cat, (_lo, _hi) in _BPE_PREVALENCE.items():
    ANCHORS.append(Anchor(
        f"BPE {_cat}: share of cases", f"{_lo:.0%}-{_hi:.0%} (pre- / postmenopausal)", _IMAGINE,
        _lo, _hi, "proportion", _bpe_prevalence(_cat)))
ANCHORS += [
    Anchor("benign share of masses", "156/552 = 28 %", _JANSEN_JMRI, 0.283, 0.283, "proportion",
           _mass_share("benign", True, None), published_n=552),
    Anchor("malignant masses: type III (wash-out)", "57.4 % of 101", _KUHL, 0.574, 0.574,
           "proportion", _mass_share("curve_type", "III", False), published_n=101),
    Anchor("malignant masses: type II (plateau)", "33.6 % of 101", _KUHL, 0.336, 0.336,
           "proportion", _mass_share("curve_type", "II", False), published_n=101),
    Anchor("benign masses: type I (persistent)", "83.0 % of 165", _KUHL, 0.83, 0.83,
           "proportion", _mass_share("curve_type", "I", True), published_n=165),
    Anchor("malignant masses: spiculated margin", "43 % of 49", _MARGINS, 0.43, 0.43,
           "proportion", _mass_share("margin", "spiculated", False), published_n=49),
    Anchor("focus: longest extent", "< 5 mm", "ACR BI-RADS Atlas 2013 (MRI lexicon)", 0.0, 5.0,
           "range", _finding_sizes("focus"), "mm"),
    Anchor("cases with motion between pre and post 1", "18-35 % of examinations", _MOTION, 0.18,
           0.35, "proportion", _motion_cases),
    Anchor("cases with fat-saturation failure", "19-22 % of examinations", _FAT_SAT, 0.19, 0.22,
           "proportion", _fat_sat_failures),
]


def figures(records: Records) -> Dict[str, Any]:
    """Figures the cohort measures that have no published range to check (docs/PHANTOM.md says
    so): lesion-to-parenchyma ratio, findings per kind, motion amplitudes."""
    ratios = sorted(_lesion_to_parenchyma(records))
    found = _info(records, "findings")
    kinds = sorted({f["kind"] for fs in found for f in fs})
    out: Dict[str, Any] = {}
    if ratios:
        out["mass / enhancing FGT relative enhancement at post 1 (min / median / max)"] = (
            f"{ratios[0]:.2f} / {ratios[len(ratios) // 2]:.2f} / {ratios[-1]:.2f}")
    for kind in kinds:
        k, n = _cases_with_finding(kind)(records)
        sizes = sorted(_finding_sizes(kind)(records))
        out[f"cases with {kind}"] = (f"{k}/{n}; size {sizes[0]:.1f}-{sizes[-1]:.1f} mm "
                                     f"(median {sizes[len(sizes) // 2]:.1f})")
    disp = sorted(_motion_displacement(records))
    if disp:
        out["motion: max displacement (min / median / max)"] = (
            f"{disp[0]:.2f} / {disp[len(disp) // 2]:.2f} / {disp[-1]:.2f} mm")
    return out


def measure_cohort(records: Records, anchors: Sequence[Anchor] = ()) -> List[Measured]:
    """Measure every anchor (default :data:`ANCHORS`) on a cohort's case records."""
    rows = []
    for anchor in anchors or ANCHORS:
        if anchor.kind == "range":
            vals = [float(v) for v in anchor.values(records)]
            if not vals:
                rows.append(Measured(anchor, "not recorded", 0, None))
                continue
            vals.sort()
            median = vals[len(vals) // 2]
            summary = f"{vals[0]:.3g} / {median:.3g} / {vals[-1]:.3g} (min / median / max)"
            inside = anchor.lo <= vals[0] and vals[-1] <= anchor.hi
            rows.append(Measured(anchor, summary, len(vals), inside))
        elif anchor.kind == "proportion":
            k, n = anchor.values(records)
            if n == 0:
                rows.append(Measured(anchor, "not recorded", 0, None))
                continue
            lo, hi = wilson_interval(k, n)
            summary = f"{k}/{n} = {k / n:.2f} (95 % CI {lo:.2f}-{hi:.2f})"
            pub_lo, pub_hi = anchor.published_range()
            rows.append(Measured(anchor, summary, n, lo <= pub_hi and pub_lo <= hi))
        else:
            raise ValueError(f"anchor {anchor.feature!r}: unknown kind {anchor.kind!r}")
    return rows


def _published_interval(anchor: Anchor) -> str:
    """`` [95 % CI lo-hi]`` of a proportion of a published sample, else ``""``."""
    if not anchor.from_published_sample:
        return ""
    lo, hi = anchor.published_range()
    return f" [95 % CI {lo:.2f}-{hi:.2f}]"


def table_rows(measured: Sequence[Measured]) -> List[List[str]]:
    """``[feature, published (source), measured, n, inside]`` cells of a markdown table."""
    flag = {True: "yes", False: "**NO**", None: "n/a"}
    return [
        [
            m.anchor.feature,
            f"{m.anchor.published}{_published_interval(m.anchor)} ({m.anchor.source})",
            m.summary + (f" {m.anchor.unit}" if m.anchor.unit and m.n else ""),
            str(m.n),
            flag[m.inside],
        ]
        for m in measured
    ]


def counts(records: Records) -> Dict[str, Any]:
    """Cohort size figures: cases, masses, masses per case."""
    n_mass = [len(rec.get("lesions", [])) for rec in records]
    return {
        "cases": len(records),
        "masses": sum(n_mass),
        "cases_without_mass": sum(n == 0 for n in n_mass),
    }
