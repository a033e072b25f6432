"""Tests of the phantom's real download layouts (breast_d2.data.phantom.layouts, make_phantom)."""
import csv
import filecmp
import json
import os
import re
import tempfile

import numpy as np
import openpyxl
import pytest
import SimpleITK as sitk

from breast_d2.data import phantom as ph
from breast_d2.data.phantom import layouts as pl
from breast_d2.data.boxes import DUKE_COLUMNS, box_to_duke_row
from helpers import load_tool

TINY = {"matrix": 64, "slices": 16}  # the smallest grid the phantom accepts
SEED = 3
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@pytest.fixture(scope="module")
def duke():
    """A 6-case Duke-layout cohort: all four families, two reversed cases, a map-only case."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "duke")
        summary = pl.write_duke_layout(out, 6, SEED, duke_mapping_csv=True, **TINY)
        meta = json.load(open(os.path.join(out, "phantom.json")))
        yield out, summary, meta


def _files(root):
    return sorted(
        os.path.relpath(os.path.join(dp, f), root) for dp, _, fs in os.walk(root) for f in fs
    )


def _header(path):
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return reader


def _tag(path, key):
    return _header(path).GetMetaData(key).strip()


def _floats(text):
    return tuple(float(v) for v in text.strip().split("\\"))


def _xlsx_rows(path):
    wb = openpyxl.load_workbook(path, read_only=True)
    try:
        return [list(r) for r in wb.worksheets[0].iter_rows(values_only=True)]
    finally:
        wb.close()


def _case(meta, rec):
    return ph.make_case(rec["index"], SEED, num_phases=1 + rec["plan"]["num_post"], **TINY)


def _case_dir(out, meta, rec):
    return os.path.join(out, meta["collection_dir"], rec["case_id"])


def _read_files(paths):
    """Read DICOM files as one volume sorted by position along the normal (SimpleITK)."""
    paths = sorted(paths, key=lambda p: _floats(_tag(p, "0020|0032"))[2])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(paths)
    return reader.Execute()


def _phase_files(folder, series):
    """{phase: [files]} of a dynamic series (split by TemporalPositionIdentifier if multiphase)."""
    files = [os.path.join(folder, f) for f in sorted(os.listdir(folder))]
    if series["role"] != "multiphase":
        return {series["phases"][0]: files}
    out = {}
    for f in files:
        out.setdefault(int(_tag(f, "0020|0100")) - 1, []).append(f)
    return out


def test_duke_tree_names_and_metadata_csv(duke):
    out, summary, meta = duke
    assert summary.num_cases == 6 and summary.generated == 6
    manifests = [n for n in os.listdir(out) if n.startswith("manifest-")]
    assert len(manifests) == 1 and re.fullmatch(r"manifest-\d{13}", manifests[0])
    assert meta["collection_dir"] == f"{manifests[0]}/Duke-Breast-Cancer-MRI"
    collection = os.path.join(out, meta["collection_dir"])
    assert sorted(os.listdir(collection)) == [f"Breast_MRI_{i:03d}" for i in range(1, 7)]
    with open(os.path.join(out, manifests[0], "metadata.csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == pl.NBIA_COLUMNS
    assert len(rows) - 1 == sum(len(rec["series"]) for rec in meta["cases"])
    for row in map(dict, (zip(rows[0], r) for r in rows[1:])):
        folder = os.path.join(out, manifests[0], row["File Location"])
        files = sorted(os.listdir(folder))
        assert int(row["Number of Images"]) == len(files)
        first = os.path.join(folder, files[0])
        assert _tag(first, "0020|000e") == row["Series UID"]
        assert _tag(first, "0008|103e") == row["Series Description"]
        assert row["Modality"] == _tag(first, "0008|0060") == "MR"
    for rec in meta["cases"]:
        studies = os.listdir(_case_dir(out, meta, rec))
        assert studies == [rec["study_folder"]]
        assert re.fullmatch(r"\d\d-\d\d-(19|20)\d\d-NA-.+-\d{5}", studies[0]), studies
        for s in rec["series"]:
            name = os.path.basename(s["folder"])
            m = re.fullmatch(r"(\d+)\.000000-(.+)-\d{5}", name)
            assert m and int(m.group(1)) == s["number"], name
            assert m.group(2) == s["description"].replace("/", "")
            folder = os.path.join(_case_dir(out, meta, rec), s["folder"])
            files = sorted(os.listdir(folder))
            assert files == [f"1-{n:03d}.dcm" for n in range(1, len(files) + 1)]
            for f in (files[0], files[-1]):
                path = os.path.join(folder, f)
                assert int(_tag(path, "0020|0011")) == s["number"]
                assert int(_tag(path, "0020|0013")) == int(f[2:-4])  # InstanceNumber = file no.
                assert _tag(path, "0010|0020") == rec["case_id"]
                assert _tag(path, "0008|0016") == "1.2.840.10008.5.1.4.1.1.4"
        numbers = [s["number"] for s in rec["series"]]
        assert len(set(numbers)) == len(numbers)


def test_every_family_and_map_only_descriptions(duke):
    out, _, meta = duke
    families = [rec["plan"]["family"] for rec in meta["cases"]]
    assert families == list(pl.DUKE_FAMILIES) + ["ax_dyn", "map_only"]
    assert [rec["map_only"] for rec in meta["cases"]] == [False] * 5 + [True]
    expected = {
        "ax_dyn": ["ax dyn pre", "ax dyn 1st pass", "ax dyn 2nd pass"],
        "ax_3d_dyn": ["ax 3d dyn", "Ph1/ax 3d dyn", "Ph2/ax 3d dyn", "Ph3/ax 3d dyn"],
        "vibrant_multiphase": ["Ax Vibrant MultiPhase"],
        "fl3d_dynviews": [
            "t1_fl3d_tra_dynVIEWS_spair_ pre",
            "t1_fl3d_tra_dynVIEWS_spair 1st pass",
            "t1_fl3d_tra_dynVIEWS_spair 2nd pass",
        ],
    }
    for rec in meta["cases"]:
        dyn = [s for s in rec["series"] if s["role"] not in ("localizer", "T1")]
        descs = []
        for s in dyn:
            first = os.path.join(_case_dir(out, meta, rec), s["folder"], "1-001.dcm")
            descs.append(_tag(first, "0008|103e"))
        manufacturer = _tag(first, "0008|0070")
        if rec["plan"]["family"] == "map_only":
            assert descs == ["ax 3d"] * (1 + rec["plan"]["num_post"])
            numbers = [s["number"] for s in dyn]  # in phase order; not sorted: only a map helps
            assert numbers != sorted(numbers)
            assert not any(w in d for d in descs for w in ("dyn", "pre", "pass"))
        elif rec["index"] < 4:
            assert descs == expected[rec["plan"]["family"]][: len(descs)]
            assert manufacturer == ("SIEMENS" if rec["index"] == 3 else "GE MEDICAL SYSTEMS")
        phases = sorted(p for s in dyn for p in s["phases"])
        assert phases == list(range(1 + rec["plan"]["num_post"]))
        assert 2 <= rec["plan"]["num_post"] <= 4
        assert rec["dynamic_series"] == [s["folder"] for s in dyn]


def test_dicom_reads_back_as_the_phantom(duke):
    """Every dynamic phase, read by SimpleITK sorted by position, is the phantom's int16 phase."""
    out, _, meta = duke
    for rec in meta["cases"]:
        case = _case(meta, rec)
        assert [list(lesion.box) for lesion in case.lesions] == rec["boxes"]
        seen = set()
        for s in rec["series"]:
            if s["role"] in ("localizer", "T1"):
                continue
            folder = os.path.join(_case_dir(out, meta, rec), s["folder"])
            for p, files in _phase_files(folder, s).items():
                img = _read_files(files)
                assert img.GetPixelID() == sitk.sitkInt16
                want = ph._to_int16(case.phases[p])
                np.testing.assert_array_equal(sitk.GetArrayFromImage(img), want)
                np.testing.assert_allclose(img.GetSpacing(), case.spacing, rtol=1e-6)
                np.testing.assert_allclose(img.GetOrigin(), case.origin, atol=1e-4)
                np.testing.assert_allclose(img.GetDirection(), np.eye(3).ravel(), atol=1e-6)
                assert _floats(_tag(files[0], "0020|0037")) == AXIAL
                seen.add(p)
        assert seen == set(range(case.phases.shape[0])), rec["case_id"]


