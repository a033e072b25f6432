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

from breast_d2.cli import OneLineErrorParser, setup_tool_logging
from breast_d2.data.convert import convert_cohort
from breast_d2.data.errors import CohortError


def _non_negative_mm(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 or inf, got {text}")
    return value


def _shard(text: str):
    """``"K/N"`` -> ``(K, N)`` with 0 <= K < N."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N (e.g. 0/8), got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"expected 0 <= K < N, got {text!r}")
    return k, n


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
        "--channels", default="1,1-0,0",
        help="R,G,B phase expressions, each 'a' or 'a-b' (phase 0 = pre), optionally '@dz' to read "
        "slice z+dz; default post1, post1-pre, pre; '2.5d' = 1-0@-1,1-0,1-0@+1 (the subtraction "
        "of slices z-1, z, z+1)",
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
    sharding = parser.add_mutually_exclusive_group()
    sharding.add_argument(
        "--shard", type=_shard, metavar="K/N",
        help="convert every N-th case from the K-th into the shared --out (shards run at the "
        "same time, e.g. a SLURM array); then run once more with --merge-shards",
    )  # fmt: skip
    sharding.add_argument(
        "--merge-shards", action="store_true",
        help="write cases.json, splits.json and the fold files from the shards' cases",
    )  # fmt: skip
    parser.add_argument(
        "--skip-bad-cases", action="store_true",
        help="skip a case with bad input (listed at the end and in cases.json) instead of stopping",
    )  # fmt: skip
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    # Warnings to the console; per-case INFO lines go to OUT/convert.log only.
    setup_tool_logging(logging.WARNING)
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
            shard=args.shard,
            merge_shards=args.merge_shards,
        )
    except (CohortError, OSError) as e:
        sys.stderr.write(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}\n")
        return 2
    if args.shard:
        print(f"shard {args.shard[0]}/{args.shard[1]}: {summary['cases']} cases "
              f"({summary['converted']} new) -> {summary['out']}; merge with --merge-shards")
    else:
        print(f"converted {summary['cases']} cases ({summary['converted']} new, "
              f"{summary['resumed']} resumed): {summary['slices']} slices, "
              f"{summary['lesions']} lesions, {summary['folds']} folds -> {summary['out']} "
              f"({summary['seconds']:.1f} s)")  # fmt: skip
    for kind, count in summary["orphans"].items():
        print(f"partial download: {count} {kind} without images skipped (see convert.log)")
    if summary["bad_cases"]:
        print(f"skipped {len(summary['bad_cases'])} bad case(s): {', '.join(summary['bad_cases'])} "
              "(reasons in cases.json and convert.log)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
