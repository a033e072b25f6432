#!/usr/bin/env python
"""
The main job on the synthetic cohort (``make demo``), resumable:

  1. generate a phantom DCE-MRI cohort          tools/make_phantom.py
  2. convert it to COCO with 5 patient folds    tools/convert_to_coco.py
  3. train U-Net++ on fold 0 briefly (+ U-Net with --seg-baseline)  tools/train_breast_seg.py
  4. segmentation table (DSC/Jaccard/SS)        tools/eval_breast_seg.py
  5. fold-correct breast masks for fold 0       tools/predict_breast_masks.py
  6. train + evaluate the CPU demo detector on masked slices, and the same without masking,
     side by side with one thread each (OUT/logs/)   tools/train_net.py [--eval-only]
  7. evaluate the masked detector again with test-time horizontal flip and weighted box
     fusion (TEST.BREAST_TTA.FLIP; --no-tta skips it)
  8. the study baseline: re-merge the masked detections as the study does (the union of the
     slice boxes, no box fit; post hoc: tools/froc.py --detections --box-merge union
     --no-box-fit)
  9. trace every validation mass through the masked detector: found, boxed off, or lost at the
     box head or the RPN (tools/explain_misses.py)
 10. rescore the masked candidates with the benchmark's saved false-positive reducer
     (models/phantom_fp_reducer: trained on other cases, never on the demo's; tools/reduce_fp.py
     --apply; --no-fp-reducer skips it)
 11. OUT/REPORT.md: tables, FROC plot, paired CPM comparisons (the best pipeline and the default
     one against the study baseline, the masking ablation, flip TTA), each mass's verdict,
     overlays

Rerunning skips finished steps (markers in OUT/.steps); delete OUT to start over.
"""
import argparse
import json
import os
import sys

from breast_d2.cli import OneLineErrorParser
from breast_d2.jobs import (
    REPO_ROOT,
    Parallel,
    Step,
    detection_steps,
    explain_step,
    fold_froc_dir,
    run_job_cli,
    run_steps,
    segmentation_steps,
    tool_command,
)
from breast_d2.data.phantom import case_id_for
from breast_d2.evaluation.verdicts import format_mass_table, read_verdicts
from breast_d2.job_report import write_report
from breast_d2.reduction import ReductionError, load_reducer

DEMO_CONFIG = os.path.join(REPO_ROOT, "configs", "frcnn_cpu_demo.yaml")
# The benchmark's reducer, trained on cases PH0040-PH0074 of the 75-case cohort (seed 0), never on
# the default demo cohort's PH0000-PH0039 (models/phantom_fp_reducer/README.md).
DEMO_REDUCER = os.path.join(REPO_ROOT, "models", "phantom_fp_reducer", "reducer.txt")


def parse_args(argv=None):
    p = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="output/demo", help="job folder")
    p.add_argument("--cases", type=int, default=40,
                   help="phantom cases (40: ~10 masses in a validation fold)")
    p.add_argument("--matrix", type=int, default=160, help="in-plane matrix (FOV 320 mm)")
    p.add_argument("--slices", type=int, default=48, help="slices per case")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--seg-epochs", type=int, default=6,
                   help="segmentation epochs (study: 50; 6 on 32 training cases = 12 on 16)")
    p.add_argument("--det-iters", type=int, default=1000, help="detector iterations")
    p.add_argument("--no-ablation", action="store_true", help="skip the unmasked detector")
    p.add_argument("--no-tta", action="store_true",
                   help="skip the flip test-time augmentation evaluation of the masked detector")
    p.add_argument("--no-fp-reducer", action="store_true",
                   help="skip rescoring with the benchmark's saved false-positive reducer")
    p.add_argument("--sequential", action="store_true",
                   help="train the masked and unmasked detectors one after the other (default: "
                        "side by side with one thread each, output in OUT/logs/)")
    p.add_argument("--seg-baseline", action="store_true",
                   help="also train the U-Net baseline for the segmentation table (+~3 min)")
    return p.parse_args(argv)


