#!/usr/bin/env python
"""Why a trained detector finds or misses each mass of some validation cases, stage by stage.

    python tools/explain_misses.py \\
        --config-file output/demo/det_masked/fold0/config.yaml \\
        --weights output/demo/det_masked/fold0/model_final.pth \\
        --data output/demo/coco --fold 0 [--case PH0039 ...] [--out explain.md] \\
        [--json verdicts.json] \\
        [--candidates output/demo/det_masked/fold0/inference/breast_fold0_val]
    python tools/explain_misses.py --summarize out/detector/fold*/verdicts.json --out summary.md

Every slice that holds a mass, in the given cases (default: every validation case of the
fold), goes through the same test mapper as ``--eval-only`` (breast masking included) and
through the model once. For each mass and slice it prints what the region proposal network
proposed over the mass's box (the best proposal's IoU, its rank by objectness among the
image's proposals), what the box head scored that proposal (foreground probability), and the
best final detection at IoU >= 0.5. One verdict per mass follows:

  found       a final detection at IoU >= 0.5 scores >= --min-score on some slice;
  box off     not found, but a detection scoring >= --min-score covers the mass's centre on
              some slice (seen, and boxed too small, too large or off-centre);
  box head    neither, but a proposal reaches IoU >= 0.5 on some slice (the head scored it
              low, or moved it off);
  RPN         none of these: no proposal reaches IoU >= 0.5 on any slice.

Masses are the converted cohort's per-slice annotations (``lesion_index``). Box sizes are in
slice pixels; the boxes are scaled with the image by the config's test-time resize before they
are matched. The model runs as built (on the config's GPU when there is one, else on the CPU),
without the test-time flip of ``TEST.BREAST_TTA``. With cascade box heads the head score is
the foreground probability averaged over the stages, as the cascade's inference ranks boxes.

``--candidates`` names the fold's evaluation folder (froc.json + candidates.json of
``--eval-only``) and adds each mass's fate after 3D merging and the box fit: the false positives
per case at which a 3D candidate hits it (and that candidate's score), else the best 3D IoU of
any candidate of its case. A slice verdict says whether the detector saw the mass; this column
says whether the pipeline reports it.

``--json`` also writes one row per mass with its numbers (breast_d2/evaluation/verdicts.py).
``--summarize`` reads such files of several folds and prints (and with ``--out`` writes) the
verdict counts per fold and pooled, and every mass that was not found (with ``--candidates``
files also the masses reported at <= 3.4 FP per case, and every mass that was not):
tools/cross_validate.py does this after its folds (OUT/report/mass_verdicts.md).
"""
import argparse
import logging
import os
import sys
from collections import defaultdict

import torch
from tqdm import tqdm

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import BoxMode

from breast_d2.cli import OneLineErrorParser, fail, setup_tool_logging
from breast_d2.data.datasets import dataset_name
from breast_d2.data.errors import CohortError
from breast_d2.data.mapper import BreastMaskDatasetMapper
from breast_d2.engine import (
    BreastCheckpointer,
    CheckpointError,
    ConfigError,
    configure_fold,
    load_breast_config,
)
from breast_d2.evaluation.compare import load_run
from breast_d2.evaluation.candidates import CandidateArrays
from breast_d2.evaluation.io import read_froc_json
from breast_d2.evaluation.params import FROCParams
from breast_d2.evaluation.tables import format_cell, markdown_table
from breast_d2.evaluation.verdicts import (
    candidate_outcomes,
    format_mass_table,
    format_score_iou,
    mass_summary,
    read_verdicts,
    summarize_verdicts,
    verdict_record,
)
from breast_d2.fileio import ensure_writable_dir, write_atomic, write_json_atomic
from breast_d2.modeling.introspect import trace_boxes

MATCH_IOU = 0.5

logger = logging.getLogger("breast_d2.explain_misses")


TRACE_OPTIONS = ("config_file", "weights", "data", "fold")


