#!/usr/bin/env python
"""Convert a DCE-MRI cohort to slices + COCO files with patient-level folds.

Example::

    python tools/convert_to_coco.py --images datasets/phantom/IMAGES \\
        --labels datasets/phantom/LABELS --masks datasets/phantom/MASKS \\
        --out datasets/phantom_coco --folds 5 --seed 0

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


def get_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", required=True, help="IMAGES folder, one sub-folder per case")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--boxes", help="Duke Annotation_Boxes CSV (1-based, inclusive)")
    source.add_argument("--labels", help="LABELS folder of <case_id>.nii.gz lesion label volumes")
    parser.add_argument("--masks", help="MASKS folder of <case_id>.nii.gz breast masks")
    parser.add_argument("--out", required=True, help="output folder (new or empty, or --resume)")
    parser.add_argument("--folds", type=int, default=5, help="number of patient-level folds")
    parser.add_argument("--seed", type=int, default=0, help="fold split seed")
    parser.add_argument(
        "--channels", default="1,1-0,0", help="R,G,B phase expressions: post1, post1-pre, pre"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--resume", action="store_true", help="skip cases finished earlier")
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
        )
    except (CohortError, OSError) as e:
        sys.stderr.write(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}\n")
        return 2
    print(
        f"converted {summary['cases']} cases ({summary['converted']} new, {summary['resumed']} "
        f"resumed): {summary['slices']} slices, {summary['lesions']} lesions, "
        f"{summary['folds']} folds -> {summary['out']} ({summary['seconds']:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