def test_vibrant_multiphase_tags(duke):
    out, _, meta = duke
    rec = meta["cases"][2]
    (s,) = [s for s in rec["series"] if s["role"] == "multiphase"]
    folder = os.path.join(_case_dir(out, meta, rec), s["folder"])
    nz, num_phases = rec["shape"][2], 1 + rec["plan"]["num_post"]
    assert s["num_images"] == nz * num_phases
    times = []
    for p in range(num_phases):  # phase-major numbering
        files = [os.path.join(folder, f"1-{p * nz + k:03d}.dcm") for k in range(1, nz + 1)]
        assert {_tag(f, "0020|0100") for f in files} == {str(p + 1)}
        assert {_tag(f, "0020|0105") for f in files} == {str(num_phases)}
        times.append({_tag(f, "0008|0032") for f in files})
    assert all(len(t) == 1 for t in times) and len(set.union(*times)) == num_phases


def test_reversed_file_numbers_and_annotation_boxes(duke):
    """Box slices are file numbers; those files hold exactly the lesion's slices."""
    out, _, meta = duke
    rows = _xlsx_rows(os.path.join(out, "Annotation_Boxes.xlsx"))
    assert tuple(rows[0]) == DUKE_COLUMNS
    by_case = {}
    for r in rows[1:]:
        by_case.setdefault(r[0], []).append(r[1:])
    assert [rec["plan"]["reversed_numbers"] for rec in meta["cases"]] == [0, 0, 1, 0, 0, 1]
    for rec in meta["cases"]:
        nz, sz, oz = rec["shape"][2], rec["spacing"][2], rec["origin"][2]
        s = [s for s in rec["series"] if s["role"] in ("pre", "multiphase")][0]
        folder = os.path.join(_case_dir(out, meta, rec), s["folder"])

        def z_of(number):  # position-sorted slice index of (per-phase) file number of phase 0
            z = _floats(_tag(os.path.join(folder, f"1-{number:03d}.dcm"), "0020|0032"))[2]
            return int(round((z - oz) / sz))

        reverse = rec["plan"]["reversed_numbers"]
        assert z_of(1) == (nz - 1 if reverse else 0) and z_of(nz) == (0 if reverse else nz - 1)
        assert by_case.get(rec["case_id"], []) == [r[1:] for r in rec["annotation_rows"]]
        for (r0, r1, c0, c1, s0, s1), box in zip(by_case.get(rec["case_id"], []), rec["boxes"]):
            assert (r0, r1, c0, c1) == box_to_duke_row(box)[:4]  # rows = y, columns = x
            assert sorted(z_of(f) for f in range(s0, s1 + 1)) == list(range(box[2], box[5]))
    assert sum(len(v) for v in by_case.values()) == sum(r["num_lesions"] for r in meta["cases"])
    assert any(rec["plan"]["reversed_numbers"] and rec["boxes"] for rec in meta["cases"])


