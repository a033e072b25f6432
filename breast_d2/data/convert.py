"""Convert a DCE-MRI cohort (volumes + boxes or label volumes) to slices, COCO files and folds.

Writes the converted folder of docs/DATA_FORMAT.md::

    OUT/slices/<case_id>/<z:04d>.png     8-bit RGB slice, R, G, B = the three channel expressions
    OUT/masks/gt/<case_id>/<z:04d>.png   8-bit breast mask, 0 or 255 (when masks are given)
    OUT/cases.json, OUT/splits.json, OUT/fold{k}_train.json, OUT/fold{k}_val.json, OUT/convert.log

Safety: inputs are validated before ``OUT`` is created; nothing is ever written into the input
tree; each case is written into a temporary folder inside ``OUT/.tmp`` and renamed into place, and
its small record (``OUT/.convert_state/<case_id>.json``, used by ``resume``) is renamed last, so a
case is either finished or absent; JSON files are written to a temporary file and ``os.replace``-d.
A failing case stops the conversion with a :class:`~breast_d2.data.errors.CohortError` naming it.
The folds, COCO files, ``cases.json`` and ``splits.json`` are written by :mod:`.cohort_files`.
"""
import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import signal
import time
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np
import SimpleITK as sitk

from ..parallel import run_pool
from ..fileio import atomic_folder, write_json_atomic
from .case_files import find_case_files
from .cohort_files import CATEGORIES, lesion_stratum, make_folds, write_cohort_files
from .duke import SeriesMap, find_collection_root, read_series_map
from .masks import read_mask_on_grid
from .tables import row_label
from .boxes import (
    box_on_slices,
    check_box_in_volume,
    label_lesions,
    merge_close_lesions,
    read_box_rows,
    slice_boxes_from_components,
)
from .channels import compose_channels, parse_channels, phases_used
from .errors import CohortError, PathLike, case_id_index
from .readers import CaseGeometry, find_phase_sources, iter_source_images, list_cases, read_volume

__all__ = [
    "convert_cohort",
    "make_folds",
    "lesion_stratum",
    "CATEGORIES",
]

logger = logging.getLogger(__name__)

#: The single COCO category of the project.
_STATE_DIR = ".convert_state"  # per-case records of finished cases (what resume relies on)
_TMP_DIR = ".tmp"  # per-case temporary folders, renamed into place when complete
_LOG_NAME = "convert.log"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LOCK_NAME = ".convert.lock"  # flock-ed while a converter writes OUT
_PARENT_PID: Optional[int] = None  # in a worker process: the converter that started it
_PNG_COMPRESS_LEVEL = 1  # zlib level 1: PNG writing dominates conversion; level 6 is ~2x slower


class _CaseJob(NamedTuple):
    """Everything one worker needs to convert one case (picklable)."""

    case_id: str
    case_dir: str
    out: str
    channels: str
    boxes: Optional[List[Tuple[List[int], int]]]  # table boxes with their line/row numbers
    boxes_csv: Optional[str]
    label_path: Optional[str]
    mask_path: Optional[str]
    settings: dict
    series_map: Optional[SeriesMap] = None  # this case's rows of TCIA's filepath mapping only
    tmp_dir: str = _TMP_DIR  # temporary folder inside ``out`` (one per shard)


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


def _boxes_by_case(boxes_csv: str, cases: Sequence[str], images: str, orphans: dict) -> dict:
    """Box rows per case; rows of cases without images (a partial download) are skipped."""
    lookup = case_id_index(cases, "box rows")
    by_case: Dict[str, list] = {c: [] for c in cases}
    for row in read_box_rows(boxes_csv):
        case_id = lookup.get(row.case_id.lower())
        if case_id is None:
            orphans.setdefault("box rows", []).append(
                f"{row_label(boxes_csv, row.line)}: case {row.case_id} has no images in {images}; "
                "row skipped"
            )
            continue
        by_case[case_id].append((row.box, row.line))
    return by_case


def _match_files(folder: str, cases: Sequence[str], kind: str, orphans: dict) -> Dict[str, str]:
    """``{case_id: file}`` of a LABELS/MASKS folder; files of cases without images are skipped."""
    found = find_case_files(folder, cases, kind)
    for name, path in found.orphans:
        message = f"{kind} {path}: case {name} has no images; skipped"
        orphans.setdefault(kind + "s", []).append(message)
    return found.paths


