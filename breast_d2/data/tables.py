"""Streaming reader for the tables users download next to their images (CSV or Excel ``.xlsx``).

The public cohorts publish their tables as Excel workbooks (Duke ``Annotation_Boxes.xlsx``, TCIA's
``Breast-Cancer-MRI-filepath_filename-mapping.xlsx`` with ~770k rows, MAMA-MIA's
``train_test_splits.csv``). :func:`iter_table` reads either format row by row with constant memory
(openpyxl's read-only mode for ``.xlsx``), so callers never hold a whole workbook.

Cell values come back as text: Excel numbers that are whole (``5.0``) become ``"5"``, empty cells
``""``. Row numbers are 1-based and count every row of the file (CSV: physical lines of the record
start; XLSX: sheet rows), so messages can name them as a spreadsheet shows them.
"""
import csv
import logging
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from .errors import CohortError, PathLike, one_line

__all__ = ["TableRow", "iter_table", "table_kind", "row_label"]

logger = logging.getLogger(__name__)

TableRow = Tuple[int, Dict[str, str]]  # (1-based row number, {column name: cell text})

# The header may sit below a title row or two (some exported sheets have one).
_HEADER_SEARCH_ROWS = 5
#: The found header is cut to this many characters in the missing-column error.
_FOUND_CHARS = 200


def table_kind(path: str) -> str:
    """``"xlsx"`` or ``"csv"`` from the file name (``.xlsx``/``.xlsm``; anything else is CSV)."""
    return "xlsx" if path.lower().endswith((".xlsx", ".xlsm")) else "csv"


def row_label(path: str, number: int) -> str:
    """``"<path> line N"`` for a CSV, ``"<path> row N"`` for a workbook (what users look for)."""
    return f"{path} {'row' if table_kind(path) == 'xlsx' else 'line'} {number}"


def _cell_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _raw_rows(path: str) -> Iterator[Tuple[int, List[str]]]:
    """``(row number, [cell text, ...])`` of the first sheet / the CSV, in file order."""
    if table_kind(path) == "xlsx":
        import openpyxl  # only needed for Excel tables

        try:
            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as e:  # zipfile.BadZipFile, KeyError, InvalidFileException, ...
            raise CohortError(f"cannot read Excel table {path}: {one_line(e)}") from None
        try:
            sheet = book.worksheets[0]
            for number, values in enumerate(sheet.iter_rows(values_only=True), start=1):
                yield number, [_cell_text(v) for v in values]
        finally:
            book.close()
        return
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            start = 1
            for values in reader:
                yield start, [v.strip() for v in values]
                start = reader.line_num + 1
    except UnicodeDecodeError:
        raise CohortError(
            f"cannot read table {path}: not UTF-8 text (an Excel workbook must end in .xlsx)"
        ) from None
    except (OSError, csv.Error) as e:
        raise CohortError(f"cannot read table {path}: {one_line(e)}") from None


def iter_table(
    path: PathLike, required: Sequence[str], optional: Sequence[str] = ()
) -> Iterator[TableRow]:
    """Rows of a CSV or XLSX table as ``(row number, {column: text})``, streamed.

    The header is the first row (among the first few) that holds every ``required`` column; column
    names are matched after stripping spaces and a UTF-8 BOM. Blank rows are skipped. Only the
    ``required`` and ``optional`` columns are returned; other columns are ignored.

    Args:
        path: ``.csv`` or ``.xlsx`` file.
        required: column names that must be present.
        optional: column names returned when present.

    Yields:
        ``(row_number, {name: text})`` for each non-blank data row; a short row gets ``""`` for
        its missing cells.

    Raises:
        CohortError: unreadable file, or no header with the required columns (names the file, the
            missing columns and the columns found).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CohortError(f"table {path} does not exist")
    columns: Optional[Dict[str, int]] = None
    first_header: Optional[List[str]] = None
    for number, values in _raw_rows(path):
        if not any(values):
            continue
        if columns is None:
            names = [v.lstrip("\ufeff").strip() for v in values]
            first_header = first_header or names
            if all(c in names for c in required):
                wanted = list(required) + [c for c in optional if c in names]
                columns = {c: names.index(c) for c in wanted}
                continue
            if number >= _HEADER_SEARCH_ROWS:
                break
            continue
        yield number, {c: (values[i] if i < len(values) else "") for c, i in columns.items()}
    if columns is None:
        found = ", ".join(n for n in (first_header or []) if n) or "nothing"
        if len(found) > _FOUND_CHARS:  # e.g. a JSON file given as a table: one huge cell
            found = found[:_FOUND_CHARS] + " ..."
        missing = [c for c in required if c not in (first_header or [])]
        raise CohortError(
            f"{row_label(path, 1)}: missing column(s) {', '.join(missing)}; expected a header with "
            f"{', '.join(required)} (found: {found})"
        )
