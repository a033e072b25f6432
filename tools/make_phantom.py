#!/usr/bin/env python
"""Generate the synthetic DCE-MRI phantom cohort (the embedded default data of breast_d2).

Example::

    python tools/make_phantom.py --out datasets/phantom --cases 40 --seed 0
    python tools/make_phantom.py --out /tmp/tiny --cases 6 --seed 1 --matrix 128 --slices 32

Writes the input-cohort layout of docs/DATA_FORMAT.md (IMAGES/, MASKS/, LABELS/, boxes.csv,
phantom.json); the work is done by :func:`breast_d2.data.phantom.write_cohort`. Same seed, same
bytes; rerunning with the same arguments skips finished cases. Bad arguments stop with one line
``error: ...`` on stderr and exit code 2.
"""
import argparse
import logging
import sys
import time

from tqdm import tqdm

from breast_d2.cli import OneLineErrorParser
from breast_d2.data.phantom import write_cohort


def get_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="cohort folder (new, empty, or to resume)")
    parser.add_argument("--cases", type=int, required=True, help="number of cases")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed")
    parser.add_argument("--matrix", type=int, default=320, help="in-plane matrix (FOV kept)")
    parser.add_argument("--slices", type=int, default=96, help="slices (134.4 mm slab kept)")
    parser.add_argument("--fov-mm", type=float, default=320.0, help="in-plane field of view (mm)")
    parser.add_argument("--phases", type=int, default=9, help="1 pre + N-1 post-contrast phases")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    logging.getLogger().addHandler(console)
    start = time.time()
    bars = []  # created on the first finished case, so a bad argument prints only the error

    def progress(case_id: str, generated: bool) -> None:
        if not bars:
            bars.append(tqdm(total=args.cases, unit="case", desc="phantom"))
        bars[0].update(1)

    try:
        summary = write_cohort(
            args.out,
            args.cases,
            args.seed,
            matrix=args.matrix,
            slices=args.slices,
            fov_mm=args.fov_mm,
            num_phases=args.phases,
            workers=args.workers,
            progress=progress,
        )
    except (ValueError, OSError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    finally:
        for bar in bars:
            bar.close()
    print(
        f"phantom: {summary.num_cases} cases in {summary.out_dir} ({summary.generated} generated, "
        f"{summary.skipped} kept), {summary.num_lesions} masses, "
        f"{summary.cases_without_lesions} cases without mass, {time.time() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