def test_t1_grids_and_localizer_orientations(duke):
    out, _, meta = duke
    for rec in meta["cases"]:
        series = {s["role"]: s for s in rec["series"]}
        t1_dir = os.path.join(_case_dir(out, meta, rec), series["T1"]["folder"])
        t1 = _read_files([os.path.join(t1_dir, f) for f in os.listdir(t1_dir)])
        same = rec["plan"]["t1_same_grid"]
        assert same == (rec["index"] % 2 == 0)
        if same:
            assert list(t1.GetSize()) == rec["shape"]
            np.testing.assert_allclose(t1.GetOrigin(), rec["origin"], atol=1e-4)
            pre = ph._to_int16(_case(meta, rec).phases[0])
            assert not np.array_equal(sitk.GetArrayFromImage(t1), pre)  # fat is bright
        else:  # other matrix and slice count, same field of view
            size = np.array(t1.GetSize())
            assert size[0] != rec["shape"][0] and size[2] != rec["shape"][2]
            extent = size * np.array(t1.GetSpacing())
            np.testing.assert_allclose(extent, np.array(rec["shape"]) * rec["spacing"], rtol=1e-4)
        assert "dyn" not in series["T1"]["description"]
        loc_dir = os.path.join(_case_dir(out, meta, rec), series["localizer"]["folder"])
        iops = [_floats(_tag(os.path.join(loc_dir, f), "0020|0037")) for f in os.listdir(loc_dir)]
        normals = [tuple(np.abs(np.cross(i[:3], i[3:])).round(6)) for i in iops]
        assert sorted(normals) == [(0, 0, 1)] * 3 + [(0, 1, 0)] * 3 + [(1, 0, 0)] * 3
        assert series["localizer"]["description"] in ("3 Plane Loc", "loc")


