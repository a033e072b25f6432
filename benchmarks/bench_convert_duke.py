#!/usr/bin/env python
"""Conversion of one Duke-sized DICOM case, against its floor; and the series-map read time.

A synthetic TCIA-style patient folder (512 x 512 x 170 slices, 5 dynamic phases as DICOM series,
plus a localizer and a non-fat-sat T1, ``1-NNN.dcm`` files) is converted with
:func:`breast_d2.data.convert.convert_cohort` (one worker). The floor is the work no converter can
skip: reading the five series' voxels with SimpleITK and writing 170 RGB PNGs at the same zlib
level. Both are timed in the same run, alternating, ``--repeats`` times; the table gives the
median and the range.

``--map-rows N`` also writes a filepath-mapping workbook of N rows (the published one has ~770k)
and times :func:`breast_d2.data.duke.read_series_map` on it (streamed, openpyxl read-only).

    OMP_NUM_THREADS=1 python benchmarks/bench_convert_duke.py --repeats 3 --map-rows 770000
"""
import argparse
import os
import statistics as st
import tempfile
import time

import cv2
import numpy as np
import SimpleITK as sitk

from breast_d2.data.channels import compose_channels
from breast_d2.data.convert import _PNG_COMPRESS_LEVEL, convert_cohort
from breast_d2.data.duke import read_series_map

STUDY = "01-01-1990-NA-MRI BREAST BILATERAL W  WO-97538"
DYN = ["ax dyn pre", "ax dyn 1st pass", "ax dyn 2nd pass", "ax dyn 3rd pass", "ax dyn 4th pass"]


def write_series(case_dir, number, description, volume, spacing=(0.7, 0.7, 1.1)):
    folder = os.path.join(case_dir, STUDY, f"{number}.000000-{description}-{10000 + number}")
    os.makedirs(folder)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = f"1.2.826.0.1.3680043.9.7.{number}"
    for z in range(volume.shape[0]):
        img = sitk.GetImageFromArray(volume[z : z + 1])[:, :, 0]
        img.SetSpacing(spacing[:2])
        for tag, value in {
            "0008|0060": "MR", "0008|103e": description, "0010|0020": "Breast_MRI_001",
            "0020|000d": "1.2.3", "0020|000e": uid, "0020|0011": str(number),
            "0020|0013": str(z + 1), "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0032": f"-180\\-180\\{z * spacing[2]}", "0008|0018": f"{uid}.{z + 1}",
        }.items():  # fmt: skip
            img.SetMetaData(tag, value)
        writer.SetFileName(os.path.join(folder, f"1-{z + 1:03d}.dcm"))
        writer.Execute(img)
    return folder


def make_case(images, size, slices):
    rng = np.random.default_rng(0)
    case_dir = os.path.join(images, "Breast_MRI_001")
    base = rng.integers(0, 800, (slices, size, size), dtype=np.int16)
    write_series(case_dir, 1, "3 Plane Loc", base[:5])
    write_series(case_dir, 2, "ax t1", base)
    folders = [write_series(case_dir, 3 + k, d, base + 40 * k) for k, d in enumerate(DYN)]
    # a second patient (same files) so that the cohort can be split into 2 folds
    os.symlink(case_dir, os.path.join(images, "Breast_MRI_002"))
    return folders


def floor(folders, out):
    """Read the five series' voxels and write the RGB PNGs: what any converter must do."""
    phases = []
    for folder in folders:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder))
        phases.append(sitk.GetArrayFromImage(reader.Execute()))
    rgb = compose_channels({k: p for k, p in enumerate(phases)}, "1,1-0,0")
    os.makedirs(out)
    for z in range(rgb.shape[0]):
        cv2.imwrite(os.path.join(out, f"{z:04d}.png"), np.ascontiguousarray(rgb[z][..., ::-1]),
                    [cv2.IMWRITE_PNG_COMPRESSION, _PNG_COMPRESS_LEVEL])  # fmt: skip


def bench_map(rows, d):
    import openpyxl

    path = os.path.join(d, "map.xlsx")
    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet()
    sheet.append(["original_path_and_filename", "classic_path", "descriptive_path"])
    for i in range(rows):
        case = f"Breast_MRI_{i // 850 + 1:03d}"
        seq = ["pre", "post_1", "post_2", "post_3", "T1"][(i // 170) % 5]
        n = i % 170 + 1
        sheet.append([f"DICOM_Images/{case}/{seq}/{case}_{seq}_{n:03d}.dcm",
                      f"Duke-Breast-Cancer-MRI/{case}/1.3.6.1.4.1.14519.5.2.1.{i // 850}/"
                      f"1.3.6.1.4.1.14519.5.2.1.{i // 170}/1-{n:03d}.dcm",
                      f"Duke-Breast-Cancer-MRI/{case}/{STUDY}/{(i // 170) % 5 + 3}.000000-"
                      f"ax dyn-{i // 170 % 90000 + 10000}/1-{n:03d}.dcm"])  # fmt: skip
    book.save(path)
    t = time.perf_counter()
    smap = read_series_map(path)
    seconds = time.perf_counter() - t
    print(f"\nseries map: {rows} rows, {os.path.getsize(path) / 1e6:.1f} MB xlsx, "
          f"{len(smap.cases)} cases: read in {seconds:.1f} s ({rows / seconds:,.0f} rows/s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=170)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--map-rows", type=int, default=0)
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    with tempfile.TemporaryDirectory() as d:
        images = os.path.join(d, "manifest-1", "Duke-Breast-Cancer-MRI")
        t = time.perf_counter()
        folders = make_case(images, args.size, args.slices)
        print(f"wrote a {args.size}x{args.size}x{args.slices} case (5 phases, loc, T1) "
              f"in {time.perf_counter() - t:.0f} s")
        conv, flo = [], []
        for r in range(args.repeats):
            t = time.perf_counter()
            floor(folders, os.path.join(d, f"floor{r}"))
            flo.append(time.perf_counter() - t)
            t = time.perf_counter()
            convert_cohort(os.path.dirname(images), os.path.join(d, f"out{r}"), num_folds=2,
                           boxes_csv=_boxes(d, args.size, args.slices))  # fmt: skip
            conv.append((time.perf_counter() - t) / 2)  # two cases were converted
            print(f"repeat {r}: convert {conv[-1]:.2f} s, floor {flo[-1]:.2f} s, "
                  f"ratio {conv[-1] / flo[-1]:.2f}", flush=True)
        ratios = [c / f for c, f in zip(conv, flo)]
        print("\n| case | convert s/case (median, range) | floor s (median, range) "
              "| ratio (median, range) |")
        print("|---|---|---|---|")
        print(f"| {args.size}x{args.size}x{args.slices}, 5 DICOM phases + loc + T1 | "
              f"{st.median(conv):.2f} ({min(conv):.2f}-{max(conv):.2f}) | "
              f"{st.median(flo):.2f} ({min(flo):.2f}-{max(flo):.2f}) | "
              f"{st.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |")
        if args.map_rows:
            bench_map(args.map_rows, d)


def _boxes(d, size, slices):
    path = os.path.join(d, "boxes.csv")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write("Patient ID,Start Row,End Row,Start Column,End Column,Start Slice,End Slice\n"
                    f"Breast_MRI_001,{size // 5},{size // 4},{size // 3},{size // 2},"
                    f"{slices // 3},{slices // 2}\n")
    return path


if __name__ == "__main__":
    main()
