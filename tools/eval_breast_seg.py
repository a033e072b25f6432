#!/usr/bin/env python
"""Per-case and per-fold DSC / Jaccard / segmentation sensitivity of breast-region models.

Each fold's checkpoint is evaluated on that fold's validation cases that have a ground-truth
breast mask (cases.json "has_mask"; all cases in older folders), on whole volumes; a checkpoint
that trained on any validation case of the fold is refused. A fold without a masked validation
case is skipped with a warning. Writes OUT/seg_per_case.csv,
OUT/seg_per_fold.csv and OUT/seg_table.md (mean ± sd over folds, runs side by side, then the
study's per-fold tables) and prints the markdown.

--run NAME=PATH, repeatable. PATH is a checkpoint file, a template with {fold}
(runs/unet/fold{fold}/model_last.pth), a folder with fold{K}/ subfolders, or (one fold) a folder
holding model_last.pth / model_best.pth. NAME "unet"/"unetplusplus" is shown as U-Net/U-Net++.

Example:
    python tools/eval_breast_seg.py --data datasets/phantom_coco --out output/seg/eval \\
        --run unet=output/seg/unet --run unetplusplus=output/seg/unetplusplus
"""
import argparse
import logging
import os
import sys
from typing import Any, Dict, List, Tuple

import torch
from tqdm import tqdm

from breast_d2.cli import OneLineErrorParser, fail, parse_named_specs, setup_tool_logging
from breast_d2.data.converted import (
    check_converted_folder,
    fold_case_ids,
    read_cases,
    read_splits,
)
from breast_d2.fileio import ensure_writable_dir, write_atomic
from breast_d2.segmentation import (
    ARCH_LABELS,
    BreastMaskPredictor,
    FoldLeakError,
    check_no_fold_leak,
    load_checkpoint,
    markdown_report,
    overlap_metrics,
    per_fold_rows,
    write_csv,
)
from breast_d2.segmentation.data import (
    case_num_slices,
    load_case_gt,
    load_case_images,
    split_by_gt_mask,
)

logger = logging.getLogger("breast_d2.tools.eval_breast_seg")

# (run NAME, fold) -> (checkpoint file, the fold's validation case ids)
Checkpoints = Dict[Tuple[str, int], Tuple[str, List[str]]]


def parse_args(argv=None):
    p = OneLineErrorParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="converted folder")
    p.add_argument("--run", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--folds", type=int, nargs="*", default=None, help="default: all folds")
    p.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="for folder PATHs; 'last' as the study (best is chosen on these cases)")
    p.add_argument("--postprocess", action="store_true",
                   help="apply the mask post-processing (components, holes) before scoring")
    p.add_argument("--out", required=True, help="output folder for CSV and markdown")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    return p.parse_args(argv)


def resolve_checkpoint(path: str, fold: int, which: str) -> str:
    """Checkpoint file of ``fold`` for a --run PATH (see the module docstring)."""
    path = path.replace("{fold}", str(fold))
    if os.path.isdir(os.path.join(path, f"fold{fold}")):
        path = os.path.join(path, f"fold{fold}")
    if os.path.isdir(path):
        path = os.path.join(path, f"model_{which}.pth")
    return path


def check_args(args: argparse.Namespace) -> Tuple[List[Tuple[str, str]], Dict[int, List[str]]]:
    """Refuse a folder that is not converted, bad --run specs, a bad splits.json, an unknown
    fold and an unwritable --out (one error line each).

    Returns:
        ``(runs, val_ids)``: the ``(NAME, PATH)`` of each --run; each selected fold's validation
        case ids (all folds of splits.json without --folds).
    """
    try:
        check_converted_folder(args.data)
    except ValueError as e:  # CohortError
        fail(str(e))
    runs = parse_named_specs(args.run)
    splits_json = os.path.join(args.data, "splits.json")
    try:
        splits = read_splits(splits_json)
        ensure_writable_dir(args.out)
        folds = args.folds if args.folds else [e["fold"] for e in splits["folds"]]
        val_ids = {fold: fold_case_ids(splits, fold, splits_json)[1] for fold in folds}
    except (ValueError, OSError) as e:  # CohortError: malformed splits.json, no such fold
        fail(str(e))
    return runs, val_ids


