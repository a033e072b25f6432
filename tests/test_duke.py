"""Duke-Breast-Cancer-MRI as downloaded from TCIA: series choice, series map, boxes by file number.

Every tree here is a tiny TCIA-style download written by the test itself: a manifest folder, the
collection folder, ``Breast_MRI_NNN/<study>/<SeriesNumber>.000000-<description>-<5 digits>/``
holding ``1-NNN.dcm`` files.
"""
import csv
import json
import os
import shutil
import tempfile
import unittest

import cv2
import numpy as np
import openpyxl
import SimpleITK as sitk

from breast_d2.data.boxes import read_box_rows
from breast_d2.data.convert import convert_cohort
from breast_d2.data.duke import classify_description, read_series_map
from breast_d2.data.errors import CohortError

Z, Y, X = 6, 16, 20
SPACING = (0.7, 0.7, 2.0)
STUDY = "01-01-1990-NA-MRI BREAST BILATERAL W  WO-97538"
AXIAL = "1\\0\\0\\0\\1\\0"
SAGITTAL = "0\\1\\0\\0\\0\\-1"
BOX_HEADER = ["Patient ID", "Start Row", "End Row", "Start Column", "End Column", "Start Slice",
              "End Slice"]  # fmt: skip
MAP_HEADER = ["original_path_and_filename", "classic_path", "descriptive_path"]
# the lesion of every case: rows 4..8, columns 6..11, slices (z, position order) 1..3
LESION = (slice(1, 4), slice(4, 9), slice(6, 12))


