"""Resolve ``MODEL.WEIGHTS`` before training, with a clear message when it cannot be had."""
import logging
import os
import socket

from detectron2.utils.file_io import PathManager

__all__ = ["WeightsUnavailableError", "resolve_weights"]

logger = logging.getLogger(__name__)

_REMOTE_PREFIXES = ("detectron2://", "http://", "https://")


class WeightsUnavailableError(RuntimeError):
    """``MODEL.WEIGHTS`` names a file that is missing or cannot be downloaded."""


def resolve_weights(weights: str, timeout_s: float = 20.0) -> str:
    """Return a local path for ``weights`` ("" stays "": train from scratch).

    Remote weights (``detectron2://``, ``http(s)://``) are fetched into detectron2's cache; when
    that fails (no internet), raise :class:`WeightsUnavailableError` saying how to go on.
    """
    if not weights:
        return ""
    if not weights.startswith(_REMOTE_PREFIXES):
        if not os.path.isfile(weights):
            raise WeightsUnavailableError(f"MODEL.WEIGHTS file not found: {weights}")
        return weights
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        return PathManager.get_local_path(weights)
    except Exception as e:  # any download failure: DNS, refused, timeout, HTTP error
        raise WeightsUnavailableError(
            f"cannot download MODEL.WEIGHTS {weights} ({type(e).__name__}: {e}). Download it "
            "elsewhere and pass MODEL.WEIGHTS /path/to/R-101.pkl, or train from scratch with "
            "MODEL.WEIGHTS '' MODEL.RESNETS.NORM BN MODEL.BACKBONE.FREEZE_AT 0 "
            "(see configs/frcnn_cpu_demo.yaml)"
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)
