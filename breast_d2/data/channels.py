"""The phases of one case -> three 8-bit channels per slice (phases, subtractions), windowed.

A channel spec such as ``"1,1-0,0"`` names three expressions, each a phase or the subtraction of
two phases (phase 0 = pre-contrast, 1.. = post-contrast), optionally read from a neighbouring
slice (``"1-0@-1"``: the subtraction of slice z - 1). :func:`compose_channels` evaluates them on
``[Z, Y, X]`` phases and windows each channel over the whole case with robust percentiles, so
cases from different scanners look alike; the result is ``[Z, Y, X, 3]`` uint8, written as R, G, B.

Named specs (:data:`CHANNEL_PRESETS`): ``study`` = ``1,1-0,0`` (the reference study's post 1,
subtraction, pre) and ``2.5d`` = ``1-0@-1,1-0,1-0@+1`` (the subtraction of slices z - 1, z, z + 1).
"""
import logging
import math
import re
from typing import Dict, List, Mapping, NamedTuple, Optional, Set, Tuple, Union

import numpy as np

__all__ = ["CHANNEL_PRESETS", "ChannelExpr", "parse_channels", "phases_used", "compose_channels"]

logger = logging.getLogger(__name__)

#: Named channel specs accepted wherever a spec is (``--channels 2.5d``).
CHANNEL_PRESETS: Dict[str, str] = {"study": "1,1-0,0", "2.5d": "1-0@-1,1-0,1-0@+1"}

_EXPR = re.compile(r"(\d+)(?:\s*-\s*(\d+))?(?:\s*@\s*([+-]?\d+))?")


class ChannelExpr(NamedTuple):
    """One channel: phase ``minuend`` minus phase ``subtrahend`` (None: the plain phase), read
    ``slice_offset`` slices away along z (0: the slice itself; edges repeat the end slice)."""

    minuend: int
    subtrahend: Optional[int] = None
    slice_offset: int = 0


def parse_channels(spec: str, num_phases: Optional[int] = None) -> List[ChannelExpr]:
    """Parse a channel spec such as ``"1,1-0,0"`` into three :class:`ChannelExpr`.

    Three comma-separated expressions, each a phase index ``a`` or a subtraction ``a-b``,
    optionally followed by ``@dz``, a signed slice offset (``1-0@-1``: the subtraction of slice
    z - 1 on slice z). A name of :data:`CHANNEL_PRESETS` stands for its spec. Default
    ``"1,1-0,0"`` = first post-contrast, its subtraction from pre-contrast, pre-contrast.

    Raises:
        ValueError: malformed spec, or a phase index >= ``num_phases``.
    """
    spec = CHANNEL_PRESETS.get(str(spec).strip().lower(), spec)
    exprs = [e.strip() for e in str(spec).split(",")]
    if len(exprs) != 3:
        raise ValueError(f"channel spec {spec!r} must be 3 comma-separated expressions (1,1-0,0) "
                         f"or one of {', '.join(CHANNEL_PRESETS)}")
    out = []
    for e in exprs:
        m = _EXPR.fullmatch(e)
        if not m:
            raise ValueError(f"channel spec {spec!r}: {e!r} is not a phase index, 'a-b' or "
                             "either with '@dz' (a slice offset)")
        a, b = int(m.group(1)), None if m.group(2) is None else int(m.group(2))
        used = max(a, -1 if b is None else b)
        if num_phases is not None and used >= num_phases:
            raise ValueError(f"channel spec {spec!r} uses phase {used} but there are {num_phases}")
        out.append(ChannelExpr(a, b, 0 if m.group(3) is None else int(m.group(3))))
    return out


def phases_used(spec: str) -> Set[int]:
    """The phase indices a channel spec reads."""
    return {k for e in parse_channels(spec) for k in (e.minuend, e.subtrahend) if k is not None}


def _shift_slices(x: np.ndarray, offset: int) -> np.ndarray:
    """``out[z] = x[clip(z + offset, 0, Z - 1)]`` along axis 0 (the end slices repeat)."""
    if offset == 0:
        return x
    index = np.clip(np.arange(x.shape[0]) + offset, 0, x.shape[0] - 1)
    return x[index]


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
    phases, possibly of a neighbouring slice). Windowing: per expression over the whole case, the
    ``percentiles`` (default 0.5 % and 99.5 %) of its values are mapped linearly to 0 and 255 and
    values outside are clipped. A constant channel becomes 0. Robust per-case percentiles make
    cases from different scanners comparable without letting a few very bright voxels (vessels,
    artefacts) set the scale. A slice offset shifts the windowed expression along z, so the
    channels of one expression at different offsets share one window (2.5D input).

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
    for k in sorted(phases_used(spec)):
        if not _has_phase(phases, k):
            raise ValueError(f"channel spec {spec!r} uses phase {k}, which is not available")
    first = phases[exprs[0].minuend]
    out = np.empty(tuple(first.shape) + (3,), dtype=np.uint8)
    windowed: Dict[Tuple[int, Optional[int]], np.ndarray] = {}  # one window per expression
    for c, (a, b, offset) in enumerate(exprs):
        if (a, b) not in windowed:
            x = np.asarray(phases[a], dtype=np.float32)
            if b is not None:
                x = x - np.asarray(phases[b], dtype=np.float32)
            windowed[(a, b)] = _window_uint8(x, percentiles)
        out[..., c] = _shift_slices(windowed[(a, b)], offset)
    return out


def _has_phase(phases: Union[np.ndarray, Mapping[int, np.ndarray]], k: int) -> bool:
    if isinstance(phases, Mapping):
        return k in phases
    return 0 <= k < len(phases)