def build_steps(args):
    out = os.path.abspath(args.out)
    phantom, data = os.path.join(out, "phantom"), os.path.join(out, "coco")
    fold = args.fold
    steps = [
        Step("phantom cohort", tool_command(
            "make_phantom", "--out", phantom, "--cases", args.cases, "--seed", args.seed,
            "--matrix", args.matrix, "--slices", args.slices)),
        Step("convert to COCO", tool_command(
            "convert_to_coco", "--images", os.path.join(phantom, "IMAGES"),
            "--labels", os.path.join(phantom, "LABELS"), "--masks", os.path.join(phantom, "MASKS"),
            "--out", data, "--folds", 5, "--seed", args.seed, "--resume")),
    ]
    # CPU-sized segmentation: light encoder and decoder, 128 px input, fewer epochs than the
    # study (which trained 50 epochs on a GPU); validation on every 4th slice of the validation
    # cases, every 4th epoch; SGD with a poly LR decay.
    seg_args = ["--epochs", args.seg_epochs, "--encoder", "resnet18", "--decoder-channels",
                "64,32,16,16,8", "--input-size", 128, "--label-every", 10, "--val-stride", 4,
                "--val-every", 4, "--lr", 0.05]
    seg_dir = os.path.join(out, "seg", "{arch}_fold{fold}")
    archs = {"U-Net++": "unetplusplus"}
    if args.seg_baseline:
        archs = {"U-Net": "unet", **archs}
    for arch in archs.values():
        steps += segmentation_steps(data, fold, seg_dir.format(arch=arch, fold=fold), arch,
                                    [str(a) for a in seg_args])
    runs = [f"{name}=" + seg_dir.format(arch=arch, fold="{fold}") for name, arch in archs.items()]
    steps.append(Step("segmentation table", tool_command(
        "eval_breast_seg", "--data", data, "--folds", fold,
        *[a for run in runs for a in ("--run", run)], "--out", os.path.join(out, "seg", "eval"))))
    steps.append(Step(f"breast masks fold{fold}", tool_command(
        "predict_breast_masks", "--data", data, "--fold", fold,
        "--weights", os.path.join(seg_dir.format(arch="unetplusplus", fold=fold), "model_last.pth"),
        # Validation cases get model masks; training cases (positive slices only, where the
        # masses are inside the breast anyway) copy GT masks to save CPU time.
        "--source", "gt", "--resume")))
    det_opts = ["SOLVER.MAX_ITER", args.det_iters,
                "SOLVER.STEPS", f"({int(args.det_iters * 0.8)},)"]
    masked_dir = os.path.join(out, "det_masked")
    lanes = [detection_steps(DEMO_CONFIG, data, fold, masked_dir, [str(o) for o in det_opts],
                             "detector (masked)")]
    if not args.no_tta:
        # The same weights, evaluated with the flip TTA into their own folder.
        lanes[0].append(tta_eval_step(data, fold, masked_dir, os.path.join(out, "det_masked_tta")))
    lanes[0].append(study_merge_step(fold, masked_dir, os.path.join(out, "det_masked_study")))
    lanes[0].append(explain_step(masked_dir, data, fold, explain_path(out),
                                 explain_path(out, "json"), label="masked"))
    if reducer_refusal(args) is None:
        lanes[0].append(Step(f"FP reducer (masked) fold{fold}", tool_command(
            "reduce_fp", "--apply", DEMO_REDUCER, "--eval", fold_froc_dir(masked_dir, fold),
            "--data", data, "--out", os.path.join(out, "det_masked_fp"))))
    if not args.no_ablation:
        lanes.append(detection_steps(
            DEMO_CONFIG, data, fold, os.path.join(out, "det_unmasked"),
            [str(o) for o in det_opts] + ["INPUT.BREAST_MASK.ENABLED", "False"],
            "detector (no mask)"))
    if len(lanes) == 1 or args.sequential:
        steps += [step for lane in lanes for step in lane]
    else:
        # Two 1-thread trainings side by side: 0.98 s/iteration each vs 0.65 s for one
        # 2-thread training, so both finish in ~75 % of the sequential time (BENCHMARKS.md).
        steps.append(Parallel(lanes, threads=1))
    return steps


