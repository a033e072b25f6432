#!/usr/bin/env python
"""Choose the box fit's level without a detector, on a cohort the benchmarks never evaluate.

Every mass's label box of a converted folder is perturbed the way a detector errs (a pixel loose,
tight or shifted per side, a slice short, two pixels loose, found on its central slice only),
fitted to the image with :func:`breast_d2.evaluation.boxfit.fit_box` at each ``--levels`` and
``--min-ious`` value, and scored as a hit when
its 3D IoU with the label box is > 0.5 (the study's criterion). Prints one markdown row per
setting (and the unfitted boxes) with the hit fraction per perturbation and their mean::

    python tools/make_phantom.py --out /tmp/cal/phantom --cases 30 --seed 101
    python tools/convert_to_coco.py --images /tmp/cal/phantom/IMAGES \\
        --labels /tmp/cal/phantom/LABELS --masks /tmp/cal/phantom/MASKS --out /tmp/cal/coco \\
        --folds 5 --seed 101
    python benchmarks/calibrate_box_fit.py --data /tmp/cal/coco --min-ious 0.05,0.1,0.2,0.3
    python benchmarks/calibrate_box_fit.py --data /tmp/cal/coco --levels 0.4 --min-ious 0.05 \\
        --closed false,true

The benchmark cohort is seed 0 and the demo's seeds 0-2: seed 101 is independent of both.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from breast_d2.data.converted import read_cases  # noqa: E402
from breast_d2.evaluation.boxfit import BoxFitParams, fit_box  # noqa: E402
from breast_d2.evaluation.matching import box_iou3d  # noqa: E402
from breast_d2.evaluation.slices import ConvertedSlices  # noqa: E402
from breast_d2.evaluation.tables import markdown_table  # noqa: E402

#: Perturbations of a label box [x0, y0, z0, x1, y1, z1] (voxels), added to it.
PERTURBATIONS = {
    "exact": [0, 0, 0, 0, 0, 0],
    "1 px loose": [-1, -1, 0, 1, 1, 0],
    "1 px tight": [1, 1, 0, -1, -1, 0],
    "x + 1 px": [1, 0, 0, 1, 0, 0],
    "y - 1 px": [0, -1, 0, 0, -1, 0],
    "1 slice short": [0, 0, 1, 0, 0, 0],
    "2 px loose": [-2, -2, 0, 2, 2, 0],
    # Found on its central slice only (a faint small mass), box exact or a pixel tight.
    "central slice": "central",
    "central slice, 1 px tight": "central tight",
}


def perturb(label: np.ndarray, delta) -> np.ndarray:
    """The label box moved by ``delta`` (or cut to its central slice); the label itself where
    the perturbation would leave an empty box."""
    if isinstance(delta, str):
        box = label.copy()
        box[2] = np.floor((label[2] + label[5] - 1) / 2)
        box[5] = box[2] + 1
        if delta == "central tight":
            box += [1, 1, 0, -1, -1, 0]
    else:
        box = label + delta
    return label.copy() if np.any(box[3:] <= box[:3]) else box


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="converted folder (cases.json, slices/)")
    p.add_argument("--levels", default="0.3,0.4,0.5,0.6")
    p.add_argument("--min-ious", default="0.3",
                   help="BOX_FIT_MIN_IOU values (each with every level)")
    p.add_argument("--closed", default="false",
                   help="BOX_FIT_CLOSED values, e.g. false,true (each with every setting)")
    args = p.parse_args(argv)
    levels = [float(v) for v in args.levels.split(",")]
    min_ious = [float(v) for v in args.min_ious.split(",")]
    closed_values = {"false": False, "true": True}
    if any(v not in closed_values for v in args.closed.split(",")):
        p.error(f"--closed: give false and/or true, got {args.closed!r}")
    closed = [closed_values[v] for v in args.closed.split(",")]
    reader = ConvertedSlices(args.data, BoxFitParams().channel)
    masses = []  # (subtraction volume [Z, H, W], label box [6])
    for case_id, case in sorted(read_cases(args.data).items()):
        if not case.get("boxes"):
            continue
        volume = np.stack([reader.read(case_id, z) for z in range(reader.num_slices(case_id))])
        masses += [(volume, np.asarray(b, dtype=np.float64)) for b in case["boxes"]]

    def hit_rate(fit) -> list:
        rates = []
        for delta in PERTURBATIONS.values():
            hits = 0
            for volume, label in masses:
                hits += box_iou3d(fit(volume, perturb(label, delta)), label) > 0.5
            rates.append(hits / len(masses))
        return rates

    rows = [["unfitted"] + hit_rate(lambda v, b: b)]
    for level in levels:
        for min_iou in min_ious:
            for must_close in closed:
                params = BoxFitParams(level=level, min_iou=min_iou, closed=must_close)
                name = f"level {level}, min IoU {min_iou}" + (", closed" if must_close else "")
                rows.append([name] + hit_rate(lambda v, b, pr=params: fit_box(v, b, pr)))
    table = [[r[0]] + [f"{x:.3f}" for x in r[1:]] + [f"{np.mean(r[1:]):.3f}"] for r in rows]
    print(f"{len(masses)} masses of {args.data}; hit = 3D IoU > 0.5 with the label box\n")
    print(markdown_table(["box"] + list(PERTURBATIONS) + ["mean"], table,
                         align=["left"] + ["right"] * (len(PERTURBATIONS) + 1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
