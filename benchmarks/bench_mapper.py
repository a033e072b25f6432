#!/usr/bin/env python
"""Benchmark BreastMaskDatasetMapper (cached masks) against detectron2's stock DatasetMapper.

For each ``--sizes`` entry (``MATRIX:SLICES``) a phantom cohort of ``--cases`` cases is made in a
temporary folder with the project's own tools (``tools/make_phantom.py`` then
``tools/convert_to_coco.py --folds 2``); every slice (fold 0 train + val = each case once) is
then mapped by three mappers built from the same config (``--config-file``; the augmentations are
the config's, e.g. ResizeShortestEdge + RandomFlip for training):

- ``stock``: ``detectron2.data.DatasetMapper(cfg, is_train)``;
- ``masking``: ``BreastMaskDatasetMapper(cfg, is_train)``, cached masks from ``masks/gt``;
- ``masking off``: the same class with ``INPUT.BREAST_MASK.ENABLED False`` (class overhead only).

The mappers run in interleaved rounds (see :func:`interleaved`) and the medians over rounds are
reported: wall ms/image and the median of the per-round ratios masking / stock (goal <= 1.2x),
also in process CPU time, and masking off / stock as the noise floor. A breakdown times the
steps masking adds, one by one, on the same slices.

Examples::

    python benchmarks/bench_mapper.py                       # 160 and 320 px, demo config
    python benchmarks/bench_mapper.py --sizes 320:16 \\
        --config-file configs/frcnn_r101.yaml               # the study's resize to 640 px
    python benchmarks/bench_mapper.py --data OUT            # an existing converted cohort
    PYTHONPATH=DIR python benchmarks/bench_mapper.py --mapper my_module:MyMapper

Torch and OpenCV run one thread each, as in a DataLoader worker.
"""
import argparse
import gc
import importlib
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List

import cv2
import numpy as np
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from breast_d2.config import add_breast_config
from breast_d2.data.datasets import load_breast_json
from breast_d2.data.mapper import BreastMaskDatasetMapper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_cohort(tmp: str, matrix: int, slices: int, cases: int, seed: int) -> str:
    """Phantom cohort + conversion with the project's CLIs; returns the converted folder."""
    phantom, out = os.path.join(tmp, "phantom"), os.path.join(tmp, "coco")
    commands = [
        ["tools/make_phantom.py", "--out", phantom, "--cases", str(cases), "--seed", str(seed),
         "--matrix", str(matrix), "--slices", str(slices)],
        ["tools/convert_to_coco.py", "--images", f"{phantom}/IMAGES", "--labels",
         f"{phantom}/LABELS", "--masks", f"{phantom}/MASKS", "--out", out, "--folds", "2"],
    ]
    for cmd in commands:
        subprocess.run([sys.executable] + cmd, cwd=REPO, check=True, capture_output=True)
    return out


def load_slices(root: str) -> List[Dict]:
    """Every slice of the cohort once: fold 0's train and val cases together."""
    return [
        d
        for split in ("train", "val")
        for d in load_breast_json(os.path.join(root, f"fold0_{split}.json"), root)
    ]


def build_cfg(config_file: str, root: str, opts: List[str]):
    cfg = get_cfg()
    add_breast_config(cfg)
    cfg.merge_from_file(config_file, allow_unsafe=False)
    cfg.merge_from_list(opts)
    cfg.DATASETS.BREAST_ROOT = root
    cfg.INPUT.BREAST_MASK.ENABLED = True
    cfg.INPUT.BREAST_MASK.SOURCE = "cached"
    cfg.INPUT.BREAST_MASK.DIR = os.path.join(root, "masks", "gt")
    return cfg


