"""Breast-region segmentation data read from the converted folder (docs/DATA_FORMAT.md).

Slices ``OUT/slices/<case_id>/<z:04d>.png`` are 8-bit 3-channel images (PNG channel order:
post1, post1-pre, pre, called "RGB" here); masks ``OUT/masks/gt/<case_id>/<z:04d>.png`` are 0/255.
Ground-truth masks may exist for only some cases (Duke: about 100 of 922): ``cases.json`` says so
per case with ``"has_mask"`` (:func:`split_by_gt_mask`); training and evaluation use the cases
that have one, prediction writes masks for the others.
The network sees a square ``input_size`` x ``input_size`` image: the slice is resized so that its
longer side equals ``input_size`` (aspect kept) and zero-padded at the bottom/right
(:func:`letterbox`); ``input_size=0`` keeps the native size and only pads to a multiple of 32.
"""
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.converted import read_cases
from ..data.errors import check_case_id
from ..fileio import path_inside

__all__ = [
    "SIZE_DIVISOR",
    "LetterboxMeta",
    "has_gt_mask",
    "split_by_gt_mask",
    "case_dir",
    "case_num_slices",
    "list_slices",
    "case_slices",
    "labelled_slices",
    "read_image",
    "read_mask",
    "load_case_images",
    "load_case_gt",
    "letterbox",
    "unletterbox",
    "images_to_tensor",
    "BreastSliceDataset",
]

logger = logging.getLogger(__name__)

# Every SMP encoder used here downsamples 5 times.
SIZE_DIVISOR = 32


def case_dir(data_root: str, sub: str, case_id: str) -> str:
    """``data_root/sub/case_id`` for a validated case id, never outside ``data_root/sub``.

    Args:
        data_root: converted folder.
        sub: ``"slices"``, ``"masks/gt"``, ``"masks/fold0"``, ...
        case_id: checked with :func:`~breast_d2.data.errors.check_case_id`.
    """
    root = os.path.join(data_root, sub)
    return path_inside(root, check_case_id(case_id, f"{root}: "))


def has_gt_mask(data_root: str, case_id: str, entry: Optional[Mapping] = None) -> bool:
    """Whether a case has a ground-truth breast mask ``masks/gt/<case_id>/``.

    Args:
        data_root: converted folder.
        case_id: the case.
        entry: its ``cases.json`` entry; its ``"has_mask"`` decides when present. Without the key
            (folders converted before it existed) the mask folder's slices decide.

    Raises:
        FileNotFoundError: ``"has_mask": true`` but the mask folder holds no slice.
    """
    folder = os.path.join(data_root, "masks", "gt", case_id)
    if entry is None or "has_mask" not in entry:
        return bool(list_slices(folder))
    if entry["has_mask"] and not list_slices(folder):
        raise FileNotFoundError(
            f"case {case_id}: cases.json says it has a breast mask but {folder} holds no slice"
        )
    return bool(entry["has_mask"])


