"""What the download layouts share: deterministic identifiers, csv / xlsx tables, the driver.

Identifiers (UIDs, digits) are hashes of their parts, and the xlsx files carry fixed time stamps,
so the same seed gives the same bytes. The driver checks the parameters, skips finished cases
(resume), runs the case jobs and sums up the cohort.
"""

import csv
import datetime
import hashlib
import io
import json
import logging
import os
import re
import shutil
import zipfile
from typing import Dict, Optional, Sequence

from openpyxl import Workbook

from ....fileio import write_atomic
from ..case import _check_int, _check_params
from ..cohort import _STATE_DIR, GENERATOR_VERSION, CohortSummary, run_case_jobs

__all__ = []

logger = logging.getLogger(__name__)

_GE, _SIEMENS = "GE MEDICAL SYSTEMS", "SIEMENS"
# Fixed time stamp of the xlsx document properties and zip entries (same seed, same bytes).
_XLSX_STAMP = b"2000-01-01T00:00:00Z"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# "generator" of params.json / phantom.json: the name the layouts were first written under (a
# resumed run compares it, and the bytes of a cohort do not depend on where the code lives).
_GENERATOR = "breast_d2.data.phantom.layouts"


# ----------------------------------------------------------------------------------------------
# Deterministic identifiers
# ----------------------------------------------------------------------------------------------
def _hash_int(*parts) -> int:
    """A 128-bit integer that depends only on ``parts`` (stable across runs and processes)."""
    digest = hashlib.sha256(json.dumps(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:16], "big")


def _uid(*parts) -> str:
    """A DICOM UID in the UUID-derived ``2.25`` root, determined by ``parts``."""
    return f"2.25.{_hash_int('uid', *parts)}"


def _digits(n: int, *parts) -> str:
    """``n`` decimal digits (no leading zero) determined by ``parts``."""
    lo = 10 ** (n - 1)
    return str(lo + _hash_int("digits", *parts) % (9 * lo))


# ----------------------------------------------------------------------------------------------
# Tables (csv, deterministic xlsx)
# ----------------------------------------------------------------------------------------------
def _csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _write_text(path: str, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode("utf-8")), mode="wb")


def _xlsx_bytes(sheet: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> bytes:
    """One-sheet workbook (openpyxl, write-only) with fixed time stamps: same rows, same bytes."""
    wb = Workbook(write_only=True)
    ws = wb.create_sheet(sheet)
    ws.append(list(header))
    for row in rows:
        ws.append(list(row))
    wb.properties.creator = "breast_d2 phantom"
    wb.properties.created = datetime.datetime(2000, 1, 1)
    buf = io.BytesIO()
    wb.save(buf)
    # openpyxl stamps the save time into docProps/core.xml and the zip entries: fix both.
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zin:
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
            for info in zin.infolist():
                data = zin.read(info.filename)
                if info.filename == "docProps/core.xml":
                    data = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*", rb"\g<1>" + _XLSX_STAMP, data)
                entry = zipfile.ZipInfo(info.filename, date_time=_ZIP_TIME)
                entry.compress_type = zipfile.ZIP_DEFLATED
                entry.external_attr = 0o644 << 16
                zout.writestr(entry, data)
    return out.getvalue()


def _write_xlsx(path: str, sheet: str, header, rows) -> None:
    data = _xlsx_bytes(sheet, header, rows)
    write_atomic(path, lambda f: f.write(data), mode="wb")


# ----------------------------------------------------------------------------------------------
# Cohort driver shared by the layouts
# ----------------------------------------------------------------------------------------------
def _layout_params(layout, num_cases, seed, matrix, slices, fov_mm, phase_interval_s, workers):
    _check_int("num_cases", num_cases, 1, 999 if layout == "duke" else 100_000)
    _check_params(seed, matrix, slices, fov_mm, 2, phase_interval_s)  # phases: chosen per case
    _check_int("workers", workers, 1, 256)
    return {
        "generator": _GENERATOR,
        "version": GENERATOR_VERSION,
        "layout": layout,
        "seed": int(seed),
        "num_cases": int(num_cases),
        "matrix": int(matrix),
        "slices": int(slices),
        "fov_mm": float(fov_mm),
        "phase_interval_s": float(phase_interval_s),
    }


def _load_record(path: str) -> Optional[Dict[str, object]]:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _generate_all(job, case_ids, is_done, out_dir, params, workers, progress):
    """Generate the unfinished cases; return every case's record (cohort order), number made."""
    records: Dict[str, Dict[str, object]] = {}
    todo = []
    for index, cid in enumerate(case_ids):
        record = is_done(index, cid)
        if record is None:
            todo.append(index)
            continue
        records[cid] = record
        if progress is not None:
            progress(cid, False)
    layout = params["layout"]
    logger.info("%s layout %s: %d to generate, %d kept", layout, out_dir, len(todo), len(records))

    def done(record: Dict[str, object]) -> None:
        records[record["case_id"]] = record
        if progress is not None:
            progress(record["case_id"], True)

    run_case_jobs(job, todo, out_dir, params, workers, done)
    shutil.rmtree(os.path.join(out_dir, _STATE_DIR, "tmp"), ignore_errors=True)
    return [records[cid] for cid in case_ids], len(todo)


def _summary(out_dir: str, records: Sequence[Dict], generated: int) -> CohortSummary:
    return CohortSummary(
        out_dir=out_dir,
        num_cases=len(records),
        generated=generated,
        skipped=len(records) - generated,
        num_lesions=sum(r["num_lesions"] for r in records),
        cases_without_lesions=sum(1 for r in records if r["num_lesions"] == 0),
    )


def _phantom_json(params: Dict[str, object], records: Sequence[Dict], drop=()) -> Dict:
    doc = dict(params)
    doc.update(
        {
            "direction": "identity (LPS; x = column, y = row, z = slice)",
            "sequence": "axial prone fat-suppressed T1 GRE (simulated), 1 pre + post-contrast",
            "image_dtype": "int16, arbitrary MR units",
            "box_convention": "[x0, y0, z0, x1, y1, z1] half-open voxel indices, position-sorted",
            "cases": [{k: v for k, v in r.items() if k not in drop} for r in records],
        }
    )
    return doc