def load_class(spec: str) -> type:
    """``"package.module:Class"`` -> the class (the masking mapper to compare with stock)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def build_mappers(cfg, is_train: bool, masking_cls=BreastMaskDatasetMapper) -> Dict[str, Callable]:
    off = cfg.clone()
    off.INPUT.BREAST_MASK.ENABLED = False
    mappers = {
        "stock": DatasetMapper(cfg, is_train),
        "masking": masking_cls(cfg, is_train),
        "masking off": masking_cls(off, is_train),
    }
    augs = {str(m.augmentations) for m in mappers.values()}
    assert len(augs) == 1, f"mappers disagree on augmentations: {augs}"
    return mappers


def interleaved(mappers: Dict[str, Callable], dicts, rounds: int, warmup: int, chunk: int):
    """Per-arm ms/image, one value per round: ``{arm: {"wall": [...], "cpu": [...],
    "faults": [...]}}`` (faults: minor page faults per image).

    A round is one pass over every slice, in chunks of ``chunk`` slices; each chunk is mapped by
    every arm back to back (arm order rotated chunk by chunk, the same ``np.random`` seed for
    each arm so RandomFlip flips alike), so a load spike of the shared machine hits all arms.
    ``cpu`` is this process's CPU time (``time.process_time``), which excludes the time other
    jobs held the cores.
    """
    names = list(mappers)
    out = {n: {"wall": [], "cpu": [], "faults": []} for n in names}
    chunks = [dicts[i : i + chunk] for i in range(0, len(dicts), chunk)]
    turn = 0
    for r in range(warmup + rounds):
        acc = {n: [0.0, 0.0, 0] for n in names}
        gc.collect()
        for c, part in enumerate(chunks):
            turn += 1
            for name in names[turn % len(names) :] + names[: turn % len(names)]:
                np.random.seed(r * len(chunks) + c)
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                wall, cpu = time.perf_counter(), time.process_time()
                for d in part:
                    mappers[name](d)
                acc[name][0] += time.perf_counter() - wall
                acc[name][1] += time.process_time() - cpu
                acc[name][2] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        if r >= warmup:
            for name, (wall, cpu, faults) in acc.items():
                out[name]["wall"].append(wall * 1e3 / len(dicts))
                out[name]["cpu"].append(cpu * 1e3 / len(dicts))
                out[name]["faults"].append(faults / len(dicts))
    return out


def breakdown(mapper: BreastMaskDatasetMapper, dicts, rounds: int) -> Dict[str, float]:
    """Median (over rounds) ms/image of the steps the masking mapper adds to the stock one.

    Re-runs those steps outside the mapper (keep in step with ``BreastMaskDatasetMapper``):
    ``read mask``: ``_read_mask`` (cv2.imread + ``> 0``); ``mask multiply``: ``image *
    mask[:, :, None]`` on the image as ``read_image`` returns it (for BGR, a channel-reversed
    view of the RGB decode); ``mask transforms``: the augmentations' transforms applied to the
    mask (``sem_seg``); ``mask tensor``: ``dataset_dict["breast_mask"]``.
    """
    steps = ("read mask", "mask multiply", "mask transforms", "mask tensor")
    per_round = {k: [] for k in steps}
    clock = time.perf_counter
    for r in range(rounds):
        acc = dict.fromkeys(steps, 0.0)
        np.random.seed(r)
        for d in dicts:
            image = utils.read_image(d["file_name"], format=mapper.image_format)
            t0 = clock()
            mask = mapper._read_mask(d, image)
            t1 = clock()
            image = image * mask[:, :, None]
            t2 = clock()
            transforms = mapper.augmentations(T.AugInput(image))
            t3 = clock()
            mask = transforms.apply_segmentation(mask)
            t4 = clock()
            torch.as_tensor(np.require(mask, requirements=["C", "W"]))
            t5 = clock()
            for key, dt in zip(steps, (t1 - t0, t2 - t1, t4 - t3, t5 - t4)):
                acc[key] += dt
        for key, total in acc.items():
            per_round[key].append(total * 1e3 / len(dicts))
    return {k: float(np.median(v)) for k, v in per_round.items()}


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def run_setting(args, root: str, config_file: str, label: str) -> List[str]:
    dicts = load_slices(root)
    cfg = build_cfg(config_file, root, args.opts)
    h, w = dicts[0]["height"], dicts[0]["width"]
    rows = []
    for is_train in (True, False):
        mappers = build_mappers(cfg, is_train, load_class(args.mapper))
        times = interleaved(mappers, dicts, args.rounds, args.warmup, args.chunk)
        med = {n: float(np.median(t["wall"])) for n, t in times.items()}

        def ratios(arm, clock="wall"):
            return np.array(times[arm][clock]) / np.array(times["stock"][clock])

        q1, q3 = np.percentile(ratios("masking"), [25, 75])
        faults = {n: t["faults"] for n, t in times.items()}
        out_size = mappers["stock"](dicts[0])["image"].shape[1:]
        rows.append(
            f"| {label} | {h}x{w} -> {out_size[0]}x{out_size[1]} | {is_train} | {len(dicts)} | "
            f"{med['stock']:.2f} | {med['masking']:.2f} | {med['masking off']:.2f} | "
            f"**{np.median(ratios('masking')):.2f}x** | {q1:.2f}-{q3:.2f} | "
            f"{np.median(ratios('masking', 'cpu')):.2f}x | "
            f"{np.median(ratios('masking off')):.2f}x | "
            f"{np.median(faults['stock']):.0f} / {np.median(faults['masking']):.0f} |"
        )
        if is_train and args.breakdown_rounds:
            steps = breakdown(mappers["masking"], dicts, args.breakdown_rounds)
            args.breakdowns.append((f"{label}, {h}x{w} -> {out_size[0]}x{out_size[1]}", steps))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["160:32", "320:16"],
                        help="phantom cohorts to make, MATRIX:SLICES each")
    parser.add_argument("--cases", type=int, default=4, help="phantom cases per cohort")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed")
    parser.add_argument("--data", default="", help="use this converted folder instead of --sizes")
    parser.add_argument("--config-file", default="configs/frcnn_cpu_demo.yaml")
    parser.add_argument("--mapper", default="breast_d2.data.mapper:BreastMaskDatasetMapper",
                        help="masking mapper class to compare, module:Class (e.g. a proposed fix)")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per mapper")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--chunk", type=int, default=8, help="slices per interleaved chunk")
    parser.add_argument("--breakdown-rounds", type=int, default=5, help="0 skips the breakdown")
    parser.add_argument("--pil-blocks-max", type=int, default=-1,
                        help="Image.core.set_blocks_max(N): let Pillow reuse N freed image "
                        "blocks (-1: Pillow's default, 0, which frees and page-faults them)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    args = parser.parse_args()
    args.breakdowns = []
    cv2.setNumThreads(1)  # as in a DataLoader worker (which also runs torch on 1 thread)
    torch.set_num_threads(1)
    if args.pil_blocks_max >= 0:
        Image.core.set_blocks_max(args.pil_blocks_max)
    config_file = os.path.join(REPO, args.config_file)
    config_name = os.path.basename(args.config_file)
    load_before = loadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    if args.data:
        rows += run_setting(args, os.path.abspath(args.data), config_file, config_name)
    for size in args.sizes if not args.data else []:
        matrix, slices = (int(v) for v in size.split(":"))
        with tempfile.TemporaryDirectory(prefix="bench_mapper_") as tmp:
            root = make_cohort(tmp, matrix, slices, args.cases, args.seed)
            rows += run_setting(args, root, config_file, config_name)

    print(f"- {started}; {os.cpu_count()} CPU cores, load average {load_before} before, "
          f"{loadavg()} after; torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"OpenCV {cv2.__version__} (1 thread), Python {platform.python_version()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, Pillow "
          f"{Image.__version__} (blocks_max {Image.core.get_blocks_max()})")
    print(f"- masking mapper: {args.mapper}; cached masks: masks/gt of each cohort")
    print(f"- {args.rounds} rounds (+{args.warmup} warm-up), each one pass over every slice by "
          f"every mapper, interleaved in chunks of {args.chunk} slices; wall ms/image are medians "
          "over rounds; ratios are medians of per-round ratios (wall, and CPU time of the "
          "process); off / stock is the A/A check (same work: the noise floor); faults: median "
          "minor page faults per image, stock / masking")
    print()
    print("| config | slice -> input | is_train | slices | stock ms/img | masking ms/img | "
          "masking off ms/img | masking / stock | IQR | masking / stock, CPU | off / stock | "
          "faults |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    if args.breakdowns:
        print()
        print(f"Steps masking adds (is_train=True, ms/image, median of {args.breakdown_rounds} "
              "rounds):")
        print()
        names = list(args.breakdowns[0][1])
        print("| setting | " + " | ".join(names) + " |")
        print("|---|" + "---:|" * len(names))
        for label, steps in args.breakdowns:
            print(f"| {label} | " + " | ".join(f"{steps[n]:.3f}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