# ----------------------------------------------------------------------------- one case


def _provenance(sources) -> List[dict]:
    """Where each phase came from (``cases.json``; lets users audit the DICOM series choice)."""
    out = []
    for k, src in enumerate(sources):
        entry = {"phase": k, "source": src.label, "files": len(src.files)}
        if src.is_dicom:
            entry.update(description=src.description, rule=src.rule)
        out.append(entry)
    return out


def _box_file_numbers(sources, case_id: str) -> Optional[List[int]]:
    """File number of each z slice (DICOM), which box tables count; None for NIfTI (z + 1)."""
    if not sources[0].is_dicom:
        return None
    ref = sources[1] if len(sources) > 1 else sources[0]  # boxes are drawn on post-contrast 1
    for src in sources:
        if src.file_numbers != ref.file_numbers:
            logger.warning("case %s: %s numbers its files differently from %s; boxes follow %s",
                           case_id, src.label, ref.label, ref.label)  # fmt: skip
            break
    return list(ref.file_numbers)


def _read_case(job: _CaseJob):
    """Read and validate one case.

    Returns:
        ``(phases {k: [Z,Y,X]}, geometry, num_phases, provenance, file_numbers)``.
    """
    needed = phases_used(job.channels)
    order = job.settings.get("dicom_order", "description")
    sources = find_phase_sources(job.case_dir, job.case_id, job.series_map, order)
    expected = job.settings.get("phases")
    if expected and len(sources) != expected:
        raise CohortError(
            f"case {job.case_id}: {len(sources)} phase(s) in {job.case_dir} but --phases "
            f"expects {expected}"
        )
    phases, geom = {}, None
    resample = job.settings.get("resample_phases", False)
    for k, array, geom in iter_source_images(sources, job.case_id, resample):
        if k in needed:
            phases[k] = array
    missing = sorted(needed - set(phases))
    if missing:
        raise CohortError(
            f"case {job.case_id}: channels {job.channels!r} use phase {missing[0]} but "
            f"{job.case_dir} has only {len(sources)} phase(s)"
        )
    return phases, geom, len(sources), _provenance(sources), _box_file_numbers(sources, job.case_id)


def _case_lesions(job: _CaseJob, geom: CaseGeometry, file_numbers: Optional[List[int]]):
    """Half-open 3D boxes of the case and the per-slice 2D boxes (see DATA_FORMAT.md)."""
    if job.label_path is not None:
        # lesion labels must be drawn on the images' grid: resampling could move a box
        labels = read_volume(job.label_path, job.case_id, "label volume", expect=geom)
        components, boxes = label_lesions(labels)
        components, boxes = merge_close_lesions(
            components, boxes, geom.spacing, job.settings.get("merge_lesions_mm", 0.0)
        )
        return boxes, slice_boxes_from_components(components, boxes)
    boxes = []
    for box, line in job.boxes or []:
        where = f"{row_label(job.boxes_csv, line)}: case {job.case_id}: "
        if file_numbers is None:
            check_box_in_volume(box, geom.size, where)
            boxes.append(list(box))
        else:
            boxes.append(box_on_slices(box, geom.size, file_numbers, where))
    return boxes, None  # table slice boxes are derived from the 3D boxes when COCO files are made


