"""Default parameters of 3D merging and FROC: the one place they are written down.

``cfg.TEST.FROC.<FIELD>`` (:mod:`breast_d2.config`), :class:`BreastFROCEvaluator`'s keywords,
``tools/froc.py``'s flags and the library functions' keyword defaults all read
:class:`FROCParams`.
"""
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, TypeVar

__all__ = ["FROCParams", "StepParams", "BOX_MERGE_MODES", "MERGE_KEYS"]

#: ``FROCParams.box_merge`` values: the study's union of the member boxes, or per-slice fusion.
BOX_MERGE_MODES = ("union", "fused")
#: The fields of :class:`FROCParams` that 3D merging reads (``froc.json`` records them).
MERGE_KEYS = ("slice_gap", "link_iou", "score", "score_thresh", "box_merge")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FROCParams:
    """Parameters of merging slice detections into 3D candidates and of the FROC.

    Each field is the config key ``cfg.TEST.FROC.<FIELD in upper case>``.

    Attributes:
        slice_gap: link detections whose slices differ by at most ``1 + slice_gap`` (1 bridges
            one slice without a detection).
        link_iou: ... and whose 2D IoU is at least this.
        score: candidate score from its members' scores, ``"max"`` or ``"mean"``.
        score_thresh: slice detections below this score are dropped before merging.
        box_merge: the candidate's in-plane box from its members' boxes: ``"union"`` spans them
            all (the study's merge); ``"fused"`` first fuses the boxes of each slice into their
            score-weighted mean, then spans the fused slice boxes, so overlapping duplicates on
            one slice do not widen the candidate.
        hit: hit criterion, ``"iou3d"`` (the study), ``"iou2d"`` or ``"center"``.
        iou_thresh: a candidate hits a mass when its IoU is strictly greater than this.
        duplicates: extra hits on a detected mass, ``"ignore"`` (LUNA16) or ``"fp"``
            (nnDetection, COCO).
        bootstrap: case resamples for the 95% confidence intervals (0: none).
    """

    slice_gap: int = 1
    link_iou: float = 0.3
    score: str = "max"
    score_thresh: float = 0.0
    # "fused" + the box fit (boxfit.py) won on the 75-case phantom benchmark (BENCHMARKS.md).
    box_merge: str = "fused"
    hit: str = "iou3d"
    iou_thresh: float = 0.5
    duplicates: str = "ignore"
    bootstrap: int = 1000

    def asdict(self) -> Dict[str, Any]:
        """``{field: value}`` of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def config_keys(cls) -> Dict[str, str]:
        """``{field: cfg.TEST.FROC key}``, e.g. ``"slice_gap": "SLICE_GAP"``."""
        return {f.name: f.name.upper() for f in dataclasses.fields(cls)}


_P = TypeVar("_P", bound="StepParams")


class StepParams:
    """Base of the frozen parameter dataclasses of optional post-merge steps (the extent
    refinement, the box fit): each field ``f`` is ``cfg.TEST.FROC.<config_keys()[f]>``.
    Subclasses define :meth:`config_keys` and :meth:`checked`."""

    def asdict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def config_keys(cls) -> Dict[str, str]:
        """``{field: cfg.TEST.FROC key}``."""
        raise NotImplementedError

    def checked(self: _P) -> _P:
        """Return self; raise FROCInputError naming a parameter out of range."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, froc_cfg: Optional[Mapping[str, Any]]):
        """The parameters in ``cfg.TEST.FROC`` (defaults for missing keys or None), checked."""
        froc_cfg = froc_cfg or {}
        kw = {f: froc_cfg[k] for f, k in cls.config_keys().items() if k in froc_cfg}
        return cls(**kw).checked()
