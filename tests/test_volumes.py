"""Tests for breast_d2.data readers, boxes and channels (split from volumes.py, kept as a shim)."""
import glob
import os
import tempfile
import unittest

import numpy as np
import SimpleITK as sitk

from breast_d2.data.boxes import (
    box_to_coco_bbox,
    box_to_duke_row,
    coco_bbox_to_box,
    duke_row_to_box,
    keep_large_components,
    label_boxes,
    label_components,
    label_lesions,
    largest_component,
    lesions_from_labels,
    read_boxes_csv,
    slice_boxes_from_boxes,
    slice_boxes_from_components,
)
from breast_d2.data.channels import compose_channels, parse_channels, phases_used
from breast_d2.data.errors import CohortError, check_case_id
from breast_d2.data.readers import (
    CaseGeometry,
    list_cases,
    read_case_phases,
    read_phases_from_dir,
    read_volume,
)

SHAPE = (8, 48, 48)  # Z, Y, X
SPACING = (0.75, 0.75, 1.5)
CUBES = [(5, 6, 1, 15, 14, 4), (30, 30, 2, 40, 38, 7)]  # half-open x0, y0, z0, x1, y1, z1


def make_phases(num_phases=3, cubes=CUBES, seed=0):
    """[P, Z, Y, X] int16 phases: noisy background, cubes enhancing after phase 0."""
    rng = np.random.default_rng(seed)
    lesion = np.zeros(SHAPE, dtype=np.float64)
    for x0, y0, z0, x1, y1, z1 in cubes:
        lesion[z0:z1, y0:y1, x0:x1] = 1
    base = rng.normal(100, 5, SHAPE)
    return np.stack([base + lesion * 300 * (p > 0) + 10 * p for p in range(num_phases)]).astype(
        np.int16
    )


def write_nifti(array, path, spacing=SPACING):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-10.0, 20.0, 5.0))
    sitk.WriteImage(image, path)


def write_nifti_case(images, case_id, phases, spacing=SPACING):
    os.makedirs(os.path.join(images, case_id), exist_ok=True)
    for p, array in enumerate(phases):
        write_nifti(array, os.path.join(images, case_id, f"{case_id}_{p:04d}.nii.gz"), spacing)


DYN = ("ax dyn pre", "ax dyn 1st pass", "ax dyn 2nd pass", "ax dyn 3rd pass", "ax dyn 4th pass")


def write_dicom_series(array_zyx, folder, series_number, spacing=SPACING, description=None):
    """One DICOM file per slice with SeriesNumber, InstanceNumber and ImagePositionPatient."""
    os.makedirs(folder)
    uid = f"1.2.826.0.1.3680043.2.1125.{series_number}"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(array_zyx.shape[0]):
        sl = sitk.GetImageFromArray(array_zyx[z : z + 1])[:, :, 0]
        sl.SetSpacing(spacing[:2])
        tags = {
            "0008|0060": "MR",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": uid,
            "0020|0011": str(series_number),
            "0020|0013": str(z + 1),
            "0020|0032": f"-10\\20\\{5 + z * spacing[2]}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": str(spacing[2]),
            "0008|0018": f"{uid}.{z + 1}",
        }
        if description is not None:
            tags["0008|103e"] = description
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(os.path.join(folder, f"IM{z + 1:04d}.dcm"))
        writer.Execute(sl)


