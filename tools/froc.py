#!/usr/bin/env python
"""FROC of 3D candidates against cases.json, or the summary of several folds.

Single run (prints a table; writes DIR/froc.json, froc.csv, froc.png)::

    python tools/froc.py --candidates output/inference/candidates.json \\
        --ground-truth datasets/phantom_coco/cases.json --out output/froc \\
        [--splits datasets/phantom_coco/splits.json --fold 0] [--hit iou3d] [--iou 0.5]

Cases evaluated: every case of the ground truth, or the validation cases of ``--fold`` in
``--splits`` (every evaluated case counts in the FP-per-case denominator).

Folds (one folder per fold holding froc.json and candidates.json, e.g. the evaluator's output;
prints a markdown table; writes DIR/froc_folds.json, froc_folds.md, froc_folds.png)::

    python tools/froc.py --folds out/fold0/inference out/fold1/inference ... --out out/froc

Paired comparison of two runs on the same cases (candidates.json files, with --ground-truth
[--splits --fold], or evaluation folders holding froc.json + candidates.json; prints one line;
writes DIR/compare.json: CPM(A), CPM(B), A - B and its 95% interval from --bootstrap case
resamples shared by both runs)::

    python tools/froc.py --compare out/a/inference out/b/inference --out out/compare

Extent refinement, post hoc (re-merge each evaluation folder's detections.json with the merge
and FROC parameters its froc.json records, extend short candidates by an enhancing end slice read
from the converted PNGs, see :mod:`breast_d2.evaluation.refine`; writes DIR/<folder name>/
froc.json, froc.csv, froc.png, candidates.json, DIR/refine.json, refine.md and the cross-fold
froc_folds.*; prints the saved vs refined CPM per fold)::

    python tools/froc.py --detections OUT/masked/detector/fold*/inference/breast_fold*_val \\
        --refine-extent [DATA_ROOT] --out OUT/masked/refine_extent

DATA_ROOT: the converted folder (default: the folder of each froc.json's recorded cases.json).
``--box-merge union|fused`` re-merges with the study's union of the slice boxes or with per-slice
box fusion, and ``--box-fit`` / ``--no-box-fit`` fits (or not) each candidate's box to the
enhancing blob under it (:mod:`breast_d2.evaluation.boxfit`), before any refinement; the study's
own merge is ``--box-merge union --no-box-fit``. ``--detections`` without these options
re-merges and fits as each froc.json records (reproduces the saved FROC).

The work is done by :mod:`breast_d2.evaluation.froc`. Bad input stops with one line
``error: ...`` on stderr and exit code 2.
"""
import argparse
import logging
import os
import sys

from breast_d2.cli import OneLineErrorParser, setup_tool_logging
from breast_d2.data.converted import fold_case_ids, read_splits
from breast_d2.evaluation.compare import compare_froc, format_compare_line, load_run
from breast_d2.evaluation.folds import evaluate_fold_dirs
from breast_d2.evaluation.froc import (
    DUPLICATE_MODES,
    HIT_CRITERIA,
    FROCInputError,
    FROCParams,
    compute_froc,
    format_folds_table,
    format_froc_table,
    load_candidates_json,
    load_cases_json,
    save_froc,
    subset_cases,
)
from breast_d2.evaluation.boxfit import BoxFitParams
from breast_d2.evaluation.params import BOX_MERGE_MODES
from breast_d2.evaluation.plots import plot_folds
from breast_d2.evaluation.refine import RefineParams, format_refine_table, refine_folds
from breast_d2.fileio import write_atomic, write_json_atomic