def reducer_refusal(args):
    """Why the saved reducer cannot rescore this demo (None: it can).

    It refuses every case id it was trained on; the demo's ids are ``PH0000 ..`` whatever the
    seed, so a cohort of more than 40 cases reaches its training ids (for seed 0 the very cases).
    """
    if args.no_fp_reducer:
        return "skipped (--no-fp-reducer)"
    try:
        reducer = load_reducer(DEMO_REDUCER)
        reducer.check_unseen([case_id_for(i) for i in range(args.cases)], where=DEMO_REDUCER)
    except ReductionError as e:
        return f"not applied: {e}"
    return None


def tta_eval_step(data, fold, trained_dir, out_dir):
    """Evaluate ``trained_dir``'s fold model with the flip TTA, writing into ``out_dir``."""
    return Step(f"evaluate detector (masked + flip TTA) fold{fold}", tool_command(
        "train_net", "--config-file", DEMO_CONFIG, "--fold", fold, "--data", data, "--eval-only",
        "OUTPUT_DIR", out_dir, "TEST.BREAST_TTA.FLIP", "True",
        "MODEL.WEIGHTS", os.path.join(trained_dir, f"fold{fold}", "model_final.pth")),
        launch=True)


def study_merge_step(fold, run_dir, out_dir):
    """Re-merge ``run_dir``'s fold detections as the study does (union of the slice boxes, no
    box fit) into ``out_dir/<evaluation folder name>/``: the baseline of the report."""
    return Step(f"study merge (masked) fold{fold}", tool_command(
        "froc", "--detections", fold_froc_dir(run_dir, fold), "--box-merge", "union",
        "--no-box-fit", "--out", out_dir))


def explain_path(out, ext="md"):
    """Where :func:`breast_d2.jobs.explain_step` writes its tables (``md``) and verdicts
    (``json``)."""
    return os.path.join(out, f"det_masked_explain.{ext}")


def mass_verdict_section(verdicts_json):
    """The report's section from the explain step's verdict file (one row per mass); None when
    the file is missing."""
    if not os.path.isfile(verdicts_json):
        return None
    mass_table = format_mass_table(read_verdicts(verdicts_json))
    return "\n".join([
        "### Each mass, stage by stage",
        "",
        "The masked detector's view of every mass of the validation fold "
        "(`tools/explain_misses.py`; per slice in det_masked_explain.md): found (a detection at "
        "IoU >= 0.5 scoring >= 0.5 on some slice), box off (a detection scoring >= 0.5 covers "
        "its centre, but none reaches IoU 0.5), lost at the box head (proposed at IoU >= 0.5, "
        "scored low) or at the RPN (never proposed at IoU >= 0.5). The last column is the "
        "mass's fate after 3D merging and the box fit: the false positives per case at which a "
        "3D candidate hits it (that candidate's score), else the best 3D IoU of any candidate "
        "of its case.",
        "",
        mass_table,
        "",
    ])


def study_froc_dir(out_dir, run_dir, fold):
    """Where :func:`study_merge_step` writes the FROC of fold ``fold``."""
    return os.path.join(out_dir, os.path.basename(fold_froc_dir(run_dir, fold)))


def step_times(out):
    """Seconds per finished step, plus the wall-clock span of the job (parallel steps overlap,
    so it is less than their sum; a job resumed later includes the pause)."""
    marks = os.path.join(out, ".steps")
    times, spans = {}, []
    for name in sorted(os.listdir(marks), key=lambda n: os.path.getmtime(os.path.join(marks, n))):
        path = os.path.join(marks, name)
        with open(path) as f:
            seconds = float(f.read())
        times[name[: -len(".done")].replace("_", " ")] = seconds
        spans.append((os.path.getmtime(path) - seconds, os.path.getmtime(path)))
    if spans:
        times["wall clock, first step start to last step end"] = (
            max(e for _, e in spans) - min(s for s, _ in spans))
    return times


