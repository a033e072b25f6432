"""Atomic writing: the target appears whole or not at all, with the usual file mode."""
import json
import os
import stat

import numpy as np
import pytest

from breast_d2.utils import atomic_path, write_json_atomic


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]


def test_temp_name_keeps_extension_and_mode_is_not_private(tmp_path):
    target = tmp_path / "a" / "mask.nii.gz"
    with atomic_path(str(target)) as tmp:
        assert tmp.endswith("mask.nii.gz") and os.path.dirname(tmp) == str(tmp_path / "a")
        open(tmp, "w").close()
    assert stat.S_IMODE(os.stat(target).st_mode) & 0o044  # group/other can read


def test_write_json_atomic_is_strict_json(tmp_path):
    path = str(tmp_path / "x.json")
    write_json_atomic(path, {"a": float("nan"), "b": np.int64(3), "c": [np.float32(0.5)]})
    with open(path) as f:
        assert json.load(f) == {"a": None, "b": 3, "c": [0.5]}