def find_checkpoints(
    runs: List[Tuple[str, str]], val_ids: Dict[int, List[str]], which: str
) -> Checkpoints:
    """Each run's checkpoint per fold; a missing, unloadable or leaking one is an error."""
    checkpoints = {}
    for name, path in runs:
        for fold, fold_val_ids in val_ids.items():
            ckpt_path = resolve_checkpoint(path, fold, which)
            if not os.path.isfile(ckpt_path):
                fail(f"run {name} fold {fold}: no checkpoint {ckpt_path}")
            try:
                check_no_fold_leak(load_checkpoint(ckpt_path)["train_cases"], fold_val_ids, fold)
            except FoldLeakError as e:
                fail(f"run {name} fold {fold} ({ckpt_path}): {e}")
            except ValueError as e:  # CheckpointError
                fail(str(e))
            checkpoints[name, fold] = (ckpt_path, fold_val_ids)
    return checkpoints


def masked_val_cases(data: str, val_ids: Dict[int, List[str]]) -> Dict[int, List[str]]:
    """Each fold's validation cases that have a ground-truth mask; none at all is an error."""
    masked = {}
    for fold, fold_val_ids in val_ids.items():
        try:
            masked[fold] = split_by_gt_mask(data, fold_val_ids)[0]
        except (ValueError, FileNotFoundError) as e:  # cases.json and masks/gt disagree
            fail(str(e))
        if masked[fold]:
            logger.info("fold %d: %d of %d validation cases have a ground-truth mask",
                        fold, len(masked[fold]), len(fold_val_ids))  # fmt: skip
        else:
            logger.warning("fold %d: no validation case has a ground-truth mask; skipped", fold)
    if not any(masked.values()):
        fail("no validation case of the selected folds has a ground-truth breast mask")
    return masked


def score_runs(
    args: argparse.Namespace, checkpoints: Checkpoints, masked: Dict[int, List[str]]
) -> List[Dict[str, Any]]:
    """One row ``{"run", "arch", "fold", "case_id", "dsc", "jaccard", "ss"}`` per run and masked
    validation case (whole volumes), with a progress bar over cases x runs.

    Raises:
        ValueError, OSError: unreadable cases.json, a missing or unreadable slice or mask.
    """
    cases = read_cases(args.data)
    rows = []
    total = sum(len(masked[fold]) for _, fold in checkpoints)
    with tqdm(total=total, desc="scoring", unit="case", dynamic_ncols=True) as bar:
        for (name, fold), (ckpt_path, _) in checkpoints.items():
            if not masked[fold]:
                continue
            predictor = BreastMaskPredictor(ckpt_path, args.device, batch_size=args.batch_size)
            for case_id in masked[fold]:
                bar.set_postfix_str(f"{name} fold {fold} {case_id}")
                zs, images = load_case_images(args.data, case_id, case_num_slices(cases, case_id))
                spacing = cases.get(case_id, {}).get("spacing", [1.0, 1.0])[:2]
                pred = predictor.predict_case(images, 0.0, spacing, postprocess=args.postprocess)
                metrics = overlap_metrics(pred, load_case_gt(args.data, case_id, zs))
                rows.append({"run": ARCH_LABELS.get(name, name), "arch": predictor.arch,
                             "fold": fold, "case_id": case_id, **metrics})  # fmt: skip
                bar.update(1)
    return rows


def write_tables(case_rows: List[Dict[str, Any]], out: str) -> str:
    """Write OUT/seg_per_case.csv, seg_per_fold.csv and seg_table.md; the markdown."""
    fold_rows = per_fold_rows(case_rows)
    write_csv(case_rows, os.path.join(out, "seg_per_case.csv"))
    write_csv(fold_rows, os.path.join(out, "seg_per_fold.csv"))
    table = markdown_report(fold_rows)
    write_atomic(os.path.join(out, "seg_table.md"), lambda f: f.write(table))
    return table


def main(argv=None) -> int:
    """Command-line entry point: bad input is one ``error: ...`` line and exit code 2."""
    args = parse_args(argv)
    runs, val_ids = check_args(args)
    checkpoints = find_checkpoints(runs, val_ids, args.checkpoint)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    setup_tool_logging(logging.INFO)
    masked = masked_val_cases(args.data, val_ids)
    try:
        case_rows = score_runs(args, checkpoints, masked)
    except (ValueError, OSError) as e:  # CohortError, a missing slice or mask PNG
        fail(str(e))
    print(write_tables(case_rows, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
