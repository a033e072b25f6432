#!/usr/bin/env python
"""Write fold-correct breast masks OUT/masks/fold{K}/<case_id>/<z:04d>.png (0/255) for fold K.

Validation cases of fold K get the mask of --weights, which must not have trained on them (the
checkpoint's train_cases are checked; a leak is refused). Training cases get the same model's
mask, or a copy of masks/gt with --source gt. OUT/masks/fold{K}/manifest.json records the
weights, the checkpoint's train_cases and each case's source.

Cohorts where only some cases have a ground-truth breast mask (Duke: ~100 of 922): train the
model per fold on the masked cases (tools/train_breast_seg.py does that), then this writes the
model's masks for every case of the fold, masked or not; --source gt copies masks/gt only where
a training case has one. --all-unseen also writes masks for the cases of cases.json outside the
fold's splits (a held-out test set) that the checkpoint did not train on.

Example:
    python tools/predict_breast_masks.py --data datasets/phantom_coco --fold 0 \\
        --weights output/seg/unetplusplus/fold0/model_last.pth
"""
import argparse
import logging
import os
import sys
from typing import Any, Dict

import torch

from breast_d2.cli import OneLineErrorParser, fail, setup_tool_logging
from breast_d2.data.converted import check_converted_folder, read_fold
from breast_d2.fileio import ensure_writable_dir
from breast_d2.segmentation import FoldLeakError, write_fold_masks


def parse_args(argv=None):
    p = OneLineErrorParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="converted folder")
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--weights", required=True, help="checkpoint from tools/train_breast_seg.py")
    p.add_argument("--source", choices=("model", "gt"), default="model",
                   help="masks of the TRAINING cases (validation cases always use the model)")
    p.add_argument("--dilate-mm", type=float, default=0.0,
                   help="grow every case's mask in-plane by a ball of this radius in mm")
    p.add_argument("--min-component-fraction", type=float, default=0.1,
                   help="keep 3D components >= this fraction of the largest")
    p.add_argument("--all-unseen", action="store_true",
                   help="also cases outside the fold's splits that the checkpoint never saw")
    p.add_argument("--resume", action="store_true", help="skip cases already in the manifest")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse a folder that is not converted, a missing checkpoint, bad numbers, an unknown fold
    and an unwritable mask folder (one error line each)."""
    try:
        check_converted_folder(args.data)
    except ValueError as e:  # CohortError
        fail(str(e))
    if not os.path.isfile(args.weights):
        fail(f"no checkpoint {args.weights}")
    if args.dilate_mm < 0 or args.batch_size < 1:
        fail("--dilate-mm must be >= 0 and --batch-size >= 1")
    try:
        read_fold(args.data, args.fold)
        ensure_writable_dir(os.path.join(args.data, "masks", f"fold{args.fold}"), "mask folder")
    except (ValueError, OSError) as e:  # CohortError (malformed splits.json) is a ValueError
        fail(str(e))


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Write the fold's masks; the manifest. A leak or bad input is one error line."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    setup_tool_logging(logging.INFO)
    try:
        return write_fold_masks(
            args.data, args.fold, args.weights, source=args.source, dilation_mm=args.dilate_mm,
            resume=args.resume, device=args.device, batch_size=args.batch_size,
            min_component_fraction=args.min_component_fraction, all_unseen=args.all_unseen,
        )
    except FoldLeakError as e:
        fail(f"refusing to write fold {args.fold} masks: {e}")
    except (ValueError, OSError) as e:  # CheckpointError, a missing slice PNG, ...
        fail(str(e))


def main(argv=None) -> int:
    """Command-line entry point: bad input is one ``error: ...`` line and exit code 2."""
    args = parse_args(argv)
    check_args(args)
    manifest = run(args)
    out = os.path.join(args.data, "masks", f"fold{args.fold}")
    print(f"wrote {len(manifest['cases'])} cases to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
