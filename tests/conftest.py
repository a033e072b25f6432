"""Shared test fixtures (the plain helpers they use live in helpers.py)."""
import locale
import logging
import sys
import tempfile

import pytest

from helpers import write_converted_phantom


def _reset_tool_loggers():
    """Undo what a tool's ``setup_tool_logging`` (detectron2's cached ``setup_logger``) did: its
    console handlers write to the stream pytest captured for that test (closed later: "--- Logging
    error ---") and the package logger stops propagating to the root logger that caplog reads."""
    logger_module = sys.modules.get("detectron2.utils.logger")
    if logger_module is not None:
        logger_module.setup_logger.cache_clear()
    for name in ("detectron2", "fvcore", "d2", "breast_d2"):
        logging.getLogger(name).handlers.clear()
    logging.getLogger("breast_d2").propagate = True


@pytest.fixture(autouse=True)
def _fresh_tool_loggers():
    """Every test starts and ends without the console loggers an earlier tool run set up."""
    _reset_tool_loggers()
    yield
    _reset_tool_loggers()


@pytest.fixture(autouse=True)
def _restore_ctype_locale():
    """ITK's DICOM writer (the tests write DICOM series) leaves LC_CTYPE at "C", which makes
    Python's default text encoding ASCII for every later test: restore it after each test."""
    ctype = locale.setlocale(locale.LC_CTYPE)
    yield
    locale.setlocale(locale.LC_CTYPE, ctype)


@pytest.fixture(scope="module")
def converted():
    """6 phantom cases (96 x 96 x 16, seed 3) converted with 3 patient-level folds (seed 0).

    Written once per test module that asks for it, removed after that module's tests.

    Yields:
        helpers.ConvertedPhantom(cohort, data).
    """
    with tempfile.TemporaryDirectory() as tmp:
        yield write_converted_phantom(tmp, 6, seed=3, matrix=96, num_folds=3)
