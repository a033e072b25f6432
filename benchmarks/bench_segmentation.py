#!/usr/bin/env python
"""Benchmark breast-region segmentation: CPU inference throughput, and (optionally) a short
cross-validation of U-Net++ vs U-Net on a converted phantom cohort.

Throughput: random-weight models (speed does not depend on the weights), batches of random
uint8 slices through :class:`BreastMaskPredictor.predict_proba` (letterbox + network + resize
back), after one warm-up batch; reported as slices/s with batch size and torch threads.

Cross-validation (``--cv-data OUT``): a resumable job in ``--cv-out`` that trains both
architectures on every fold with tools/train_breast_seg.py (``--parallel``: U-Net and U-Net++
side by side, one thread each), then scores the last-epoch model of each fold on its validation
cases with tools/eval_breast_seg.py (whole volumes, raw output at 0.5) and prints the study-style
markdown table (also in ``--cv-out/eval/``).

Examples:
    python benchmarks/bench_segmentation.py --sizes 320 256 --threads 2 --batch 8
    python benchmarks/bench_segmentation.py --skip-throughput --cv-data output/demo/coco \\
        --cv-out output/cv --parallel --epochs 24 --lr 0.05 --input-size 128 \\
        --encoder resnet18 --decoder-channels 64,32,16,16,8 --val-stride 4 --val-every 8
"""
import argparse
import logging
import os
import time

import numpy as np
import torch

from breast_d2.cli import setup_tool_logging
from breast_d2.data.converted import read_splits
from breast_d2.segmentation import ARCH_LABELS, BreastMaskPredictor, build_model


def throughput(arch, encoder, size, batch, repeats, device="cpu"):
    model = build_model(arch, encoder)
    ckpt = {"arch": arch, "encoder": encoder, "model": model.state_dict(), "train_cases": [],
            "input_size": size}
    pred = BreastMaskPredictor(ckpt, device=device, batch_size=batch)
    images = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
    pred.predict_proba(images)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        pred.predict_proba(images)
    return batch * repeats / (time.perf_counter() - t0)


def cross_validate(args):
    """Resumable job in ``args.cv_out``: train U-Net and U-Net++ on every fold with the real
    tools (two 1-thread lanes side by side), then tools/eval_breast_seg.py's study-style table."""
    from breast_d2.jobs import (
        Parallel,
        Step,
        run_steps,
        segmentation_dir,
        segmentation_steps,
        tool_command,
    )

    folds = [e["fold"] for e in read_splits(args.cv_data)["folds"]]
    folds = folds if args.folds is None else args.folds
    seg_args = ["--epochs", args.epochs, "--encoder", args.encoder, "--batch-size",
                args.batch_size, "--lr", args.lr, "--label-every", args.label_every,
                "--input-size", args.input_size, "--val-stride", args.val_stride,
                "--val-every", args.val_every]
    if args.decoder_channels:
        seg_args += ["--decoder-channels", args.decoder_channels]
    # Same layout as tools/cross_validate.py (--out = --cv-out), which then reuses these models.
    template = segmentation_dir(args.cv_out, "{arch}", "{fold}")
    jobs = [(arch, fold) for arch in ("unetplusplus", "unet") for fold in folds]
    if args.parallel:
        # Longest job first onto the lighter lane; a U-Net++ step costs ~2.5-3x a U-Net step.
        cost, lanes, load = {"unetplusplus": 3.0, "unet": 1.0}, [[], []], [0.0, 0.0]
        for arch, fold in jobs:
            k = int(load[1] < load[0])
            lanes[k].append((arch, fold))
            load[k] += cost[arch]
    else:
        lanes = [jobs]
    lanes = [
        [step for arch, fold in lane for step in segmentation_steps(
            args.cv_data, fold, template.format(arch=arch, fold=fold), arch,
            [str(a) for a in seg_args])]
        for lane in lanes
    ]
    runs = [a for arch in ("unet", "unetplusplus") for a in (
        "--run", f"{ARCH_LABELS[arch]}=" + template.format(arch=arch, fold="{fold}"))]
    table_dir = os.path.join(args.cv_out, "eval")
    training = [Parallel(lanes, threads=1)] if args.parallel else lanes[0]
    table = Step("segmentation table", tool_command(
        "eval_breast_seg", "--data", args.cv_data, "--folds", *folds, *runs, "--out", table_dir))
    run_steps(training + [table], args.cv_out)
    with open(os.path.join(table_dir, "seg_table.md")) as f:
        return f.read()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[320, 256])
    p.add_argument("--archs", nargs="+", default=["unetplusplus", "unet"])
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device for the throughput part")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--cv-data", default="", help="converted cohort: run the U-Net vs U-Net++ "
                   "cross-validation (resumable job in --cv-out)")
    p.add_argument("--cv-out", default="output/bench_seg_cv", help="job folder of the CV")
    p.add_argument("--parallel", action="store_true",
                   help="train U-Net and U-Net++ side by side, one thread each")
    p.add_argument("--folds", type=int, nargs="*", default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--label-every", type=int, default=10)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--val-stride", type=int, default=1)
    p.add_argument("--val-every", type=int, default=1)
    p.add_argument("--decoder-channels", default="", help="CV models, e.g. 32,32,16,16,8")
    args = p.parse_args()
    setup_tool_logging(logging.INFO)
    torch.set_num_threads(args.threads)
    if not args.skip_throughput:
        print("| arch | encoder | input | batch | device | threads | slices/s |")
        print("|---|---|---|---|---|---|---|")
        for size in args.sizes:
            for arch in args.archs:
                sps = throughput(arch, args.encoder, size, args.batch, args.repeats, args.device)
                print(f"| {arch} | {args.encoder} | {size}x{size} | {args.batch} | "
                      f"{args.device} | {args.threads} | {sps:.2f} |", flush=True)
    if args.cv_data:
        print(cross_validate(args))


if __name__ == "__main__":
    main()
