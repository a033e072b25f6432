#!/usr/bin/env python
"""
Patient-level k-fold cross-validation of the whole pipeline, resumable.

    python tools/cross_validate.py --config-file configs/frcnn_r101.yaml --data datasets/phantom_coco

For every fold K: train the breast segmentation model without fold K's validation cases, write
fold-correct breast masks (tools/predict_breast_masks.py), train the detector on masked slices
(tools/train_net.py --resume), evaluate FROC on fold K's whole validation cases (--eval-only).
Then tools/froc.py --folds writes the cross-fold report (per-fold curves, average curve,
mean +- sd of sensitivity at 3.4 FP per case and CPM) next to the study's 0.874 @ 3.4.
Rerunning skips finished steps and resumes an interrupted training. ``--lanes 2`` runs two folds
side by side with one thread each (faster on a 2-core CPU; on one GPU keep the default 1).
"""
import argparse
import os

from breast_d2.cli import OneLineErrorParser
from breast_d2.pipeline import (
    Parallel,
    Step,
    detection_steps,
    fold_froc_dir,
    run_job_cli,
    run_steps,
    segmentation_dir,
    segmentation_steps,
    tool_command,
)


def fold_list(text: str):
    """``"0,2,4"`` -> ``[0, 2, 4]`` (argparse type: a bad list is a one-line usage error)."""
    try:
        folds = [int(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fold numbers, got {text!r}")
    if not folds or min(folds) < 0:
        raise argparse.ArgumentTypeError(f"expected fold numbers >= 0, got {text!r}")
    return folds


def parse_args(argv=None):
    p = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, help="detector config")
    p.add_argument("--data", required=True, help="converted cohort (tools/convert_to_coco.py)")
    p.add_argument("--folds", type=fold_list, default="0,1,2,3,4", help="comma-separated folds")
    p.add_argument("--out", default="output/cross_validation", help="job folder")
    p.add_argument("--masks", choices=("model", "gt", "none"), default="model",
                   help="breast masks: segmentation model per fold (the study), GT masks, or none")
    p.add_argument("--seg-arch", default="unetplusplus", choices=("unetplusplus", "unet"))
    p.add_argument("--seg-args", default="",
                   help="extra tools/train_breast_seg.py arguments, e.g. '--epochs 50'")
    p.add_argument("--lanes", type=int, default=1,
                   help="folds run side by side, one CPU thread each (default 1: in order)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="detector config overrides KEY VALUE")
    args = p.parse_args(argv)
    # Paths are the caller's: resolve them against the working directory the user typed them in.
    for name in ("config_file", "data", "out"):
        setattr(args, name, os.path.abspath(getattr(args, name)))
    return args


def build_steps(args):
    folds = args.folds
    det_dir = os.path.join(args.out, "detector")
    opts = list(args.opts)
    if args.masks == "none":
        opts += ["INPUT.BREAST_MASK.ENABLED", "False"]
    elif args.masks == "gt":
        opts += ["INPUT.BREAST_MASK.ENABLED", "True", "INPUT.BREAST_MASK.SOURCE", "gt"]
    per_fold = []
    for fold in folds:
        steps = []
        if args.masks == "model":
            seg_dir = segmentation_dir(args.out, args.seg_arch, fold)
            steps += segmentation_steps(args.data, fold, seg_dir, args.seg_arch,
                                        args.seg_args.split())
            steps.append(Step(
                f"breast masks fold{fold}",
                tool_command("predict_breast_masks", "--data", args.data, "--fold", fold,
                             "--weights", os.path.join(seg_dir, "model_last.pth"), "--resume"),
            ))
        steps += detection_steps(args.config_file, args.data, fold, det_dir, opts)
        per_fold.append(steps)
    if args.lanes > 1 and len(folds) > 1:
        lanes = [[s for steps in per_fold[k::args.lanes] for s in steps]
                 for k in range(min(args.lanes, len(folds)))]
        steps = [Parallel(lanes, threads=1)]
    else:
        steps = [s for fold_steps in per_fold for s in fold_steps]
    steps.append(Step(
        "cross-fold FROC report",
        tool_command("froc", "--folds", *[fold_froc_dir(det_dir, k) for k in folds],
                     "--out", os.path.join(args.out, "report")),
    ))
    return steps


def main(args):
    os.makedirs(args.out, exist_ok=True)
    run_steps(build_steps(args), args.out)
    print(f"cross-validation report: {os.path.join(args.out, 'report')}")


if __name__ == "__main__":
    run_job_cli(lambda: main(parse_args()))
