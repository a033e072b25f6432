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
    python tools/eval_breast_seg.py --data datasets/phantom_coco --out output/seg/eval \
        --run unet=output/seg/unet --run unetplusplus=output/seg/unetplusplus
"""
import argparse
import logging
import os
import sys

import torch

from breast_d2.cli import OneLineErrorParser, fail
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
from breast_d2.data.converted import (
    check_converted_folder,
    fold_case_ids,
    read_cases,
    read_splits,
)
from breast_d2.segmentation.data import (
    case_num_slices,
    load_case_gt,
    load_case_images,
    split_by_gt_mask,
)
from breast_d2.fileio import ensure_writable_dir, write_atomic

logger = logging.getLogger("eval_breast_seg")


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


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_converted_folder(args.data)
    except ValueError as e:  # CohortError
        fail(str(e))
    runs = []
    for spec in args.run:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            fail(f"--run must be NAME=PATH, got {spec!r}")
        runs.append((name, path))
    try:
        splits_json = os.path.join(args.data, "splits.json")
        splits = read_splits(splits_json)
        ensure_writable_dir(args.out)
    except (ValueError, OSError) as e:  # CohortError: malformed splits.json
        fail(str(e))
    folds = args.folds if args.folds else [e["fold"] for e in splits["folds"]]
    checkpoints = {}
    for name, path in runs:
        for fold in folds:
            try:
                _, val_ids = fold_case_ids(splits, fold, splits_json)
            except ValueError as e:
                fail(str(e))
            ckpt_path = resolve_checkpoint(path, fold, args.checkpoint)
            if not os.path.isfile(ckpt_path):
                fail(f"run {name} fold {fold}: no checkpoint {ckpt_path}")
            try:
                check_no_fold_leak(load_checkpoint(ckpt_path)["train_cases"], val_ids, fold)
            except FoldLeakError as e:
                fail(f"run {name} fold {fold} ({ckpt_path}): {e}")
            except ValueError as e:
                fail(str(e))
            checkpoints[name, fold] = (ckpt_path, val_ids)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    cases = read_cases(args.data)
    masked = {}
    for fold in folds:
        _, val_ids = fold_case_ids(splits, fold, splits_json)  # checked above
        try:
            masked[fold] = split_by_gt_mask(args.data, val_ids)[0]
        except FileNotFoundError as e:
            fail(str(e))
        if not masked[fold]:
            logger.warning("fold %d: no validation case has a ground-truth mask; skipped", fold)
    if not any(masked.values()):
        fail("no validation case of the selected folds has a ground-truth breast mask")
    case_rows = []
    for (name, fold), (ckpt_path, val_ids) in checkpoints.items():
        if not masked[fold]:
            continue
        predictor = BreastMaskPredictor(ckpt_path, args.device, batch_size=args.batch_size)
        label = ARCH_LABELS.get(name, name)
        logger.info("run %s fold %d: %d of %d validation cases have a ground-truth mask",
                    name, fold, len(masked[fold]), len(val_ids))  # fmt: skip
        for case_id in masked[fold]:
            zs, images = load_case_images(args.data, case_id, case_num_slices(cases, case_id))
            spacing = cases.get(case_id, {}).get("spacing", [1.0, 1.0])[:2]
            pred = predictor.predict_case(images, 0.0, spacing, postprocess=args.postprocess)
            metrics = overlap_metrics(pred, load_case_gt(args.data, case_id, zs))
            case_rows.append({"run": label, "arch": predictor.arch, "fold": fold,
                              "case_id": case_id, **metrics})
    fold_rows = per_fold_rows(case_rows)
    write_csv(case_rows, os.path.join(args.out, "seg_per_case.csv"))
    write_csv(fold_rows, os.path.join(args.out, "seg_per_fold.csv"))
    table = markdown_report(fold_rows)
    write_atomic(os.path.join(args.out, "seg_table.md"), lambda f: f.write(table))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
