#!/usr/bin/env python
"""Which phantom masses a run finds, by enhancement-curve type or contrast: detector misses vs
box misses.

    python benchmarks/misses_by_kinetics.py --phantom output/phantom_cv/phantom/phantom.json \\
        --run "default=output/phantom_cv/masked/detector/fold*/inference/*" [--run ...]

Each ``--run NAME=GLOB`` names a run's fold evaluation folders (``froc.json``, ``candidates.json``
and ``detections.json`` of ``--eval-only``). For every mass of the folds' validation cases,
grouped by its curve type in the phantom's ground truth (type I persistent, II plateau, III
wash-out): ``seen``, some slice detection scoring >= ``--min-score`` contains the mass's in-plane
centre on one of its slices (the detector found it); ``hit``, some 3D candidate overlaps its box
by 3D IoU > 0.5 at any score (merging and box fit kept it). A mass that is not seen is a detector
miss, which no post-processing can repair. ``--list`` also names every mass not seen.
``--by contrast`` groups the masses by their lesion-to-parenchyma signal ratio at the first
post-contrast phase (the phantom's ``lesion_to_parenchyma_post1``: < 3, 3-6, >= 6) instead.
"""
import argparse
import os
import sys
from collections import defaultdict

import numpy as np

from breast_d2.cli import OneLineErrorParser, fail, glob_folders_with, parse_named_specs
from breast_d2.evaluation.froc import FROCInputError
from breast_d2.evaluation.io import load_candidates_json, read_froc_json
from breast_d2.evaluation.matching import box_iou3d
from breast_d2.evaluation.tables import markdown_table


def parse_args(argv=None):
    p = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--phantom", required=True, help="phantom.json of tools/make_phantom.py")
    p.add_argument("--run", action="append", required=True, metavar="NAME=GLOB",
                   help="a run's fold evaluation folders")
    p.add_argument("--min-score", type=float, default=0.5,
                   help="slice detection score that counts as seen")
    p.add_argument("--list", action="store_true", help="also name every mass not seen")
    p.add_argument("--by", choices=tuple(GROUPS), default="curve",
                   help="group by curve type (default) or by lesion-to-parenchyma ratio at post 1")
    return p.parse_args(argv)


CONTRAST_BANDS = ("< 3", "3-6", ">= 6")


def _contrast_band(lesion):
    ratio = lesion.get("lesion_to_parenchyma_post1")
    if ratio is None:
        fail("--by contrast needs lesion_to_parenchyma_post1 in phantom.json (generator >= 2.0)")
    return CONTRAST_BANDS[0] if ratio < 3 else CONTRAST_BANDS[1 if ratio < 6 else 2]


# How masses are grouped: the table's column title, the group of one phantom lesion, and the
# groups' order in the table.
GROUPS = {
    "curve": ("curve type", lambda lesion: lesion["kinetics"]["curve_type"], str),
    "contrast": ("lesion / parenchyma at post 1", _contrast_band, CONTRAST_BANDS.index),
}


def _seen(box, detections, min_score):
    """Does a slice detection (``box`` [x0, y0, x1, y1]) cover the mass's centre on its slices?"""
    x0, y0, z0, x1, y1, z1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return any(
        d["score"] >= min_score and z0 <= d["slice"] < z1
        and d["box"][0] <= cx <= d["box"][2] and d["box"][1] <= cy <= d["box"][3]
        for d in detections
    )


def run_counts(folders, lesions_by_case, min_score, group_of=GROUPS["curve"][1]):
    """``{group: [masses, seen, hit]}`` and the masses not seen (with their curve type), over
    ``folders``; ``group_of(lesion)`` names a mass's group (default its curve type)."""
    counts = defaultdict(lambda: [0, 0, 0])
    not_seen = []
    for folder in folders:
        case_ids = read_froc_json(os.path.join(folder, "froc.json"))["case_ids"]
        cands = load_candidates_json(os.path.join(folder, "candidates.json"))
        dets = read_froc_json(os.path.join(folder, "detections.json"))
        for cid in case_ids:
            if cid not in lesions_by_case:
                fail(f"{folder}: case {cid} is not in the phantom's ground truth")
            case_boxes = np.array([c["box"] for c in cands if c["case_id"] == cid], float)
            case_dets = [d for d in dets if d["case_id"] == cid]
            for lesion in lesions_by_case[cid]:
                curve = lesion["kinetics"]["curve_type"]
                box = lesion["box"]
                group = group_of(lesion)
                seen = _seen(box, case_dets, min_score)
                hit = bool(len(case_boxes)) and bool(
                    (box_iou3d(np.array(box, float)[None], case_boxes) > 0.5).any()
                )
                row = counts[group]
                row[0] += 1
                row[1] += seen
                row[2] += hit
                if not seen:
                    not_seen.append((cid, curve, lesion["diameter_mm"], box))
    return counts, not_seen


def main(argv=None):
    args = parse_args(argv)
    try:
        return _main(args)
    except FROCInputError as e:
        fail(str(e))


def _main(args):
    phantom = read_froc_json(args.phantom)
    lesions_by_case = {c["case_id"]: c["lesions"] for c in phantom["cases"]}
    rows = []
    title, group_of, order = GROUPS[args.by]
    for name, pattern in parse_named_specs(args.run, "GLOB"):
        folders = glob_folders_with(pattern, "froc.json")
        counts, not_seen = run_counts(folders, lesions_by_case, args.min_score, group_of)
        for group in sorted(counts, key=order):
            n, seen, hit = counts[group]
            rows.append([name, group, n, f"{seen} ({seen / n:.2f})", f"{hit} ({hit / n:.2f})"])
        if args.list:
            for cid, curve, diameter, box in not_seen:
                print(f"{name}: not seen {cid} type {curve} {diameter:.1f} mm box {box}")
    header = ["run", title, "masses", f"seen (slice score >= {args.min_score})",
              "hit (a candidate, 3D IoU > 0.5)"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    sys.exit(main())
