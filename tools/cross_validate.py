#!/usr/bin/env python
"""
Patient-level k-fold cross-validation of the whole pipeline, resumable.

    python tools/cross_validate.py --config-file configs/frcnn_r101.yaml \\
        --data datasets/phantom_coco

For every fold K: train the breast segmentation model without fold K's validation cases, write
fold-correct breast masks (tools/predict_breast_masks.py), train the detector on masked slices
(tools/train_net.py --resume), evaluate FROC on fold K's whole validation cases (--eval-only),
and trace each validation mass through the detector (tools/explain_misses.py: found, box off, or
lost at the box head or the RPN, and its fate among the fold's 3D candidates;
OUT/detector/foldK/explain.md, verdicts.json; --no-explain skips it).
Then tools/froc.py --folds writes the cross-fold report (per-fold curves, average curve,
mean +- sd of sensitivity at 3.4 FP per case and CPM) next to the study's 0.874 @ 3.4, the
verdicts of all folds go into OUT/report/mass_verdicts.md, and
tools/reduce_fp.py rescores every fold's candidates with the second-stage false-positive reducer
trained out of fold (OUT/fp_reducer/: reduce_fp.md, the pooled FROC, the paired CPM comparison
with the detector alone; --no-fp-reducer skips it).
Rerunning skips finished steps and resumes an interrupted training. ``--lanes 2`` runs two folds
side by side with one thread each (faster on a 2-core CPU; on one GPU keep the default 1).

On a SLURM cluster, each fold's chain is one job (submitit), with the report after them:

    python tools/cross_validate.py --config-file configs/frcnn_r101.yaml --data D \\
        --launcher slurm --partition gpu --gpus-per-fold 4 [--nodes 2] [--timeout 1440]

This command waits for the fold jobs (keep it running, e.g. in tmux), then writes the report
here. Fold logs: OUT/logs/slurm/<job id>_0_log.out. A preempted or timed-out job is requeued and
skips its finished steps; rerunning the command submits only the folds that are not finished.
``--launcher submitit-local`` runs the same jobs through submitit on this machine (for testing).
"""
import argparse
import functools
import os
import sys