def test_filepath_mapping(duke):
    out, _, meta = duke
    rows = _xlsx_rows(os.path.join(out, pl.DUKE_MAPPING_NAME + ".xlsx"))
    assert tuple(rows[0]) == pl.MAPPING_COLUMNS
    with open(os.path.join(out, pl.DUKE_MAPPING_NAME + ".csv"), newline="") as f:
        assert [list(r) for r in csv.reader(f)] == rows
    manifest = os.path.dirname(os.path.join(out, meta["collection_dir"]))
    pattern = re.compile(r"DICOM_Images/(Breast_MRI_\d{3})/(pre|post_[1-4]|T1)/\1_\2_(\d{3})\.dcm")
    seen = {}
    for original, classic, descriptive in rows[1:]:
        m = pattern.fullmatch(original)
        assert m, original
        path = os.path.join(manifest, descriptive)
        assert os.path.isfile(path), descriptive
        cid, seq, number = m.group(1), m.group(2), int(m.group(3))
        parts = classic.split("/")
        assert parts[:2] == descriptive.split("/")[:2] and parts[-1] == descriptive.split("/")[-1]
        if number in (1, 5):  # headers of a sample of files
            assert parts[2:4] == [_tag(path, "0020|000d"), _tag(path, "0020|000e")]
            if _tag(path, "0008|103e") == "Ax Vibrant MultiPhase":
                phase = 0 if seq == "pre" else int(seq[5:])
                assert int(_tag(path, "0020|0100")) == phase + 1
        seen.setdefault(cid, {}).setdefault(seq, []).append(number)
    for rec in meta["cases"]:
        seqs = seen[rec["case_id"]]
        posts = [f"post_{k}" for k in range(1, rec["plan"]["num_post"] + 1)]
        assert sorted(seqs) == sorted(["pre", "T1"] + posts)  # never the localizer
        nz = rec["shape"][2]
        for seq, numbers in seqs.items():
            n = nz if seq != "T1" else len(numbers)
            assert numbers == list(range(1, n + 1)), (rec["case_id"], seq)
    series = [s for r in meta["cases"] for s in r["series"] if s["role"] != "localizer"]
    assert len(rows) - 1 == sum(s["num_images"] for s in series)