def phase_volume(phase: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = rng.integers(50, 100, (Z, Y, X)).astype(np.int16)
    vol[LESION] += 300 * phase
    return vol + 7 * phase


def write_series(case_dir, number, description, volumes, orientation=AXIAL, reverse=False,
                 patient="P", study_uid="1.2.3", temporal=False, start=1):  # fmt: skip
    """Write one series folder; ``volumes`` is a list (several = one multi-phase series)."""
    name = f"{number}.000000-{description.replace('/', '')}-1234{number}"
    folder = os.path.join(case_dir, STUDY, name)
    os.makedirs(folder)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = f"1.2.826.0.1.3680043.9.{abs(hash((case_dir, number))) % 10**8}"
    count = len(volumes) * Z
    file_number = start
    for t, vol in enumerate(volumes):
        for k in range(Z):
            z = Z - 1 - k if reverse else k
            img = sitk.GetImageFromArray(vol[z : z + 1])[:, :, 0]
            img.SetSpacing(SPACING[:2])
            tags = {
                "0008|0060": "MR", "0008|103e": description, "0010|0020": patient,
                "0020|000d": study_uid, "0020|000e": uid, "0020|0011": str(number),
                "0020|0013": str(file_number), "0020|0037": orientation,
                "0020|0032": f"-10\\20\\{5 + z * SPACING[2]}", "0018|0050": str(SPACING[2]),
                "0008|0018": f"{uid}.{file_number}", "0008|0032": f"0900{10 + t:02d}",
            }  # fmt: skip
            if temporal:
                tags["0020|0100"] = str(t + 1)
            for tag, value in tags.items():
                img.SetMetaData(tag, value)
            digits = max(2, len(str(count)))
            writer.SetFileName(os.path.join(folder, f"1-{file_number:0{digits}d}.dcm"))
            writer.Execute(img)
            file_number += 1
    return folder


def write_duke_case(images, case_id, descriptions, seed=0, reverse=False, multiphase=None, **kw):
    """A patient folder: localizer, non-fat-sat T1, and the dynamic series ``descriptions``."""
    case_dir = os.path.join(images, case_id)
    write_series(case_dir, 1, "3 Plane Loc", [phase_volume(0, seed)], orientation=SAGITTAL)
    write_series(case_dir, 2, "ax t1", [phase_volume(0, seed + 1)])
    if multiphase:
        write_series(case_dir, 3, multiphase, [phase_volume(p, seed) for p in range(3)],
                     reverse=reverse, temporal=True)  # fmt: skip
    for p, desc in enumerate(descriptions):
        write_series(case_dir, 3 + p, desc, [phase_volume(p, seed)], reverse=reverse, **kw)
    return case_dir


def write_table(path, header, rows):
    if path.endswith(".xlsx"):
        book = openpyxl.Workbook()
        book.active.append(header)
        for row in rows:
            book.active.append(row)
        book.save(path)
    else:
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([header] + list(rows))


def lesion_box_row(case_id, reverse=False):
    # slices 1..3 in position order = files 2..4, or Z-3..Z-1 when numbers run against position
    s0, s1 = (Z - 3, Z - 1) if reverse else (2, 4)
    return [case_id, 5, 9, 7, 12, s0, s1]


def read_json(path):
    with open(path) as f:
        return json.load(f)


class TestDescriptions(unittest.TestCase):
    def test_real_spellings(self):
        cases = {
            "ax dyn pre": ("dynamic", 0),
            "ax dyn 1st pass": ("dynamic", 1),
            "ax dyn 4th pass": ("dynamic", 4),
            "ax 3d dyn": ("dynamic", None),
            "Ph1/ax 3d dyn": ("dynamic", 1),
            "Ph3ax 3d dyn": ("dynamic", 3),
            "Ax Vibrant MultiPhase": ("multiphase", None),
            "t1_fl3d_tra_dynVIEWS_spair_ pre": ("dynamic", 0),
            "t1_fl3d_tra_dynVIEWS_spair 2nd pass": ("dynamic", 2),
            "ax t1": ("other", None),
            "ax t1 tse c": ("other", None),
            "3 Plane Loc": ("other", None),
            "ax dyn sub 1st pass": ("other", None),
            "ax dyn pre 1st pass": ("ambiguous", None),
        }
        for text, expected in cases.items():
            self.assertEqual(classify_description(text), expected, text)


class DukeTree(unittest.TestCase):
    """A manifest with four patients: families a, b (reversed numbers), c (multi-phase), d."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = self.tmp.name
        self.manifest = os.path.join(self.root, "manifest-1654812109500")
        self.images = os.path.join(self.manifest, "Duke-Breast-Cancer-MRI")
        os.makedirs(self.images)
        with open(os.path.join(self.manifest, "metadata.csv"), "w") as f:
            f.write("Series UID,Subject ID,Series Description,File Location\n")
        write_duke_case(self.images, "Breast_MRI_001", ["ax dyn pre", "ax dyn 1st pass",
                                                        "ax dyn 2nd pass"], seed=1)  # fmt: skip
        write_duke_case(self.images, "Breast_MRI_002", ["ax 3d dyn", "Ph1/ax 3d dyn",
                                                        "Ph2/ax 3d dyn"], seed=2, reverse=True)
        write_duke_case(self.images, "Breast_MRI_003", [], seed=3,
                        multiphase="Ax Vibrant MultiPhase")  # fmt: skip
        write_duke_case(self.images, "Breast_MRI_004", ["t1_fl3d_tra_dynVIEWS_spair_ pre",
                                                        "t1_fl3d_tra_dynVIEWS_spair 1st pass"],
                        seed=4, reverse=True)  # fmt: skip
        self.boxes = os.path.join(self.root, "Annotation_Boxes.xlsx")
        rows = [lesion_box_row("Breast_MRI_001"), lesion_box_row("Breast_MRI_002", True),
                lesion_box_row("Breast_MRI_003"), lesion_box_row("Breast_MRI_004", True),
                lesion_box_row("Breast_MRI_922")]  # fmt: skip
        write_table(self.boxes, BOX_HEADER, rows)
        self.out = os.path.join(self.root, "OUT")

    def tearDown(self):
        self.tmp.cleanup()

    def convert(self, **kw):
        kw.setdefault("boxes_csv", self.boxes)
        return convert_cohort(kw.pop("images", self.manifest), self.out, num_folds=2, **kw)

    def check_error(self, needles, **kw):
        with self.assertRaises(CohortError) as ctx:
            self.convert(**kw)
        msg = str(ctx.exception)
        self.assertNotIn("\n", msg)
        for needle in needles:
            self.assertIn(needle, msg)


class TestDukeDownload(DukeTree):
    def test_converts_without_renaming(self):
        summary = self.convert()
        self.assertEqual(summary["cases"], 4)
        self.assertEqual(summary["orphans"], {"box rows": 1})  # Breast_MRI_922: not downloaded
        cases = {c["case_id"]: c for c in read_json(os.path.join(self.out, "cases.json"))["cases"]}
        # every box lands on the lesion, in position-sorted slices, whatever the file numbering
        for case in cases.values():
            self.assertEqual(case["boxes"], [[6, 4, 1, 12, 9, 4]], case["case_id"])
        # provenance: which folder and description each phase came from
        phases = cases["Breast_MRI_001"]["phases"]
        self.assertEqual([p["description"] for p in phases],
                         ["ax dyn pre", "ax dyn 1st pass", "ax dyn 2nd pass"])  # fmt: skip
        self.assertTrue(phases[1]["source"].startswith(STUDY + "/4.000000-ax dyn 1st pass-"))
        self.assertEqual(cases["Breast_MRI_002"]["phases"][0]["description"], "ax 3d dyn")
        self.assertEqual(cases["Breast_MRI_002"]["file_numbers"], list(range(Z, 0, -1)))
        self.assertEqual(len(cases["Breast_MRI_003"]["phases"]), 3)
        self.assertIn("[phase 2]", cases["Breast_MRI_003"]["phases"][2]["source"])
        self.assertEqual(cases["Breast_MRI_003"]["phases"][2]["rule"], "temporal position")

    def test_slices_hold_the_right_phases(self):
        self.convert()
        # green = post1 - pre: bright only inside the lesion on the lesion's slices
        for case_id in ("Breast_MRI_002", "Breast_MRI_003"):
            img = cv2.imread(os.path.join(self.out, "slices", case_id, "0002.png"))[..., ::-1]
            inside = img[LESION[1], LESION[2], 1].mean()
            self.assertGreater(inside, 200, case_id)
            self.assertLess(img[12:, :4, 1].mean(), 100, case_id)

    def test_collection_folder_too(self):
        self.assertEqual(self.convert(images=self.images)["cases"], 4)

    def test_missing_file_number(self):
        folder = [f for f in os.listdir(os.path.join(self.images, "Breast_MRI_001", STUDY))
                  if "1st pass" in f][0]  # fmt: skip
        os.remove(os.path.join(self.images, "Breast_MRI_001", STUDY, folder, "1-03.dcm"))
        self.check_error(["case Breast_MRI_001", "1st pass", "missing file number(s) 3"])

    def test_missing_first_file_in_every_phase(self):
        case = os.path.join(self.images, "Breast_MRI_004", STUDY)
        for folder in os.listdir(case):
            if "dyn" in folder:
                os.remove(os.path.join(case, folder, "1-01.dcm"))
        self.check_error(["case Breast_MRI_004", "missing file number(s) 1"])

    def test_duplicated_file_number(self):
        case = os.path.join(self.images, "Breast_MRI_001", STUDY)
        folder = [f for f in os.listdir(case) if "dyn pre" in f][0]
        img = sitk.ReadImage(os.path.join(case, folder, "1-02.dcm"))
        img.SetMetaData("0020|0013", "3")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(os.path.join(case, folder, "extra.dcm"))
        writer.Execute(img)
        self.check_error(["case Breast_MRI_001", "dyn pre"])

    def test_two_series_look_like_post1(self):
        write_series(os.path.join(self.images, "Breast_MRI_001"), 9, "ax dyn 1st pass",
                     [phase_volume(1, 1)])  # fmt: skip
        self.check_error(["case Breast_MRI_001", "both look like post_1", "--series-map"])

    def test_missing_first_post_never_replaced(self):
        case = os.path.join(self.images, "Breast_MRI_001", STUDY)
        folder = [f for f in os.listdir(case) if "1st pass" in f][0]
        for name in os.listdir(os.path.join(case, folder)):
            os.remove(os.path.join(case, folder, name))
        os.rmdir(os.path.join(case, folder))
        self.check_error(["case Breast_MRI_001", "post_1", "missing"])

    def test_series_of_another_patient(self):
        write_series(os.path.join(self.images, "Breast_MRI_004"), 9,
                     "t1_fl3d_tra_dynVIEWS_spair 2nd pass", [phase_volume(2, 4)], reverse=True,
                     patient="OTHER")  # fmt: skip
        self.check_error(["case Breast_MRI_004", "PatientID OTHER"])

    def test_unresolvable_case_suggests_series_map(self):
        write_duke_case(self.images, "Breast_MRI_005", ["ax 3d", "ax 3d", "ax 3d"], seed=5)
        self.check_error(["case Breast_MRI_005", "--series-map"])

    def test_box_outside_the_grid(self):
        write_table(self.boxes, BOX_HEADER, [["Breast_MRI_001", 5, 9, 7, 12, 5, Z + 2]])
        self.check_error(["Annotation_Boxes.xlsx row 2", "case Breast_MRI_001", "outside"])

    def test_xlsx_with_other_columns(self):
        write_table(self.boxes, ["Patient", "Row0", "Row1"], [["Breast_MRI_001", 1, 2]])
        self.check_error(["Annotation_Boxes.xlsx row 1", "missing column(s)", "Start Row"])

    def test_skip_bad_cases(self):
        case = os.path.join(self.images, "Breast_MRI_001", STUDY)
        folder = [f for f in os.listdir(case) if "1st pass" in f][0]
        os.remove(os.path.join(case, folder, "1-03.dcm"))
        summary = self.convert(skip_bad_cases=True)
        self.assertEqual(summary["bad_cases"], ["Breast_MRI_001"])
        skipped = read_json(os.path.join(self.out, "cases.json"))["skipped"]
        self.assertEqual(skipped[0]["case_id"], "Breast_MRI_001")
        self.assertIn("missing file number(s) 3", skipped[0]["reason"])
        self.assertEqual(summary["cases"], 3)


class TestSeriesMap(DukeTree):
    def map_rows(self, case_id, renames):
        """Mapping rows of a case's series; ``renames``: description or series number -> seq."""
        rows, case_dir = [], os.path.join(self.images, case_id)
        for folder in sorted(os.listdir(os.path.join(case_dir, STUDY))):
            desc = folder.split("-", 1)[1].rsplit("-", 1)[0]
            # by description, or by series number where descriptions are alike
            seq = renames.get(desc) or renames.get(folder.split(".")[0])
            if seq is None:
                continue
            for name in sorted(os.listdir(os.path.join(case_dir, STUDY, folder))):
                number = int(name.split("-")[1].split(".")[0])
                rows.append([
                    f"DICOM_Images/{case_id}/{seq}/{case_id}_{seq}_{number:03d}.dcm",
                    f"Duke-Breast-Cancer-MRI/{case_id}/1.2.3/1.2.3.{folder[:1]}/{name}",
                    f"Duke-Breast-Cancer-MRI/{case_id}/{STUDY}/{folder}/{name}",
                ])  # fmt: skip
        return rows

    def test_map_resolves_what_no_rule_can(self):
        write_duke_case(self.images, "Breast_MRI_005", ["ax 3d", "ax 3d", "ax 3d"], seed=5)
        # series 3 is post_1 and series 4 the pre: the map wins over any order
        sequences = {"3": "post_1", "4": "pre", "5": "post_2", "2": "T1"}
        rows = self.map_rows("Breast_MRI_005", sequences)
        for path in (os.path.join(self.root, "map.xlsx"), os.path.join(self.root, "map.csv")):
            write_table(path, MAP_HEADER, rows)
            write_table(self.boxes, BOX_HEADER, [lesion_box_row("Breast_MRI_005")])
            summary = self.convert(series_map=path)
            self.assertEqual(summary["cases"], 5)
            cases = read_json(os.path.join(self.out, "cases.json"))["cases"]
            case5 = [c for c in cases if c["case_id"] == "Breast_MRI_005"][0]
            self.assertEqual([p["source"][:2] for p in case5["phases"]],
                             [STUDY[:2]] * 3)  # fmt: skip
            self.assertEqual([p["source"].split("/")[1][0] for p in case5["phases"]],
                             ["4", "3", "5"])  # fmt: skip
            self.assertEqual({p["rule"] for p in case5["phases"]}, {"series map"})
            self.assertEqual(case5["boxes"], [[6, 4, 1, 12, 9, 4]])
            shutil.rmtree(self.out)

    def test_map_row_whose_file_is_missing(self):
        rows = self.map_rows("Breast_MRI_001", {"ax dyn pre": "pre", "ax dyn 1st pass": "post_1"})
        rows[3][2] = rows[3][2].replace("1-04.dcm", "1-99.dcm")
        path = os.path.join(self.root, "map.csv")
        write_table(path, MAP_HEADER, rows)
        self.check_error(["map.csv line 5", "case Breast_MRI_001", "1-99.dcm", "does not exist"],
                         series_map=path)  # fmt: skip

    def test_map_that_misses_a_downloaded_file(self):
        rows = self.map_rows("Breast_MRI_001", {"ax dyn pre": "pre", "ax dyn 1st pass": "post_1"})
        path = os.path.join(self.root, "map.csv")
        write_table(path, MAP_HEADER, rows[1:])  # the pre's first file is on disk, not in the map
        self.check_error(["case Breast_MRI_001", "ax dyn pre", "1 file(s) that", "does not list"],
                         series_map=path)  # fmt: skip

    def test_read_series_map_skips_other_cases_and_t1(self):
        rows = self.map_rows("Breast_MRI_001", {"ax dyn pre": "pre", "ax t1": "T1"})
        path = os.path.join(self.root, "map.xlsx")
        write_table(path, MAP_HEADER, rows)
        smap = read_series_map(path, ["Breast_MRI_001"])
        (entry,) = smap.cases["Breast_MRI_001"].values()
        self.assertEqual(len(entry.files), Z)
        self.assertEqual(read_series_map(path, ["Breast_MRI_002"]).cases, {})


class TestOtherOrdersAndArguments(DukeTree):
    def test_series_number_order(self):
        # an export holding only the phases, with descriptions no rule knows
        images = os.path.join(self.root, "export")
        for p in range(3):
            write_series(os.path.join(images, "Breast_MRI_001"), 10 + p, f"series {p}",
                         [phase_volume(p, 1)])  # fmt: skip
        write_table(self.boxes, BOX_HEADER, [lesion_box_row("Breast_MRI_001")])
        os.makedirs(os.path.join(images, "Breast_MRI_002"))
        shutil.copytree(os.path.join(images, "Breast_MRI_001", STUDY),
                        os.path.join(images, "Breast_MRI_002", STUDY))  # fmt: skip
        self.check_error(["no series looks like a DCE phase", "--series-map"], images=images)
        shutil.rmtree(self.out)
        self.convert(images=images, dicom_order="series-number")
        cases = read_json(os.path.join(self.out, "cases.json"))["cases"]
        self.assertEqual([p["description"] for p in cases[0]["phases"]],
                         ["series 0", "series 1", "series 2"])  # fmt: skip
        self.assertEqual(cases[0]["boxes"], [[6, 4, 1, 12, 9, 4]])

    def test_multiphase_next_to_other_dynamic_series(self):
        write_series(os.path.join(self.images, "Breast_MRI_003"), 9, "ax dyn 1st pass",
                     [phase_volume(1, 3)])  # fmt: skip
        self.check_error(["case Breast_MRI_003", "multi-phase series next to", "--series-map"])

    def test_description_naming_two_phases(self):
        write_duke_case(self.images, "Breast_MRI_005", ["ax dyn pre", "ax dyn pre 1st pass"])
        self.check_error(["case Breast_MRI_005", "names two phases"])

    def test_bad_arguments(self):
        for kw, needle in (({"merge_lesions_mm": -1.0}, "merge_lesions_mm must be >= 0"),
                           ({"merge_lesions_mm": float("nan")}, "merge_lesions_mm must be >= 0"),
                           ({"phases": 1}, "phases must be >= 2"),
                           ({"dicom_order": "name"}, "dicom_order must be"),
                           ({"splits_from": "/nonexistent.csv"}, "does not exist")):  # fmt: skip
            self.check_error([needle], **kw)
        self.assertFalse(os.path.exists(self.out))


class TestBoxTables(unittest.TestCase):
    def test_xlsx_and_csv_agree_and_duplicates_kept_once(self):
        rows = [["A", 7, 14, 6, 15, 2, 4], ["B", 1, 2, 1, 2, 1, 1], ["A", 7, 14, 6, 15, 2, 4]]
        with tempfile.TemporaryDirectory() as d:
            got = []
            for name in ("b.xlsx", "b.csv"):
                write_table(os.path.join(d, name), BOX_HEADER, rows)
                with self.assertLogs("breast_d2.data.boxes", "WARNING") as logs:
                    got.append(read_box_rows(os.path.join(d, name)))
                self.assertIn("duplicate of line 2", logs.output[0])
        self.assertEqual([r.box for r in got[0]], [r.box for r in got[1]])
        self.assertEqual([r.case_id for r in got[0]], ["A", "B"])

    def test_excel_workbook_named_csv_is_refused_clearly(self):
        with tempfile.TemporaryDirectory() as d:
            write_table(os.path.join(d, "b.xlsx"), BOX_HEADER, [["A", 1, 2, 1, 2, 1, 1]])
            os.rename(os.path.join(d, "b.xlsx"), os.path.join(d, "b.csv"))
            with self.assertRaisesRegex(CohortError, "not UTF-8 text"):
                read_box_rows(os.path.join(d, "b.csv"))


if __name__ == "__main__":
    unittest.main()
