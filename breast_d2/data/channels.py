"""The phases of one case -> three 8-bit channels per slice (phases, subtractions), windowed.

A channel spec such as ``"1,1-0,0"`` names three expressions, each a phase or the subtraction of
two phases (phase 0 = pre-contrast, 1.. = post-contrast). :func:`compose_channels` evaluates them
on ``[Z, Y, X]`` phases and windows each channel over the whole case with robust percentiles, so
cases from different scanners look alike; the result is ``[Z, Y, X, 3]`` uint8, written as R, G, B.
"""
import logging
import math
import re
from typing import List, Mapping, Optional, Tuple, Union

import numpy as np

__all__ = ["parse_channels", "compose_channels"]

logger = logging.getLogger(__name__)


def parse_channels(spec: str, num_phases: Optional[int] = None) -> List[Tuple[int, Optional[int]]]:
    """Parse a channel spec such as ``"1,1-0,0"`` into ``[(a, b), ...]`` = phase a minus phase b.

    Three comma-separated expressions, each a phase index ``a`` or a subtraction ``a-b``
    (``b`` is None for a plain phase). Default ``"1,1-0,0"`` = first post-contrast, its
    subtraction from pre-contrast, pre-contrast.

    Raises:
        ValueError: malformed spec, or a phase index >= ``num_phases``.
    """
    exprs = [e.strip() for e in str(spec).split(",")]
    if len(exprs) != 3:
        raise ValueError(f"channel spec {spec!r} must be 3 comma-separated expressions (1,1-0,0)")
    out = []
    for e in exprs:
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", e)
        if not m:
            raise ValueError(f"channel spec {spec!r}: {e!r} is not a phase index or 'a-b'")
        a, b = int(m.group(1)), None if m.group(2) is None else int(m.group(2))
        used = max(a, -1 if b is None else b)
        if num_phases is not None and used >= num_phases:
            raise ValueError(f"channel spec {spec!r} uses phase {used} but there are {num_phases}")
        out.append((a, b))
    return out


def _window_uint8(x: np.ndarray, percentiles: Tuple[float, float]) -> np.ndarray:
    """Map ``[lo, hi]`` = the given percentiles of ``x`` linearly to 0..255 (clipped)."""
    # Percentiles over a strided sample of at most ~2M voxels: same window, far less sorting time.
    step = max(1, x.size // 2_000_000)
    lo, hi = np.percentile(x.reshape(-1)[::step], percentiles)
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return np.zeros(x.shape, dtype=np.uint8)
    y = (x - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(y, 0, 255, out=y).round(out=y).astype(np.uint8)


def compose_channels(
    phases: Union[np.ndarray, Mapping[int, np.ndarray]],
    spec: str = "1,1-0,0",
    percentiles: Tuple[float, float] = (0.5, 99.5),
) -> np.ndarray:
    """Compose three 8-bit channels from the phases of one case.

    Each channel is an expression of :func:`parse_channels` (a phase, or a subtraction of two
    phases). Windowing: per channel over the whole case, the ``percentiles`` (default 0.5 % and
    99.5 %) of its values are mapped linearly to 0 and 255 and values outside are clipped. A
    constant channel becomes 0. Robust per-case percentiles make cases from different scanners
    comparable without letting a few very bright voxels (vessels, artefacts) set the scale.

    Args:
        phases: ``[P, Z, Y, X]`` array, or a mapping ``{phase_index: [Z, Y, X]}`` holding at least
            the phases the spec uses.
        spec: channel spec, default ``"1,1-0,0"`` (post1, post1 - pre, pre).
        percentiles: lower and upper window percentiles in %.

    Returns:
        ``[Z, Y, X, 3]`` uint8; channel c is expression c (write as R, G, B).

    Raises:
        ValueError: bad spec or a phase the input lacks.
    """
    exprs = parse_channels(spec)
    for a, b in exprs:
        for k in (a, b):
            if k is not None and not _has_phase(phases, k):
                raise ValueError(f"channel spec {spec!r} uses phase {k}, which is not available")
    first = phases[exprs[0][0]]
    out = np.empty(tuple(first.shape) + (3,), dtype=np.uint8)
    for c, (a, b) in enumerate(exprs):
        x = np.asarray(phases[a], dtype=np.float32)
        if b is not None:
            x = x - np.asarray(phases[b], dtype=np.float32)
        out[..., c] = _window_uint8(x, percentiles)
    return out


def _has_phase(phases: Union[np.ndarray, Mapping[int, np.ndarray]], k: int) -> bool:
    if isinstance(phases, Mapping):
        return k in phases
    return 0 <= k < len(phases)