def get_parser() -> argparse.ArgumentParser:
    d = FROCParams()
    parser = OneLineErrorParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", help="candidates JSON (single run)")
    parser.add_argument("--ground-truth", help="the converter's cases.json")
    parser.add_argument("--folds", nargs="+", metavar="DIR", help="fold output folders")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="two runs (candidates JSON or eval folders) on the same cases")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--splits", help="splits.json; with --fold, evaluate its validation cases")
    parser.add_argument("--fold", type=int, help="fold index in --splits")
    parser.add_argument("--hit", choices=HIT_CRITERIA, default=d.hit)
    parser.add_argument("--iou", type=float, default=d.iou_thresh,
                        help="hit needs IoU > this; 0 <= IOU < 1 (0: any overlap)")
    parser.add_argument("--duplicates", choices=DUPLICATE_MODES, default=d.duplicates)
    parser.add_argument("--bootstrap", type=int, default=d.bootstrap,
                        help="case resamples, >= 0 (0: no CI)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    r = RefineParams()
    parser.add_argument("--detections", nargs="+", metavar="DIR",
                        help="evaluation folders (froc.json + detections.json) to re-merge")
    parser.add_argument("--refine-extent", nargs="?", const="", metavar="DATA_ROOT",
                        help="with --detections: refine short candidates' z-extent from the "
                        "converted folder's slices (default: the recorded cases.json's folder)")
    parser.add_argument("--refine-max-slices", type=int, default=r.max_slices)
    parser.add_argument("--refine-ratio", type=float, default=r.ratio)
    parser.add_argument("--refine-max-steps", type=int, default=r.max_steps)
    parser.add_argument("--refine-ring", type=int, default=r.ring)
    parser.add_argument("--refine-channel", type=int, default=r.channel,
                        help="PNG channel of post1 - pre (0 = R)")
    f = BoxFitParams()
    parser.add_argument("--box-merge", choices=BOX_MERGE_MODES,
                        help="with --detections: re-merge with this candidate box rule (default: "
                             "as each froc.json records)")
    parser.add_argument("--box-fit", action=argparse.BooleanOptionalAction, default=None,
                        help="with --detections: fit (or not) each candidate's box to its "
                             "enhancing blob (breast_d2/evaluation/boxfit.py; default: as each "
                             "froc.json records, with its parameters); slices from "
                             "--refine-extent's "
                             "DATA_ROOT or the ground truth's folder")
    parser.add_argument("--box-fit-level", type=float, default=f.level)
    parser.add_argument("--box-fit-margin", type=float, default=f.margin)
    parser.add_argument("--box-fit-min-iou", type=float, default=f.min_iou)
    parser.add_argument("--box-fit-channel", type=int, default=f.channel,
                        help="PNG channel of post1 - pre (0 = R)")
    parser.add_argument("--box-fit-closed", action=argparse.BooleanOptionalAction,
                        default=f.closed,
                        help="keep the merged box when the blob runs on beyond the search "
                             "region (TEST.FROC.BOX_FIT_CLOSED)")
    return parser


def run_single(args) -> str:
    if not args.candidates or not args.ground_truth:
        raise FROCInputError("a single run needs --candidates and --ground-truth")
    if (args.splits is None) != (args.fold is None):
        raise FROCInputError("--splits and --fold go together")
    cases = load_cases_json(args.ground_truth)
    if args.splits:
        # Malformed splits.json or an unknown fold: one-line CohortError naming the file.
        val_ids = fold_case_ids(read_splits(args.splits), args.fold, args.splits)[1]
        cases = subset_cases(cases, val_ids)
    candidates = load_candidates_json(args.candidates, as_arrays=True)
    result = compute_froc(
        candidates,
        cases,
        hit=args.hit,
        iou_thresh=args.iou,
        duplicates=args.duplicates,
        bootstrap=args.bootstrap,
        seed=args.seed,
    )
    result["inputs"] = {
        "candidates": os.path.abspath(args.candidates),
        "ground_truth": os.path.abspath(args.ground_truth),
    }
    save_froc(result, args.out)
    if not args.splits and len(candidates.case_ids) < len(cases):
        sys.stderr.write(
            f"note: evaluated all {len(cases)} cases of the ground truth, "
            f"{len(candidates.case_ids)} with candidates (restrict with --splits/--fold)\n"
        )
    return format_froc_table(result)


def run_folds(args) -> str:
    if args.candidates or args.splits:
        raise FROCInputError("--folds takes no --candidates/--splits")
    agg = evaluate_fold_dirs(
        args.folds, ground_truth=args.ground_truth, bootstrap=args.bootstrap, seed=args.seed
    )
    table = format_folds_table(agg)
    write_json_atomic(os.path.join(args.out, "froc_folds.json"), agg, indent=1)
    write_atomic(os.path.join(args.out, "froc_folds.md"), lambda f: f.write(table + "\n"))
    plot_folds(agg, os.path.join(args.out, "froc_folds.png"))
    return table


def run_compare(args) -> str:
    if args.candidates or args.folds:
        raise FROCInputError("--compare takes no --candidates/--folds")
    if (args.splits is None) != (args.fold is None):
        raise FROCInputError("--splits and --fold go together")
    val_ids = None
    if args.splits:
        val_ids = fold_case_ids(read_splits(args.splits), args.fold, args.splits)[1]
    (cands_a, cases_a), (cands_b, cases_b) = (
        load_run(p, args.ground_truth, val_ids) for p in args.compare
    )
    result = compare_froc(
        cands_a,
        cands_b,
        cases_a,
        cases_b,
        hit=args.hit,
        iou_thresh=args.iou,
        duplicates=args.duplicates,
        bootstrap=args.bootstrap,
        seed=args.seed,
    )
    result["inputs"] = {"a": os.path.abspath(args.compare[0]),
                        "b": os.path.abspath(args.compare[1])}
    write_json_atomic(os.path.join(args.out, "compare.json"), result, indent=1)
    return format_compare_line(result)


def run_refine(args) -> str:
    if args.candidates or args.folds or args.compare or args.splits:
        raise FROCInputError("--detections takes no --candidates/--folds/--compare/--splits")
    params = RefineParams(
        enabled=args.refine_extent is not None,
        max_slices=args.refine_max_slices,
        ratio=args.refine_ratio,
        max_steps=args.refine_max_steps,
        ring=args.refine_ring,
        channel=args.refine_channel,
    ).checked()
    fit = None  # as each froc.json records
    if args.box_fit is not None:
        fit = BoxFitParams(
            enabled=args.box_fit,
            level=args.box_fit_level,
            margin=args.box_fit_margin,
            min_iou=args.box_fit_min_iou,
            channel=args.box_fit_channel,
            closed=args.box_fit_closed,
        ).checked()
    summary = refine_folds(args.detections, args.out, params, data_root=args.refine_extent or None,
                           ground_truth=args.ground_truth, fit=fit,
                           box_merge=args.box_merge)  # fmt: skip
    table = format_refine_table(summary)
    write_json_atomic(os.path.join(args.out, "refine.json"), summary, indent=1)
    write_atomic(os.path.join(args.out, "refine.md"), lambda f: f.write(table + "\n"))
    dirs = [os.path.join(args.out, f["name"]) for f in summary["folds"]]
    agg = evaluate_fold_dirs(dirs, ground_truth=args.ground_truth, bootstrap=args.bootstrap,
                             seed=args.seed)
    folds_table = format_folds_table(agg)
    write_json_atomic(os.path.join(args.out, "froc_folds.json"), agg, indent=1)
    write_atomic(os.path.join(args.out, "froc_folds.md"), lambda f: f.write(folds_table + "\n"))
    plot_folds(agg, os.path.join(args.out, "froc_folds.png"))
    return table + "\n\n" + folds_table


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_tool_logging(logging.WARNING)
    try:
        if not args.detections and (args.refine_extent is not None or args.box_fit is not None
                                    or args.box_merge):
            raise FROCInputError("--refine-extent, --box-fit and --box-merge need --detections "
                                 "(evaluation folders)")
        if args.detections:
            table = run_refine(args)
        elif args.compare:
            table = run_compare(args)
        else:
            table = run_folds(args) if args.folds else run_single(args)
    except (ValueError, OSError, KeyError, TypeError) as e:  # FROCInputError is a ValueError
        msg = str(e) if not isinstance(e, KeyError) else f"missing key {e}"
        sys.stderr.write(f"error: {msg}\n")
        return 2
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
