"""The DICOM reader on real MR headers: pydicom's test files in six transfer syntaxes.

pydicom (a test-only dependency) ships ``MR_small*.dcm``: one 64 x 64 MR slice written by real
software in implicit and explicit VR little endian, explicit big endian, RLE, JPEG-LS lossless
and JPEG 2000 lossless. Each test builds a 4-slice series from one of them (new UIDs, instance
numbers and positions along the slice normal) and reads it through
:func:`breast_d2.data.readers.read_phases_from_dir`, so the reader sees files no one here wrote.
"""
import os
import tempfile

import numpy as np
import pytest

from breast_d2.data.errors import CohortError
from breast_d2.data.readers import read_phases_from_dir

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.encaps import encapsulate, generate_frames  # noqa: E402
from pydicom.uid import RLELossless, generate_uid  # noqa: E402

# file -> whether this test can give every slice its own pixel values (pydicom can write native
# pixels and encode RLE; it has no JPEG-LS / JPEG 2000 encoder here, so those slices keep the
# file's own compressed frame).
SYNTAXES = {
    "MR_small.dcm": True,  # explicit VR little endian
    "MR_small_implicit.dcm": True,
    "MR_small_bigendian.dcm": True,
    "MR_small_RLE.dcm": True,
    "MR_small_jpeg_ls_lossless.dcm": False,
    "MR_small_jp2klossless.dcm": False,
}
COMPRESSED = ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"]
SLICE_GAP = 1.5  # mm between slice positions (the files say SliceThickness 0.8)
# slice positions along the normal, in file-number order: file numbers run against position in
# part of the series, as in some Duke cases
STEPS = [2, 0, 3, 1]


def _reference_pixels():
    """The image all six files hold (the compressed ones losslessly), int16 [64, 64]."""
    return pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.int16)


def _slice_pixels(i):
    """Pixel values of the slice at position step ``i``: distinct per slice, within int16."""
    return (np.roll(_reference_pixels(), 3 * i, axis=1) + 100 * i).astype(np.int16)


def _set_pixels(ds, array):
    if ds.file_meta.TransferSyntaxUID == RLELossless:
        ds.compress(RLELossless, array)
    else:
        dtype = ">i2" if not ds.file_meta.TransferSyntaxUID.is_little_endian else "<i2"
        ds.PixelData = array.astype(dtype).tobytes()


def _write_series(folder, name, vary_pixels, orientation=None, mutate=None):
    """4 files ``1-001.dcm`` ... in ``folder``; returns the expected [Z, Y, X] in position order."""
    os.makedirs(folder)
    series_uid, expected = generate_uid(), {}
    for number, step in enumerate(STEPS, start=1):
        ds = pydicom.dcmread(get_testdata_file(name))
        if orientation is not None:
            ds.ImageOrientationPatient = list(orientation)
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        base = np.asarray(ds.ImagePositionPatient, dtype=float)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [f"{v:.4f}" for v in base + normal * SLICE_GAP * step]
        if vary_pixels:
            _set_pixels(ds, _slice_pixels(step))
        if mutate is not None and number == 3:
            mutate(ds)
        ds.save_as(os.path.join(folder, f"1-{number:03d}.dcm"))
        expected[step] = _slice_pixels(step) if vary_pixels else _reference_pixels()
    return np.stack([expected[s] for s in sorted(expected)])


@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory() as d:
        yield d


@pytest.mark.parametrize("name", sorted(SYNTAXES))
def test_series_in_each_transfer_syntax(tmp, name):
    series = os.path.join(tmp, "1.000000-ax dyn pre-12345")
    expected = _write_series(series, name, SYNTAXES[name])
    written = pydicom.dcmread(os.path.join(series, "1-001.dcm"))
    source = pydicom.dcmread(get_testdata_file(name))
    assert written.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
    if SYNTAXES[name]:  # pydicom decodes what it wrote: the test's expectation is right
        assert np.array_equal(written.pixel_array, _slice_pixels(STEPS[0]))
    phases, spacing, geometry = read_phases_from_dir([series])
    assert phases.shape == (1, 4, 64, 64) and phases.dtype == np.float32
    assert np.allclose(spacing, (0.3125, 0.3125, SLICE_GAP), atol=1e-4)
    assert np.allclose(geometry.origin[2], 6.6406, atol=1e-3)  # the lowest slice
    assert np.array_equal(phases[0], expected.astype(np.float32))  # position order, exact values


def test_sagittal_series_is_stacked_along_its_normal(tmp):
    series = os.path.join(tmp, "sag")
    # rows along y (anterior -> posterior), columns along -z: the normal is -x
    expected = _write_series(series, "MR_small.dcm", True, orientation=(0, 1, 0, 0, 0, -1))
    phases, spacing, geometry = read_phases_from_dir([series])
    assert np.allclose(spacing[2], SLICE_GAP, atol=1e-4)
    assert np.allclose(geometry.direction, (0, 0, -1, 1, 0, 0, 0, -1, 0), atol=1e-6)
    assert np.array_equal(phases[0], expected.astype(np.float32))


def _frame(ds):
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def _truncate_frame(ds):
    ds.PixelData = encapsulate([_frame(ds)[: len(_frame(ds)) // 2]])


def _garble_frame(ds):
    frame = bytearray(_frame(ds))
    for k in range(20, len(frame) - 10, 7):
        frame[k] ^= 0x5A
    ds.PixelData = encapsulate([bytes(frame)])


@pytest.mark.parametrize("mutate", [_truncate_frame, _garble_frame])
@pytest.mark.parametrize("name", COMPRESSED)
def test_undecodable_frame_is_a_one_line_error(tmp, name, mutate):
    series = os.path.join(tmp, "s")
    _write_series(series, name, False, mutate=mutate)
    with pytest.raises(CohortError) as e:
        read_phases_from_dir([series], "Breast_MRI_001")
    msg = str(e.value)
    assert "\n" not in msg and "case Breast_MRI_001" in msg and series in msg


def test_truncated_file_is_a_one_line_error(tmp):
    series = os.path.join(tmp, "s")
    _write_series(series, "MR_small.dcm", True)
    path = os.path.join(series, "1-002.dcm")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-100])
    with pytest.raises(CohortError) as e:
        read_phases_from_dir([series], "Breast_MRI_001")
    assert "\n" not in str(e.value) and path in str(e.value)


def test_short_native_pixel_data_is_refused(tmp):
    def halve(ds):
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]

    series = os.path.join(tmp, "s")
    _write_series(series, "MR_small.dcm", True, mutate=halve)
    with pytest.raises(CohortError, match="bytes of pixel data but its header needs 8192"):
        read_phases_from_dir([series], "Breast_MRI_001")