class TestBoxConventions(unittest.TestCase):
    def test_duke_row_round_trip(self):
        # Start Row 7..End Row 14, Start Column 6..End Column 15, Start Slice 2..End Slice 4
        box = duke_row_to_box(7, 14, 6, 15, 2, 4)
        self.assertEqual(box, [5, 6, 1, 15, 14, 4])
        self.assertEqual(box_to_duke_row(box), (7, 14, 6, 15, 2, 4))

    def test_coco_bbox_round_trip(self):
        self.assertEqual(box_to_coco_bbox([5, 6, 15, 14]), [5, 6, 10, 8])
        self.assertEqual(coco_bbox_to_box([5, 6, 10, 8]), [5, 6, 15, 14])

    def test_slice_boxes_from_boxes(self):
        per_slice = slice_boxes_from_boxes([[5, 6, 1, 15, 14, 4]], 8)
        self.assertEqual([z for z, b in enumerate(per_slice) if b], [1, 2, 3])
        self.assertEqual(per_slice[2], [(0, [5, 6, 15, 14])])

    def test_case_ids(self):
        for ok in ("PH0001", "Breast_MRI_001", "duke-1.a"):
            self.assertEqual(check_case_id(ok), ok)
        for bad in ("a/b", "..", "../x", "a..b", ".hidden", "", "a b", "a\\b"):
            with self.assertRaises(CohortError):
                check_case_id(bad)


class TestBoxesCsv(unittest.TestCase):
    HEADER = "Patient ID,Start Row,End Row,Start Column,End Column,Start Slice,End Slice\n"

    def _read(self, text):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "boxes.csv")
            with open(path, "w") as f:
                f.write(text)
            return read_boxes_csv(path)

    def test_several_rows_per_patient(self):
        boxes = self._read(self.HEADER + "A,7,14,6,15,2,4\nB,1,2,1,2,1,1\nA,31,38,31,40,3,7\n")
        self.assertEqual(boxes, {"A": [[5, 6, 1, 15, 14, 4], [30, 30, 2, 40, 38, 7]],
                                 "B": [[0, 0, 0, 2, 2, 1]]})  # fmt: skip

    def test_errors_name_line_and_case(self):
        cases = {
            "A,7,14,6,15,2,4\nB,9,3,1,2,1,1\n": ("line 3", "case B", "Start Row 9 > End Row 3"),
            "A,7,14,6,15,4,2\n": ("line 2", "case A", "Start Slice"),
            "A,7,x,6,15,2,4\n": ("line 2", "case A", "End Row"),
            "A,0,14,6,15,2,4\n": ("line 2", "case A", "< 1"),
            "../evil,7,14,6,15,2,4\n": ("line 2", "'../evil'", "plain file name"),
        }
        for body, needles in cases.items():
            with self.assertRaises(CohortError) as ctx:
                self._read(self.HEADER + body)
            msg = str(ctx.exception)
            self.assertNotIn("\n", msg)
            for needle in needles:
                self.assertIn(needle, msg)

    def test_missing_column(self):
        with self.assertRaisesRegex(CohortError, "line 1: missing column.*End Slice"):
            self._read(self.HEADER.replace(",End Slice", "") + "A,1,2,1,2,1\n")
        # A JSON file given as a table: the found "header" is cut, the error stays one short line.
        with self.assertRaises(CohortError) as ctx:
            self._read('{"folds": [' + ", ".join(f'"PH{i:04d}"' for i in range(500)) + "]}\n")
        msg = str(ctx.exception)
        self.assertIn("missing column", msg)
        self.assertLess(len(msg), 600)
        self.assertTrue(msg.endswith(" ...)"))


