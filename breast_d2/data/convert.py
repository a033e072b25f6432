"""Convert a DCE-MRI cohort (volumes + boxes or label volumes) to slices, COCO files and folds.

Writes the converted folder of docs/DATA_FORMAT.md::

    OUT/slices/<case_id>/<z:04d>.png     8-bit RGB slice, R, G, B = the three channel expressions
    OUT/masks/gt/<case_id>/<z:04d>.png   8-bit breast mask, 0 or 255 (when masks are given)
    OUT/cases.json, OUT/splits.json, OUT/fold{k}_train.json, OUT/fold{k}_val.json, OUT/convert.log

Safety: inputs are validated before ``OUT`` is created; nothing is ever written into the input
tree; each case is written into a temporary folder inside ``OUT/.tmp`` and renamed into place, and
its small record (``OUT/.convert_state/<case_id>.json``, used by ``resume``) is renamed last, so a
case is either finished or absent; JSON files are written to a temporary file and ``os.replace``-d.
A failing case stops the conversion with a :class:`~breast_d2.data.volumes.CohortError` naming it.
"""
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from ..utils import write_json_atomic
from .volumes import (
    NIFTI_SUFFIXES,
    CaseGeometry,
    CohortError,
    PathLike,
    check_box_in_volume,
    compose_channels,
    iter_phase_images,
    label_lesions,
    list_cases,
    parse_channels,
    read_box_rows,
    read_volume,
    slice_boxes_from_boxes,
    slice_boxes_from_components,
)

__all__ = [
    "convert_cohort",
    "make_folds",
    "lesion_stratum",
    "CATEGORIES",
]

logger = logging.getLogger(__name__)

#: The single COCO category of the project.
CATEGORIES = [{"id": 1, "name": "mass", "supercategory": "lesion"}]
_STATE_DIR = ".convert_state"  # per-case records of finished cases (what resume relies on)
_TMP_DIR = ".tmp"  # per-case temporary folders, renamed into place when complete
_LOG_NAME = "convert.log"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_PNG_COMPRESS_LEVEL = 1  # zlib level 1: PNG writing dominates conversion; level 6 is ~2x slower


class _CaseJob(NamedTuple):
    """Everything one worker needs to convert one case (picklable)."""

    case_id: str
    case_dir: str
    out: str
    channels: str
    boxes: Optional[List[Tuple[List[int], int]]]  # CSV boxes with their line numbers
    boxes_csv: Optional[str]
    label_path: Optional[str]
    mask_path: Optional[str]
    settings: dict


# ----------------------------------------------------------------------------- folds


def lesion_stratum(num_lesions: int) -> int:
    """Stratum of a case for fold splitting: 0, 1 or 2 (= two or more lesions)."""
    return min(int(num_lesions), 2)


def make_folds(lesion_counts: Mapping[str, int], num_folds: int, seed: int) -> List[List[str]]:
    """Patient-level stratified k-fold split.

    Cases are grouped by :func:`lesion_stratum`; each group is shuffled with ``seed`` and dealt
    round-robin over the folds, continuing where the previous group stopped, so fold sizes differ
    by at most one and every stratum is spread evenly. Same counts and seed -> same split.

    Args:
        lesion_counts: ``{case_id: number of lesions}``.
        num_folds: K, 2 <= K <= number of cases.
        seed: shuffling seed.

    Returns:
        K sorted lists of case ids (the validation cases of each fold); each case is in exactly one.
    """
    if not 2 <= num_folds <= len(lesion_counts):
        raise CohortError(
            f"cannot split {len(lesion_counts)} case(s) into {num_folds} folds "
            "(need 2 <= folds <= number of cases)"
        )
    rng = np.random.default_rng(seed)
    folds: List[List[str]] = [[] for _ in range(num_folds)]
    k = 0
    for stratum in range(3):
        group = sorted(c for c, n in lesion_counts.items() if lesion_stratum(n) == stratum)
        for i in rng.permutation(len(group)):
            folds[k % num_folds].append(group[i])
            k += 1
    return [sorted(f) for f in folds]


# ----------------------------------------------------------------------------- small helpers


