"""Tests for breast_d2.data.convert: layout, COCO round trip, folds, resume, bad input."""
import json
import os
import shutil
import tempfile
import unittest

import numpy as np
from PIL import Image

from breast_d2.data.channels import compose_channels
from breast_d2.data.convert import convert_cohort, make_folds
from breast_d2.data.errors import CohortError
from breast_d2.data.readers import read_case_phases
from helpers import LESIONS, SHAPE, make_cohort, tree_hash, write_nifti


def _load(path):
    with open(path) as f:
        return json.load(f)


class ConvertTestBase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.cohort = os.path.join(cls._tmp.name, "cohort")
        make_cohort(cls.cohort)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def setUp(self):
        self._out = tempfile.TemporaryDirectory()
        self.out = os.path.join(self._out.name, "OUT")

    def tearDown(self):
        self._out.cleanup()

    def convert(self, out=None, source="labels", **kwargs):
        src = {"labels": os.path.join(self.cohort, "LABELS")}
        if source == "boxes":
            src = {"boxes_csv": os.path.join(self.cohort, "boxes.csv")}
        kwargs.setdefault("num_folds", 2)
        return convert_cohort(os.path.join(self.cohort, "IMAGES"), out or self.out, **src, **kwargs)


class TestConvertLayout(ConvertTestBase):
    def test_layout_pngs_and_cases(self):
        summary = self.convert(masks=os.path.join(self.cohort, "MASKS"))
        self.assertEqual((summary["cases"], summary["slices"], summary["lesions"]), (5, 40, 4))
        for name in ("cases.json", "splits.json", "convert.log", "fold1_val.json"):
            self.assertTrue(os.path.isfile(os.path.join(self.out, name)), name)
        self.assertEqual(len(os.listdir(os.path.join(self.out, "slices", "PH0003"))), 8)
        self.assertFalse(os.path.exists(os.path.join(self.out, ".tmp")))
        # PNG channels are R, G, B = post1, post1 - pre, pre (PIL reads RGB)
        rgb = np.asarray(Image.open(os.path.join(self.out, "slices", "PH0003", "0004.png")))
        phases = read_case_phases(os.path.join(self.cohort, "IMAGES"), "PH0003").phases
        np.testing.assert_array_equal(rgb, compose_channels(phases, "1,1-0,0")[4])
        mask = np.asarray(Image.open(os.path.join(self.out, "masks", "gt", "PH0003", "0004.png")))
        self.assertEqual(mask.shape, (48, 48))
        self.assertEqual(set(np.unique(mask)), {0, 255})
        self.assertEqual(int(mask[10, 10]), 255)
        cases = {c["case_id"]: c for c in _load(os.path.join(self.out, "cases.json"))["cases"]}
        self.assertEqual(cases["PH0003"]["shape"], [48, 48, 8])
        self.assertEqual(cases["PH0003"]["spacing"], [0.75, 0.75, 1.5])
        self.assertEqual(cases["PH0003"]["boxes"], LESIONS["PH0003"])
        self.assertEqual(cases["PH0002"]["boxes"], [])
        self.assertIn("case PH0003", open(os.path.join(self.out, "convert.log")).read())

    def test_2p5d_channels(self):
        """``channels="2.5d"``: R, G, B = the subtraction of slices z - 1, z, z + 1."""
        summary = self.convert(channels="2.5d")
        self.assertEqual(summary["cases"], 5)
        phases = read_case_phases(os.path.join(self.cohort, "IMAGES"), "PH0003").phases
        expected = compose_channels(phases, "1-0@-1,1-0,1-0@+1")
        for z in (0, 4, 7):
            rgb = np.asarray(Image.open(os.path.join(self.out, "slices", "PH0003", f"{z:04d}.png")))
            np.testing.assert_array_equal(rgb, expected[z])
        np.testing.assert_array_equal(expected[4, ..., 0], expected[3, ..., 1])

    def test_labels_and_csv_agree(self):
        self.convert()
        other = os.path.join(self._out.name, "OUT_CSV")
        self.convert(out=other, source="boxes")
        for name in ("cases.json", "splits.json", "fold0_train.json", "fold1_val.json"):
            a, b = _load(os.path.join(self.out, name)), _load(os.path.join(other, name))
            if "annotations" in a:  # cubes: cross-sections equal the 3D box on every slice
                self.assertEqual(a["annotations"], b["annotations"], name)
                self.assertEqual(a["images"], b["images"], name)
            else:
                self.assertEqual(a, b, name)

    def test_coco_round_trip(self):
        from detectron2.data.datasets import load_coco_json
        from detectron2.structures import BoxMode
        from pycocotools.coco import COCO

        self.convert(source="boxes")
        expected = {}  # (case, z) -> sorted XYXY boxes from the CSV's 3D boxes
        for case_id, boxes in LESIONS.items():
            for z in range(SHAPE[0]):
                expected[(case_id, z)] = sorted(
                    [b[0], b[1], b[3], b[4]] for b in boxes if b[2] <= z < b[5]
                )
        seen = set()
        for k in range(2):
            for split in ("train", "val"):
                path = os.path.join(self.out, f"fold{k}_{split}.json")
                coco = COCO(path)
                for img_id, img in coco.imgs.items():
                    key = (img["case_id"], img["slice_index"])
                    anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
                    got = sorted([a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                  a["bbox"][1] + a["bbox"][3]] for a in anns)  # fmt: skip
                    self.assertEqual(got, expected[key], key)
                    self.assertEqual(img["file_name"], f"slices/{key[0]}/{key[1]:04d}.png")
                    self.assertTrue(all(a["category_id"] == 1 for a in anns))
                    if split == "val":
                        seen.add(key)
                dicts = load_coco_json(path, self.out, dataset_name=None)
                self.assertEqual(len(dicts), len(coco.imgs))
                for d in dicts:
                    img = coco.imgs[d["image_id"]]
                    key = (img["case_id"], img["slice_index"])
                    to_xyxy = BoxMode.XYXY_ABS
                    xyxy = sorted(
                        list(map(float, BoxMode.convert(a["bbox"], a["bbox_mode"], to_xyxy)))
                        for a in d["annotations"]
                    )
                    self.assertEqual(xyxy, [[float(v) for v in b] for b in expected[key]])
                    self.assertTrue(os.path.isfile(d["file_name"]))
        self.assertEqual(seen, set(expected))  # every slice of every case is validated once
        coco = _load(os.path.join(self.out, "fold0_train.json"))
        self.assertEqual(coco["categories"], [{"id": 1, "name": "mass", "supercategory": "lesion"}])
        ann = coco["annotations"][0]
        self.assertEqual(ann["area"], ann["bbox"][2] * ann["bbox"][3])
        self.assertIn("lesion_index", ann)


