"""Shared test helpers: repository paths, the tool loader and the tiny cohorts several tests write.

A plain module (pytest puts ``tests/`` on ``sys.path``): ``from helpers import load_tool``. The
pytest fixtures built on these helpers live in ``conftest.py``.

Three tiny inputs live here:

- :func:`make_cohort`: a 5-case NIfTI cohort (``IMAGES/``, ``LABELS/``, ``MASKS/``, ``boxes.csv``)
  with cubic lesions at known places, for the converter tests;
- :func:`write_converted_phantom`: a phantom cohort (``breast_d2.data.phantom``) and its converted
  folder, for the detector tests;
- :func:`make_toy_converted`: a toy converted folder (slices, ground-truth breast masks, no
  detection files), learnable in seconds, for the segmentation tests.
"""
import hashlib
import importlib.util
import json
import logging
import os
from types import ModuleType
from typing import Dict, List, NamedTuple, Sequence

import cv2
import numpy as np
import SimpleITK as sitk

# breast_d2 (which imports torch and detectron2) is imported inside the cohort writers, so that
# this module, and conftest.py with it, loads in a moment for the tests that do not need it.

__all__ = [
    "REPO",
    "QUICK",
    "tool_path",
    "load_tool",
    "tool_env",
    "tree_hash",
    "SHAPE",
    "SPACING",
    "LESIONS",
    "CSV_HEADER",
    "write_nifti",
    "make_cohort",
    "ConvertedPhantom",
    "write_converted_phantom",
    "make_toy_converted",
]

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The detector config of the end-to-end tests (a few iterations of a small model).
QUICK = os.path.join(REPO, "configs", "quick_schedules", "frcnn_r18_quick.yaml")


# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
def breast_cfg(section: str = "", **values):
    """detectron2's defaults + breast_d2's keys, with ``values`` set on the config node at the
    dotted path ``section`` (e.g. ``breast_cfg("INPUT.ENHANCEMENT_GAIN", ENABLED=True)``)."""
    from detectron2.config import get_cfg

    from breast_d2.config import add_breast_config

    cfg = get_cfg()
    add_breast_config(cfg)
    node = cfg
    for name in filter(None, section.split(".")):
        node = getattr(node, name)
    for key, value in values.items():
        setattr(node, key, value)
    return cfg


def tool_path(name: str, folder: str = "tools") -> str:
    """Path of ``<folder>/<name>.py`` in this repository (``folder``: tools or benchmarks)."""
    return os.path.join(REPO, folder, f"{name}.py")


def load_tool(name: str, folder: str = "tools") -> ModuleType:
    """Import ``<folder>/<name>.py`` as a fresh module (module name ``tool_<name>``).

    Running a tool's ``main`` in the test process saves the seconds a new process spends
    importing torch and detectron2. Each call executes the file again, so module-level state
    never leaks from one test to the next; the module is not added to ``sys.modules``.
    """
    spec = importlib.util.spec_from_file_location(f"tool_{name}", tool_path(name, folder))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tool_env() -> Dict[str, str]:
    """This process's environment with this repository first on PYTHONPATH (for a tool run in a
    subprocess, which then imports this tree's breast_d2)."""
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def tree_hash(root: str) -> str:
    """SHA-256 hex digest of every relative path and file content under ``root``."""
    h = hashlib.sha256()
    for dirpath, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# A NIfTI cohort with known lesions (the converter tests)
# ---------------------------------------------------------------------------------------------
SHAPE = (8, 48, 48)  # Z, Y, X
SPACING = (0.75, 0.75, 1.5)  # x, y, z in mm (SimpleITK order)
# half-open [x0, y0, z0, x1, y1, z1] lesions per case: strata 1, 0, 2, 1, 0
LESIONS = {
    "PH0001": [[5, 6, 1, 15, 14, 4]],
    "PH0002": [],
    "PH0003": [[5, 5, 0, 10, 10, 2], [30, 30, 2, 40, 38, 7]],
    "PH0004": [[20, 20, 3, 28, 28, 6]],
    "PH0005": [],
}
CSV_HEADER = "Patient ID,Start Row,End Row,Start Column,End Column,Start Slice,End Slice\n"