def _write_png(path: str, array: np.ndarray) -> None:
    """Write ``[H, W]`` or ``[H, W, 3]`` uint8 as PNG; channel 0 of a colour array becomes R."""
    if array.ndim == 3:
        array = np.ascontiguousarray(array[..., ::-1])  # cv2 writes BGR order
    # cv2 writes a 320x320 RGB slice ~1.5x faster than PIL at the same zlib level.
    if not cv2.imwrite(path, array, [cv2.IMWRITE_PNG_COMPRESSION, _PNG_COMPRESS_LEVEL]):
        raise OSError(f"cannot write {path}")


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _volumes_by_case(folder: str, kind: str) -> Dict[str, str]:
    """``{case_id: path}`` of the ``<case_id>.nii.gz`` files of a LABELS/MASKS folder."""
    if not os.path.isdir(folder):
        raise CohortError(f"{kind} folder {folder} does not exist or is not a folder")
    out = {}
    for name in sorted(os.listdir(folder)):
        for ext in NIFTI_SUFFIXES:
            if name.endswith(ext) and not name.startswith("."):
                out.setdefault(name[: -len(ext)], os.path.join(folder, name))
                break
    return out


# ----------------------------------------------------------------------------- input checks


def _check_out(out: str, inputs: Sequence[Optional[str]], resume: bool) -> None:
    for src in filter(None, inputs):
        if _inside(out, src) or _inside(src, out):
            raise CohortError(f"output folder {out} overlaps the input {src}; choose another --out")
    if os.path.exists(out) and not os.path.isdir(out):
        raise CohortError(f"output {out} exists and is not a folder")
    if not resume and os.path.isdir(out) and os.listdir(out):
        raise CohortError(
            f"output folder {out} is not empty; pass --resume to continue a conversion there "
            "or choose a new folder"
        )


def _boxes_by_case(boxes_csv: str, cases: Sequence[str], images: str) -> Dict[str, list]:
    by_case: Dict[str, list] = {c: [] for c in cases}
    for row in read_box_rows(boxes_csv):
        if row.case_id not in by_case:
            raise CohortError(
                f"{boxes_csv} line {row.line}: case {row.case_id} has no images "
                f"(no folder {os.path.join(images, row.case_id)})"
            )
        by_case[row.case_id].append((row.box, row.line))
    return by_case


def _match_volumes(folder: str, cases: Sequence[str], kind: str, strict: bool) -> Dict[str, str]:
    paths = _volumes_by_case(folder, kind)
    for case_id in cases:
        if case_id not in paths:
            path = os.path.join(folder, case_id)
            raise CohortError(f"case {case_id}: missing {kind} {path}.nii.gz")
    for name, path in paths.items():
        if name not in set(cases):
            if strict:
                raise CohortError(f"case {name}: {kind} {path} belongs to no case in the images")
            logger.warning("%s %s belongs to no case in the images; ignored", kind, path)
    return paths


# ----------------------------------------------------------------------------- one case


def _read_case(job: _CaseJob):
    """Read and validate one case; returns ``(phases {k: [Z,Y,X]}, geometry, num_phases)``."""
    needed = {k for expr in parse_channels(job.channels) for k in expr if k is not None}
    phases, geom, count = {}, None, 0
    for k, array, geom in iter_phase_images(job.case_dir, job.case_id):
        count += 1
        if k in needed:
            phases[k] = array
    missing = sorted(needed - set(phases))
    if missing:
        raise CohortError(
            f"case {job.case_id}: channels {job.channels!r} use phase {missing[0]} but "
            f"{job.case_dir} has only {count} phase(s)"
        )
    return phases, geom, count


def _case_lesions(job: _CaseJob, geom: CaseGeometry):
    """Half-open 3D boxes of the case and the per-slice 2D boxes (see DATA_FORMAT.md)."""
    if job.label_path is not None:
        labels = read_volume(job.label_path, job.case_id, "label volume", expect=geom)
        components, boxes = label_lesions(labels)
        return boxes, slice_boxes_from_components(components, boxes)
    boxes = []
    for box, line in job.boxes or []:
        check_box_in_volume(box, geom.size, f"{job.boxes_csv} line {line}: case {job.case_id}: ")
        boxes.append(list(box))
    return boxes, None  # CSV slice boxes are derived from the 3D boxes when the COCO files are made