def _write_case(job: _CaseJob, slices_dir: str, masks_dir: Optional[str]) -> dict:
    """Write the slices (and mask) of one case into the (temporary) folders; return its record."""
    t0 = time.perf_counter()
    fingerprint = inputs_fingerprint(job)  # before reading: a change while we read shows next time
    try:
        phases, geom, num_phases, provenance, file_numbers = _read_case(job)
        boxes, slice_boxes = _case_lesions(job, geom, file_numbers)
        mask = None
        if job.mask_path is not None:
            mask = read_mask_on_grid(job.mask_path, job.case_id, geom)
    except OSError as e:  # an input that cannot be opened (a folder named like a file, ...)
        raise CohortError(f"case {job.case_id}: cannot read input {e.filename}: {e.strerror}") \
            from None  # fmt: skip
    rgb = compose_channels(phases, job.channels)
    del phases
    try:
        for z in range(rgb.shape[0]):
            _write_png(os.path.join(slices_dir, f"{z:04d}.png"), rgb[z])
        if mask is not None:
            for z in range(mask.shape[0]):
                _write_png(os.path.join(masks_dir, f"{z:04d}.png"), mask[z] * np.uint8(255))
    except OSError as e:
        raise CohortError(f"case {job.case_id}: cannot write output: {e}") from None
    return {
        "case_id": job.case_id,
        "shape": list(geom.size),
        "spacing": [round(v, 6) for v in geom.spacing],  # NIfTI stores float32: 0.8 not 0.80000001
        "geometry": geom.to_dict(),
        "num_phases": num_phases,
        "phases": provenance,
        "file_numbers": file_numbers,
        "has_mask": mask is not None,
        "boxes": boxes,
        "slice_boxes": slice_boxes,
        "settings": job.settings,
        "inputs": fingerprint,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _case_paths(out: str, case_id: str) -> Tuple[str, str, str]:
    return (
        os.path.join(out, "slices", case_id),
        os.path.join(out, "masks", "gt", case_id),
        os.path.join(out, _STATE_DIR, case_id + ".json"),
    )


def _convert_case(job: _CaseJob) -> dict:
    """Convert one case atomically (worker entry point); returns its record.

    The slice and mask folders are written as temporary folders in the run's ``OUT/.tmp`` and
    renamed into place; the case's record (its "finished" mark) is removed first and written
    last, so an interrupted case is never taken for a finished one.
    """
    if _PARENT_PID is not None and os.getppid() != _PARENT_PID:
        os._exit(1)  # orphaned worker (no PR_SET_PDEATHSIG on this system): never write on
    slices_dst, masks_dst, record_dst = _case_paths(job.out, job.case_id)
    tmp_dir = os.path.join(job.out, job.tmp_dir)
    try:
        with contextlib.ExitStack() as folders:
            slices_tmp = folders.enter_context(atomic_folder(slices_dst, tmp_dir))
            masks_tmp = None
            if job.mask_path is not None:
                masks_tmp = folders.enter_context(atomic_folder(masks_dst, tmp_dir))
            record = _write_case(job, slices_tmp, masks_tmp)
            if os.path.exists(record_dst):
                os.remove(record_dst)
        write_json_atomic(record_dst, record)
    except OSError as e:
        raise CohortError(f"case {job.case_id}: cannot write output: {e}") from None
    return record


def inputs_fingerprint(job: _CaseJob) -> str:
    """Hash of the size and modification time of every input file of a case.

    Covers the case's image folder (every file below it), its label volume and its mask; the
    box table is re-read on every run anyway. ``resume`` redoes a case whose fingerprint changed.
    """
    entries = []
    for root, dirs, names in os.walk(job.case_dir):
        dirs.sort()
        for name in sorted(names):
            entries.append(os.path.relpath(os.path.join(root, name), job.case_dir))
    paths = [os.path.join(job.case_dir, e) for e in entries]
    paths += [p for p in (job.label_path, job.mask_path) if p is not None]
    digest = hashlib.sha256()
    for path in paths:
        st = os.stat(path)
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _finished_record(job: _CaseJob) -> Optional[dict]:
    """The record of an already finished case with the same settings and inputs, else None."""
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
    if record.get("settings") != job.settings:
        return None
    if record.get("inputs") != inputs_fingerprint(job):
        logger.warning("case %s: its input files changed since it was converted; converting again",
                       job.case_id)  # fmt: skip
        return None
    return record


# ----------------------------------------------------------------------------- running cases


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies (a killed converter leaves none)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: _convert_case checks the parent instead
        pass


def _init_worker(log_path: str, parent_pid: int) -> None:
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    global _PARENT_PID
    _PARENT_PID = parent_pid
    # One thread per worker process: parallelism comes from the pool, not from ITK.
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    root = logging.getLogger("breast_d2")
    if any(getattr(h, "baseFilename", None) == log_path for h in root.handlers):
        return  # forked: the parent's log handler came along
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _log_case(record: dict) -> None:
    logger.info(
        "case %s: %d slices, %d lesion(s), %.2f s",
        record["case_id"], record["shape"][2], len(record["boxes"]), record["seconds"],
    )  # fmt: skip


def _run_jobs(
    jobs: Sequence[_CaseJob], workers: int, log_path: str, skip_bad: bool = False
) -> Tuple[List[dict], List[dict]]:
    """Convert ``jobs`` with a progress bar (:func:`~breast_d2.parallel.run_pool`).

    Returns:
        ``(records, skipped)``; ``skipped`` lists ``{"case_id", "reason"}`` of the cases whose
        CohortError was skipped (``skip_bad``). Without ``skip_bad`` the first failure stops
        everything and is raised.
    """
    records, skipped = [], []

    def done(job: _CaseJob, record: dict) -> None:
        records.append(record)
        _log_case(record)

    def failed(job: _CaseJob, error: Exception) -> None:
        if not (skip_bad and isinstance(error, CohortError)):
            raise error
        skipped.append({"case_id": job.case_id, "reason": str(error)})
        logger.warning("skipped case %s: %s", job.case_id, error)

    run_pool(_convert_case, jobs, workers, done, failed, initializer=_init_worker,
             initargs=(log_path, os.getpid()), desc="convert", unit="case",
             name=lambda job: job.case_id)  # fmt: skip
    return records, skipped


# ----------------------------------------------------------------------------- cohort files


def _refresh_csv_boxes(records: List[dict], jobs: Mapping[str, _CaseJob]) -> None:
    """Take table boxes from the current table (also for resumed cases) and check them again."""
    for rec in records:
        job = jobs[rec["case_id"]]
        if job.label_path is None:
            geom = CaseGeometry.from_dict(rec["geometry"])
            rec["boxes"] = _case_lesions(job, geom, rec.get("file_numbers"))[0]
            rec["slice_boxes"] = None


# ----------------------------------------------------------------------------- entry point


def _resolve_images(images: str) -> str:
    """The folder of case folders: unwraps an NBIA manifest folder or a MAMA-MIA root."""
    if os.path.isdir(os.path.join(images, "images")) and os.path.isdir(
        os.path.join(images, "segmentations")
    ):
        logger.info("%s is a MAMA-MIA folder: reading cases from its images/", images)
        return os.path.join(images, "images")
    return find_collection_root(images)


def _make_jobs(images, out, cases, boxes_csv, labels, masks, settings, series_map, orphans):
    boxes = _boxes_by_case(boxes_csv, cases, images, orphans) if boxes_csv else None
    label_paths = _match_files(labels, cases, "label volume", orphans) if labels else {}
    for case_id in cases if labels else ():
        if case_id not in label_paths:
            raise CohortError(
                f"case {case_id}: missing label volume {os.path.join(labels, case_id)}.nii.gz "
                f"(no file for the case in {labels})"
            )
    mask_paths = _match_files(masks, cases, "mask", orphans) if masks else {}
    if masks:
        logger.info("breast masks for %d of %d case(s)", len(mask_paths), len(cases))
    return [
        _CaseJob(
            case_id=c,
            case_dir=os.path.join(images, c),
            out=out,
            channels=settings["channels"],
            boxes=boxes[c] if boxes is not None else None,
            boxes_csv=boxes_csv,
            label_path=label_paths.get(c),
            mask_path=mask_paths.get(c),
            settings=settings,
            series_map=None if series_map is None or c not in series_map.cases
            else SeriesMap(series_map.path, {c: series_map.cases[c]}),
        )
        for c in cases
    ]


def _start_log(out: str, name: str = _LOG_NAME) -> logging.Handler:
    handler = logging.FileHandler(os.path.join(out, name))
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    handler.setLevel(logging.INFO)
    return handler


def _check_inputs(boxes_csv, labels, workers, channels, merge_lesions_mm, phases) -> None:
    if (boxes_csv is None) == (labels is None):
        raise CohortError("give exactly one lesion source: a boxes table or a labels folder")
    if boxes_csv is not None and not os.path.isfile(boxes_csv):
        raise CohortError(f"boxes table {boxes_csv} does not exist")
    if int(workers) < 1:
        raise CohortError(f"workers must be >= 1, got {workers}")
    if not merge_lesions_mm >= 0:  # also refuses NaN
        raise CohortError(f"merge_lesions_mm must be >= 0 (or inf), got {merge_lesions_mm}")
    if phases is not None and int(phases) < 2:
        raise CohortError(f"phases must be >= 2 (pre + a post-contrast), got {phases}")
    try:
        parse_channels(channels, phases)
    except ValueError as e:
        raise CohortError(str(e)) from None


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
    series_map: Optional[PathLike] = None,
    dicom_order: str = "description",
    phases: Optional[int] = None,
    skip_bad_cases: bool = False,
    splits_from: Optional[PathLike] = None,
    merge_lesions_mm: float = 0.0,
    resample_phases: bool = False,
    shard: Optional[Tuple[int, int]] = None,
    merge_shards: bool = False,
) -> dict:
    """Convert a cohort to the converted-folder layout of docs/DATA_FORMAT.md.

    Args:
        images: folder of case folders (NIfTI ``<case_id>_<phase:04d>.nii.gz``, or a DICOM tree
            per case), an NBIA manifest folder (``manifest-<digits>/``, Duke as downloaded) or a
            MAMA-MIA root (its ``images/`` is used).
        out: output folder ``OUT`` (created; must be empty or absent unless ``resume``; must not
            overlap the inputs).
        boxes_csv: Duke ``Annotation_Boxes`` table, ``.xlsx`` or ``.csv`` (1-based inclusive
            rows/columns/slices; a DICOM case's slices are file numbers). Exactly one of
            ``boxes_csv`` and ``labels`` is required. Cases absent from it have no lesion; rows of
            cases without images are skipped with a warning (partial download).
        labels: folder of lesion label volumes, one per case (``<case>.nii.gz``, any letter
            case; each 3D connected component = a lesion, see ``merge_lesions_mm``); files of
            cases without images are skipped with a warning.
        masks: optional folder of breast masks (NIfTI, NRRD, 3D Slicer ``.seg.nrrd``, flat or
            in per-case folders, see :mod:`breast_d2.data.case_files`); cases without a mask get
            none (``has_mask`` false in ``cases.json``); a mask on another grid is resampled
            onto the images by physical geometry.
        num_folds: K of the patient-level stratified K-fold split.
        seed: split seed (same seed -> same split).
        channels: three phase expressions for R, G, B, e.g. ``"1,1-0,0"``; see
            :func:`~breast_d2.data.channels.compose_channels` for the windowing.
        workers: number of worker processes (1 = convert in this process).
        resume: skip cases finished by an earlier run with the same settings.
        series_map: TCIA's ``Breast-Cancer-MRI-filepath_filename-mapping`` (``.xlsx``/``.csv``);
            decides the DICOM phases of the cases it holds (:mod:`breast_d2.data.duke`).
        dicom_order: ``"description"`` (choose the phases by SeriesDescription) or
            ``"series-number"`` (every series is a phase, by SeriesNumber).
        phases: expected number of phases per case (None: any >= what ``channels`` uses).
        skip_bad_cases: a case with bad input is skipped (listed in ``cases.json`` ``skipped``
            and in the summary) instead of stopping the conversion.
        splits_from: MAMA-MIA ``train_test_splits.csv``: its ``test_split`` cases form a held-out
            test set (``test.json``, ``splits.json`` ``test``); the folds are made of the rest.
        merge_lesions_mm: label volumes: components whose voxel centres lie at most this far
            apart (mm) form one lesion; 0 (default) = every 26-connected component is a lesion,
            ``inf`` = one lesion per case.
        resample_phases: resample a phase that is not on phase 0's voxel grid (other size or
            spacing, or shifted/rotated by more than half a voxel) onto it by physical position,
            instead of stopping with an error naming the case and phase.
        shard: ``(k, n)``: convert only cases ``k, k + n, k + 2n, ..`` of the sorted case list
            into ``out`` (which may hold other shards' cases; shards run at the same time without
            touching each other's files) and write no cohort files. Implies ``resume``.
        merge_shards: write ``cases.json``, ``splits.json`` and the fold files from the cases the
            shards converted (every case must be finished or recorded as skipped by a shard);
            byte for byte what a single run writes.

    Returns:
        summary dict with keys ``out, cases, converted, resumed, bad_cases`` (ids skipped by
        ``skip_bad_cases``), ``slices, lesions, folds, orphans`` (``{kind: count}`` of table rows
        and files without images) and ``seconds``.

    Raises:
        CohortError: any bad input (one line naming the case and file/table line); output that
            was complete before the failing case stays, nothing half-written does.
    """
    t0 = time.perf_counter()
    images, out = _resolve_images(os.fspath(images)), os.path.abspath(os.fspath(out))
    boxes_csv, labels, masks, series_map, splits_from = (
        os.fspath(p) if p is not None else None
        for p in (boxes_csv, labels, masks, series_map, splits_from)
    )
    _check_inputs(boxes_csv, labels, workers, channels, float(merge_lesions_mm), phases)
    if dicom_order not in ("description", "series-number"):
        raise CohortError(f"dicom_order must be description or series-number, not {dicom_order!r}")
    if splits_from is not None and not os.path.isfile(splits_from):
        raise CohortError(f"splits table {splits_from} does not exist")
    if shard is not None:
        if merge_shards:
            raise CohortError("give --shard or --merge-shards, not both")
        k, n = shard
        if not 0 <= k < n:
            raise CohortError(f"shard {k}/{n}: need 0 <= K < N")
    resume = resume or shard is not None or merge_shards
    cases = list_cases(images)
    make_folds({c: 0 for c in cases}, num_folds, seed)  # fail early on an impossible K
    _check_out(out, [images, labels, masks], resume)
    settings = {
        "images": os.path.realpath(images),
        "channels": channels,
        "source": "labels" if labels else "boxes",
        "masks": os.path.realpath(masks) if masks else None,
        "series_map": os.path.realpath(series_map) if series_map else None,
        "dicom_order": dicom_order,
        "phases": phases,
        "merge_lesions_mm": float(merge_lesions_mm),
        "resample_phases": bool(resample_phases),
    }
    smap = read_series_map(series_map, cases) if series_map else None
    orphans: Dict[str, List[str]] = {}  # warnings on table rows / files without images
    jobs = _make_jobs(images, out, cases, boxes_csv, labels, masks, settings, smap, orphans)

    names = _run_file_names(shard)
    os.makedirs(os.path.join(out, _STATE_DIR), exist_ok=True)
    lock = _lock_out(out, names["lock"])
    # a shard never cleans up: other shards may be writing their temporary files right now
    stray = _remove_stray_temp_files(out) if shard is None else 0
    os.makedirs(os.path.join(out, names["tmp"]), exist_ok=True)
    handler = _start_log(out, names["log"])
    if stray:
        logger.info("removed %d temporary file(s) left by an interrupted run", stray)
    pkg_logger, old_level = logging.getLogger("breast_d2"), logging.getLogger("breast_d2").level
    pkg_logger.addHandler(handler)
    pkg_logger.setLevel(min(old_level or logging.INFO, logging.INFO))
    if shard is not None:
        jobs = [job._replace(tmp_dir=names["tmp"]) for job in jobs[shard[0] :: shard[1]]]
    run = dict(folds=num_folds, seed=seed, splits_from=splits_from, workers=int(workers),
               resume=resume, skip_bad=skip_bad_cases, orphans=orphans, shard=shard,
               merge=merge_shards)  # fmt: skip
    try:
        return _convert(jobs, out, run, handler, t0)
    except CohortError as e:
        # to the log file only: the caller shows the error (once) on the console
        handler.handle(logger.makeRecord(logger.name, logging.ERROR, __file__, 0,
                                         "conversion stopped: %s", (e,), None))  # fmt: skip
        raise
    finally:
        shutil.rmtree(os.path.join(out, names["tmp"]), ignore_errors=True)
        pkg_logger.removeHandler(handler)
        pkg_logger.setLevel(old_level)
        handler.close()
        _unlock_out(out, lock, names["lock"])