def test_breast_masks_nrrd(duke):
    out, _, meta = duke
    root = os.path.join(out, "Segmentation_Masks_NRRD")
    assert sorted(os.listdir(root)) == ["Breast_MRI_001", "Breast_MRI_003", "Breast_MRI_005"]
    kinds = []
    for rec in meta["cases"]:
        cid, kind = rec["case_id"], rec["plan"]["seg_mask"]
        path = os.path.join(root, cid, f"Segmentation_{cid}_Breast.seg.nrrd")
        assert os.path.isfile(path) == (kind is not None)
        if kind is None:
            continue
        kinds.append(kind)
        mask = sitk.ReadImage(path)
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(sitk.GetArrayViewFromImage(mask))) == {0, 1}
        truth = _case(meta, rec).breast_mask
        if kind == "same_grid":
            np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), truth)
            continue
        assert mask.GetDirection()[4] == -1 and list(mask.GetSize()) != rec["shape"]
        ref = sitk.Image(rec["shape"], sitk.sitkUInt8)
        ref.SetSpacing(rec["spacing"])
        ref.SetOrigin(rec["origin"])
        back = sitk.Resample(mask, ref, sitk.Transform(), sitk.sitkNearestNeighbor)
        back = sitk.GetArrayFromImage(back)
        dice = 2 * np.sum(back & truth) / (back.sum() + truth.sum())
        assert dice > 0.9 and not np.array_equal(sitk.GetArrayFromImage(mask)[:, ::-1], truth)
    assert sorted(kinds) == ["other_grid", "same_grid", "same_grid"]


def test_same_seed_same_bytes_resume_and_other_parameters():
    with tempfile.TemporaryDirectory() as d:
        a, b, c = (os.path.join(d, n) for n in "abc")
        pl.write_duke_layout(a, 4, seed=5, **TINY)
        pl.write_duke_layout(b, 4, seed=5, workers=2, **TINY)
        pl.write_duke_layout(c, 4, seed=6, **TINY)
        files = _files(a)
        assert files == _files(b) and len(files) > 300
        for f in files:
            assert filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False), f
        pre = []
        for out in (a, c):
            meta = json.load(open(os.path.join(out, "phantom.json")))
            folder = os.path.join(out, meta["collection_dir"], "Breast_MRI_001")
            folder = os.path.join(folder, meta["cases"][0]["dynamic_series"][0])
            pre.append(sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "1-008.dcm"))))
        assert pre[0].shape == pre[1].shape and not np.array_equal(*pre)
        # Resume: an interrupted case (a file missing) is rewritten, the others kept.
        victim = [f for f in files if "Breast_MRI_002" in f and f.endswith("1-003.dcm")][0]
        kept = [f for f in files if "Breast_MRI_001" in f and f.endswith(".dcm")][0]
        mtime = os.stat(os.path.join(a, kept)).st_mtime_ns
        os.remove(os.path.join(a, victim))
        seen = []
        summary = pl.write_duke_layout(a, 4, 5, progress=lambda c, g: seen.append((c, g)), **TINY)
        assert summary.generated == 1 and summary.skipped == 3
        assert ("Breast_MRI_002", True) in seen and ("Breast_MRI_001", False) in seen
        assert os.stat(os.path.join(a, kept)).st_mtime_ns == mtime
        assert _files(a) == files
        for f in files:
            assert filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False), f
        with pytest.raises(ValueError, match="other parameters: seed=5"):
            pl.write_duke_layout(a, 4, seed=7, **TINY)
        with pytest.raises(ValueError, match="other parameters: layout"):
            pl.write_mama_mia_layout(a, 4, seed=5, **TINY)


