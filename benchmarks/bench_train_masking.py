#!/usr/bin/env python
"""Benchmark training iterations with BreastMaskDatasetMapper vs detectron2's stock DatasetMapper.

Same config (``--config-file``, default the CPU demo), same data (the positive slices of fold 0's
training cases of a phantom cohort made with the project's tools, or ``--data``), same seed;
only the train loader's mapper differs. Each arm is detectron2's own training step:
``build_model`` -> ``build_detection_train_loader(cfg, mapper=..., dataset=dicts)`` ->
``SimpleTrainer.run_step`` (next batch from the loader, forward, backward, optimizer step) inside
an ``EventStorage``, with the config's optimizer and LR schedule (``build_optimizer`` /
``build_lr_scheduler``). An iteration is timed as the wall time of ``run_step``, so data loading
that the loader's workers do not hide is included; ``data_time`` is SimpleTrainer's own.

One model per arm, not one shared model: each arm trains its own copy of the same initial
weights (built once with the seed, then deep-copied) with its own optimizer, so no arm's
BatchNorm statistics, momentum or proposals are shaped by another arm's (masked or unmasked)
images, and each arm runs exactly what a real run would from the same start. (Iteration cost
depends on weights and images only through NMS and the ROIAlign sampling of proposals, which
adapts to their size: small effects, included in each arm's time.) A third arm, "stock
again", repeats the stock mapper (A/A): its ratio to stock is the noise floor. The arms
alternate in blocks of ``--block`` iterations (order rotated every block) so machine load hits
them alike; every arm's sampler has the same seed, so iteration k of each arm trains on the
same slices and the reported ratio is the median over k of the paired ratios. With
``NUM_WORKERS 0`` the mapper runs inside ``data_time``, so the arms' ``data_time`` difference is
the mapper's cost per iteration with far less noise than the iteration times.

Per ``--workers`` value (``DATALOADER.NUM_WORKERS``): ``--warmup`` untimed iterations per arm
(the first starts the loader's workers), then ``--iters`` timed iterations per arm; medians.
Torch runs 1 thread unless ``--threads`` says otherwise (see the option's comment).

Examples::

    python benchmarks/bench_train_masking.py                     # workers 0 and 1, 20 iters each
    python benchmarks/bench_train_masking.py --workers 1 --iters 40 --block 5
    python benchmarks/bench_train_masking.py --data OUT          # an existing converted cohort
"""
import argparse
import copy
import gc
import os
import platform
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetMapper, build_detection_train_loader
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler, build_optimizer
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from bench_mapper import REPO, load_class, loadavg, make_cohort  # same folder
from breast_d2.config import add_breast_config
from breast_d2.engine import configure_fold, train_dataset_dicts

# "stock again" is an A/A arm (a second stock model and loader): its spread is the noise floor.
ARMS = ("stock", "masking", "stock again")


class Arm:
    """One model + optimizer + LR schedule + train loader + EventStorage, stepped on demand."""

    def __init__(self, cfg, model, mapper, dicts: List[Dict], seed: int):
        optimizer = build_optimizer(cfg, model)
        self.scheduler = build_lr_scheduler(cfg, optimizer)
        # Same sampler seed in every arm: the same slices in the same order.
        sampler = TrainingSampler(len(dicts), seed=seed)
        loader = build_detection_train_loader(cfg, mapper=mapper, dataset=dicts, sampler=sampler)
        self.trainer = SimpleTrainer(model, loader, optimizer)
        self.storage = EventStorage(0)
        self.wall: List[float] = []
        self.cpu: List[float] = []
        self.data: List[float] = []

    def step(self, record: bool) -> None:
        with self.storage:
            wall, cpu = time.perf_counter(), time.process_time()
            self.trainer.run_step()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            self.scheduler.step()
            self.storage.step()
        if record:
            self.wall.append(wall)
            self.cpu.append(cpu)
            self.data.append(self.storage.history("data_time").latest())


def build_cfg(args, root: str):
    cfg = get_cfg()
    add_breast_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, args.config_file), allow_unsafe=False)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    configure_fold(cfg, 0, root)
    cfg.INPUT.BREAST_MASK.ENABLED = True
    cfg.INPUT.BREAST_MASK.SOURCE = "gt"  # <root>/masks/gt: cached PNG masks
    return cfg