def parse_args(argv=None):
    p = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", help="the run's config (e.g. its config.yaml)")
    p.add_argument("--weights", help="the trained detector (.pth)")
    p.add_argument("--data", help="converted cohort folder")
    p.add_argument("--fold", type=int, help="the fold whose validation cases to use")
    p.add_argument("--case", action="append", default=[], metavar="CASE_ID",
                   help="a validation case of the fold (repeatable; default: all of them)")
    p.add_argument("--out", default="", help="also write the tables to this markdown file")
    p.add_argument("--json", default="", help="also write one row per mass to this JSON file")
    p.add_argument("--candidates", metavar="EVAL_DIR",
                   help="the fold's evaluation folder (froc.json, candidates.json): add each "
                        "mass's 3D outcome")
    p.add_argument("--summarize", nargs="+", metavar="JSON",
                   help="instead: pool these --json files (one per fold) into one table")
    p.add_argument("--min-score", type=float,
                   help="detection score that counts as found (default 0.5)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    flags = {name: "--" + name.replace("_", "-") for name in TRACE_OPTIONS}
    if args.summarize:
        given = [flags[name] for name in TRACE_OPTIONS if getattr(args, name) is not None]
        given += ["--case"] * bool(args.case) + ["--json"] * bool(args.json)
        given += ["--candidates"] * (args.candidates is not None)
        given += ["--min-score"] * (args.min_score is not None)  # the files hold theirs
        if given or args.opts:
            p.error(f"--summarize takes only --out, not {(given or args.opts)[0]}")
    else:
        missing = [flags[name] for name in TRACE_OPTIONS if getattr(args, name) is None]
        if missing:
            p.error(f"the following arguments are required: {', '.join(missing)}")
        if args.min_score is None:
            args.min_score = 0.5
    return args


def mass_slices(dicts, case_ids):
    """``{case_id: [(dataset_dict, [(lesion_index, box_xyxy)])]}`` for the slices with a mass.

    Raises:
        ValueError: an annotation without ``lesion_index`` (which mass it belongs to is then
            unknown; tools/convert_to_coco.py writes it).
    """
    out = defaultdict(list)
    for d in dicts:
        if d["case_id"] in case_ids and d.get("annotations"):
            for a in d["annotations"]:
                if "lesion_index" not in a:
                    raise ValueError(
                        f"{d['file_name']}: an annotation has no lesion_index, so its mass is "
                        "unknown (convert the cohort with tools/convert_to_coco.py)"
                    )
            boxes = [
                (a["lesion_index"],
                 BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS))
                for a in d["annotations"]
            ]  # fmt: skip
            out[d["case_id"]].append((d, boxes))
    return out


def cases_to_explain(val_dicts, requested, where):
    """:func:`mass_slices` of the ``requested`` validation cases (all of them when empty).

    Raises:
        ValueError: a requested case that is not in ``val_dicts`` or has no mass there; the
            message names the case and ``where``. No case with a mass at all is a warning (an
            empty result), since a fold of a small cohort may have none.
    """
    val_cases = {d["case_id"] for d in val_dicts}
    for case_id in requested:
        if case_id not in val_cases:
            raise ValueError(f"case {case_id} is not a validation case of {where}")
    slices_by_case = mass_slices(val_dicts, set(requested) or val_cases)
    for case_id in requested:
        if case_id not in slices_by_case:
            raise ValueError(f"case {case_id} has no annotated mass in {where}")
    if not slices_by_case:  # not an error: a small cohort's fold can lack masses (CV steps)
        logger.warning(f"{where} has no validation case with a mass: nothing to trace")
    return slices_by_case


def explain(model, mapper, slices_by_case, min_score):
    """Per-slice rows (formatted cells) and one :func:`mass_summary` dict per mass."""
    slice_rows, masses = [], []
    bar = tqdm(total=sum(map(len, slices_by_case.values())), desc="slices with a mass",
               unit="slice")  # fmt: skip
    for case_id in sorted(slices_by_case):
        by_mass = defaultdict(list)
        for d, boxes in slices_by_case[case_id]:
            image_input = mapper(dict(d))
            scale_x = image_input["image"].shape[2] / d["width"]
            scale_y = image_input["image"].shape[1] / d["height"]
            scale = torch.tensor([scale_x, scale_y, scale_x, scale_y])
            gt = torch.tensor([b for _, b in boxes], dtype=torch.float32) * scale
            for (lesion, box), t in zip(boxes, trace_boxes(model, image_input, gt, MATCH_IOU)):
                by_mass[lesion].append(t)
                slice_rows.append([
                    case_id, lesion, d["slice_index"],
                    f"{box[2] - box[0]:.0f} x {box[3] - box[1]:.0f}",
                    format_cell(t["best_iou"], 2),
                    f"{t['best_rank']} / {t['proposals']}" if t["best_rank"] else "none",
                    format_cell(t["best_objectness"], 2), format_cell(t["best_head_score"]),
                    t["matched_proposals"], format_cell(t["matched_head_score"]),
                    format_cell(t["detection_score"]),
                    format_score_iou(t["centre_detection_score"], t["centre_detection_iou"]),
                ])  # fmt: skip
            bar.update()
        masses += [mass_summary(case_id, lesion, traces, min_score)
                   for lesion, traces in sorted(by_mass.items())]
    bar.close()
    slice_rows.sort(key=lambda row: tuple(row[:3]))  # case, mass, slice
    return slice_rows, masses


