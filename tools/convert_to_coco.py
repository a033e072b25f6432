#!/usr/bin/env python
"""Convert a DCE-MRI cohort to slices + COCO files with patient-level folds.

Example::

    python tools/convert_to_coco.py --images datasets/phantom/IMAGES \\
        --labels datasets/phantom/LABELS --masks datasets/phantom/MASKS \\
        --out datasets/phantom_coco --folds 5 --seed 0
    # Duke-Breast-Cancer-MRI exactly as downloaded from TCIA
    python tools/convert_to_coco.py --images /data/duke/manifest-1654812109500 \\
        --boxes /data/duke/Annotation_Boxes.xlsx \\
        --series-map /data/duke/Breast-Cancer-MRI-filepath_filename-mapping.xlsx \\
        --out datasets/duke_coco --workers 8 --skip-bad-cases

The output layout is described in docs/DATA_FORMAT.md; the work is done by
:func:`breast_d2.data.convert.convert_cohort`. Bad input stops with one line ``error: ...`` on
stderr and exit code 2.
"""
import argparse
import logging
import sys

from breast_d2.cli import OneLineErrorParser
from breast_d2.data.convert import convert_cohort
from breast_d2.data.volumes import CohortError


def _non_negative_mm(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 or inf, got {text}")
    return value


def get_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--images", required=True,
        help="folder of case folders (NIfTI or DICOM trees), a TCIA manifest-<digits> folder, "
        "or a MAMA-MIA root",
    )  # fmt: skip
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--boxes", help="Duke Annotation_Boxes table, .xlsx or .csv (1-based, inclusive)"
    )
    source.add_argument("--labels", help="folder of lesion label volumes (<case>.nii.gz, any case)")
    parser.add_argument(
        "--masks", help="folder of breast masks (NIfTI/NRRD/.seg.nrrd, flat or per-case folders)"
    )
    parser.add_argument("--out", required=True, help="output folder (new or empty, or --resume)")
    parser.add_argument("--folds", type=int, default=5, help="number of patient-level folds")
    parser.add_argument("--seed", type=int, default=0, help="fold split seed")
    parser.add_argument(
        "--channels", default="1,1-0,0", help="R,G,B phase expressions: post1, post1-pre, pre"
    )
    parser.add_argument(
        "--series-map",
        help="TCIA Breast-Cancer-MRI-filepath_filename-mapping (.xlsx or .csv): decides the DICOM "
        "phases of the cases it lists",
    )
    parser.add_argument(
        "--dicom-order", choices=("description", "series-number"), default="description",
        help="how DICOM phases are chosen without a series map: SeriesDescription rules "
        "(default), or every series a phase in SeriesNumber order",
    )  # fmt: skip
    parser.add_argument("--phases", type=int, help="expected number of phases per case")
    parser.add_argument(
        "--splits-from",
        help="MAMA-MIA train_test_splits.csv: its test cases are held out, folds use the rest",
    )
    parser.add_argument(
        "--merge-lesions-mm", type=_non_negative_mm, default=0.0,
        help="label volumes: join components at most this far apart (mm) into one lesion; "
        "0 = every component is a lesion (default), inf = one lesion per case",
    )  # fmt: skip
    parser.add_argument(
        "--resample-phases", action="store_true",
        help="resample a phase that is off phase 0's voxel grid (> half a voxel) onto it, "
        "instead of stopping",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--resume", action="store_true", help="skip cases finished earlier")
    parser.add_argument(
        "--skip-bad-cases", action="store_true",
        help="skip a case with bad input (listed at the end and in cases.json) instead of stopping",
    )  # fmt: skip
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    # Warnings to the console; per-case INFO lines go to OUT/convert.log only.
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(console)
    try:
        summary = convert_cohort(
            images=args.images,
            out=args.out,
            boxes_csv=args.boxes,
            labels=args.labels,
            masks=args.masks,
            num_folds=args.folds,
            seed=args.seed,
            channels=args.channels,
            workers=args.workers,
            resume=args.resume,
            series_map=args.series_map,
            dicom_order=args.dicom_order,
            phases=args.phases,
            skip_bad_cases=args.skip_bad_cases,
            splits_from=args.splits_from,
            merge_lesions_mm=args.merge_lesions_mm,
            resample_phases=args.resample_phases,
        )
    except (CohortError, OSError) as e:
        sys.stderr.write(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}\n")
        return 2
    print(
        f"converted {summary['cases']} cases ({summary['converted']} new, {summary['resumed']} "
        f"resumed): {summary['slices']} slices, {summary['lesions']} lesions, "
        f"{summary['folds']} folds -> {summary['out']} ({summary['seconds']:.1f} s)"
    )
    for kind, count in summary["orphans"].items():
        print(f"partial download: {count} {kind} without images skipped (see convert.log)")
    if summary["bad_cases"]:
        print(f"skipped {len(summary['bad_cases'])} bad case(s): {', '.join(summary['bad_cases'])} "
              "(reasons in cases.json and convert.log)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