def test_mama_mia_layout():
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "mama")
        summary = pl.write_mama_mia_layout(out, 6, SEED, **TINY)
        again = os.path.join(d, "again")
        pl.write_mama_mia_layout(again, 6, SEED, workers=2, **TINY)
        assert _files(out) == _files(again)
        for f in _files(out):
            assert filecmp.cmp(os.path.join(out, f), os.path.join(again, f), shallow=False), f
        meta = json.load(open(os.path.join(out, "phantom.json")))
        ids = ["DUKE_001", "ISPY1_1001", "ISPY2_100899", "NACT_01", "DUKE_002", "ISPY1_1002"]
        assert [r["case_id"] for r in meta["cases"]] == ids and summary.num_cases == 6
        assert sorted(os.listdir(os.path.join(out, "images"))) == sorted(ids)
        stems = set()
        for i, rec in enumerate(meta["cases"]):
            cid = rec["case_id"]
            names = sorted(os.listdir(os.path.join(out, "images", cid)))
            stem = cid.lower() if i % 3 == 2 else cid
            stems.add(stem == cid)
            num_phases = 3 + i % 4  # 1 pre + 2..5 post
            assert names == [f"{stem}_{k:04d}.nii.gz" for k in range(num_phases)]
            case = ph.make_case(i, SEED, num_phases=num_phases, **TINY)
            img = sitk.ReadImage(os.path.join(out, "images", cid, names[1]))
            want = ph._to_int16(case.phases[1])
            np.testing.assert_array_equal(sitk.GetArrayFromImage(img), want)
            seg = os.path.join(out, "segmentations", "expert", f"{cid.lower()}.nii.gz")
            expert = sitk.GetArrayFromImage(sitk.ReadImage(seg))
            np.testing.assert_array_equal(expert, case.lesion_labels)
            boxes = ph.label_boxes(expert)
            assert [list(boxes[k]) for k in sorted(boxes)] == rec["boxes"]
            seg = os.path.join(out, "segmentations", "automatic", f"{cid.lower()}.nii.gz")
            auto = sitk.GetArrayFromImage(sitk.ReadImage(seg))
            assert set(np.unique(auto)) <= {0, 1} and np.all(auto[expert > 0] == 1)
            info = json.load(open(os.path.join(out, "patient_info_files", f"{cid.lower()}.json")))
            assert info["patient_id"] == cid
        assert stems == {True, False}  # mixed letter case of the file names
        rows = _xlsx_rows(os.path.join(out, "clinical_and_imaging_info.xlsx"))
        assert rows[0][:2] == ["patient_id", "dataset"] and [r[0] for r in rows[1:]] == ids
        with open(os.path.join(out, "train_test_splits.csv"), newline="") as f:
            splits = list(csv.reader(f))
        assert splits[0] == ["train_split", "test_split"]
        assert [r[1] for r in splits[1:]] == ["DUKE_002", "", "", "", ""]
        assert sorted(r[0] for r in splits[1:]) == sorted(set(ids) - {"DUKE_002"})


def test_make_phantom_layout_option(capsys):
    cli = load_tool("make_phantom")
    small = ["--cases", "2", "--matrix", "64", "--slices", "16"]
    with tempfile.TemporaryDirectory() as d:
        duke = os.path.join(d, "duke")
        assert cli.main(["--out", duke, "--layout", "duke", "--duke-mapping-csv", *small]) == 0
        assert "phantom (duke): 2 cases" in capsys.readouterr().out
        assert os.path.isfile(os.path.join(duke, pl.DUKE_MAPPING_NAME + ".csv"))
        assert os.path.isfile(os.path.join(duke, "Annotation_Boxes.xlsx"))
        mama = os.path.join(d, "mama")
        assert cli.main(["--out", mama, "--layout", "mama-mia", *small]) == 0
        assert os.path.isdir(os.path.join(mama, "images", "DUKE_001"))
        capsys.readouterr()
        bad = ["--out", os.path.join(d, "x"), "--layout", "duke", "--phases", "5", *small]
        assert cli.main(bad) == 2
        assert cli.main(["--out", os.path.join(d, "y"), "--duke-mapping-csv", *small]) == 2
        assert cli.main(["--out", mama, "--layout", "duke", *small]) == 2  # not a duke cohort
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 3 and all(line.startswith("error: ") for line in err)
        assert "--phases" in err[0] and "--duke-mapping-csv" in err[1] and "layout" in err[2]
        assert not any(os.path.exists(os.path.join(d, n)) for n in "xy")
        with pytest.raises(SystemExit) as exc:
            cli.main(["--out", os.path.join(d, "z"), "--layout", "dicom", *small])
        assert exc.value.code == 2
        # The default layout is today's NIfTI cohort, byte for byte.
        nifti, ref = os.path.join(d, "nifti"), os.path.join(d, "ref")
        assert cli.main(["--out", nifti, *small]) == 0
        ph.write_cohort(ref, 2, 0, **TINY)
        assert _files(nifti) == _files(ref)
        for f in _files(ref):
            assert filecmp.cmp(os.path.join(nifti, f), os.path.join(ref, f), shallow=False), f
