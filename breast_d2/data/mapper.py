"""Dataset mapper that masks every slice to the breast region before augmentation."""
import copy
import logging
import os
from typing import Callable, Dict, Optional

import cv2
import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import DatasetMapper, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..segmentation.postprocess import dilate_mm
from .augmentation import build_intensity_augmentation
from .converted import read_cases
from .datasets import default_data_root

__all__ = ["BreastMaskDatasetMapper", "mask_dir_from_config", "apply_mask"]

logger = logging.getLogger(__name__)


def mask_dir_from_config(cfg) -> str:
    """Folder of ``<case_id>/<z:04d>.png`` masks implied by ``cfg.INPUT.BREAST_MASK``."""
    root = cfg.DATASETS.BREAST_ROOT or default_data_root()
    source = cfg.INPUT.BREAST_MASK.SOURCE
    if source == "gt":
        return os.path.join(root, "masks", "gt")
    if cfg.INPUT.BREAST_MASK.DIR:
        return cfg.INPUT.BREAST_MASK.DIR
    return os.path.join(root, "masks", f"fold{max(cfg.DATASETS.FOLD, 0)}")


def apply_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image * mask[:, :, None]`` for a uint8 ``[H, W, C]`` image and ``[H, W]`` 0/1 mask.

    ``read_image`` returns BGR as a channel-reversed *view* of the RGB decode, and NumPy's
    broadcast over that length-3 reversed axis is slow (20-30% of a stock mapper's time), so
    the contiguous buffer is masked with ``cv2.copyTo`` and reversed back (same bytes).
    """
    reversed_view = image.strides[2] < 0
    base = image[:, :, ::-1] if reversed_view else image
    out = cv2.copyTo(base, mask)
    if out.ndim == 2:  # cv2 drops a single channel axis
        out = out[:, :, None]
    return out[:, :, ::-1] if reversed_view else out


class BreastMaskDatasetMapper(DatasetMapper):
    """A :class:`DatasetMapper` that zeroes every pixel outside the breast mask.

    The mask is applied to the image as read from disk, *before* augmentation, so boxes, image
    and mask stay aligned under flips and resizes. With ``return_mask`` the transformed mask is
    returned as ``dataset_dict["breast_mask"]`` (``uint8 [H, W]`` tensor, 1 = breast) for
    inspection; the trainer does not ask for it (carrying it through the augmentations costs).

    Masks come from one of three sources:

    * ``"cached"`` / ``"gt"``: ``{mask_dir}/{case_id}/{slice_index:04d}.png`` (non-zero = breast);
    * ``"model"``: a callable ``[H, W, 3] uint8 -> [H, W] bool`` (a breast segmentation model).

    A missing mask is an error naming the case and slice; a slice is never silently left unmasked.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        mask_enabled: bool = False,
        mask_dir: str = "",
        mask_predictor: Optional[Callable[[np.ndarray], np.ndarray]] = None,
        dilate_mm: float = 0.0,
        spacing_by_case: Optional[Dict[str, tuple]] = None,
        return_mask: bool = True,
        **kwargs,
    ):
        """
        Args:
            is_train, kwargs: as :class:`DatasetMapper`.
            mask_enabled: mask images to the breast region.
            mask_dir: folder of cached masks (ignored when ``mask_predictor`` is given).
            mask_predictor: callable returning the breast mask of an RGB slice.
            dilate_mm: dilate masks by this many millimetres (a Euclidean ball in physical
                units, :func:`~breast_d2.segmentation.postprocess.dilate_mm`).
            spacing_by_case: in-plane pixel spacing ``(sx, sy)`` in mm per case (default 1 mm).
            return_mask: also return the augmented mask as ``dataset_dict["breast_mask"]``.
        """
        super().__init__(is_train, **kwargs)
        self.mask_enabled = mask_enabled
        self.mask_dir = mask_dir
        self.mask_predictor = mask_predictor
        self.dilate_mm = dilate_mm
        self.spacing_by_case = spacing_by_case or {}
        self.return_mask = return_mask
        if mask_enabled:
            where = "a segmentation model" if mask_predictor is not None else mask_dir
            logger.info(f"[BreastMaskDatasetMapper] masking slices with breast masks from {where}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        if is_train:
            ret["augmentations"] = ret["augmentations"] + build_intensity_augmentation(cfg)
        mask_cfg = cfg.INPUT.BREAST_MASK
        predictor = None
        if mask_cfg.ENABLED and mask_cfg.SOURCE == "model":
            from breast_d2.segmentation.predict import BreastMaskPredictor

            # The mapper reads images in INPUT.FORMAT; the predictor must know the channel order.
            predictor = BreastMaskPredictor(
                mask_cfg.WEIGHTS, device="cpu", input_format=cfg.INPUT.FORMAT
            )
        ret.update(
            mask_enabled=mask_cfg.ENABLED,
            mask_dir=mask_dir_from_config(cfg),
            mask_predictor=predictor,
            dilate_mm=mask_cfg.DILATE_MM,
            spacing_by_case=_spacing_by_case(cfg) if mask_cfg.DILATE_MM > 0 else None,
            return_mask=False,
        )
        return ret

    def _read_mask(self, dataset_dict: Dict, image: np.ndarray) -> np.ndarray:
        case_id, slice_index = dataset_dict["case_id"], dataset_dict["slice_index"]
        if self.mask_predictor is not None:
            mask = self.mask_predictor(image).astype(np.uint8)
        else:
            path = os.path.join(self.mask_dir, case_id, f"{slice_index:04d}.png")
            mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise FileNotFoundError(
                    f"no breast mask for case {case_id} slice {slice_index}: {path} is missing or "
                    "unreadable (write masks with tools/predict_breast_masks.py, or set "
                    "INPUT.BREAST_MASK.ENABLED False)"
                )
            mask = (mask > 0).astype(np.uint8)
        if mask.shape != image.shape[:2]:
            raise ValueError(
                f"breast mask of case {case_id} slice {slice_index} has shape {mask.shape}, "
                f"image has {image.shape[:2]}"
            )
        if self.dilate_mm <= 0:
            return mask
        spacing = self.spacing_by_case.get(case_id, (1.0, 1.0))
        return dilate_mm(mask, self.dilate_mm, spacing).view(np.uint8)

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)  # it will be modified by code below
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        mask = None
        if self.mask_enabled:
            mask = self._read_mask(dataset_dict, image)
            image = apply_mask(image, mask)
        if not self.return_mask:
            mask = None

        # The mask rides along as "sem_seg" so it receives exactly the image's transforms.
        aug_input = T.AugInput(image, sem_seg=mask)
        transforms = self.augmentations(aug_input)
        image, mask = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]  # h, w
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if mask is not None:
            dataset_dict["breast_mask"] = torch.as_tensor(np.require(mask, requirements=["C", "W"]))

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict


def _spacing_by_case(cfg) -> Dict[str, tuple]:
    spacing = {}
    for name in tuple(cfg.DATASETS.TRAIN) + tuple(cfg.DATASETS.TEST):
        cases_json = MetadataCatalog.get(name).get("cases_json")
        if cases_json and os.path.isfile(cases_json):
            for case_id, case in read_cases(cases_json).items():
                spacing[case_id] = tuple(case["spacing"][:2])
    return spacing