def split_by_gt_mask(data_root: str, case_ids: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``(with_mask, without_mask)``: ``case_ids`` split by :func:`has_gt_mask`, order kept."""
    cases = read_cases(data_root)
    with_mask, without = [], []
    for case_id in case_ids:
        has = has_gt_mask(data_root, case_id, cases.get(case_id))
        (with_mask if has else without).append(case_id)
    return with_mask, without


def list_slices(folder: str) -> List[int]:
    """Sorted slice indices z of the ``<z:04d>.png`` files in ``folder`` ([] when missing)."""
    if not os.path.isdir(folder):
        return []
    names = (n[:-4] for n in os.listdir(folder) if n.endswith(".png"))
    return sorted(int(n) for n in names if n.isdigit())


def labelled_slices(num_slices: int, label_every: int) -> List[int]:
    """Slices treated as annotated: ``label_every // 2, + label_every, ...`` (1 in every N).

    Starting mid-way through the first block (not at z=0) avoids the edge slices, as an
    annotator labelling "one slice in every 10" would.
    """
    if label_every < 1:
        raise ValueError(f"label_every must be >= 1, got {label_every}")
    return list(range(label_every // 2, num_slices, label_every))


def read_image(path: str) -> np.ndarray:
    """``[H, W, 3]`` uint8 in PNG ("RGB") channel order."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read slice {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path: str) -> np.ndarray:
    """``[H, W]`` bool (non-zero pixels)."""
    m = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise FileNotFoundError(f"cannot read mask {path}")
    return m > 0


def case_num_slices(cases: Dict[str, dict], case_id: str) -> Optional[int]:
    """``Z`` (``shape[2]``) of a case in a :func:`~breast_d2.data.converted.read_cases` dict.

    None when not recorded.
    """
    shape = cases.get(case_id, {}).get("shape")
    ok = isinstance(shape, (list, tuple)) and len(shape) == 3 and isinstance(shape[2], int)
    return int(shape[2]) if ok else None


def case_slices(data_root: str, case_id: str, num_slices: Optional[int] = None) -> List[int]:
    """Slice indices ``0 .. Z-1`` of a case, after checking that every slice PNG is there.

    Args:
        data_root: converted folder.
        case_id: the case (validated, see :func:`case_dir`).
        num_slices: ``Z`` from ``cases.json`` (``shape[2]``); None: the highest slice found + 1,
            so only gaps, not a missing last slice, are noticed.

    Raises:
        FileNotFoundError: naming the case and the first missing slice (a skipped slice would
            shift every later one).
        ValueError: slices beyond ``num_slices``.
    """
    folder = case_dir(data_root, "slices", case_id)
    zs = list_slices(folder)
    if not zs:
        raise FileNotFoundError(f"case {case_id}: no slices in {folder}")
    count = zs[-1] + 1 if num_slices is None else int(num_slices)
    missing = sorted(set(range(count)) - set(zs))
    if missing:
        raise FileNotFoundError(
            f"case {case_id} slice {missing[0]}: {os.path.join(folder, f'{missing[0]:04d}.png')} "
            f"is missing ({len(missing)} of {count} slices missing)"
        )
    if zs[-1] >= count:
        raise ValueError(f"case {case_id}: slice {zs[-1]} in {folder} but cases.json says "
                         f"{count} slices")
    return zs


def load_case_images(
    data_root: str, case_id: str, num_slices: Optional[int] = None
) -> Tuple[List[int], np.ndarray]:
    """``(z_list, images [Z, H, W, 3] uint8)`` of every slice of a case.

    ``num_slices`` (``cases.json`` ``shape[2]``) lets :func:`case_slices` notice a missing last
    slice too; any missing slice is an error naming the case and slice.
    """
    zs = case_slices(data_root, case_id, num_slices)
    folder = case_dir(data_root, "slices", case_id)
    return zs, np.stack([read_image(os.path.join(folder, f"{z:04d}.png")) for z in zs])


def load_case_gt(data_root: str, case_id: str, zs: Sequence[int]) -> np.ndarray:
    """Ground-truth breast mask ``[Z, H, W]`` bool for slices ``zs`` (error names a missing one)."""
    folder = case_dir(data_root, os.path.join("masks", "gt"), case_id)
    out = []
    for z in zs:
        path = os.path.join(folder, f"{z:04d}.png")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"case {case_id} slice {z}: no ground-truth mask {path}")
        out.append(read_mask(path))
    return np.stack(out)


@dataclass
class LetterboxMeta:
    """How :func:`letterbox` changed an image: original ``(height, width)``, resized ``(h, w)``."""

    height: int
    width: int
    resized_h: int
    resized_w: int


def _padded(n: int) -> int:
    return int(np.ceil(n / SIZE_DIVISOR) * SIZE_DIVISOR)