def run(args):
    """Run (or resume) the demo job described by ``args``; write its report."""
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    run_steps(build_steps(args), out)
    data = os.path.join(out, "coco")
    masked_dir = os.path.join(out, "det_masked")
    masked, study = "masked (U-Net++ masks)", "study baseline: masked, union merge, no box fit"
    best = "masked + FP reducer (benchmark's, saved)"
    refusal = reducer_refusal(args)
    # The first run's candidates are drawn on the overlays.
    runs = {masked: fold_froc_dir(masked_dir, args.fold),
            study: study_froc_dir(os.path.join(out, "det_masked_study"), masked_dir, args.fold)}
    pairs = [(masked, study)]
    if refusal is None:
        runs[best] = os.path.join(out, "det_masked_fp")
        pairs.insert(0, (best, study))
    if not args.no_ablation:
        runs["no breast mask"] = fold_froc_dir(os.path.join(out, "det_unmasked"), args.fold)
        pairs.append((masked, "no breast mask"))
    if not args.no_tta:
        runs["masked + flip TTA"] = fold_froc_dir(os.path.join(out, "det_masked_tta"), args.fold)
        pairs.append(("masked + flip TTA", masked))
    with open(os.path.join(out, "seg", "eval", "seg_table.md")) as f:
        seg_table = f.read()
    notes = [
        f"Synthetic cohort: {args.cases} phantom cases, {args.matrix}x{args.matrix}x{args.slices} "
        f"(FOV 320 mm), seed {args.seed}; fold {args.fold} of 5 patient-level folds.",
        "Detector: configs/frcnn_cpu_demo.yaml (ResNet-18 FPN from scratch, "
        f"{args.det_iters} iterations) — a CPU-sized stand-in for the study's R101; "
        f"segmentation: {args.seg_epochs} epochs (study: 50). Every command is in commands.log.",
        "The study baseline merges the masked detector's slice boxes as the study does (their "
        "union); the masked row is breast_d2's default pipeline, which fuses each slice's boxes "
        "(TEST.FROC.BOX_MERGE fused) and fits each candidate's box to its enhancing blob "
        "(TEST.FROC.BOX_FIT). No mask: the masking ablation; flip TTA: TEST.BREAST_TTA.FLIP.",
        "FP reducer: one fold cannot give the out-of-fold candidates a reducer trains on, so the "
        "best pipeline rescores the masked candidates with the reducer saved by the benchmark "
        "(models/phantom_fp_reducer, tools/reduce_fp.py --apply): trained on the candidates of "
        "cases PH0040-PH0074 of the 75-case benchmark cohort, never on this demo's cases (it "
        "refuses its training ids). "
        + ("" if refusal is None else f"This run: {refusal}."),
    ]
    report = write_report(
        os.path.join(out, "REPORT.md"), "breast_d2 demo report", runs, data, seg_table,
        mask_dir=os.path.join(data, "masks", f"fold{args.fold}"), notes=notes,
        step_times=step_times(out), pairs=pairs,
        sections=[x for x in [mass_verdict_section(explain_path(out, "json"))] if x],
    )
    for name, froc_dir in runs.items():
        with open(os.path.join(froc_dir, "froc.json")) as f:
            res = json.load(f)
        print(f"{name:>38}: sensitivity {res['sensitivity_at']['1']:.3f} @ 1 FP/case, "
              f"{res['sensitivity_at']['3.4']:.3f} @ 3.4 FP/case, CPM {res['cpm']:.3f}")
    print(f"report: {report}")


def main(argv=None) -> int:
    """Command-line entry point: a failed step is one ``error: ...`` line and exit code 1."""
    args = parse_args(argv)
    run_job_cli(lambda: run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
