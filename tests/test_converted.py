"""converted.py: the one reader of cases.json / splits.json and the converted-folder check."""
import json
import os

import pytest

from breast_d2.data.converted import check_converted_folder, read_cases, read_fold, read_splits
from breast_d2.data.errors import CohortError

SPLITS = {"num_folds": 2, "seed": 0,
          "folds": [{"fold": 0, "train": ["A"], "val": ["B"]},
                    {"fold": 1, "train": ["B"], "val": ["A"]}]}  # fmt: skip


def _write(folder, name, obj):
    with open(os.path.join(folder, name), "w") as f:
        json.dump(obj, f)


def test_check_converted_folder_names_the_missing_file(tmp_path):
    _write(tmp_path, "cases.json", {"cases": []})
    with pytest.raises(CohortError, match=r"is not a converted folder .*missing splits\.json"):
        check_converted_folder(str(tmp_path))
    _write(tmp_path, "splits.json", SPLITS)
    assert check_converted_folder(str(tmp_path)) == str(tmp_path)


def test_read_fold_from_the_folder_or_the_file(tmp_path):
    _write(tmp_path, "splits.json", SPLITS)
    assert read_fold(str(tmp_path), 1) == (["B"], ["A"])
    assert read_fold(str(tmp_path / "splits.json"), 0) == (["A"], ["B"])
    assert read_splits(str(tmp_path)) == SPLITS
    with pytest.raises(CohortError, match=r"splits\.json: no fold 2 \(folds \[0, 1\]\)"):
        read_fold(str(tmp_path), 2)


def test_bad_case_id_in_a_fold_or_in_cases_is_an_error(tmp_path):
    _write(tmp_path, "splits.json", {"folds": [{"fold": 0, "train": ["../x"], "val": []}]})
    with pytest.raises(CohortError, match=r"folds\[0\] train"):
        read_fold(str(tmp_path), 0)
    _write(tmp_path, "cases.json", {"cases": [{"case_id": "A"}, {"case_id": "A"}]})
    with pytest.raises(CohortError, match="'A' appears twice"):
        read_cases(str(tmp_path))
