#!/usr/bin/env python
"""Benchmark breast-region segmentation: CPU inference throughput, and (optionally) a short
cross-validation of U-Net++ vs U-Net on a converted phantom cohort.

Throughput: random-weight models (speed does not depend on the weights), batches of random
uint8 slices through :class:`BreastMaskPredictor.predict_proba` (letterbox + network + resize
back), after one warm-up batch; reported as slices/s with batch size and torch threads.

Cross-validation (``--cv-data OUT``): trains both architectures on every fold with the given
(short) schedule, then scores the last-epoch model of each fold on its validation cases
(whole volumes, raw output at 0.5) and prints the study-style markdown table.

Examples:
    python benchmarks/bench_segmentation.py --sizes 320 256 --threads 2 --batch 8
    python benchmarks/bench_segmentation.py --skip-throughput --cv-data /tmp/phantom_coco \
        --epochs 15 --input-size 128 --encoder resnet18
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

from breast_d2.segmentation import (
    ARCH_LABELS,
    BreastMaskPredictor,
    SegTrainConfig,
    build_model,
    markdown_report,
    overlap_metrics,
    per_fold_rows,
    train_segmentation,
)
from breast_d2.segmentation.data import load_case_gt, load_case_images, load_fold


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
    import json

    with open(os.path.join(args.cv_data, "splits.json")) as f:
        folds = [int(e["fold"]) for e in json.load(f)["folds"]]
    folds = folds if args.folds is None else args.folds
    model_kwargs = {}
    if args.decoder_channels:
        model_kwargs["decoder_channels"] = [int(c) for c in args.decoder_channels.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("unet", "unetplusplus"):
            for fold in folds:
                cfg = SegTrainConfig(arch=arch, encoder=args.encoder, epochs=args.epochs,
                                     batch_size=args.batch_size, lr=args.lr,
                                     label_every=args.label_every, input_size=args.input_size,
                                     val_stride=args.val_stride, model_kwargs=model_kwargs)
                out = os.path.join(tmp, arch, f"fold{fold}")
                t0 = time.perf_counter()
                train_segmentation(args.cv_data, fold, out, cfg, progress=False)
                pred = BreastMaskPredictor(os.path.join(out, "model_last.pth"))
                for case_id in load_fold(args.cv_data, fold)[1]:
                    zs, images = load_case_images(args.cv_data, case_id)
                    mask = pred.predict_case(images, postprocess=False)
                    rows.append({"run": ARCH_LABELS[arch], "arch": arch, "fold": fold,
                                 "case_id": case_id,
                                 **overlap_metrics(mask, load_case_gt(args.cv_data, case_id, zs))})
                print(f"{arch} fold {fold}: trained+scored in {time.perf_counter() - t0:.0f} s",
                      file=sys.stderr, flush=True)
    return markdown_report(per_fold_rows(rows), "Phantom breast-region segmentation")


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
    p.add_argument("--cv-data", default="")
    p.add_argument("--folds", type=int, nargs="*", default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--label-every", type=int, default=10)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--val-stride", type=int, default=1)
    p.add_argument("--decoder-channels", default="", help="CV models, e.g. 32,32,16,16,8")
    args = p.parse_args()
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