def _run_file_names(shard: Optional[Tuple[int, int]]) -> Dict[str, str]:
    """Lock, temporary folder and log of a run; each shard has its own, so shards never meet."""
    if shard is None:
        return {"lock": _LOCK_NAME, "tmp": _TMP_DIR, "log": _LOG_NAME}
    tag = f"shard-{shard[0]}-of-{shard[1]}"
    return {"lock": f"{_LOCK_NAME}.{tag}", "tmp": f"{_TMP_DIR}.{tag}", "log": f"convert.{tag}.log"}


def _shard_summary_path(out: str, shard: Tuple[int, int]) -> str:
    return os.path.join(out, _STATE_DIR, f"shard-{shard[0]}-of-{shard[1]}.json")


def _skipped_by_shards(out: str) -> List[dict]:
    """The bad cases the shards skipped (``--skip-bad-cases``), from their summary files."""
    skipped = []
    for path in sorted(glob.glob(os.path.join(out, _STATE_DIR, "shard-*-of-*.json"))):
        with open(path, encoding="utf-8") as f:
            skipped += json.load(f)["skipped"]
    return skipped


def _lock_out(out: str, name: str = _LOCK_NAME) -> int:
    """Hold ``OUT/.convert.lock`` (flock) so that no second converter writes the same folder.

    The lock goes with the process (and its workers): a killed converter never leaves it stale.

    Raises:
        CohortError: another converter holds it (names its process id).
    """
    path = os.path.join(out, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise CohortError(
            f"output folder {out} is being written by another converter (process {holder}, lock "
            f"{path}); wait for it to finish or stop it"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _unlock_out(out: str, fd: int, name: str = _LOCK_NAME) -> None:
    try:
        os.remove(os.path.join(out, name))
    finally:
        os.close(fd)


def _remove_stray_temp_files(out: str) -> int:
    """Delete the ``.tmp-*`` files an interrupted run left (atomic writes never renamed)."""
    stray = glob.glob(os.path.join(out, ".tmp-*")) + glob.glob(os.path.join(out, _STATE_DIR,
                                                                           ".tmp-*"))  # fmt: skip
    for path in stray:
        if os.path.isfile(path):
            os.remove(path)
    return len(stray)


def _convert(jobs, out, run, handler, t0) -> dict:
    mode = "merging shards" if run["merge"] else (
        f"shard {run['shard'][0]}/{run['shard'][1]}" if run["shard"] else "converting")
    logger.info("%s: %d case(s) in %s (workers=%d, resume=%s)",
                mode, len(jobs), out, run["workers"], run["resume"])  # fmt: skip
    if not run["shard"] or run["shard"][0] == 0:  # the same warnings in every shard: say them once
        for kind, messages in run["orphans"].items():  # a partial download is normal: warn, go on
            for message in messages:
                logger.warning(message)
            logger.info("partial download: %d %s without images skipped", len(messages), kind)
    done = {}
    if run["resume"]:
        for job in jobs:
            record = _finished_record(job)
            if record is not None:
                done[job.case_id] = record
        logger.info("resume: %d case(s) already finished", len(done))
    todo = [j for j in jobs if j.case_id not in done]
    if run["merge"]:
        skipped = [s for s in _skipped_by_shards(out) if s["case_id"] not in done]
        missing = sorted({j.case_id for j in todo} - {s["case_id"] for s in skipped})
        if missing:
            raise CohortError(
                f"cannot merge shards: {len(missing)} case(s) were converted by no shard "
                f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); run the missing "
                "shard(s) with the same arguments first"
            )
        todo = []
    else:
        records, skipped = _run_jobs(todo, run["workers"], handler.baseFilename, run["skip_bad"])
        for record in records:
            done[record["case_id"]] = record
    records = [done[j.case_id] for j in jobs if j.case_id in done]
    if skipped:
        logger.warning("skipped %d bad case(s): %s", len(skipped),
                       "; ".join(f"{s['case_id']}: {s['reason']}" for s in skipped))  # fmt: skip
    if run["shard"]:
        write_json_atomic(_shard_summary_path(out, run["shard"]), {"skipped": skipped})
    else:
        _refresh_csv_boxes(records, {j.case_id: j for j in jobs})
        write_cohort_files(out, records, run, skipped)
    summary = {
        "out": out,
        "cases": len(records),
        "converted": len(todo) - len(skipped) if not run["merge"] else 0,
        "resumed": len(records) - len(todo) + len(skipped) if not run["merge"] else len(records),
        "bad_cases": [s["case_id"] for s in skipped],
        "slices": sum(r["shape"][2] for r in records),
        "lesions": sum(len(r["boxes"]) for r in records),
        "folds": run["folds"],
        "orphans": {kind: len(messages) for kind, messages in run["orphans"].items()},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    logger.info("done: %s", summary)
    return summary
