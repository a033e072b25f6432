"""File-writing helpers shared by the library and the tools.

Atomic writes, so that nothing is ever half-written: one helper for files (:func:`atomic_path`,
with :func:`write_atomic` and :func:`write_json_atomic` on top) and one for folders
(:func:`atomic_folder`). Output paths that cannot escape their folder, an early check that an
output folder is writable (before hours of work, not after), and the one ``torch.load`` of user
files (``weights_only=True``: loading never runs code from the file).
"""
import contextlib
import json
import math
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator, Optional

import numpy as np

__all__ = [
    "atomic_path",
    "atomic_folder",
    "write_atomic",
    "write_json_atomic",
    "jsonable",
    "path_inside",
    "ensure_writable_dir",
    "CheckpointError",
    "load_torch_file",
]


def _default_mode(path: str, folder: bool) -> None:
    """Give ``path`` the mode ``open``/``mkdir`` would (``mkstemp``/``mkdtemp`` give 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if folder else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_path(path: str, tmp_dir: Optional[str] = None) -> Iterator[str]:
    """Yield a temporary path; on success it replaces ``path``, on error it is removed.

    The temporary name ends with ``path``'s own name, so writers that choose the format by
    extension (SimpleITK, OpenCV, matplotlib) work. The file gets the usual 0644-style mode
    (``mkstemp`` would leave 0600).

    Args:
        path: the file to write.
        tmp_dir: folder for the temporary file (default: beside ``path``). It must be on the same
            file system as ``path`` (the commit is one ``os.replace``); a writer that cleans its
            own scratch folder passes it, so a killed run leaves nothing beside ``path``.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if tmp_dir:
        os.makedirs(tmp_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=tmp_dir or folder, prefix=".tmp-", suffix="-" + os.path.basename(path)
    )
    os.close(fd)
    try:
        yield tmp
        _default_mode(tmp, folder=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _move_aside(path: str, where: str) -> Optional[str]:
    """Move an existing folder ``path`` to ``<new temp folder in where>/x``; return that folder."""
    if not os.path.isdir(path) or os.path.islink(path):
        return None
    old = tempfile.mkdtemp(dir=where, prefix=".old-", suffix="-" + os.path.basename(path))
    try:
        os.rename(path, os.path.join(old, "x"))
    except BaseException:
        os.rmdir(old)
        raise
    return old


@contextlib.contextmanager
def atomic_folder(path: str, tmp_dir: Optional[str] = None) -> Iterator[str]:
    """Yield a new empty temporary folder; on success it replaces the folder ``path``.

    On error (any exception, also ``KeyboardInterrupt``) the temporary folder and everything in
    it is removed and ``path`` is left as it was. An existing ``path`` folder is moved aside,
    the new one renamed into place, then the old one deleted: readers see the old folder or the
    new one, never a mix (``path`` is briefly absent between the two renames).

    Args:
        path: the folder to (re)write.
        tmp_dir: where the temporary folder is made (default: beside ``path``, named
            ``.tmp-*-<name>``); it must be on the same file system as ``path``.

    Yields:
        The temporary folder (mode 0755-style, as ``os.makedirs`` would make it).
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    where = tmp_dir or parent
    os.makedirs(where, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=where, prefix=".tmp-", suffix="-" + os.path.basename(path))
    try:
        yield tmp
        _default_mode(tmp, folder=True)
        old = _move_aside(path, where)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old is not None:  # put the old folder back
                os.rename(os.path.join(old, "x"), path)
                os.rmdir(old)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def write_atomic(
    path: str, write: Callable[[Any], None], mode: str = "w", tmp_dir: Optional[str] = None
) -> None:
    """Call ``write(open_file)`` on a temporary file, then move it to ``path``.

    ``mode`` is ``"w"`` (UTF-8 text) or ``"wb"``; ``tmp_dir`` as in :func:`atomic_path`.
    """
    with atomic_path(path, tmp_dir) as tmp:
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