class TestReadNifti(unittest.TestCase):
    def test_read_case(self):
        phases = make_phases(4)
        with tempfile.TemporaryDirectory() as d:
            write_nifti_case(d, "C1", phases)
            self.assertEqual(list_cases(d), ["C1"])
            vol, spacing, geom = read_case_phases(d, "C1")
        self.assertEqual(vol.shape, (4,) + SHAPE)
        self.assertEqual(vol.dtype, np.float32)
        np.testing.assert_array_equal(vol, phases.astype(np.float32))
        np.testing.assert_allclose(spacing, SPACING)
        self.assertEqual(geom.size, (48, 48, 8))
        np.testing.assert_allclose(geom.origin, (-10, 20, 5))
        self.assertEqual(CaseGeometry.from_dict(geom.to_dict()), geom)
        out = geom.to_image(np.zeros(SHAPE, np.uint8))
        np.testing.assert_allclose(out.GetSpacing(), SPACING)

    def test_read_phases_from_dir_and_file_list(self):
        phases = make_phases(2)
        with tempfile.TemporaryDirectory() as d:
            write_nifti_case(d, "C1", phases)
            a = read_phases_from_dir(os.path.join(d, "C1"))
            files = sorted(glob.glob(os.path.join(d, "C1", "*.nii.gz")))
            b = read_phases_from_dir(files)
        np.testing.assert_array_equal(a.phases, b.phases)
        self.assertEqual(a.geometry, b.geometry)

    def test_missing_phase_file(self):
        phases = make_phases(3)
        with tempfile.TemporaryDirectory() as d:
            write_nifti_case(d, "C1", phases)
            os.remove(os.path.join(d, "C1", "C1_0001.nii.gz"))
            pattern = r"case C1: missing phase file .*C1_0001\.nii\.gz"
            with self.assertRaisesRegex(CohortError, pattern):
                read_case_phases(d, "C1")

    def test_shape_or_spacing_differs(self):
        phases = make_phases(3)
        with tempfile.TemporaryDirectory() as d:
            write_nifti_case(d, "C1", phases)
            bad = os.path.join(d, "C1", "C1_0002.nii.gz")
            write_nifti(phases[2][:, :40], bad)
            pattern = r"case C1: phase 2 \(.*C1_0002.nii.gz\) has size"
            with self.assertRaisesRegex(CohortError, pattern):
                read_case_phases(d, "C1")
            write_nifti(phases[2], bad, spacing=(0.75, 0.75, 3.0))
            pattern = r"case C1: phase 2 .*C1_0002.nii.gz.* spacing"
            with self.assertRaisesRegex(CohortError, pattern):
                read_case_phases(d, "C1")

    def test_truncated_or_garbage_nifti(self):
        phases = make_phases(2)
        with tempfile.TemporaryDirectory() as d:
            write_nifti_case(d, "C1", phases)
            path = os.path.join(d, "C1", "C1_0001.nii.gz")
            with open(path, "rb") as f:
                data = f.read()
            for content in (data[: len(data) // 2], data[:-20], b"not an image", b""):
                with open(path, "wb") as f:
                    f.write(content)
                with self.assertRaises(CohortError) as ctx:
                    read_case_phases(d, "C1")
                self.assertIn("case C1", str(ctx.exception))
                self.assertIn("C1_0001.nii.gz", str(ctx.exception))
                self.assertNotIn("\n", str(ctx.exception))

    def test_no_images(self):
        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "C1"))
            with self.assertRaisesRegex(CohortError, "case C1: no phases"):
                read_case_phases(d, "C1")

    def test_real_nifti_headers_from_nibabel(self):
        import nibabel
        from nibabel.testing import data_path

        path4d = os.path.join(data_path, "example4d.nii.gz")
        ref = nibabel.load(path4d)
        vol = read_phases_from_dir([path4d])  # a 4D file = all phases
        expected = np.transpose(np.asarray(ref.dataobj, dtype=np.float32), (3, 2, 1, 0))
        np.testing.assert_allclose(vol.phases, expected, rtol=1e-5)
        np.testing.assert_allclose(vol.spacing, ref.header.get_zooms()[:3], rtol=1e-5)

        path3d = os.path.join(data_path, "anatomical.nii")
        ref = nibabel.load(path3d)
        vol = read_phases_from_dir([path3d, path3d])
        self.assertEqual(vol.phases.shape, (2,) + ref.shape[::-1])
        np.testing.assert_allclose(vol.phases[1], np.asarray(ref.dataobj).T, rtol=1e-5)
        np.testing.assert_allclose(vol.spacing, ref.header.get_zooms(), rtol=1e-5)


