"""Shared helpers of the command-line tools: one-line errors, never a traceback or usage block."""
import argparse
import sys
from typing import NoReturn

__all__ = ["OneLineErrorParser", "fail"]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with ``code``."""
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one ``error: ...`` line (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        fail(message)
