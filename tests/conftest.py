"""Shared test fixtures (the plain helpers they use live in helpers.py)."""
import locale
import logging
import tempfile

import pytest

from helpers import write_converted_phantom


@pytest.fixture(autouse=True)
def _drop_log_handlers_on_closed_streams():
    """Tools set up console loggers on the stream pytest captured for an earlier test; once that
    stream is closed, logging to it prints "--- Logging error ---". Drop such handlers first."""
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in list(lg.handlers):
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and getattr(stream, "closed", False):
                lg.removeHandler(handler)
    yield


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
