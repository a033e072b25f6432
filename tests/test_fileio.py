"""Atomic writing of files and folders: the target appears whole or not at all, usual modes."""
import json
import os
import stat

import numpy as np
import pytest

from breast_d2.fileio import atomic_folder, atomic_path, write_atomic, write_json_atomic


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


def test_atomic_path_tmp_dir_keeps_the_temp_file_out_of_the_target_folder(tmp_path):
    scratch, target = tmp_path / "scratch", tmp_path / "out" / "t.txt"
    with atomic_path(str(target), str(scratch)) as tmp:
        assert os.path.dirname(tmp) == str(scratch) and not os.listdir(tmp_path / "out")
        open(tmp, "w").close()
    with pytest.raises(ValueError):
        write_atomic(str(target), lambda f: (f.write(b"half"), int("x")), "wb", str(scratch))
    assert target.read_text() == "" and os.listdir(scratch) == []


def _files(folder):
    return {n: (folder / n).read_text() for n in sorted(os.listdir(folder))}


def test_atomic_folder_creates_then_replaces_a_whole_folder(tmp_path):
    dst = tmp_path / "cases" / "A"
    with atomic_folder(str(dst)) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path / "cases") and os.listdir(tmp) == []
        assert not dst.exists()  # nothing visible before the commit
        (tmp_path / "cases" / os.path.basename(tmp) / "0000.png").write_text("new0")
    assert _files(dst) == {"0000.png": "new0"}
    assert stat.S_IMODE(os.stat(dst).st_mode) & 0o055  # not mkdtemp's private 0700
    with atomic_folder(str(dst)) as tmp:
        with open(os.path.join(tmp, "0001.png"), "w") as f:
            f.write("newer")
    assert _files(dst) == {"0001.png": "newer"}  # replaced, not merged
    assert os.listdir(tmp_path / "cases") == ["A"]  # no temp or old folder left


def test_atomic_folder_error_leaves_the_old_folder_and_no_temp(tmp_path):
    dst = tmp_path / "A"
    dst.mkdir()
    (dst / "keep.txt").write_text("old")
    scratch = tmp_path / ".tmp"
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error):
            with atomic_folder(str(dst), str(scratch)) as tmp:
                assert os.path.dirname(tmp) == str(scratch)
                with open(os.path.join(tmp, "half.txt"), "w") as f:
                    f.write("half")
                raise error("interrupted")
        assert _files(dst) == {"keep.txt": "old"} and os.listdir(scratch) == []
    assert sorted(os.listdir(tmp_path)) == [".tmp", "A"]


def test_atomic_folder_failed_commit_puts_the_old_folder_back(tmp_path, monkeypatch):
    dst = tmp_path / "A"
    dst.mkdir()
    (dst / "keep.txt").write_text("old")
    real_rename = os.rename

    def rename(src, target):
        if os.path.basename(src).startswith(".tmp-"):
            raise OSError("disk gone")
        return real_rename(src, target)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="disk gone"):
        with atomic_folder(str(dst)) as tmp:
            open(os.path.join(tmp, "new.txt"), "w").close()
    assert _files(dst) == {"keep.txt": "old"} and os.listdir(tmp_path) == ["A"]
