#!/usr/bin/env python
"""Generate the synthetic DCE-MRI phantom cohort (the embedded default data of breast_d2).

Example::

    python tools/make_phantom.py --out datasets/phantom --cases 40 --seed 0
    python tools/make_phantom.py --out /tmp/tiny --cases 6 --seed 1 --matrix 128 --slices 32
    python tools/make_phantom.py --out /tmp/duke --cases 8 --layout duke --matrix 128 --slices 32
    python tools/make_phantom.py --out /tmp/mama --cases 8 --layout mama-mia

``--layout nifti`` (default) writes the input-cohort layout of docs/DATA_FORMAT.md (IMAGES/,
MASKS/, LABELS/, boxes.csv, phantom.json) with :func:`breast_d2.data.phantom.write_cohort`;
``--layout duke`` writes a Duke-Breast-Cancer-MRI TCIA download (manifest folder, DICOM series,
Annotation_Boxes.xlsx, the filepath mapping, breast masks as NRRD) and ``--layout mama-mia`` the
MAMA-MIA download (images/, segmentations/, tables), both with
:mod:`breast_d2.data.phantom.layouts`. Same seed, same bytes; rerunning with the same arguments
skips finished cases. Bad arguments stop with one line ``error: ...`` on stderr and exit code 2.
"""
import argparse
import logging
import sys
import time

from tqdm import tqdm

from breast_d2.cli import OneLineErrorParser, setup_tool_logging
from breast_d2.data.phantom import write_cohort
from breast_d2.data.phantom.layouts import write_duke_layout, write_mama_mia_layout

LAYOUTS = ("nifti", "duke", "mama-mia")


def get_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="cohort folder (new, empty, or to resume)")
    parser.add_argument("--cases", type=int, required=True, help="number of cases")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed")
    parser.add_argument("--matrix", type=int, default=320, help="in-plane matrix (FOV kept)")
    parser.add_argument("--slices", type=int, default=96, help="slices (134.4 mm slab kept)")
    parser.add_argument("--fov-mm", type=float, default=320.0, help="in-plane field of view (mm)")
    parser.add_argument(
        "--phases",
        type=int,
        default=None,
        help="1 pre + N-1 post-contrast phases (nifti only, default 9; duke: 1 + 2..4 and "
        "mama-mia: 1 + 2..5 by case)",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--layout", choices=LAYOUTS, default="nifti", help="on-disk layout (default nifti)"
    )
    parser.add_argument(
        "--duke-mapping-csv",
        action="store_true",
        help="duke: also write the filepath mapping as .csv (beside the .xlsx)",
    )
    return parser


def _generate(args, progress):
    """Call the writer of ``args.layout``."""
    common = {
        "matrix": args.matrix,
        "slices": args.slices,
        "fov_mm": args.fov_mm,
        "workers": args.workers,
        "progress": progress,
    }
    if args.layout != "nifti" and args.phases is not None:
        raise ValueError(f"--phases applies to --layout nifti only, not {args.layout}")
    if args.layout != "duke" and args.duke_mapping_csv:
        raise ValueError(f"--duke-mapping-csv applies to --layout duke only, not {args.layout}")
    if args.layout == "duke":
        common["duke_mapping_csv"] = args.duke_mapping_csv
        return write_duke_layout(args.out, args.cases, args.seed, **common)
    if args.layout == "mama-mia":
        return write_mama_mia_layout(args.out, args.cases, args.seed, **common)
    phases = 9 if args.phases is None else args.phases
    return write_cohort(args.out, args.cases, args.seed, num_phases=phases, **common)


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_tool_logging(logging.WARNING)
    start = time.time()
    label = "phantom" if args.layout == "nifti" else f"phantom ({args.layout})"
    bars = []  # created on the first finished case, so a bad argument prints only the error

    def progress(case_id: str, generated: bool) -> None:
        if not bars:
            bars.append(tqdm(total=args.cases, unit="case", desc=label))
        bars[0].update(1)

    try:
        summary = _generate(args, progress)
    except (ValueError, OSError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    finally:
        for bar in bars:
            bar.close()
    print(
        f"{label}: {summary.num_cases} cases in {summary.out_dir} ({summary.generated} generated, "
        f"{summary.skipped} kept), {summary.num_lesions} masses, "
        f"{summary.cases_without_lesions} cases without mass, {time.time() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
