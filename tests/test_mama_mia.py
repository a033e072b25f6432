"""MAMA-MIA as downloaded: mixed letter case, expert masks without images, official test split."""
import csv
import json
import os
import tempfile
import unittest

import numpy as np
import SimpleITK as sitk

from breast_d2.data.boxes import label_lesions, merge_close_lesions
from breast_d2.data.convert import convert_cohort
from breast_d2.data.errors import CohortError

SHAPE = (6, 20, 24)  # Z, Y, X
# case folder -> (file prefix as the download spells it, expert mask boxes [x0, y0, z0, x1, y1, z1])
CASES = {
    "ISPY2_100899": ("ispy2_100899", [[3, 4, 1, 9, 10, 4]]),
    "DUKE_001": ("DUKE_001", [[10, 2, 0, 14, 6, 2], [10, 10, 3, 16, 15, 6]]),
    "NACT_01": ("nact_01", [[2, 2, 2, 6, 6, 3]]),
    "ISPY1_1001": ("ISPY1_1001", []),
}


def write(array, path, spacing=(0.8, 0.8, 2.0)):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, path)


def make_mama_mia(root):
    os.makedirs(os.path.join(root, "segmentations", "expert"))
    os.makedirs(os.path.join(root, "segmentations", "automatic"))
    os.makedirs(os.path.join(root, "patient_info_files"))
    for case, (prefix, boxes) in CASES.items():
        os.makedirs(os.path.join(root, "images", case))
        label = np.zeros(SHAPE, np.uint8)
        for x0, y0, z0, x1, y1, z1 in boxes:
            label[z0:z1, y0:y1, x0:x1] = 1
        for k in range(3):
            phase = (50 + 200 * k * label.astype(np.int16)).astype(np.int16)
            write(phase, os.path.join(root, "images", case, f"{prefix}_{k:04d}.nii.gz"))
        write(label, os.path.join(root, "segmentations", "expert", f"{case.lower()}.nii.gz"))
        write(label, os.path.join(root, "segmentations", "automatic", f"{case.lower()}.nii.gz"))
        with open(os.path.join(root, "patient_info_files", f"{case.lower()}.json"), "w") as f:
            json.dump({"patient_id": case}, f)
    # an expert mask of a case that was not downloaded
    expert = os.path.join(root, "segmentations", "expert")
    write(np.zeros(SHAPE, np.uint8), os.path.join(expert, "ispy2_999999.nii.gz"))
    with open(os.path.join(root, "clinical_and_imaging_info.xlsx"), "wb") as f:
        f.write(b"not looked at")
    with open(os.path.join(root, "train_test_splits.csv"), "w", newline="") as f:
        rows = [["train_split", "test_split"], ["DUKE_001", "ispy2_100899"],
                ["NACT_01", "ISPY2_999999"], ["ISPY1_1001", ""]]  # fmt: skip
        csv.writer(f).writerows(rows)


class TestMamaMia(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = os.path.join(self.tmp.name, "MAMA-MIA")
        make_mama_mia(self.root)
        self.out = os.path.join(self.tmp.name, "OUT")

    def tearDown(self):
        self.tmp.cleanup()

    def convert(self, **kw):
        return convert_cohort(self.root, self.out, num_folds=2,
                              labels=os.path.join(self.root, "segmentations", "expert"), **kw)

    def cases(self):
        with open(os.path.join(self.out, "cases.json")) as f:
            return {c["case_id"]: c for c in json.load(f)["cases"]}

    def test_mixed_case_and_missing_cases(self):
        summary = self.convert()
        self.assertEqual(summary["cases"], 4)
        self.assertEqual(summary["orphans"], {"label volumes": 1})
        for case_id, case in self.cases().items():
            self.assertEqual(case["boxes"], CASES[case_id][1], case_id)

    def test_official_test_split_is_held_out(self):
        self.convert(splits_from=os.path.join(self.root, "train_test_splits.csv"))
        with open(os.path.join(self.out, "splits.json")) as f:
            splits = json.load(f)
        self.assertEqual(splits["test"], ["ISPY2_100899"])
        folds = [set(f["train"]) | set(f["val"]) for f in splits["folds"]]
        self.assertEqual(folds[0], {"DUKE_001", "NACT_01", "ISPY1_1001"})
        with open(os.path.join(self.out, "test.json")) as f:
            test = json.load(f)
        self.assertEqual({im["case_id"] for im in test["images"]}, {"ISPY2_100899"})

    def test_merge_lesions(self):
        # DUKE_001's two pieces lie 2 voxels (4 mm) apart along z and 4 voxels in y
        summary = self.convert(merge_lesions_mm=float("inf"))
        self.assertEqual(self.cases()["DUKE_001"]["boxes"], [[10, 2, 0, 16, 15, 6]])
        self.assertEqual(summary["lesions"], 3)

    def test_merge_lesions_by_distance(self):
        label = np.zeros((1, 1, 10), np.uint8)
        label[0, 0, [0, 3, 9]] = 1  # gaps of 3 and 6 voxels at 1 mm
        comps, boxes = label_lesions(label)
        self.assertEqual(len(merge_close_lesions(comps, boxes, (1, 1, 1), 2.9)[1]), 3)
        self.assertEqual(merge_close_lesions(comps, boxes, (1, 1, 1), 3.0)[1],
                         [[0, 0, 0, 4, 1, 1], [9, 0, 0, 10, 1, 1]])  # fmt: skip
        self.assertEqual(merge_close_lesions(comps, boxes, (1, 1, 1), 6.0)[1],
                         [[0, 0, 0, 10, 1, 1]])  # fmt: skip

    def test_two_masks_for_one_case(self):
        expert = os.path.join(self.root, "segmentations", "expert")
        write(np.zeros(SHAPE, np.uint8), os.path.join(expert, "NACT_01.nii.gz"))
        with self.assertRaisesRegex(CohortError, "case NACT_01: two label volume files"):
            self.convert()


if __name__ == "__main__":
    unittest.main()