class TestFolds(ConvertTestBase):
    def test_make_folds_properties(self):
        counts = {f"C{i:02d}": i % 4 for i in range(23)}
        folds = make_folds(counts, 5, seed=3)
        self.assertEqual(folds, make_folds(counts, 5, seed=3))
        self.assertNotEqual(folds, make_folds(counts, 5, seed=4))
        flat = [c for f in folds for c in f]
        self.assertEqual(sorted(flat), sorted(counts))  # every case in exactly one val fold
        sizes = [len(f) for f in folds]
        self.assertLessEqual(max(sizes) - min(sizes), 1)
        for stratum in range(3):
            per_fold = [sum(min(counts[c], 2) == stratum for c in f) for f in folds]
            self.assertLessEqual(max(per_fold) - min(per_fold), 1, stratum)
        with self.assertRaises(CohortError):
            make_folds(counts, 24, seed=0)

    def test_splits_json(self):
        self.convert(seed=7)
        splits = _load(os.path.join(self.out, "splits.json"))
        self.assertEqual((splits["num_folds"], splits["seed"]), (2, 7))
        counts = {c: len(b) for c, b in LESIONS.items()}
        self.assertEqual([f["val"] for f in splits["folds"]], make_folds(counts, 2, seed=7))
        for f in splits["folds"]:
            self.assertFalse(set(f["train"]) & set(f["val"]))
            self.assertEqual(sorted(f["train"] + f["val"]), sorted(LESIONS))
            coco = _load(os.path.join(self.out, f"fold{f['fold']}_val.json"))
            self.assertEqual({im["case_id"] for im in coco["images"]}, set(f["val"]))
        # same inputs and seed -> same bytes
        other = os.path.join(self._out.name, "OUT2")
        self.convert(out=other, seed=7)
        for name in ("splits.json", "fold0_train.json", "fold1_val.json", "cases.json"):
            with open(os.path.join(self.out, name), "rb") as a:
                with open(os.path.join(other, name), "rb") as b:
                    self.assertEqual(a.read(), b.read(), name)