def write_nifti(array: np.ndarray, path: str, spacing: Sequence[float] = SPACING) -> None:
    """Write a ``[Z, Y, X]`` array as an image with ``spacing`` (x, y, z mm) and no origin."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, path)


def make_cohort(root: str, lesions: Dict[str, list] = LESIONS, num_phases: int = 3) -> None:
    """IMAGES/ (NIfTI phases), LABELS/, MASKS/ and boxes.csv for cubic lesions.

    Args:
        root: cohort folder (created; its parent must exist).
        lesions: case id -> half-open ``[x0, y0, z0, x1, y1, z1]`` boxes; lesion i of a case has
            label i + 1 and enhances by 300 in every post-contrast phase.
        num_phases: phases per case (``<case_id>_<phase:04d>.nii.gz``), each ``SHAPE``.
    """
    from breast_d2.data.boxes import box_to_duke_row

    rng = np.random.default_rng(0)
    for sub in ("LABELS", "MASKS"):
        os.makedirs(os.path.join(root, sub))
    rows = []
    for case_id, boxes in lesions.items():
        os.makedirs(os.path.join(root, "IMAGES", case_id))
        labels = np.zeros(SHAPE, np.uint8)
        for i, (x0, y0, z0, x1, y1, z1) in enumerate(boxes):
            labels[z0:z1, y0:y1, x0:x1] = i + 1
            rows.append(",".join(map(str, (case_id,) + box_to_duke_row([x0, y0, z0, x1, y1, z1]))))
        base = rng.normal(100, 5, SHAPE)
        for p in range(num_phases):
            phase = (base + (labels > 0) * 300.0 * (p > 0) + 10 * p).astype(np.int16)
            write_nifti(phase, os.path.join(root, "IMAGES", case_id, f"{case_id}_{p:04d}.nii.gz"))
        write_nifti(labels, os.path.join(root, "LABELS", f"{case_id}.nii.gz"))
        mask = np.zeros(SHAPE, np.uint8)
        mask[:, 4:44, 2:46] = 1
        write_nifti(mask, os.path.join(root, "MASKS", f"{case_id}.nii.gz"))
    with open(os.path.join(root, "boxes.csv"), "w") as f:
        f.write(CSV_HEADER + "\n".join(rows) + "\n")


# ---------------------------------------------------------------------------------------------
# A converted phantom (the detector tests)
# ---------------------------------------------------------------------------------------------
class ConvertedPhantom(NamedTuple):
    """Folders written by :func:`write_converted_phantom`."""

    cohort: str  # the phantom cohort: IMAGES/, LABELS/, MASKS/, boxes.csv, phantom.json
    data: str  # its converted folder (docs/DATA_FORMAT.md), ground-truth masks in masks/gt/


def write_converted_phantom(
    root: str, num_cases: int, seed: int, matrix: int, num_folds: int, **phantom_kwargs
) -> ConvertedPhantom:
    """Write a tiny phantom cohort into ``root/phantom`` and convert it into ``root/coco``.

    The conversion takes the lesions from the label volumes and the breast masks from MASKS/,
    with the default channels and fold seed 0.

    Args:
        root: an existing folder.
        num_cases, seed, matrix: see ``breast_d2.data.phantom.write_cohort``.
        num_folds: patient-level folds of the conversion.
        phantom_kwargs: further ``write_cohort`` arguments; ``slices`` defaults to 16.

    Returns:
        ConvertedPhantom(cohort, data).
    """
    from breast_d2.data.convert import convert_cohort
    from breast_d2.data.phantom import write_cohort

    cohort, data = os.path.join(root, "phantom"), os.path.join(root, "coco")
    phantom_kwargs.setdefault("slices", 16)
    write_cohort(cohort, num_cases, seed=seed, matrix=matrix, **phantom_kwargs)
    convert_cohort(os.path.join(cohort, "IMAGES"), data, labels=os.path.join(cohort, "LABELS"),
                   masks=os.path.join(cohort, "MASKS"), num_folds=num_folds, seed=0)  # fmt: skip
    return ConvertedPhantom(cohort, data)


# ---------------------------------------------------------------------------------------------
# A toy converted folder (the segmentation tests)
# ---------------------------------------------------------------------------------------------
def _toy_case_slices(rng: np.random.Generator, height: int, width: int, num_slices: int):
    """RGB uint8 slices ``[H, W, 3]`` and bool breast masks ``[H, W]`` of one toy case.

    Each slice shows two bright half-ellipse "breasts" at the top (anterior) of the image, which
    form the mask, over a dark body with a bright "heart" disc below them that is *not* breast,
    plus noise. Not a realistic phantom; it only has to be learnable in seconds.
    """
    cy = int(height * rng.uniform(0.40, 0.5))  # chest wall row
    ax, ay = width * rng.uniform(0.17, 0.22), height * rng.uniform(0.25, 0.33)
    centres = [width * rng.uniform(0.25, 0.3), width * rng.uniform(0.7, 0.75)]
    yy, xx = np.mgrid[:height, :width]
    images, masks = [], []
    for z in range(num_slices):
        f = 0.55 + 0.45 * np.sin(np.pi * (z + 0.5) / num_slices)  # smaller at the ends
        mask = np.zeros((height, width), bool)
        for cx in centres:
            mask |= (((xx - cx) / (ax * f)) ** 2 + ((yy - cy) / (ay * f)) ** 2 <= 1) & (yy <= cy)
        heart = (xx - width / 2) ** 2 + (yy - cy - height * 0.22) ** 2 <= (height * 0.12) ** 2
        body = yy > cy
        pre = 0.15 * body + 0.55 * mask + 0.35 * heart
        post = pre + 0.25 * heart + 0.1 * mask
        chans = [post, post - pre, pre]
        img = np.stack([c + rng.normal(0, 0.05, c.shape) for c in chans], -1)
        images.append(np.clip(img * 255, 0, 255).astype(np.uint8))
        masks.append(mask)
    return images, masks


def make_toy_converted(
    root: str,
    num_cases: int = 6,
    height: int = 64,
    width: int = 64,
    num_slices: int = 8,
    num_folds: int = 2,
    seed: int = 0,
    unmasked: Sequence[str] = (),
) -> List[str]:
    """Write a toy converted folder into ``root`` and return its case ids.

    The docs/DATA_FORMAT.md converted layout (``slices/``, ``masks/gt/``, ``cases.json``,
    ``splits.json``) with no detection files; see :func:`_toy_case_slices` for the images.

    Args:
        root: output folder (created).
        num_cases: cases TOY0000 ...
        height, width: slice size in pixels (rows, columns).
        num_slices: slices per case.
        num_folds: patient-level folds (case i is in the validation set of fold i % num_folds).
        seed: random seed.
        unmasked: case ids written without a ground-truth mask (``"has_mask": false``).

    Returns:
        case ids.
    """
    rng = np.random.default_rng(seed)
    case_ids = [f"TOY{i:04d}" for i in range(num_cases)]
    cases = []
    for case_id in case_ids:
        images, masks = _toy_case_slices(rng, height, width, num_slices)
        has_mask = case_id not in set(unmasked)
        outputs = [("slices", images)] + [(os.path.join("masks", "gt"), masks)] * has_mask
        for sub, arrays in outputs:
            folder = os.path.join(root, sub, case_id)
            os.makedirs(folder, exist_ok=True)
            for z, a in enumerate(arrays):
                rgb = a.ndim == 3
                out = cv2.cvtColor(a, cv2.COLOR_RGB2BGR) if rgb else a.astype(np.uint8) * 255
                cv2.imwrite(os.path.join(folder, f"{z:04d}.png"), out)
        cases.append(
            {"case_id": case_id, "shape": [width, height, num_slices], "spacing": [0.7, 0.7, 2.0],
             "boxes": [], "has_mask": has_mask}
        )
    folds = [
        {"fold": k, "train": [c for i, c in enumerate(case_ids) if i % num_folds != k],
         "val": [c for i, c in enumerate(case_ids) if i % num_folds == k]}
        for k in range(num_folds)
    ]
    with open(os.path.join(root, "cases.json"), "w") as f:
        json.dump({"cases": cases}, f, indent=1)
    with open(os.path.join(root, "splits.json"), "w") as f:
        json.dump({"num_folds": num_folds, "seed": seed, "folds": folds}, f, indent=1)
    return case_ids
