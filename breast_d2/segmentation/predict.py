"""Breast-mask inference (:class:`BreastMaskPredictor`) and fold-correct mask folders.

Fold correctness: the mask of a case that is *evaluated* in fold K (a validation case) must come
from a model that never trained on it. Every checkpoint records its ``train_cases``;
:func:`write_fold_masks` refuses a checkpoint whose ``train_cases`` contain a validation case of
fold K, records the checkpoint's ``train_cases`` in ``masks/fold{K}/manifest.json``, and
:func:`verify_fold_masks` re-checks a written folder against the manifest and the checkpoint.
"""
import hashlib
import logging
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import cv2
import numpy as np
import torch

from ..data.converted import read_cases, read_fold, read_json
from ..data.errors import check_case_id
from ..fileio import atomic_folder, load_torch_file, path_inside, write_json_atomic
from .data import (
    case_num_slices,
    case_slices,
    images_to_tensor,
    letterbox,
    list_slices,
    load_case_gt,
    load_case_images,
    split_by_gt_mask,
    unletterbox,
)
from .models import build_model_from_checkpoint
from .postprocess import dilate_mm, postprocess_mask

__all__ = [
    "FoldLeakError",
    "BreastMaskPredictor",
    "load_checkpoint",
    "predict_proba",
    "check_no_fold_leak",
    "write_fold_masks",
    "verify_fold_masks",
    "MANIFEST_NAME",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"


class FoldLeakError(ValueError):
    """A validation case of the fold would get a mask from a model that trained on it."""


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load a segmentation checkpoint dict (docs/DATA_FORMAT.md) on the CPU."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint {path}")
    ckpt = load_torch_file(path, "breast segmentation checkpoint")  # weights_only=True
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} is not a breast segmentation checkpoint (not a dict)")
    missing = [k for k in ("arch", "encoder", "model", "train_cases") if k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not a breast segmentation checkpoint (missing {missing})")
    return ckpt


def check_no_fold_leak(train_cases: Iterable[str], val_cases: Iterable[str], fold: int) -> None:
    """Raise :class:`FoldLeakError` when a validation case of ``fold`` is among ``train_cases``."""
    leaked = sorted(set(train_cases) & set(val_cases))
    if leaked:
        shown = ", ".join(leaked[:5]) + (" ..." if len(leaked) > 5 else "")
        raise FoldLeakError(
            f"checkpoint trained on {len(leaked)} validation case(s) of fold {fold}: {shown}"
        )


@torch.inference_mode()
def predict_proba(
    model: torch.nn.Module,
    images: np.ndarray,
    input_size: int,
    batch_size: int = 8,
    device: Union[str, torch.device] = "cpu",
) -> np.ndarray:
    """Probability maps of a model (in eval mode) for slices in PNG ("RGB") channel order.

    Args:
        model: network returning logits ``[N, 1, S, S]``.
        images: ``[N, H, W, 3]`` uint8.
        input_size: letterbox side (multiple of 32), 0 = native size padded to 32.
        batch_size: slices per forward pass.
        device: where the model lives.

    Returns:
        ``[N, H, W]`` float32 in [0, 1].
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images [N, H, W, 3], got {images.shape}")
    out = []
    for start in range(0, len(images), batch_size):
        boxed = [letterbox(im, input_size) for im in images[start : start + batch_size]]
        x = images_to_tensor(np.stack([b[0] for b in boxed])).to(device)
        prob = torch.sigmoid(model(x))[:, 0].float().cpu().numpy()
        out.extend(unletterbox(p, meta) for p, (_, meta) in zip(prob, boxed))
    return np.stack(out) if out else np.zeros(images.shape[:3], np.float32)


class BreastMaskPredictor:
    """Run a trained breast-region model on slices or whole cases.

    Args:
        weights: checkpoint path (tools/train_breast_seg.py) or an already loaded checkpoint dict.
        device: torch device string.
        input_size: network input side (multiple of 32); None uses the checkpoint's
            ``input_size``, 0 the native slice size padded to a multiple of 32.
        threshold: probability threshold.
        min_component_fraction: keep connected components at least this fraction of the
            largest (None: no component filtering).
        fill_holes: fill holes of every slice.
        input_format: channel order of the images given to the predictor: "RGB" = PNG order of
            the converted slices (post1, post1-pre, pre); "BGR" = reversed (detectron2's
            default ``INPUT.FORMAT``).
        batch_size: slices per forward pass in :meth:`predict_case`.

    Attributes:
        arch, encoder, fold (int or None), train_cases (frozenset of case ids), input_size.
    """

    def __init__(
        self,
        weights: Union[str, Dict[str, Any]],
        device: str = "cpu",
        input_size: Optional[int] = None,
        threshold: float = 0.5,
        min_component_fraction: Optional[float] = 0.1,
        fill_holes: bool = True,
        input_format: str = "RGB",
        batch_size: int = 8,
    ):
        ckpt = load_checkpoint(weights) if isinstance(weights, str) else weights
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"input_format must be 'RGB' or 'BGR', got {input_format!r}")
        self.device = torch.device(device)
        self.model = build_model_from_checkpoint(ckpt).to(self.device).eval()
        self.arch, self.encoder = ckpt["arch"], ckpt["encoder"]
        self.fold = ckpt.get("fold")
        self.train_cases = frozenset(ckpt["train_cases"])
        self.input_size = int(ckpt.get("input_size", 0) if input_size is None else input_size)
        self.threshold = threshold
        self.min_component_fraction = min_component_fraction
        self.fill_holes = fill_holes
        self.input_format = input_format
        self.batch_size = max(1, int(batch_size))

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Breast probability of every pixel, no post-processing.

        Args:
            images: ``[N, H, W, 3]`` uint8 in ``input_format`` order.

        Returns:
            ``[N, H, W]`` float32 in [0, 1].
        """
        images = np.asarray(images)
        if self.input_format == "BGR" and images.ndim == 4:
            images = images[..., ::-1]
        return predict_proba(self.model, images, self.input_size, self.batch_size, self.device)

    def _post(
        self, mask: np.ndarray, dilation_mm: float, spacing_xy: Sequence[float]
    ) -> np.ndarray:
        return postprocess_mask(
            mask, self.min_component_fraction, self.fill_holes, dilation_mm, spacing_xy
        )

    def __call__(
        self,
        image_hwc_uint8: np.ndarray,
        dilation_mm: float = 0.0,
        spacing_xy: Sequence[float] = (1.0, 1.0),
    ) -> np.ndarray:
        """Breast mask of one slice, post-processed in 2D.

        Args:
            image_hwc_uint8: ``[H, W, 3]`` uint8 in ``input_format`` order.
            dilation_mm: in-plane dilation in mm (0 = none).
            spacing_xy: pixel spacing ``(sx, sy)`` in mm for the dilation.

        Returns:
            ``[H, W]`` bool.
        """
        prob = self.predict_proba(np.asarray(image_hwc_uint8)[None])[0]
        return self._post(prob >= self.threshold, dilation_mm, spacing_xy)

    def predict_case(
        self,
        images: np.ndarray,
        dilation_mm: float = 0.0,
        spacing_xy: Sequence[float] = (1.0, 1.0),
        postprocess: bool = True,
    ) -> np.ndarray:
        """Breast mask of a whole case; components are taken in 3D (see postprocess.py).

        Args:
            images: ``[Z, H, W, 3]`` uint8 in ``input_format`` order.
            dilation_mm: in-plane dilation in mm (0 = none).
            spacing_xy: pixel spacing ``(sx, sy)`` in mm.
            postprocess: False returns the thresholded network output only.

        Returns:
            ``[Z, H, W]`` bool.
        """
        mask = self.predict_proba(images) >= self.threshold
        return self._post(mask, dilation_mm, spacing_xy) if postprocess else mask


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_case_masks(fold_dir: str, case_id: str, zs: Sequence[int], masks: np.ndarray) -> None:
    """Write ``<case_id>/<z:04d>.png`` (0/255) atomically: a temp folder, then swapped in."""
    final = path_inside(fold_dir, check_case_id(case_id, f"{fold_dir}: "))
    with atomic_folder(final) as tmp:
        for z, m in zip(zs, masks):
            if not cv2.imwrite(os.path.join(tmp, f"{z:04d}.png"), m.astype(np.uint8) * 255):
                raise OSError(f"case {case_id}: cannot write slice {z} in {tmp}")


def write_fold_masks(
    data_root: str,
    fold: int,
    weights: str,
    source: str = "model",
    dilation_mm: float = 0.0,
    resume: bool = False,
    device: str = "cpu",
    batch_size: int = 8,
    min_component_fraction: Optional[float] = 0.1,
    progress: bool = True,
    all_unseen: bool = False,
) -> Dict[str, Any]:
    """Write fold-correct masks ``data_root/masks/fold{fold}/<case_id>/<z:04d>.png`` (0/255).

    Validation cases of the fold always get the model's mask; training cases get the same
    model's mask (``source="model"``) or a copy of ``masks/gt`` (``source="gt"``; training cases
    without a ground-truth mask get the model's). ``dilation_mm`` applies to every case. Each
    case is written atomically and recorded in ``manifest.json`` right away, so ``resume=True``
    continues an interrupted run with the same settings.

    Args:
        data_root: converted folder.
        fold: fold index K in ``splits.json``.
        weights: checkpoint of a model trained without fold K's validation cases.
        source: "model" or "gt" (for the training cases only).
        dilation_mm: in-plane dilation in mm (spacing from cases.json).
        resume: skip cases already recorded in the manifest (settings must match).
        device: torch device string.
        batch_size: slices per forward pass.
        min_component_fraction: see :class:`BreastMaskPredictor`.
        progress: show a tqdm bar.
        all_unseen: also write the model's mask for every case of ``cases.json`` outside the
            fold's splits (e.g. a held-out test set) that the checkpoint did not train on
            (role ``"unseen"`` in the manifest).

    Returns:
        the manifest dict.

    Raises:
        FoldLeakError: the checkpoint's ``train_cases`` contain a validation case of ``fold``.
        ValueError: bad ``source`` or a resume with different settings.
    """
    from tqdm import tqdm

    if source not in ("model", "gt"):
        raise ValueError(f"source must be 'model' or 'gt', got {source!r}")
    train_ids, val_ids = read_fold(data_root, fold)
    ckpt = load_checkpoint(weights)
    check_no_fold_leak(ckpt["train_cases"], val_ids, fold)
    if ckpt.get("fold") is not None and int(ckpt["fold"]) != int(fold):
        logger.warning("checkpoint is from fold %s, writing fold %d", ckpt["fold"], fold)
    cases = read_cases(data_root)
    settings = {
        "fold": int(fold),
        "weights": os.path.abspath(weights),
        "weights_sha256": _sha256(weights),
        "arch": ckpt["arch"],
        "encoder": ckpt["encoder"],
        "checkpoint_fold": ckpt.get("fold"),
        "checkpoint_epoch": ckpt.get("epoch"),
        "train_cases": sorted(ckpt["train_cases"]),
        "input_size": ckpt.get("input_size"),
        "source": source,
        "dilate_mm": float(dilation_mm),
        "min_component_fraction": min_component_fraction,
        "fill_holes": True,
        "threshold": 0.5,
    }
    if all_unseen:  # only when set, so manifests written before the option still resume
        settings["all_unseen"] = True
    fold_dir = os.path.join(data_root, "masks", f"fold{fold}")
    os.makedirs(fold_dir, exist_ok=True)
    manifest_path = os.path.join(fold_dir, MANIFEST_NAME)
    manifest = {**settings, "cases": {}}
    if resume and os.path.isfile(manifest_path):
        old = read_json(manifest_path)
        diff = sorted(k for k in settings if old.get(k) != settings[k])
        if diff:
            raise ValueError(f"--resume: {manifest_path} was written with other settings: {diff}")
        manifest["cases"] = old.get("cases", {})
    elif os.path.isfile(manifest_path):
        os.remove(manifest_path)  # a half-rewritten folder must not look complete

    predictor = BreastMaskPredictor(
        ckpt, device=device, batch_size=batch_size, min_component_fraction=min_component_fraction
    )
    with_gt = set(split_by_gt_mask(data_root, train_ids)[0]) if source == "gt" else set()
    todo = [(c, "val") for c in val_ids] + [(c, "train") for c in train_ids]
    if all_unseen:
        todo += [(c, "unseen") for c in _unseen_cases(cases, train_ids, val_ids, ckpt)]
    for case_id, role in tqdm(todo, desc=f"masks fold{fold}", disable=not progress):
        case_source = "gt" if role == "train" and case_id in with_gt else "model"
        num_slices = case_num_slices(cases, case_id)
        zs = case_slices(data_root, case_id, num_slices)  # a missing slice PNG is an error
        done = manifest["cases"].get(case_id)
        if done and done["source"] == case_source and done["slices"] == len(zs):
            if list_slices(path_inside(fold_dir, case_id)) == zs:
                continue
        spacing = cases.get(case_id, {}).get("spacing", [1.0, 1.0, 1.0])[:2]
        if case_source == "model":
            zs, images = load_case_images(data_root, case_id, num_slices)
            masks = predictor.predict_case(images, dilation_mm, spacing)
        else:
            masks = dilate_mm(load_case_gt(data_root, case_id, zs), dilation_mm, spacing)
        _write_case_masks(fold_dir, case_id, zs, masks)
        manifest["cases"][case_id] = {"role": role, "source": case_source, "slices": len(zs)}
        write_json_atomic(manifest_path, manifest, indent=2)
        logger.info("fold%d %s (%s): %d slices from %s", fold, case_id, role, len(zs), case_source)
    return manifest


def _unseen_cases(cases: Dict[str, dict], train_ids, val_ids, ckpt: Dict[str, Any]) -> List[str]:
    """Cases of ``cases.json`` outside the fold's splits that the checkpoint did not train on."""
    in_fold, seen = set(train_ids) | set(val_ids), set(ckpt["train_cases"])
    outside = [c for c in cases if c not in in_fold]
    unseen = [c for c in outside if c not in seen]
    logger.info("%d case(s) outside the fold's splits, %d not seen by the checkpoint",
                len(outside), len(unseen))  # fmt: skip
    return unseen


def verify_fold_masks(data_root: str, fold: int, check_checkpoint: bool = True) -> List[str]:
    """Check that ``masks/fold{fold}`` is fold-correct; return the problems found ([] = correct).

    Checks: a manifest exists for this fold; every validation case of ``splits.json`` has masks
    from ``source == "model"``; no validation case is in the recorded ``train_cases``; and, when
    ``check_checkpoint`` and the checkpoint file still exists with the recorded hash, its own
    ``train_cases`` metadata agrees.
    """
    fold_dir = os.path.join(data_root, "masks", f"fold{fold}")
    path = os.path.join(fold_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        return [f"no {path}"]
    manifest = read_json(path)
    _, val_ids = read_fold(data_root, fold)
    problems = []
    if int(manifest.get("fold", -1)) != int(fold):
        problems.append(f"manifest is for fold {manifest.get('fold')}, not {fold}")
    train_cases = set(manifest.get("train_cases", []))
    if check_checkpoint and os.path.isfile(manifest.get("weights", "")):
        if _sha256(manifest["weights"]) == manifest.get("weights_sha256"):
            train_cases |= set(load_checkpoint(manifest["weights"])["train_cases"])
    for case_id in val_ids:
        entry = manifest["cases"].get(case_id)
        if entry is None or not os.path.isdir(path_inside(fold_dir, case_id)):
            problems.append(f"validation case {case_id}: no masks")
        elif entry["source"] != "model":
            problems.append(f"validation case {case_id}: source {entry['source']!r}, not 'model'")
        if case_id in train_cases:
            problems.append(f"validation case {case_id}: mask model trained on it")
    return problems
