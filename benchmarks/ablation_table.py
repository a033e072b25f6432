#!/usr/bin/env python
"""Ablation table of the phantom benchmark: one row per option added to the study baseline.

    python benchmarks/ablation_table.py --ground-truth output/phantom_cv/coco/cases.json \\
        --run "study baseline (masked)=output/phantom_cv/masked/detector/fold*/inference/*" \\
        --run "no breast mask=output/phantom_cv/unmasked/detector/fold*/inference/*" \\
        --run "+ FP reducer=output/phantom_cv/masked_fp/fold*" --out ablation.md

Each ``--run NAME=GLOB`` names the fold evaluation folders of one configuration (each holding
``froc.json`` and ``candidates.json``, one per fold, on the same cases for every run). The first
run is the baseline. Per row: sensitivity at 1 and 3.4 FP per case and CPM as mean ± sd over the
folds, and the CPM difference against the baseline over all folds' cases pooled, with the 95 %
interval of a paired case-level bootstrap (``--bootstrap`` resamples, seed 0; the same resamples
for both runs, as ``tools/froc.py --compare``).
"""
import argparse
import os
import sys

import numpy as np

from breast_d2.cli import OneLineErrorParser, fail, glob_folders_with, parse_named_specs
from breast_d2.evaluation.compare import compare_froc
from breast_d2.evaluation.froc import FROCInputError, load_cases_json, subset_cases
from breast_d2.evaluation.io import load_candidates_json, read_froc_json
from breast_d2.evaluation.tables import format_mean_sd, markdown_table
from breast_d2.fileio import write_atomic


def parse_args(argv=None):
    p = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ground-truth", required=True, help="the converter's cases.json")
    p.add_argument("--run", action="append", required=True, metavar="NAME=GLOB",
                   help="a configuration's fold evaluation folders (first: the baseline)")
    p.add_argument("--bootstrap", type=int, default=2000, help="paired case resamples")
    p.add_argument("--out", help="also write the markdown table here")
    return p.parse_args(argv)


def load_run(pattern):
    """``(fold froc.json dicts, pooled candidates, evaluated case ids)`` of one configuration."""
    frocs, cands, case_ids = [], [], []
    for d in glob_folders_with(pattern, "froc.json"):
        frocs.append(read_froc_json(os.path.join(d, "froc.json")))
        cands += load_candidates_json(os.path.join(d, "candidates.json"))
        case_ids += frocs[-1]["case_ids"]
    if len(set(case_ids)) != len(case_ids):
        raise FROCInputError(f"{pattern}: a case is evaluated in two folds")
    return frocs, cands, sorted(case_ids)


def row(name, frocs, diff):
    def stat(get):
        vals = np.array([get(r) for r in frocs], float)
        return format_mean_sd(vals.mean(), vals.std(ddof=1) if len(vals) > 1 else 0.0)

    cells = [name, str(len(frocs)),
             stat(lambda r: r["sensitivity_at"]["1"]), stat(lambda r: r["sensitivity_at"]["3.4"]),
             stat(lambda r: r["cpm"])]
    if diff is None:
        return cells + ["(baseline)", ""]
    d = diff["difference"]
    return cells + [f"{d['cpm']:+.3f}", f"{d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}"]


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = parse_named_specs(args.run, "GLOB")
    try:
        all_cases = load_cases_json(args.ground_truth)
        loaded = [(name, *load_run(pattern)) for name, pattern in runs]
        base_name, base_frocs, base_cands, base_ids = loaded[0]
        cases = subset_cases(all_cases, base_ids)
        rows = [row(base_name, base_frocs, None)]
        for name, frocs, cands, ids in loaded[1:]:
            if ids != base_ids:
                raise FROCInputError(f"{name}: evaluated on other cases than {base_name}")
            diff = compare_froc(cands, base_cands, cases, bootstrap=args.bootstrap)
            rows.append(row(name, frocs, diff))
    except FROCInputError as e:
        fail(str(e))
    headers = ["configuration", "folds", "sens@1 (mean ± sd)", "sens@3.4 (mean ± sd)",
               "CPM (mean ± sd)", "CPM − baseline (pooled)", "paired 95% CI"]
    table = markdown_table(headers, rows) + "\n"
    sys.stdout.write(table)
    if args.out:
        write_atomic(args.out, lambda f: f.write(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
