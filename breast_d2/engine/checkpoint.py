"""Checkpoint loading that never runs code from the file.

detectron2 reads ``.pkl`` weights (the model-zoo / Caffe2 format, e.g. ``R-101.pkl``) with a
plain ``pickle.load`` and ``.pth`` files with ``torch.load`` without ``weights_only``; a crafted
file could run any command. :class:`BreastCheckpointer` loads ``.pkl`` files with
:class:`RestrictedUnpickler` (containers, strings, numbers and NumPy arrays only) and every
other file with ``torch.load(..., weights_only=True)``; anything else stops with a one-line
:class:`CheckpointError`.
"""
import io
import logging
import pickle
from typing import Any, Dict

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from ..fileio import CheckpointError, load_torch_file, one_line

__all__ = [
    "CheckpointError",
    "RestrictedUnpickler",
    "load_pickle_restricted",
    "BreastCheckpointer",
]

logger = logging.getLogger(__name__)

# Globals a detectron2 / Caffe2 model-zoo pickle needs: NumPy arrays, dtypes and scalars (their
# reconstruction functions, under NumPy 1 and NumPy 2 module names), OrderedDict and sets, and
# _codecs.encode (how Python 3 writes bytes at protocol 2). dict/list/tuple/str/bytes/int/float/
# bool/None have their own pickle opcodes and need no global.
_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")
_ALLOWED_GLOBALS = frozenset(
    [("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")]
    + [("_codecs", "encode")]
    + [(m, n) for m in _NUMPY_CORE for n in ("_reconstruct", "scalar")]
    + [(m, "_frombuffer") for m in _NUMPY_NUMERIC]
    + [(m, n) for m in ("builtins", "__builtin__") for n in ("set", "frozenset")]
)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only builds the objects a weights pickle holds.

    Allowed: dict, list, tuple, set, str, bytes, int, float, bool, None,
    ``collections.OrderedDict``, NumPy ``ndarray`` / ``dtype`` / scalars. Any other global (a
    function or class a ``__reduce__`` payload would call) raises ``pickle.UnpicklingError``.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} (weights pickles may hold only dicts, lists, "
                "strings, numbers and NumPy arrays)"
            )
        return super().find_class(module, name)


def load_pickle_restricted(path: str) -> Any:
    """Unpickle ``path`` (latin1, as detectron2 reads Python 2 model-zoo files) restrictedly.

    Raises:
        CheckpointError: one line naming the file, when it is unreadable, not a pickle, or
            refers to anything outside :class:`RestrictedUnpickler`'s allowed types.
    """
    try:
        with PathManager.open(path, "rb") as f:
            return RestrictedUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    except OSError as e:
        raise CheckpointError(f"cannot read weights {path}: {e.strerror or e}") from None
    except Exception as e:  # truncated or garbage bytes raise many types; report one line
        raise CheckpointError(f"{path} is not a loadable weights pickle ({one_line(e)})") from None


def _from_pkl(data: Any, path: str) -> Dict[str, Any]:
    """detectron2's handling of a loaded ``.pkl`` (model-zoo or Caffe2/Detectron1 format)."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of weights, got {type(data).__name__}")
    if "model" in data and "__author__" in data:  # detectron2 model-zoo format
        logger.info("Reading a file from '%s'", data["__author__"])
        return data
    if "blobs" in data:  # Caffe2 detection models; ImageNet models have no "blobs"
        data = data["blobs"]
    data = {k: v for k, v in data.items() if not str(k).endswith("_momentum")}
    return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}


class BreastCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` whose loading cannot run code from the file.

    ``.pkl``: :func:`load_pickle_restricted`; ``.pyth`` (pycls) and everything else (``.pth``):
    ``torch.load(..., weights_only=True)``. Saving is detectron2's.
    """

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(".pkl"):
            return _from_pkl(load_pickle_restricted(filename), filename)
        loaded = load_torch_file(filename)
        if not isinstance(loaded, dict):
            raise CheckpointError(f"{filename}: expected a checkpoint dict, got "
                                  f"{type(loaded).__name__}")
        if filename.endswith(".pyth"):  # pycls
            if "model_state" not in loaded:
                raise CheckpointError(f"{filename}: pycls checkpoints must hold 'model_state'")
            state = {k: v for k, v in loaded["model_state"].items()
                     if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return loaded if "model" in loaded else {"model": loaded}