from breast_d2.cli import OneLineErrorParser, fail
from breast_d2.launchers import (
    ClusterOptions,
    log_folder,
    make_executor,
    parse_slurm_args,
    run_fold_jobs,
)
from breast_d2.jobs import (
    Parallel,
    Step,
    detection_steps,
    explain_step,
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


def slurm_args(text: str):
    """argparse type of ``--slurm-args``: sbatch long options (a bad one is a usage error)."""
    try:
        return parse_slurm_args(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


# Options of the cluster launchers, with their defaults (given with --launcher local: an error).
CLUSTER_DEFAULTS = {"partition": None, "gpus_per_fold": 1, "nodes": 1, "timeout": 1440,
                    "cpus_per_gpu": 8, "slurm_args": {}}
LAUNCHERS = {"local": None, "slurm": "slurm", "submitit-local": "local"}


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
    p.add_argument("--launcher", choices=tuple(LAUNCHERS), default="local",
                   help="local: the steps here (default); slurm: one job per fold (submitit); "
                        "submitit-local: those jobs as processes here (for testing)")
    p.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    p.add_argument("--gpus-per-fold", type=int, help="GPUs per node of a fold job (default 1)")
    p.add_argument("--nodes", type=int, help="nodes per fold job (default 1)")
    p.add_argument("--timeout", type=int, help="minutes per run of a fold job (default 1440; "
                   "a job that reaches it is requeued and continues)")
    p.add_argument("--cpus-per-gpu", type=int, help="CPU cores per GPU (default 8)")
    p.add_argument("--slurm-args", type=slurm_args,
                   help="more sbatch options, e.g. --slurm-args='--account=abc --qos=high'")
    p.add_argument("--no-fp-reducer", action="store_true",
                   help="skip the out-of-fold false-positive reducer after the folds")
    p.add_argument("--no-explain", action="store_true",
                   help="skip tracing each fold's validation masses "
                        "(found / box off / box head / RPN)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="detector config overrides KEY VALUE")
    args = p.parse_args(argv)
    check_launcher_args(p, args)
    # Paths are the caller's: resolve them against the working directory the user typed them in.
    for name in ("config_file", "data", "out"):
        setattr(args, name, os.path.abspath(getattr(args, name)))
    return args


def check_launcher_args(parser, args):
    """Cluster options only with a cluster launcher; then fill in their defaults."""
    given = [k for k in CLUSTER_DEFAULTS if getattr(args, k) is not None]
    if args.launcher == "local":
        if given:
            parser.error(f"--{given[0].replace('_', '-')} needs --launcher slurm")
        return
    if args.lanes != 1:
        parser.error("--lanes is for --launcher local (each fold is its own job)")
    for name, default in CLUSTER_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    for name in ("gpus_per_fold", "nodes", "timeout", "cpus_per_gpu"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def fold_steps(args, fold):
    """Fold ``fold``'s chain: segmentation, fold-correct masks, detector training, evaluation."""
    det_dir = os.path.join(args.out, "detector")
    opts = list(args.opts)
    if args.masks == "none":
        opts += ["INPUT.BREAST_MASK.ENABLED", "False"]
    elif args.masks == "gt":
        opts += ["INPUT.BREAST_MASK.ENABLED", "True", "INPUT.BREAST_MASK.SOURCE", "gt"]
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
    if not args.no_explain:
        steps.append(explain_step(det_dir, args.data, fold, *verdict_paths(det_dir, fold)))
    return steps


def verdict_paths(det_dir, fold):
    """Where fold ``fold``'s explain step writes its tables and its verdict file."""
    fold_dir = os.path.join(det_dir, f"fold{fold}")
    return os.path.join(fold_dir, "explain.md"), os.path.join(fold_dir, "verdicts.json")


def report_step(args):
    """tools/froc.py --folds: the cross-fold report of the fold evaluations."""
    det_dir = os.path.join(args.out, "detector")
    return Step(
        "cross-fold FROC report",
        tool_command("froc", "--folds", *[fold_froc_dir(det_dir, k) for k in args.folds],
                     "--out", os.path.join(args.out, "report")),
    )


def reducer_step(args):
    """tools/reduce_fp.py on the finished folds (out of fold: needs >= 2 folds)."""
    masks = {"model": "fold", "gt": "gt", "none": "none"}[args.masks]
    return Step(
        "false-positive reducer (out of fold)",
        tool_command("reduce_fp", "--cv", args.out, "--data", args.data, "--masks", masks,
                     "--out", os.path.join(args.out, "fp_reducer")),
    )


def verdicts_step(args):
    """tools/explain_misses.py --summarize: every fold's mass verdicts in one table."""
    det_dir = os.path.join(args.out, "detector")
    return Step(
        "mass verdicts report",
        tool_command("explain_misses", "--summarize",
                     *[verdict_paths(det_dir, k)[1] for k in args.folds],
                     "--out", os.path.join(args.out, "report", "mass_verdicts.md")),
    )


def report_steps(args):
    """The cross-fold report, the mass verdicts (unless disabled), then the false-positive
    reducer (>= 2 folds, unless disabled)."""
    steps = [report_step(args)]
    if not args.no_explain:
        steps.append(verdicts_step(args))
    if len(args.folds) > 1 and not args.no_fp_reducer:
        steps.append(reducer_step(args))
    return steps


def build_steps(args):
    """Every step of the local launcher: the folds (in lanes with --lanes), then the report."""
    folds = args.folds
    per_fold = [fold_steps(args, fold) for fold in folds]
    if args.lanes > 1 and len(folds) > 1:
        lanes = [[s for steps in per_fold[k::args.lanes] for s in steps]
                 for k in range(min(args.lanes, len(folds)))]
        steps = [Parallel(lanes, threads=1)]
    else:
        steps = [s for chain in per_fold for s in chain]
    return steps + report_steps(args)


def cluster_options(args):
    return ClusterOptions(
        cluster=LAUNCHERS[args.launcher], partition=args.partition,
        gpus_per_fold=args.gpus_per_fold, nodes=args.nodes, timeout_min=args.timeout,
        cpus_per_gpu=args.cpus_per_gpu, slurm_args=args.slurm_args,
        poll_s=30.0 if args.launcher == "slurm" else 1.0,
    )


def run(args):
    """Run (or resume) the cross-validation job described by ``args``."""
    os.makedirs(args.out, exist_ok=True)
    if args.launcher == "local":
        run_steps(build_steps(args), args.out)
    else:
        # Fold jobs on the cluster; the report runs here once they all finished.
        options = cluster_options(args)
        try:
            executor = make_executor(log_folder(args.out), options)
        except ValueError as e:  # no sbatch here, or resources submitit refuses
            fail(str(e))
        chains = {fold: functools.partial(fold_steps, args, fold) for fold in args.folds}
        run_fold_jobs(chains, args.out, options, executor)
        run_steps(report_steps(args), args.out)
    print(f"cross-validation report: {os.path.join(args.out, 'report')}")


def main(argv=None) -> int:
    """Command-line entry point: a failed step is one ``error: ...`` line and exit code 1."""
    args = parse_args(argv)
    run_job_cli(lambda: run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
