"""Shared helpers of the command-line tools: one-line errors, never a traceback or usage block.

Every tool follows one convention: an :class:`OneLineErrorParser`, ``main(argv) -> int`` (exit
code), and :func:`setup_tool_logging` for its console output. The one exception is
``tools/train_net.py``, which keeps detectron2's project skeleton (``default_argument_parser``,
``main(args)`` under ``launch``, ``default_setup``'s logging) so that multi-GPU and multi-node runs
work as in every detectron2 project; its ``cli(argv)`` turns bad input into one line.
"""
import argparse
import glob
import logging
import os
import sys
from typing import List, NoReturn, Tuple

__all__ = [
    "OneLineErrorParser", "fail", "glob_folders_with", "parse_named_specs", "setup_tool_logging"
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with ``code``."""
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one ``error: ...`` line (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        fail(message)


def setup_tool_logging(level: int = logging.INFO, name: str = "breast_d2") -> logging.Logger:
    """Console logging of a tool, through detectron2's ``setup_logger``.

    Args:
        level: the console's level (e.g. ``logging.WARNING`` for tools whose per-case lines go
            to a log file of their own).
        name: logger to set up; its children (``breast_d2.data.convert``, ...) log through it.

    Returns:
        the logger.
    """
    from detectron2.utils.logger import setup_logger  # imports torch: only when a tool runs

    logger = setup_logger(name=name, abbrev_name="bd2", color=False)
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            handler.setLevel(level)
    return logger


def parse_named_specs(specs: List[str], what: str = "PATH") -> List[Tuple[str, str]]:
    """``[(NAME, VALUE)]`` of repeated ``--run NAME=VALUE`` options, in order; ``fail`` on a spec
    without a name or a value (``what`` names the value in the message, e.g. ``"GLOB"``)."""
    runs = []
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name or not value:
            fail(f"--run must be NAME={what}, got {spec!r}")
        runs.append((name, value))
    return runs


def glob_folders_with(pattern: str, filename: str) -> List[str]:
    """Sorted folders matching the glob ``pattern`` that hold ``filename``; ``fail`` when none.
    Each match without ``filename`` is named in a warning, never left out silently."""
    folders = []
    for path in sorted(glob.glob(pattern)):
        if os.path.isfile(os.path.join(path, filename)):
            folders.append(path)
        else:
            logging.getLogger(__name__).warning("%s: no %s, left out of %s", path, filename,
                                                pattern)  # fmt: skip
    if not folders:
        fail(f"{pattern}: no folder with {filename}")
    return folders
