"""Shared test fixtures."""
import locale
import logging

import pytest


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