class TestResumeAndWorkers(ConvertTestBase):
    def test_resume_skips_finished_cases(self):
        self.convert()
        before = tree_hash(os.path.join(self.out, "slices"))
        shutil.rmtree(os.path.join(self.out, "slices", "PH0002"))  # as if interrupted
        with self.assertRaisesRegex(CohortError, "not empty; pass --resume"):
            self.convert()
        summary = self.convert(resume=True)
        self.assertEqual((summary["converted"], summary["resumed"]), (1, 4))
        self.assertEqual(tree_hash(os.path.join(self.out, "slices")), before)
        summary = self.convert(resume=True, channels="1,1-0,1")  # other settings: redo all
        self.assertEqual(summary["converted"], 5)

    def test_workers_give_same_output(self):
        self.convert()
        other = os.path.join(self._out.name, "OUT2")
        self.convert(out=other, workers=2)
        for sub in ("slices", "cases.json", "fold0_train.json", "fold1_val.json"):
            a, b = os.path.join(self.out, sub), os.path.join(other, sub)
            if os.path.isdir(a):
                self.assertEqual(tree_hash(a), tree_hash(b))
            else:
                self.assertEqual(_load(a), _load(b))


class TestBadInput(unittest.TestCase):
    """Each bad input: one-line CohortError naming case + file/line, no output, input unchanged."""

    def _check(self, breaker, needles, source="labels", **kwargs):
        with tempfile.TemporaryDirectory() as d:
            cohort = os.path.join(d, "cohort")
            make_cohort(cohort)
            breaker(cohort)
            before = tree_hash(cohort)
            out = os.path.join(d, "OUT")
            src = {"labels": os.path.join(cohort, "LABELS")}
            if source == "boxes":
                src = {"boxes_csv": os.path.join(cohort, "boxes.csv")}
            with self.assertRaises(CohortError) as ctx:
                convert_cohort(os.path.join(cohort, "IMAGES"), kwargs.pop("out", out), num_folds=2,
                               **src, **kwargs)  # fmt: skip
            msg = str(ctx.exception)
            self.assertNotIn("\n", msg)
            for needle in needles:
                self.assertIn(needle, msg)
            self.assertEqual(tree_hash(cohort), before, "input tree modified")
            if os.path.isdir(out):  # only whole cases converted before the failure, no JSON, no tmp
                left = set(os.listdir(out))
                self.assertFalse(left & {"cases.json", "splits.json", "fold0_train.json", ".tmp"})
                for case_id in os.listdir(os.path.join(out, "slices")) if "slices" in left else []:
                    self.assertEqual(len(os.listdir(os.path.join(out, "slices", case_id))), 8)
                    record = os.path.join(out, ".convert_state", case_id + ".json")
                    self.assertTrue(os.path.isfile(record))
                self.assertIn(msg, open(os.path.join(out, "convert.log")).read())
            return msg

    @staticmethod
    def _images(cohort, case_id, name):
        return os.path.join(cohort, "IMAGES", case_id, name)

    def _rewrite_csv(self, cohort, extra):
        with open(os.path.join(cohort, "boxes.csv"), "a") as f:
            f.write(extra)

    def test_missing_phase(self):
        self._check(lambda c: os.remove(self._images(c, "PH0003", "PH0003_0001.nii.gz")),
                    ["case PH0003", "missing phase file", "PH0003_0001.nii.gz"])  # fmt: skip

    def test_phase_shape_differs(self):
        def breaker(c):
            write_nifti(np.zeros((8, 40, 48), np.int16),
                        self._images(c, "PH0004", "PH0004_0002.nii.gz"))

        self._check(breaker, ["case PH0004", "PH0004_0002.nii.gz", "size"])

    def test_phase_spacing_differs(self):
        def breaker(c):
            write_nifti(np.zeros(SHAPE, np.int16), self._images(c, "PH0004", "PH0004_0000.nii.gz"),
                        spacing=(0.75, 0.75, 3.0))  # fmt: skip

        self._check(breaker, ["case PH0004", "PH0004_0001.nii.gz", "spacing"])

    def test_truncated_nifti(self):
        def breaker(c):
            path = self._images(c, "PH0002", "PH0002_0002.nii.gz")
            with open(path, "rb") as f:
                data = f.read()
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])

        self._check(breaker, ["case PH0002", "PH0002_0002.nii.gz", "truncated"])

    def test_csv_box_outside_volume(self):
        self._check(lambda c: self._rewrite_csv(c, "PH0005,40,50,1,5,1,2\n"),
                    ["case PH0005", "boxes.csv line 6", "outside the volume", "Rows 40..50"],
                    source="boxes")  # fmt: skip

    def test_csv_start_after_end(self):
        self._check(lambda c: self._rewrite_csv(c, "PH0005,9,5,1,5,1,2\n"),
                    ["case PH0005", "boxes.csv line 6", "Start Row 9 > End Row 5"], source="boxes")

    def test_csv_case_without_images_is_a_partial_download(self):
        # a box row of a patient that was not downloaded: one warning, a count, exit normally
        with tempfile.TemporaryDirectory() as d:
            cohort = os.path.join(d, "cohort")
            make_cohort(cohort)
            self._rewrite_csv(cohort, "PH0099,1,5,1,5,1,2\n")
            summary = convert_cohort(os.path.join(cohort, "IMAGES"), os.path.join(d, "OUT"),
                                     boxes_csv=os.path.join(cohort, "boxes.csv"), num_folds=2)
            self.assertEqual(summary["orphans"], {"box rows": 1})
            self.assertEqual(summary["lesions"], 4)
            with open(os.path.join(d, "OUT", "convert.log")) as f:
                log = f.read()
            self.assertIn("WARNING", log)
            self.assertIn("boxes.csv line 6: case PH0099 has no images", log)
            self.assertIn("partial download: 1 box rows without images skipped", log)

    def test_csv_case_id_not_a_file_name(self):
        self._check(lambda c: self._rewrite_csv(c, "../PH0001,1,5,1,5,1,2\n"),
                    ["'../PH0001'", "boxes.csv line 6", "plain file name"], source="boxes")

    def test_case_folder_name_not_a_case_id(self):
        def breaker(c):
            os.rename(os.path.join(c, "IMAGES", "PH0005"), os.path.join(c, "IMAGES", "PH..5"))

        self._check(breaker, ["PH..5", "plain file name"])

    def test_missing_label_volume(self):
        self._check(lambda c: os.remove(os.path.join(c, "LABELS", "PH0004.nii.gz")),
                    ["case PH0004", "missing label volume", "PH0004.nii.gz"])  # fmt: skip

    def test_label_volume_shape(self):
        def breaker(c):
            write_nifti(np.zeros((7, 48, 48), np.uint8), os.path.join(c, "LABELS", "PH0004.nii.gz"))

        self._check(breaker, ["case PH0004", "PH0004.nii.gz", "size"])

    def test_output_inside_input(self):
        with tempfile.TemporaryDirectory() as d:
            make_cohort(d)
            before = tree_hash(d)
            with self.assertRaisesRegex(CohortError, "overlaps the input"):
                convert_cohort(os.path.join(d, "IMAGES"), os.path.join(d, "IMAGES", "out"),
                               labels=os.path.join(d, "LABELS"), num_folds=2)  # fmt: skip
            self.assertEqual(tree_hash(d), before)

    def test_both_or_no_lesion_source(self):
        with tempfile.TemporaryDirectory() as d:
            with self.assertRaisesRegex(CohortError, "exactly one lesion source"):
                convert_cohort(d, os.path.join(d, "OUT"), num_folds=2)


if __name__ == "__main__":
    unittest.main()