def candidate_outcomes_of(eval_dir, data):
    """:func:`breast_d2.evaluation.verdicts.candidate_outcomes` of the evaluation folder
    ``eval_dir`` against the cohort ``data``'s ground truth.

    Raises:
        ValueError: a missing or malformed file (named).
    """
    if not os.path.isdir(eval_dir):
        raise ValueError(f"--candidates {eval_dir} is not a folder")
    cands, cases = load_run(eval_dir, ground_truth=os.path.join(data, "cases.json"))
    params = dict(FROCParams().asdict(),
                  **(read_froc_json(os.path.join(eval_dir, "froc.json")).get("params") or {}))
    return candidate_outcomes(
        CandidateArrays.from_dicts(cands), cases, hit=params["hit"],
        iou_thresh=params["iou_thresh"], duplicates=params["duplicates"])


def with_outcomes(masses, outcomes, eval_dir):
    """``masses`` (:func:`mass_summary` dicts) with their 3D outcome.

    Raises:
        ValueError: a traced case that ``eval_dir`` did not evaluate (named).
    """
    for m in masses:
        if (m["case_id"], m["lesion_index"]) not in outcomes:
            raise ValueError(f"--candidates {eval_dir}: case {m['case_id']} (mass "
                             f"{m['lesion_index']}) is not among its evaluated cases")
    return [dict(m, **outcomes[(m["case_id"], m["lesion_index"])]) for m in masses]


def main(argv=None):
    args = parse_args(argv)
    setup_tool_logging(logging.WARNING)
    torch.set_num_threads(args.threads)
    try:
        return _main(args)
    except (ConfigError, CheckpointError, CohortError, OSError, ValueError) as e:
        fail(str(e))


def _main(args):
    if args.summarize:
        return _summarize(args)
    if not os.path.isfile(args.weights):
        raise FileNotFoundError(f"{args.weights}: detector weights not found")
    cfg = load_breast_config(args.config_file, args.opts)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"  # quietly: configure_fold would warn
    configure_fold(cfg, args.fold, args.data)
    slices_by_case = cases_to_explain(
        DatasetCatalog.get(dataset_name(args.fold, "val")), args.case,
        f"fold {args.fold} of {args.data}",
    )
    for path in (args.out, args.json):
        if path:
            ensure_writable_dir(os.path.dirname(os.path.abspath(path)))
    outcomes = candidate_outcomes_of(args.candidates, args.data) if args.candidates else None
    model = build_model(cfg).eval()
    BreastCheckpointer(model).load(args.weights)  # no code from the file runs
    mapper = BreastMaskDatasetMapper(cfg, is_train=False)
    slice_rows, masses = explain(model, mapper, slices_by_case, args.min_score)
    if outcomes is not None:
        masses = with_outcomes(masses, outcomes, args.candidates)
    record = verdict_record(args.fold, args.min_score, MATCH_IOU, masses, data=args.data,
                            weights=args.weights, cases=sorted(slices_by_case),
                            candidates=args.candidates)
    tables = [
        markdown_table(
            ["case", "mass", "slice", "box (px)", "best proposal IoU", "its rank",
             "objectness", "head score", f"proposals IoU >= {MATCH_IOU}",
             "their best head score", f"detection IoU >= {MATCH_IOU}",
             "detection over its centre (IoU)"],
            slice_rows,
        ),
        format_mass_table(record),
    ]  # fmt: skip
    text = "\n\n".join(tables) + "\n"
    print(text, end="")
    if args.out:
        write_atomic(args.out, lambda f: f.write(text))
    if args.json:
        write_json_atomic(args.json, record, indent=1)
    return 0


def _summarize(args):
    """--summarize: the folds' verdict files pooled into one markdown text."""
    try:
        text = summarize_verdicts([read_verdicts(path) for path in args.summarize]) + "\n"
    except ValueError as e:
        raise ValueError(f"--summarize: {e}") from None
    print(text, end="")
    if args.out:
        ensure_writable_dir(os.path.dirname(os.path.abspath(args.out)))
        write_atomic(args.out, lambda f: f.write(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
