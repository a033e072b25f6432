#!/usr/bin/env python
"""Train a breast-region U-Net++ (deep supervision, BCE + Dice) or U-Net (BCE) on one fold.

Example:
    python tools/train_breast_seg.py --data datasets/phantom_coco --fold 0 --arch unetplusplus \\
        --out output/seg/unetplusplus/fold0
"""
import argparse
import contextlib
import json
import logging
import os
import sys
from typing import Any, Dict, Iterator, Optional

import torch

from breast_d2.cli import OneLineErrorParser, fail, setup_tool_logging
from breast_d2.data.converted import check_converted_folder, read_fold
from breast_d2.fileio import ensure_writable_dir, jsonable
from breast_d2.segmentation import ARCHS, SegTrainConfig, train_segmentation

EPILOG = """\
Study settings kept: SGD (momentum 0.9), 50 epochs, batch size 5, horizontal flips, 1 labelled
slice in every 10, BCE for U-Net, BCE + Dice with deep supervision for U-Net++.
Different for CPUs: slices are letterboxed to --input-size 256 (the study trained at native
resolution: use --input-size 0, or 512); the encoder is an SMP ResNet trained from scratch
(--encoder resnet18 is about twice as fast as resnet34); the study gives no segmentation learning
rate (--lr 0.01 here). Writes OUT/model_last.pth, model_best.pth (by validation DSC; optimistic,
the study evaluated the last epoch), metrics.json, log.txt (each epoch's line with the ETA of the
run) and TensorBoard events (loss, lr, validation DSC: tensorboard --logdir OUT).
Only cases with a ground-truth breast mask (cases.json "has_mask") train and validate, e.g. the
~100 Duke cases of the breast-mask supplement; the log says how many. A fold whose training cases
have no mask is an error; without validation masks there is no DSC and no model_best.pth.
"""


def parse_args(argv=None):
    p = OneLineErrorParser(description=__doc__.split("\n")[0], epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="converted folder (tools/convert_to_coco.py)")
    p.add_argument("--fold", type=int, required=True, help="fold K of splits.json")
    p.add_argument("--arch", choices=ARCHS, default="unetplusplus")
    p.add_argument("--encoder", default="resnet34", help="SMP encoder, random init")
    p.add_argument("--encoder-depth", type=int, default=5, help="SMP encoder_depth (3-5)")
    p.add_argument("--decoder-channels", default="",
                   help="comma list, one per encoder stage (default SMP's 256,128,64,32,16)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--lr-schedule", choices=("poly", "constant"), default="poly",
                   help="poly: lr * (1 - iter / total) ** 0.9 per iteration")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--label-every", type=int, default=10, help="1 labelled slice in every N")
    p.add_argument("--input-size", type=int, default=256, help="multiple of 32; 0 = native size")
    p.add_argument("--val-stride", type=int, default=1, help="validate on every N-th slice")
    p.add_argument("--val-every", type=int, default=1,
                   help="validate every N epochs (and after the last)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from a checkpoint (default OUT/model_last.pth)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad numbers, a folder that is not converted and an unknown fold (one error line)."""
    for name in ("epochs", "batch_size", "label_every", "val_stride"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1")
    if args.input_size < 0 or args.input_size % 32:
        fail(f"--input-size must be 0 or a multiple of 32, got {args.input_size}")
    try:
        read_fold(check_converted_folder(args.data), args.fold)
    except ValueError as e:  # CohortError: not a converted folder, bad splits.json, no such fold
        fail(str(e))


def _model_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """SMP arguments from --encoder-depth and --decoder-channels."""
    model_kwargs: Dict[str, Any] = {}
    if args.encoder_depth != 5:
        model_kwargs["encoder_depth"] = args.encoder_depth
    if args.decoder_channels:
        try:
            model_kwargs["decoder_channels"] = [int(c) for c in args.decoder_channels.split(",")]
        except ValueError:
            fail(f"--decoder-channels must be integers, got {args.decoder_channels!r}")
    elif args.encoder_depth != 5:  # SMP needs one decoder width per stage
        model_kwargs["decoder_channels"] = [256, 128, 64, 32, 16][-args.encoder_depth :]
    return model_kwargs


def build_config(args: argparse.Namespace) -> SegTrainConfig:
    """The :class:`SegTrainConfig` of the command line."""
    return SegTrainConfig(
        arch=args.arch, encoder=args.encoder, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, lr_schedule=args.lr_schedule, momentum=args.momentum,
        weight_decay=args.weight_decay,
        label_every=args.label_every, input_size=args.input_size, num_workers=args.num_workers,
        val_stride=args.val_stride, val_every=args.val_every, seed=args.seed, device=args.device,
        model_kwargs=_model_kwargs(args),
    )


def resume_checkpoint(args: argparse.Namespace) -> Optional[str]:
    """The checkpoint of --resume (``auto``: OUT/model_last.pth), or None; it must exist."""
    resume = args.resume
    if resume == "auto":
        resume = os.path.join(args.out, "model_last.pth")
    if resume and not os.path.isfile(resume):
        fail(f"--resume: no checkpoint {resume}")
    return resume


@contextlib.contextmanager
def _log_file(path: str) -> Iterator[None]:
    """Copy breast_d2's log records into ``path`` (appended, so a resumed run continues it)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s",
                                           datefmt="%m/%d %H:%M:%S"))  # fmt: skip
    package_logger = logging.getLogger("breast_d2")
    package_logger.addHandler(handler)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        handler.close()


def run(args: argparse.Namespace, cfg: SegTrainConfig, resume: Optional[str]) -> Dict[str, Any]:
    """Train into --out with console logging and OUT/log.txt; training errors are one line."""
    try:
        ensure_writable_dir(args.out)
    except OSError as e:
        fail(str(e))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    setup_tool_logging(logging.INFO)
    with _log_file(os.path.join(args.out, "log.txt")):
        try:
            return train_segmentation(args.data, args.fold, args.out, cfg, resume=resume)
        except (ValueError, OSError) as e:  # CohortError, CheckpointError are ValueErrors
            fail(str(e))


def main(argv=None) -> int:
    """Command-line entry point: bad input is one ``error: ...`` line and exit code 2."""
    args = parse_args(argv)
    check_args(args)
    cfg = build_config(args)
    resume = resume_checkpoint(args)
    result = run(args, cfg, resume)
    print(json.dumps(jsonable({k: result[k] for k in ("epoch", "best_dsc", "last_dsc")})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