def _write_case(job: _CaseJob, tmp: str) -> dict:
    """Write the slices (and mask) of one case into ``tmp``; return its record."""
    t0 = time.perf_counter()
    phases, geom, num_phases = _read_case(job)
    boxes, slice_boxes = _case_lesions(job, geom)
    mask = None
    if job.mask_path is not None:
        mask = read_volume(job.mask_path, job.case_id, "mask", expect=geom)
    rgb = compose_channels(phases, job.channels)
    del phases
    os.makedirs(os.path.join(tmp, "slices"))
    for z in range(rgb.shape[0]):
        _write_png(os.path.join(tmp, "slices", f"{z:04d}.png"), rgb[z])
    if mask is not None:
        os.makedirs(os.path.join(tmp, "masks"))
        for z in range(mask.shape[0]):
            binary = np.where(mask[z] != 0, 255, 0).astype(np.uint8)
            _write_png(os.path.join(tmp, "masks", f"{z:04d}.png"), binary)
    return {
        "case_id": job.case_id,
        "shape": list(geom.size),
        "spacing": [round(v, 6) for v in geom.spacing],  # NIfTI stores float32: 0.8 not 0.80000001
        "geometry": geom.to_dict(),
        "num_phases": num_phases,
        "boxes": boxes,
        "slice_boxes": slice_boxes,
        "settings": job.settings,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _case_paths(out: str, case_id: str) -> Tuple[str, str, str]:
    return (
        os.path.join(out, "slices", case_id),
        os.path.join(out, "masks", "gt", case_id),
        os.path.join(out, _STATE_DIR, case_id + ".json"),
    )


def _commit_case(job: _CaseJob, tmp: str, record: dict) -> None:
    """Move a complete case from ``tmp`` into place; the record (the 'finished' mark) goes last."""
    slices_dst, masks_dst, record_dst = _case_paths(job.out, job.case_id)
    if os.path.exists(record_dst):
        os.remove(record_dst)
    for dst in (slices_dst, masks_dst):
        if os.path.isdir(dst):  # our own leftover of an unfinished or outdated conversion
            shutil.rmtree(dst)
    write_json_atomic(os.path.join(tmp, "record.json"), record)
    if job.mask_path is not None:
        os.makedirs(os.path.dirname(masks_dst), exist_ok=True)
        os.rename(os.path.join(tmp, "masks"), masks_dst)
    os.makedirs(os.path.dirname(slices_dst), exist_ok=True)
    os.rename(os.path.join(tmp, "slices"), slices_dst)
    os.rename(os.path.join(tmp, "record.json"), record_dst)


def _convert_case(job: _CaseJob) -> dict:
    """Convert one case atomically (worker entry point); returns its record."""
    tmp = tempfile.mkdtemp(prefix=job.case_id + ".", dir=os.path.join(job.out, _TMP_DIR))
    try:
        record = _write_case(job, tmp)
        _commit_case(job, tmp, record)
        return record
    except OSError as e:
        raise CohortError(f"case {job.case_id}: cannot write output: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _finished_record(job: _CaseJob) -> Optional[dict]:
    """The record of an already finished case with the same settings, else None."""
    slices_dst, masks_dst, record_dst = _case_paths(job.out, job.case_id)
    if not (os.path.isfile(record_dst) and os.path.isdir(slices_dst)):
        return None
    if job.mask_path is not None and not os.path.isdir(masks_dst):
        return None
    try:
        with open(record_dst) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if record.get("settings") == job.settings else None


# ----------------------------------------------------------------------------- running cases


def _init_worker(log_path: str) -> None:
    # One thread per worker process: parallelism comes from the pool, not from ITK.
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    root = logging.getLogger("breast_d2")
    if any(getattr(h, "baseFilename", None) == log_path for h in root.handlers):
        return  # forked: the parent's log handler came along
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _pool_context():
    # fork where available: a spawned worker would re-import the package (torch, detectron2:
    # seconds per worker) although it only needs numpy/SimpleITK; workers never touch torch.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _log_case(record: dict) -> None:
    logger.info(
        "case %s: %d slices, %d lesion(s), %.2f s",
        record["case_id"], record["shape"][2], len(record["boxes"]), record["seconds"],
    )  # fmt: skip


def _run_jobs(jobs: Sequence[_CaseJob], workers: int, log_path: str) -> List[dict]:
    """Convert ``jobs`` with a progress bar; the first failure stops everything and is raised."""
    records = []
    bar = tqdm(total=len(jobs), desc="convert", unit="case", dynamic_ncols=True)
    try:
        if workers <= 1:
            for job in jobs:
                bar.set_postfix_str(job.case_id)
                records.append(_convert_case(job))
                _log_case(records[-1])
                bar.update()
            return records
        with ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_init_worker,
                                 initargs=(log_path,)) as pool:  # fmt: skip
            pending = {pool.submit(_convert_case, job) for job in jobs}
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    if fut.exception() is not None:
                        for p in pending:
                            p.cancel()
                        raise fut.exception()
                    records.append(fut.result())
                    _log_case(records[-1])
                    bar.update()
        return records
    finally:
        bar.close()


# ----------------------------------------------------------------------------- COCO / JSON


def _slice_boxes(record: dict) -> list:
    if record["slice_boxes"] is not None:
        return record["slice_boxes"]
    return slice_boxes_from_boxes(record["boxes"], record["shape"][2])


def _coco_entries(records: Sequence[dict]) -> Dict[str, Tuple[list, list]]:
    """``{case_id: (images, annotations)}``; ids unique over the cohort, the same in every fold."""
    entries, image_id, ann_id = {}, 0, 0
    for rec in records:
        width, height, depth = rec["shape"]
        images, anns = [], []
        for z, boxes in enumerate(_slice_boxes(rec)):
            image_id += 1
            images.append({
                "id": image_id,
                "file_name": f"slices/{rec['case_id']}/{z:04d}.png",
                "height": height,
                "width": width,
                "case_id": rec["case_id"],
                "slice_index": z,
            })  # fmt: skip
            for lesion_index, (x0, y0, x1, y1) in boxes:
                ann_id += 1
                anns.append({
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                    "lesion_index": lesion_index,
                })  # fmt: skip
        entries[rec["case_id"]] = (images, anns)
    return entries


def _coco_file(entries, case_ids: Sequence[str], description: str) -> dict:
    return {
        "info": {"description": description, "version": "1.0"},
        "licenses": [],
        "images": [im for c in case_ids for im in entries[c][0]],
        "annotations": [a for c in case_ids for a in entries[c][1]],
        "categories": CATEGORIES,
    }


def _refresh_csv_boxes(records: List[dict], jobs: Mapping[str, _CaseJob]) -> None:
    """Take CSV boxes from the current CSV (also for resumed cases) and check them again."""
    for rec in records:
        job = jobs[rec["case_id"]]
        if job.label_path is None:
            rec["boxes"] = _case_lesions(job, CaseGeometry.from_dict(rec["geometry"]))[0]
            rec["slice_boxes"] = None


def _write_outputs(out: str, records: List[dict], num_folds: int, seed: int) -> None:
    cases = [{k: r[k] for k in ("case_id", "shape", "spacing", "boxes")} for r in records]
    folds = make_folds({r["case_id"]: len(r["boxes"]) for r in records}, num_folds, seed)
    all_ids = [r["case_id"] for r in records]
    splits = {"num_folds": num_folds, "seed": seed, "folds": []}
    entries = _coco_entries(records)
    for k, val in enumerate(folds):
        train = [c for c in all_ids if c not in set(val)]
        splits["folds"].append({"fold": k, "train": train, "val": val})
        for split, ids in (("train", train), ("val", val)):
            coco = _coco_file(entries, ids, f"fold {k} {split}")
            write_json_atomic(os.path.join(out, f"fold{k}_{split}.json"), coco)
    write_json_atomic(os.path.join(out, "splits.json"), splits)
    write_json_atomic(os.path.join(out, "cases.json"), {"cases": cases})


# ----------------------------------------------------------------------------- entry point


def _make_jobs(images, out, cases, channels, boxes_csv, labels, masks) -> List[_CaseJob]:
    boxes = _boxes_by_case(boxes_csv, cases, images) if boxes_csv else None
    label_paths = _match_volumes(labels, cases, "label volume", strict=True) if labels else {}
    mask_paths = _match_volumes(masks, cases, "mask", strict=False) if masks else {}
    settings = {
        "images": os.path.realpath(images),
        "channels": channels,
        "source": "labels" if labels else "boxes",
        "masks": os.path.realpath(masks) if masks else None,
    }
    return [
        _CaseJob(
            case_id=c,
            case_dir=os.path.join(images, c),
            out=out,
            channels=channels,
            boxes=boxes[c] if boxes is not None else None,
            boxes_csv=boxes_csv,
            label_path=label_paths.get(c),
            mask_path=mask_paths.get(c),
            settings=settings,
        )
        for c in cases
    ]


def _start_log(out: str) -> logging.Handler:
    handler = logging.FileHandler(os.path.join(out, _LOG_NAME))
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    handler.setLevel(logging.INFO)
    return handler


def convert_cohort(
    images: PathLike,
    out: PathLike,
    boxes_csv: Optional[PathLike] = None,
    labels: Optional[PathLike] = None,
    masks: Optional[PathLike] = None,
    num_folds: int = 5,
    seed: int = 0,
    channels: str = "1,1-0,0",
    workers: int = 1,
    resume: bool = False,
) -> dict:
    """Convert a cohort to the converted-folder layout of docs/DATA_FORMAT.md.

    Args:
        images: ``IMAGES`` folder, one sub-folder per case (NIfTI ``<case_id>_<phase:04d>.nii.gz``
            or DICOM series folders).
        out: output folder ``OUT`` (created; must be empty or absent unless ``resume``; must not
            overlap the inputs).
        boxes_csv: Duke ``Annotation_Boxes`` CSV (1-based inclusive rows/columns/slices). Exactly
            one of ``boxes_csv`` and ``labels`` is required. Cases absent from the CSV have no
            lesion.
        labels: ``LABELS`` folder of ``<case_id>.nii.gz`` (each 3D connected component = a lesion);
            every case needs one.
        masks: optional ``MASKS`` folder of ``<case_id>.nii.gz`` breast masks (non-zero = breast);
            every case needs one.
        num_folds: K of the patient-level stratified K-fold split.
        seed: split seed (same seed -> same split).
        channels: three phase expressions for R, G, B, e.g. ``"1,1-0,0"``; see
            :func:`~breast_d2.data.volumes.compose_channels` for the windowing.
        workers: number of worker processes (1 = convert in this process).
        resume: skip cases finished by an earlier run with the same settings.

    Returns:
        summary dict with keys ``out, cases, converted, skipped, slices, lesions, folds, seconds``.

    Raises:
        CohortError: any bad input (one line naming the case and file/CSV line); output that was
            complete before the failing case stays, nothing half-written does.
    """
    t0 = time.perf_counter()
    images, out = os.fspath(images), os.path.abspath(os.fspath(out))
    boxes_csv = os.fspath(boxes_csv) if boxes_csv is not None else None
    labels = os.fspath(labels) if labels is not None else None
    masks = os.fspath(masks) if masks is not None else None
    if (boxes_csv is None) == (labels is None):
        raise CohortError("give exactly one lesion source: a boxes CSV or a labels folder")
    if boxes_csv is not None and not os.path.isfile(boxes_csv):
        raise CohortError(f"boxes CSV {boxes_csv} does not exist")
    if int(workers) < 1:
        raise CohortError(f"workers must be >= 1, got {workers}")
    try:
        parse_channels(channels)
    except ValueError as e:
        raise CohortError(str(e)) from None
    cases = list_cases(images)
    make_folds({c: 0 for c in cases}, num_folds, seed)  # fail early on an impossible K
    _check_out(out, [images, labels, masks], resume)
    jobs = _make_jobs(images, out, cases, channels, boxes_csv, labels, masks)

    os.makedirs(os.path.join(out, _TMP_DIR), exist_ok=True)
    os.makedirs(os.path.join(out, _STATE_DIR), exist_ok=True)
    handler = _start_log(out)
    pkg_logger, old_level = logging.getLogger("breast_d2"), logging.getLogger("breast_d2").level
    pkg_logger.addHandler(handler)
    pkg_logger.setLevel(min(old_level or logging.INFO, logging.INFO))
    try:
        return _convert(jobs, out, num_folds, seed, int(workers), resume, handler, t0)
    except CohortError as e:
        logger.error("conversion stopped: %s", e)
        raise
    finally:
        shutil.rmtree(os.path.join(out, _TMP_DIR), ignore_errors=True)
        pkg_logger.removeHandler(handler)
        pkg_logger.setLevel(old_level)
        handler.close()


def _convert(jobs, out, num_folds, seed, workers, resume, handler, t0) -> dict:
    logger.info("converting %d case(s) into %s (workers=%d, resume=%s)",
                len(jobs), out, workers, resume)  # fmt: skip
    done = {}
    if resume:
        for job in jobs:
            record = _finished_record(job)
            if record is not None:
                done[job.case_id] = record
        logger.info("resume: %d case(s) already finished", len(done))
    todo = [j for j in jobs if j.case_id not in done]
    for record in _run_jobs(todo, workers, handler.baseFilename):
        done[record["case_id"]] = record
    records = [done[j.case_id] for j in jobs]
    _refresh_csv_boxes(records, {j.case_id: j for j in jobs})
    _write_outputs(out, records, num_folds, seed)
    summary = {
        "out": out,
        "cases": len(records),
        "converted": len(todo),
        "skipped": len(records) - len(todo),
        "slices": sum(r["shape"][2] for r in records),
        "lesions": sum(len(r["boxes"]) for r in records),
        "folds": num_folds,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    logger.info("done: %s", summary)
    return summary