class TestReadDicom(unittest.TestCase):
    def _write(self, d, phases):
        for p, array in enumerate(phases):
            # folder names sort opposite to the phase order: SeriesNumber must decide
            write_dicom_series(array, os.path.join(d, "D1", "study", f"s{9 - p}"), p + 1,
                               description=DYN[p])

    def test_dicom_reads_like_nifti(self):
        phases = make_phases(3)
        with tempfile.TemporaryDirectory() as d:
            self._write(os.path.join(d, "dcm"), phases)
            write_nifti_case(os.path.join(d, "nii"), "D1", phases)
            dcm = read_case_phases(os.path.join(d, "dcm"), "D1")
            nii = read_case_phases(os.path.join(d, "nii"), "D1")
        np.testing.assert_array_equal(dcm.phases, nii.phases)
        np.testing.assert_allclose(dcm.spacing, nii.spacing, rtol=1e-5)
        np.testing.assert_allclose(dcm.geometry.origin, nii.geometry.origin, atol=1e-4)

    def test_truncated_dicom(self):
        with tempfile.TemporaryDirectory() as d:
            self._write(d, make_phases(2))
            path = os.path.join(d, "D1", "study", "s8", "IM0004.dcm")
            with open(path, "rb") as f:
                data = f.read()
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            with self.assertRaisesRegex(CohortError, r"case D1: .*IM0004\.dcm"):
                read_case_phases(d, "D1")


