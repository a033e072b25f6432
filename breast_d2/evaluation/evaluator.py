"""detectron2 evaluator: slice detections of whole cases -> 3D candidates -> FROC.

Only adapts detectron2's inputs/outputs; the maths live in ``candidates.py`` and ``froc.py``.
"""
import itertools
import logging
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from .candidates import gc_paused, merge_slice_arrays
from .froc import (
    FP_RATES,
    check_froc_params,
    compute_froc,
    load_cases_json,
    rate_key,
    save_froc,
    subset_cases,
)
from .boxfit import BoxFitParams, fit_boxes
from .params import BOX_MERGE_MODES, MERGE_KEYS, FROCParams
from .refine import RefineParams, refine_extent
from .slices import ConvertedSlices

__all__ = ["BreastFROCEvaluator"]

logger = logging.getLogger(__name__)

# Constructor keyword -> cfg.TEST.FROC key, and the defaults (one home: FROCParams).
_CFG_KEYS = FROCParams.config_keys()
_DEFAULTS = FROCParams().asdict()


class BreastFROCEvaluator(DatasetEvaluator):
    """FROC of a breast_d2 validation split, evaluated per case in 3D.

    ``process`` keeps each slice's predicted boxes and scores with the slice's ``case_id`` and
    ``slice_index``; ``evaluate`` gathers them from all processes, merges them into 3D
    candidates, and computes the FROC against ``MetadataCatalog.get(name).cases_json`` over the
    cases ``MetadataCatalog.get(name).case_ids`` (cases without any detection still count).
    """

    def __init__(
        self,
        dataset_name: str,
        cfg=None,
        output_dir: Optional[str] = None,
        *,
        distributed: bool = True,
        seed: int = 0,
        refine: Optional[RefineParams] = None,
        box_fit: Optional[BoxFitParams] = None,
        **overrides: Any,
    ):
        """
        Args:
            dataset_name: a registered breast_d2 split (metadata ``cases_json``, ``case_ids``).
            cfg: detectron2 config with ``TEST.FROC.*`` (see breast_d2/config.py); None = defaults.
            output_dir: where froc.json/.csv/.png, candidates.json and detections.json go
                (None: write nothing).
            distributed: gather predictions from all processes (False: this process only).
            seed: bootstrap seed.
            refine: extent refinement of short candidates (default: ``cfg.TEST.FROC.REFINE_*``,
                off); reads the slices of the dataset's ``data_root``.
            box_fit: fit of candidate boxes to the enhancing blob (default:
                ``cfg.TEST.FROC.BOX_FIT*``); reads the slices of the dataset's ``data_root``.
            overrides: any of ``slice_gap, link_iou, score, score_thresh, box_merge, hit,
                iou_thresh, duplicates, bootstrap``, taking precedence over ``cfg``.
        """
        unknown = set(overrides) - set(_CFG_KEYS)
        if unknown:
            raise TypeError(f"unknown BreastFROCEvaluator options: {sorted(unknown)}")
        params = dict(_DEFAULTS)
        froc_cfg = cfg.TEST.get("FROC") if cfg is not None else None
        if froc_cfg is not None:
            params.update({k: froc_cfg[key] for k, key in _CFG_KEYS.items() if key in froc_cfg})
        params.update(overrides)
        # Fail at construction (before inference over the whole split), not at evaluate().
        check_froc_params(params["hit"], params["iou_thresh"], params["duplicates"],
                          params["bootstrap"])
        if params["box_merge"] not in BOX_MERGE_MODES:
            raise ValueError(f"TEST.FROC.BOX_MERGE must be one of {BOX_MERGE_MODES}, "
                             f"got {params['box_merge']!r}")  # fmt: skip
        self._params = params
        self._refine = refine.checked() if refine is not None else RefineParams.from_config(
            froc_cfg)
        self._fit = box_fit.checked() if box_fit is not None else BoxFitParams.from_config(
            froc_cfg)
        self._seed = int(seed)
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._metadata = MetadataCatalog.get(dataset_name)
        if (self._fit.enabled or self._refine.enabled) and not self._metadata.get(
                "data_root", None):
            raise ValueError(
                f"dataset {dataset_name!r} has no 'data_root' metadata (the converted slices "
                "that TEST.FROC.BOX_FIT and REFINE_EXTENT read): register it with "
                "breast_d2.data.register_breast_folds, or set TEST.FROC.BOX_FIT False"
            )
        self._cpu_device = "cpu"
        self._predictions: List[Tuple[str, int, np.ndarray, np.ndarray]] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs, outputs) -> None:
        """Keep ``(case_id, slice_index, boxes [K, 4] float32 XYXY_ABS, scores [K] float32)``."""
        for inp, out in zip(inputs, outputs):
            instances = out["instances"].to(self._cpu_device)
            boxes = instances.pred_boxes.tensor.numpy().astype(np.float32, copy=False)
            scores = instances.scores.numpy().astype(np.float32, copy=False)
            self._predictions.append(
                (str(inp["case_id"]), int(inp["slice_index"]), boxes.reshape(-1, 4), scores)
            )

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(self._predictions, dst=0)
            predictions = list(itertools.chain(*gathered))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        if not predictions:
            logger.warning("[BreastFROCEvaluator] No predictions: every mass counts as missed.")

        ground_truth = subset_cases(load_cases_json(self._cases_json()), self._case_ids())
        case_index, slices, boxes, scores, names = self._flatten(predictions)
        p = self._params
        candidates = merge_slice_arrays(
            names,
            case_index,
            slices,
            boxes,
            scores,
            slice_gap=int(p["slice_gap"]),
            link_iou=float(p["link_iou"]),
            score=p["score"],
            score_thresh=float(p["score_thresh"]),
            box_merge=p["box_merge"],
        )
        refine_info = fit_info = None
        if self._fit.enabled:
            root = self._metadata.data_root
            candidates, stats = fit_boxes(candidates, ConvertedSlices(root, self._fit.channel),
                                          self._fit)  # fmt: skip
            fit_info = dict(self._fit.asdict(), data_root=root, **stats)
        if self._refine.enabled:
            root = self._metadata.data_root
            reader = ConvertedSlices(root, self._refine.channel)
            candidates, stats = refine_extent(candidates, reader, self._refine)
            refine_info = dict(self._refine.asdict(), data_root=root, **stats)
        result = compute_froc(
            candidates,
            ground_truth,
            hit=p["hit"],
            iou_thresh=float(p["iou_thresh"]),
            duplicates=p["duplicates"],
            bootstrap=int(p["bootstrap"]),
            seed=self._seed,
        )
        result["merge"] = {k: p[k] for k in MERGE_KEYS}
        if fit_info is not None:
            result["merge"]["box_fit"] = fit_info
        if refine_info is not None:
            result["merge"]["refine_extent"] = refine_info
        result["inputs"] = {"dataset": self._dataset_name, "ground_truth": self._cases_json()}
        logger.info(
            "FROC of %s: %d cases, %d masses, %d slice detections -> %d candidates",
            self._dataset_name,
            result["num_cases"],
            result["num_lesions"],
            scores.size,
            len(candidates),
        )
        if self._output_dir:
            paths = save_froc(
                result,
                self._output_dir,
                candidates=candidates,
                detections=_detection_dicts(names, case_index, slices, boxes, scores),
            )
            logger.info("FROC results written to %s", ", ".join(paths))
        return {"froc": self._metrics(result)}

    def _cases_json(self) -> str:
        path = self._metadata.get("cases_json", None)
        if not path:
            raise KeyError(f"MetadataCatalog[{self._dataset_name!r}] has no 'cases_json'")
        return path

    def _case_ids(self) -> List[str]:
        case_ids = self._metadata.get("case_ids", None)
        if case_ids is None:
            # Fallback for datasets registered without the list: every case of the split.
            logger.warning("No 'case_ids' in metadata of %s: using the dataset dicts.",
                           self._dataset_name)
            dicts = DatasetCatalog.get(self._dataset_name)
            case_ids = sorted({str(d["case_id"]) for d in dicts})
        return list(case_ids)

    @staticmethod
    def _flatten(predictions):
        """Concatenate per-slice predictions into ``(case_index, slices, boxes, scores, names)``.

        Empty boxes (zero width or height) are dropped with a warning.
        """
        table: Dict[str, int] = {}
        counts = [p[3].size for p in predictions]
        case_index = np.repeat(
            np.array([table.setdefault(p[0], len(table)) for p in predictions], dtype=np.int64),
            counts,
        )
        slices = np.repeat(np.array([p[1] for p in predictions], dtype=np.int64), counts)
        boxes = (
            np.concatenate([p[2] for p in predictions]).astype(np.float64)
            if predictions
            else np.zeros((0, 4))
        )
        scores = (
            np.concatenate([p[3] for p in predictions]).astype(np.float64)
            if predictions
            else np.zeros(0)
        )
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & np.isfinite(scores)
        if not ok.all():
            logger.warning("Dropping %d empty or non-finite slice detections.", int((~ok).sum()))
        return case_index[ok], slices[ok], boxes[ok], scores[ok], list(table)

    @staticmethod
    def _metrics(result: Dict[str, Any]) -> Dict[str, float]:
        """Flat metrics named with their parameters (``sens@3.4``, ``cpm``), fractions in [0, 1]."""
        metrics = {f"sens@{rate_key(r)}": result["sensitivity_at"][rate_key(r)] for r in FP_RATES}
        metrics["cpm"] = result["cpm"]
        for r in FP_RATES:
            metrics[f"sens_interp@{rate_key(r)}"] = result["sensitivity_at_interp"][rate_key(r)]
        metrics["cpm_interp"] = result["cpm_interp"]
        ci = result.get("ci95")
        if ci:
            metrics["cpm_ci95_lo"], metrics["cpm_ci95_hi"] = ci["cpm"]
        return {k: float("nan") if v is None else float(v) for k, v in metrics.items()}


def _detection_dicts(names, case_index, slices, boxes, scores) -> List[Dict[str, Any]]:
    """Slice detections JSON list, ordered by (case, slice, score desc) for stable files."""
    name_arr = np.asarray(names, dtype=object)
    rank = np.argsort(np.argsort(name_arr, kind="stable")) if len(names) else np.zeros(0, int)
    order = np.lexsort((-scores, slices, rank[case_index] if len(names) else case_index))
    with gc_paused():
        return [
            {"case_id": names[c], "slice": z, "box": b, "score": s}
            for c, z, b, s in zip(
                case_index[order].tolist(),
                slices[order].tolist(),
                boxes[order].tolist(),
                scores[order].tolist(),
            )
        ]