def letterbox(
    image: np.ndarray, input_size: int, interpolation: int = cv2.INTER_LINEAR
) -> Tuple[np.ndarray, LetterboxMeta]:
    """Resize the longer side to ``input_size`` and zero-pad bottom/right to a square.

    Args:
        image: ``[H, W]`` or ``[H, W, C]``.
        input_size: side of the output (a multiple of 32); 0 keeps ``H, W`` and pads each to
            the next multiple of 32.
        interpolation: OpenCV flag (use ``cv2.INTER_NEAREST`` for label masks).

    Returns:
        ``(padded image, meta)``; padded is ``[S, S(, C)]`` (or the padded native size).
    """
    h, w = image.shape[:2]
    if input_size:
        if input_size % SIZE_DIVISOR:
            raise ValueError(f"input_size must be a multiple of {SIZE_DIVISOR}, got {input_size}")
        scale = input_size / max(h, w)
        rh, rw = max(1, round(h * scale)), max(1, round(w * scale))
        out_h = out_w = input_size
        if (rh, rw) != (h, w):
            image = cv2.resize(image, (rw, rh), interpolation=interpolation)
    else:
        rh, rw, out_h, out_w = h, w, _padded(h), _padded(w)
    padded = np.zeros((out_h, out_w) + image.shape[2:], dtype=image.dtype)
    padded[:rh, :rw] = image
    return padded, LetterboxMeta(h, w, rh, rw)


def unletterbox(prob: np.ndarray, meta: LetterboxMeta) -> np.ndarray:
    """Inverse of :func:`letterbox` for a float map ``[S, S]`` -> ``[H, W]`` (bilinear)."""
    prob = np.ascontiguousarray(prob[: meta.resized_h, : meta.resized_w], dtype=np.float32)
    if (meta.resized_h, meta.resized_w) != (meta.height, meta.width):
        prob = cv2.resize(prob, (meta.width, meta.height), interpolation=cv2.INTER_LINEAR)
    return prob


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """``[N, H, W, C]`` uint8 -> ``[N, C, H, W]`` float32 in [0, 1] (the network's input scale)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


class BreastSliceDataset(Dataset):
    """Annotated training slices of some cases: ``(image [3, S, S] float, mask [1, S, S] float)``.

    Only every ``label_every``-th slice of each case is used (:func:`labelled_slices`), as the
    study annotated one slice in ten; a labelled slice without a ``masks/gt`` file is an error.
    Samples are letterboxed once and cached in memory (uint8), then flipped horizontally with
    probability 0.5 when ``flip`` (the study's only augmentation).

    Args:
        data_root: converted folder.
        case_ids: cases to draw slices from.
        label_every: use 1 slice in every ``label_every``.
        input_size: network input side (multiple of 32), 0 = native size padded to 32.
        flip: random horizontal flips.
    """

    def __init__(
        self,
        data_root: str,
        case_ids: Sequence[str],
        label_every: int = 10,
        input_size: int = 256,
        flip: bool = True,
    ):
        self.flip = flip
        self.items: List[Tuple[str, int]] = []
        images, masks = [], []
        cases = read_cases(data_root)
        for case_id in case_ids:
            zs = case_slices(data_root, case_id, case_num_slices(cases, case_id))
            for z in [zs[i] for i in labelled_slices(len(zs), label_every)]:
                img = read_image(os.path.join(case_dir(data_root, "slices", case_id),
                                              f"{z:04d}.png"))
                gt = load_case_gt(data_root, case_id, [z])[0].astype(np.uint8)
                images.append(letterbox(img, input_size)[0])
                masks.append(letterbox(gt, input_size, cv2.INTER_NEAREST)[0])
                self.items.append((case_id, z))
        if not self.items:
            raise ValueError("no labelled training slices")
        self.images = np.stack(images)
        self.masks = np.stack(masks)
        logger.info(
            "%d labelled slices from %d cases (1 in %d), input %s",
            len(self.items), len(case_ids), label_every, self.images.shape[1:3],
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> Tuple[torch.Tensor, torch.Tensor]:
        img, mask = self.images[idx], self.masks[idx]
        if self.flip and torch.rand(()).item() < 0.5:  # torch RNG is seeded per worker
            img, mask = img[:, ::-1], mask[:, ::-1]
        image = images_to_tensor(img[None])[0]
        target = torch.from_numpy(np.ascontiguousarray(mask)).float()[None]
        return image, target
