"""File-writing helpers shared by the library and the tools.

Atomic writes (nothing is ever half-written), output paths that cannot escape their folder, an
early check that an output folder is writable (before hours of work, not after), and the one
``torch.load`` of user files (``weights_only=True``: loading never runs code from the file).
"""
import contextlib
import json
import math
import os
import tempfile
from typing import Any, Callable, Iterator, Optional

import numpy as np

__all__ = [
    "atomic_path",
    "write_atomic",
    "write_json_atomic",
    "jsonable",
    "path_inside",
    "ensure_writable_dir",
    "CheckpointError",
    "load_torch_file",
]


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it goes.

    The temporary name ends with ``path``'s own name, so writers that choose the format by
    extension (SimpleITK, OpenCV, matplotlib) work. The file gets the usual 0644-style mode
    (``mkstemp`` would leave 0600).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="-" + os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_atomic(path: str, write: Callable[[Any], None], mode: str = "w") -> None:
    """Call ``write(open_file)`` on a temporary file, then move it to ``path``."""
    with atomic_path(path) as tmp:
        # text is always UTF-8 (tables hold "±"), whatever the locale of the machine
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)


def jsonable(obj: Any) -> Any:
    """Replace NaN/inf by None (strict JSON) and NumPy scalars by Python ones."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json_atomic(path: str, obj: Any, indent: Optional[int] = None) -> None:
    """Write ``obj`` as strict JSON (NaN -> null) to ``path`` atomically."""
    data = jsonable(obj)
    write_atomic(path, lambda f: json.dump(data, f, indent=indent, allow_nan=False))


def path_inside(root: str, *parts: str) -> str:
    """``os.path.join(root, *parts)``, refusing a result that resolves outside ``root``.

    Symbolic links are resolved on both sides, so neither ``..`` nor an absolute part nor a link
    can lead a write out of ``root``.

    Raises:
        ValueError: one line naming ``root`` and the parts when the path escapes ``root``.
    """
    path = os.path.join(root, *parts)
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise ValueError(f"path {os.path.join(*parts)!r} would leave the output folder {root}")
    return path


def ensure_writable_dir(path: str, what: str = "output folder") -> str:
    """Create ``path`` if needed and check that files can be written in it.

    Raises:
        OSError: one line ``cannot write to <what> <path>: <reason>``.
    """
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".tmp-write-check-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OSError(f"cannot write to {what} {path}: {e.strerror or e}") from None
    return path


class CheckpointError(ValueError):
    """A weights file that is unreadable, not a checkpoint, or would need to run code."""


def one_line(exc: BaseException) -> str:
    """``Type: first line`` of an exception (torch/pickle messages span many lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def load_torch_file(path: str, what: str = "PyTorch checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with a one-line error.

    ``weights_only=True`` is passed explicitly (not left to torch's default): only tensors,
    containers, strings and numbers are built, so a crafted file cannot run code.

    Raises:
        CheckpointError: one line naming ``path`` when it is unreadable, garbage, truncated or
            holds objects that would need code to rebuild.
    """
    import torch  # the NumPy-only users of this module do not pay for torch

    try:
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:  # garbage raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(f"{path} is not a loadable {what} ({one_line(e)})") from None