class TestLesions(unittest.TestCase):
    def test_components_and_cross_sections(self):
        labels = np.zeros(SHAPE, np.uint8)
        labels[1:4, 6:14, 5:15] = 1
        labels[2:7, 30:38, 30:40] = 2
        labels[6, 20, 20] = 3  # touches nothing: a third lesion
        comps, boxes = label_lesions(labels)
        expected = [[5, 6, 1, 15, 14, 4], [30, 30, 2, 40, 38, 7], [20, 20, 6, 21, 21, 7]]
        self.assertEqual(boxes, expected)
        self.assertEqual(lesions_from_labels(labels), boxes)
        # a sphere-like lesion: the cross-section box shrinks on the end slices
        labels = np.zeros(SHAPE, np.uint8)
        labels[2:5, 10:20, 10:20] = 1
        labels[2, :, :] = 0
        labels[2, 14:16, 14:16] = 1
        comps, boxes = label_lesions(labels)
        per_slice = slice_boxes_from_components(comps, boxes)
        self.assertEqual(per_slice[2], [(0, [14, 14, 16, 16])])
        self.assertEqual(per_slice[3], [(0, [10, 10, 20, 20])])

    def test_component_helpers(self):
        mask = np.zeros((5, 6), bool)
        mask[0, 0:2] = mask[1, 2] = True  # touches the first piece at a corner only
        mask[3:5, 3:6] = True  # 6 pixels
        mask[4, 0] = True
        self.assertEqual(label_components(mask)[1], 4)  # faces only
        labels, n = label_components(mask, full_connectivity=True)
        self.assertEqual((n, labels.dtype), (3, np.int32))
        self.assertEqual(labels[1, 2], labels[0, 0])  # the corner joins them
        np.testing.assert_array_equal(largest_component(mask), labels == labels[3, 3])
        self.assertEqual(int(keep_large_components(mask, 0.3).sum()), 6 + 2)  # 6 and 2 >= 1.8
        tie = np.zeros((1, 5), bool)
        tie[0, [0, 1, 3, 4]] = True
        self.assertEqual(largest_component(tie).tolist(), [[True, True, False, False, False]])
        self.assertEqual(int(keep_large_components(tie, 1.0).sum()), 4)  # keeps ties
        self.assertFalse(largest_component(np.zeros((2, 2), bool)).any())
        volume = np.zeros((3, 4, 5), np.int32)
        volume[1:3, 0:2, 4] = 1
        volume[0, 3, 1:3] = 3  # value 2 does not occur
        self.assertEqual(label_boxes(volume), {1: (4, 0, 1, 5, 2, 3), 3: (1, 3, 0, 3, 4, 1)})

    def test_read_volume_size_check(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "C1.nii.gz")
            write_nifti(np.zeros((8, 40, 48), np.uint8), path)
            geom = CaseGeometry((48, 48, 8), SPACING, (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
            with self.assertRaisesRegex(CohortError, r"case C1: label volume .*C1.nii.gz has size"):
                read_volume(path, "C1", "label volume", expect=geom)


class TestChannels(unittest.TestCase):
    def test_compose_order_and_window(self):
        phases = make_phases(3).astype(np.float32)
        rgb = compose_channels(phases, "1,1-0,0")
        self.assertEqual(rgb.shape, SHAPE + (3,))
        self.assertEqual(rgb.dtype, np.uint8)
        lesion = (slice(2, 3), slice(31, 37), slice(31, 39))
        # the subtraction channel is bright in the lesion, dark outside
        self.assertGreater(rgb[lesion + (1,)].mean(), 200)
        self.assertLess(rgb[0, :5, :5, 1].mean(), 100)
        # percentile window: ~0.5 % of voxels at or below 0, ~0.5 % at or above 255
        self.assertLess((rgb[..., 2] == 255).mean(), 0.02)
        swapped = compose_channels(phases, "0,1-0,1")
        np.testing.assert_array_equal(swapped[..., 0], rgb[..., 2])
        np.testing.assert_array_equal(swapped[..., 2], rgb[..., 0])
        const = compose_channels(np.ones((2,) + SHAPE, np.float32), "1,1-0,0")
        self.assertEqual(int(const.max()), 0)

    def test_slice_offsets_2p5d(self):
        """2.5D: channels 0 and 2 are the windowed subtraction of slices z - 1 and z + 1 (the end
        slices repeat), in the same window as channel 1; nothing else moves."""
        phases = make_phases(3).astype(np.float32)
        phases[1] += np.arange(SHAPE[0], dtype=np.float32)[:, None, None] * 7  # slices differ
        sub = compose_channels(phases, "1-0,1-0,1-0")[..., 1]
        rgb = compose_channels(phases, "2.5d")
        np.testing.assert_array_equal(rgb[..., 1], sub)
        np.testing.assert_array_equal(rgb[1:, ..., 0], sub[:-1])
        np.testing.assert_array_equal(rgb[0, ..., 0], sub[0])
        np.testing.assert_array_equal(rgb[:-1, ..., 2], sub[1:])
        np.testing.assert_array_equal(rgb[-1, ..., 2], sub[-1])
        self.assertFalse(np.array_equal(rgb[..., 0], rgb[..., 2]))

    def test_bad_spec(self):
        self.assertEqual(parse_channels("1,1-0,0"), [(1, None, 0), (1, 0, 0), (0, None, 0)])
        self.assertEqual(parse_channels("2.5D"), [(1, 0, -1), (1, 0, 0), (1, 0, 1)])
        self.assertEqual(phases_used("1-0@-1,8-1@+2,0"), {0, 1, 8})
        for bad in ("1,2", "1,a,0", "1,1+0,0", "1-0@x,1,0", "1-0@,1,0", "2.5e"):
            with self.assertRaises(ValueError):
                parse_channels(bad)
        with self.assertRaises(ValueError):
            compose_channels(np.zeros((2,) + SHAPE, np.float32), "2,1-0,0")


class TestVolumesShim(unittest.TestCase):
    """``breast_d2.data.volumes`` keeps its public names, as the very objects of the new homes."""

    def test_every_old_name_is_the_new_object(self):
        from breast_d2.data import boxes, channels, errors, readers, volumes

        homes = {}
        for module in (errors, readers, boxes, channels):
            for name in module.__all__:
                homes.setdefault(name, getattr(module, name))
        self.assertEqual(len(volumes.__all__), 33)  # the names of the module before the split
        for name in volumes.__all__:
            self.assertIn(name, homes, f"{name} has no new home")
            self.assertIs(getattr(volumes, name), homes[name], name)
        for name in ("PathLike", "Box3D", "Box2D", "SliceBoxes", "NIFTI_SUFFIXES"):
            self.assertTrue(hasattr(volumes, name), name)


if __name__ == "__main__":
    unittest.main()