def run_workers(args, cfg, dicts, num_workers: int) -> Dict[str, Arm]:
    cfg = cfg.clone()
    cfg.DATALOADER.NUM_WORKERS = num_workers
    seed_all_rng(args.seed)
    model = build_model(cfg)
    masking = load_class(args.mapper)(cfg, True)
    stock = DatasetMapper(cfg, True)
    assert str(stock.augmentations) == str(masking.augmentations)
    mappers = {"stock": stock, "masking": masking, "stock again": DatasetMapper(cfg, True)}
    # Every arm starts from the same initial weights (copies made before any step).
    arms = {n: Arm(cfg, copy.deepcopy(model), m, dicts, args.seed) for n, m in mappers.items()}
    for name in ARMS:
        for _ in range(args.warmup):
            arms[name].step(record=False)
    for block in range(-(-args.iters // args.block)):
        turn = block % len(ARMS)
        for name in ARMS[turn:] + ARMS[:turn]:
            for _ in range(min(args.block, args.iters - block * args.block)):
                arms[name].step(record=True)
    return arms


def table_rows(args, cfg, dicts, num_workers: int) -> List[str]:
    """Markdown rows of one NUM_WORKERS setting (its loaders' workers end with ``arms``)."""
    arms = run_workers(args, cfg, dicts, num_workers)
    wall = {n: float(np.median(arms[n].wall)) for n in ARMS}
    cpu = {n: float(np.median(arms[n].cpu)) for n in ARMS}
    data = {n: float(np.median(arms[n].data)) for n in ARMS}
    rows = []
    for name in ARMS:
        # Iteration k of every arm saw the same slices: pair them, then take the median.
        paired = np.median(np.asarray(arms[name].wall) / np.asarray(arms["stock"].wall))
        paired_cpu = np.median(np.asarray(arms[name].cpu) / np.asarray(arms["stock"].cpu))
        ratio = f"{paired:.3f}x"
        rows.append(
            f"| {num_workers} | {name} | {wall[name]:.3f} | "
            f"{cfg.SOLVER.IMS_PER_BATCH / wall[name]:.2f} | {data[name] * 1e3:.1f} | "
            f"{cpu[name]:.3f} | {f'**{ratio}**' if name == 'masking' else ratio} | "
            f"{paired_cpu:.3f}x |"
        )
    extra = data["masking"] - data["stock"]
    args.notes.append(
        f"- workers {num_workers}: masking's median data_time is {extra * 1e3:+.1f} ms per "
        f"iteration vs stock = {extra / wall['stock'] * 100:+.1f}% of a stock iteration"
    )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", default="configs/frcnn_cpu_demo.yaml")
    parser.add_argument("--data", default="", help="converted cohort (default: make a phantom)")
    parser.add_argument("--matrix", type=int, default=160, help="phantom in-plane matrix")
    parser.add_argument("--slices", type=int, default=32, help="phantom slices per case")
    parser.add_argument("--cases", type=int, default=4, help="phantom cases")
    parser.add_argument("--seed", type=int, default=0, help="phantom, model and sampler seed")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1],
                        help="DATALOADER.NUM_WORKERS values to run")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per arm")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per arm")
    parser.add_argument("--block", type=int, default=1, help="iterations per alternating block")
    # 1 by default: on the shared 2-core machine two OpenMP threads that other jobs' threads
    # preempt made an iteration ~8x slower (7.6 vs 0.8 s), burying the mapper in scheduling noise.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    parser.add_argument("--mapper", default="breast_d2.data.mapper:BreastMaskDatasetMapper",
                        help="masking mapper class, module:Class")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    args = parser.parse_args()
    args.notes = []
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before, started = loadavg(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    wall = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        root = os.path.abspath(args.data) if args.data else make_cohort(
            tmp, args.matrix, args.slices, args.cases, args.seed
        )
        cfg = build_cfg(args, root)
        dicts = train_dataset_dicts(cfg)
        rows = []
        for num_workers in args.workers:
            rows += table_rows(args, cfg, dicts, num_workers)
            gc.collect()  # ends that setting's loader workers before the next one
        h, w = dicts[0]["height"], dicts[0]["width"]

    print(f"- {started}; {os.cpu_count()} CPU cores, load average {load_before} before, "
          f"{loadavg()} after; torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"Python {platform.python_version()}; whole run {time.perf_counter() - wall:.0f} s")
    print(f"- {args.config_file}: depth {cfg.MODEL.RESNETS.DEPTH}, batch "
          f"{cfg.SOLVER.IMS_PER_BATCH}, {h}x{w} slices -> {cfg.INPUT.MIN_SIZE_TRAIN[0]} px; "
          f"{len(dicts)} positive training slices (fold 0); masking mapper {args.mapper}")
    print(f"- per arm: {args.warmup} warm-up + {args.iters} timed iterations, arms alternating in "
          f"blocks of {args.block} (order rotated every block); s/iter, data_time: medians over "
          "iterations; / stock: median over k of iteration k's time / stock's iteration k; "
          "\"stock again\" is the A/A arm (its ratio is the noise floor); CPU = process time of "
          "the main process (excludes the time other jobs held the cores, and the loader worker's)")
    print()
    print("| workers | mapper | s/iter | images/s | data_time ms | CPU s/iter | / stock | "
          "/ stock, CPU |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print()
    print("\n".join(args.notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
