"""Readers of one channel of a case's slices, for the post-merge steps that look at the image
(the extent refinement, ``refine.py``, and the box fit, ``boxfit.py``).

Both readers have ``num_slices(case_id) -> Z`` and ``read(case_id, z) -> [H, W]``.
"""
import os
from typing import Mapping

import cv2
import numpy as np

from ..data.converted import read_cases
from ..data.errors import CohortError
from .candidates import FROCInputError

__all__ = ["SUBTRACTION_CHANNEL", "ConvertedSlices", "ArraySlices"]

#: Channel of the converted PNG holding post1 - pre with the converter's default
#: ``--channels 1,1-0,0`` (0, 1, 2 = R, G, B).
SUBTRACTION_CHANNEL = 1


class ConvertedSlices:
    """Reads one channel of the slices of a converted folder (docs/DATA_FORMAT.md).

    Args:
        data_root: the converted folder (``cases.json``, ``slices/<case>/<z:04d>.png``).
        channel: 0, 1, 2 = R, G, B of the PNG (the converter's channel expressions in order).
    """

    def __init__(self, data_root: str, channel: int = SUBTRACTION_CHANNEL):
        try:
            self._cases = read_cases(data_root)
        except CohortError as e:
            raise FROCInputError(str(e)) from None
        self.data_root = data_root if os.path.isdir(data_root) else os.path.dirname(data_root)
        self.channel = int(channel)

    def num_slices(self, case_id: str) -> int:
        """Z of the case (``cases.json`` shape ``[X, Y, Z]``)."""
        case = self._cases.get(case_id)
        if case is None:
            raise FROCInputError(f"case {case_id!r} is not in {self.data_root}/cases.json")
        try:
            return int(case["shape"][2])
        except (KeyError, TypeError, IndexError, ValueError):
            raise FROCInputError(
                f"{self.data_root}/cases.json: case {case_id!r} has no shape [X, Y, Z]"
            ) from None

    def read(self, case_id: str, z: int) -> np.ndarray:
        """``[H, W]`` uint8, the channel of slice ``z`` of the case."""
        self.num_slices(case_id)  # the id is a known, checked case id: a plain file name
        path = os.path.join(self.data_root, "slices", case_id, f"{int(z):04d}.png")
        image = cv2.imread(path, cv2.IMREAD_COLOR)  # B, G, R
        if image is None:
            raise FROCInputError(f"cannot read slice {path} (case {case_id!r}, z {z})")
        return np.ascontiguousarray(image[:, :, 2 - self.channel])


class ArraySlices:
    """In-memory stand-in for :class:`ConvertedSlices`.

    Args:
        volumes: ``{case_id: [Z, H, W] array}``, the subtraction channel of each case.
    """

    def __init__(self, volumes: Mapping[str, np.ndarray]):
        self._volumes = dict(volumes)

    def num_slices(self, case_id: str) -> int:
        if case_id not in self._volumes:
            raise FROCInputError(f"case {case_id!r} has no volume")
        return int(self._volumes[case_id].shape[0])

    def read(self, case_id: str, z: int) -> np.ndarray:
        """``[H, W]`` slice ``z`` of the case."""
        self.num_slices(case_id)
        return self._volumes[case_id][int(z)]
