"""Tests for breast_d2.data.case_files: label/mask files as other tools and cohorts name them."""
import logging
import os
import tempfile

import pytest

from breast_d2.data.case_files import CaseFiles, find_case_files, split_suffix
from breast_d2.data.errors import CohortError


def _touch(root, *parts):
    path = os.path.join(root, *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"x")
    return path


@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory() as d:
        yield d


def test_split_suffix():
    assert split_suffix("Segmentation_A_Breast.seg.nrrd") == ("Segmentation_A_Breast", ".seg.nrrd")
    assert split_suffix("a.NII.GZ") == ("a", ".NII.GZ")
    assert split_suffix("a.nrrd") == ("a", ".nrrd")
    assert split_suffix("a.raw") is None and split_suffix(".nii.gz") is None


def test_flat_files_match_without_regard_to_letter_case(tmp):
    """MAMA-MIA: segmentations/expert/ispy2_100899.nii.gz belongs to images/ISPY2_100899/."""
    a = _touch(tmp, "ispy2_100899.nii.gz")
    b = _touch(tmp, "DUKE_002.NRRD")
    orphan = _touch(tmp, "ispy1_1001.nii.gz")  # expert mask of a case that was not downloaded
    _touch(tmp, ".hidden.nii.gz")
    _touch(tmp, "._ISPY2_100899.nii.gz")  # macOS resource fork
    _touch(tmp, "notes.txt")
    found = find_case_files(tmp, ["ISPY2_100899", "Duke_002", "ISPY2_999"], kind="label volume")
    assert isinstance(found, CaseFiles)
    assert found.paths == {"ISPY2_100899": a, "Duke_002": b}  # keys as the images spell them
    assert found.orphans == [("ispy1_1001", orphan)]


def test_two_files_for_one_case_name_both(tmp):
    a = _touch(tmp, "A.nii.gz")
    b = _touch(tmp, "a.nii.gz")
    with pytest.raises(CohortError) as e:
        find_case_files(tmp, ["A"], kind="label volume")
    msg = str(e.value)
    assert "\n" not in msg and a in msg and b in msg and "case A" in msg


def test_flat_file_and_case_folder_for_one_case(tmp):
    a = _touch(tmp, "B.nii.gz")
    b = _touch(tmp, "b", "Segmentation_b_Breast.seg.nrrd")
    with pytest.raises(CohortError, match="two mask files") as e:
        find_case_files(tmp, ["B"])
    assert a in str(e.value) and b in str(e.value)


def test_duke_supplement_per_case_folders(tmp):
    """Segmentation_Masks_NRRD/Breast_MRI_NNN/Segmentation_Breast_MRI_NNN_Breast.seg.nrrd."""
    paths = {}
    for n in (1, 2, 5):
        case = f"Breast_MRI_{n:03d}"
        paths[case] = _touch(tmp, case, f"Segmentation_{case}_Breast.seg.nrrd")
        _touch(tmp, case, f"Segmentation_{case}_Dense_and_Vessels.seg.nrrd")
    _touch(tmp, "Breast_MRI_003", "Segmentation_Breast_MRI_003_Dense_and_Vessels.seg.nrrd")
    found = find_case_files(tmp, ["Breast_MRI_001", "Breast_MRI_002", "Breast_MRI_003"])
    assert found.paths == {c: paths[c] for c in ("Breast_MRI_001", "Breast_MRI_002")}
    assert found.orphans == [("Breast_MRI_005", paths["Breast_MRI_005"])]
    # a labels folder never takes a Slicer breast segmentation as a lesion label
    assert find_case_files(tmp, ["Breast_MRI_001"], kind="label volume").paths == {}


def test_dense_and_vessels_is_never_the_breast_mask_in_a_flat_folder(tmp):
    breast = _touch(tmp, "Segmentation_Breast_MRI_001_Breast.seg.nrrd")
    _touch(tmp, "Segmentation_Breast_MRI_001_Dense_and_Vessels.seg.nrrd")
    _touch(tmp, "Segmentation_Breast_MRI_002_Dense_and_Vessels.seg.nrrd")
    orphan = _touch(tmp, "Segmentation_Breast_MRI_009_Breast.seg.nrrd")
    found = find_case_files(tmp, ["Breast_MRI_001", "Breast_MRI_002"])
    assert found.paths == {"Breast_MRI_001": breast}
    assert found.orphans == [("Breast_MRI_009", orphan)]


def test_case_folder_with_two_matching_files(tmp):
    a = _touch(tmp, "C1", "C1.nii.gz")
    b = _touch(tmp, "C1", "Segmentation_C1_Breast.seg.nrrd")
    with pytest.raises(CohortError) as e:
        find_case_files(tmp, ["C1"])
    assert a in str(e.value) and b in str(e.value) and "\n" not in str(e.value)


def test_case_folder_without_a_file_for_the_case_warns(tmp, caplog):
    _touch(tmp, "C1", "something_else.nii.gz")
    _touch(tmp, "automatic", "C2.nii.gz")  # a sibling folder that is no case: not a C2 mask
    with caplog.at_level(logging.WARNING, logger="breast_d2.data.case_files"):
        found = find_case_files(tmp, ["C1", "C2"])
    assert found == CaseFiles({}, [])
    assert any("case C1" in r.getMessage() for r in caplog.records)


def test_bad_inputs(tmp):
    with pytest.raises(CohortError, match="does not exist"):
        find_case_files(os.path.join(tmp, "nope"), ["A"])
    with pytest.raises(CohortError, match="differ only in letter case"):
        find_case_files(tmp, ["Case1", "CASE1"])
    with pytest.raises(ValueError, match="named group"):
        find_case_files(tmp, ["A"], patterns=[r"(.+)"])


def test_custom_patterns_and_suffixes(tmp):
    p = _touch(tmp, "A_mask.mha")
    _touch(tmp, "A.nii.gz")
    found = find_case_files(tmp, ["A"], patterns=[r"(?P<case>.+)_mask"], suffixes=(".mha",))
    assert found.paths == {"A": p} and found.orphans == []
