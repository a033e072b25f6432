#!/usr/bin/env python
"""Time the detector of a config: training iterations and whole-case inference.

Runs on synthetic slices (timing does not depend on content) so it needs no data:

    python benchmarks/bench_detector.py --config-file configs/frcnn_r101.yaml --device cuda
    python benchmarks/bench_detector.py --config-file configs/frcnn_cpu_demo.yaml --device cpu

Training: ``--iters`` SGD steps at the config's batch size and input size (weights random,
which costs the same as ImageNet-initialised ones). Inference: every slice of one case
(``--slices``) at the config's test size, in batches of ``--batch``, then 3D merging.
Prints one JSON line and appends a markdown row to ``--out`` if given.
"""
import argparse
import json
import platform
import time

import numpy as np
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from breast_d2.config import add_breast_config


def synthetic_batch(num_images, size, rng):
    batch = []
    for _ in range(num_images):
        image = torch.as_tensor(rng.integers(0, 255, (3, size, size), dtype=np.uint8))
        instances = Instances((size, size))
        x0, y0 = rng.integers(0, size // 2, 2)
        w, h = rng.integers(size // 20, size // 5, 2)
        instances.gt_boxes = Boxes(torch.tensor([[x0, y0, x0 + w, y0 + h]], dtype=torch.float32))
        instances.gt_classes = torch.zeros(1, dtype=torch.int64)
        batch.append({"image": image, "instances": instances, "height": size, "width": size})
    return batch


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_training(cfg, iters, warmup, rng):
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    size = cfg.INPUT.MIN_SIZE_TRAIN[0]
    times = []
    with EventStorage(0):
        for i in range(warmup + iters):
            _train_step(cfg, model, optimizer, rng, size, times, record=i >= warmup)
    return model, float(np.median(times))


def _train_step(cfg, model, optimizer, rng, size, times, record):
    batch = synthetic_batch(cfg.SOLVER.IMS_PER_BATCH, size, rng)
    sync(cfg.MODEL.DEVICE)
    start = time.perf_counter()
    losses = sum(model(batch).values())
    optimizer.zero_grad()
    losses.backward()
    optimizer.step()
    sync(cfg.MODEL.DEVICE)
    if record:
        times.append(time.perf_counter() - start)


@torch.no_grad()
def time_case_inference(cfg, model, num_slices, batch_size, rng):
    from breast_d2.evaluation.candidates import merge_slice_detections

    model.eval()
    size = cfg.INPUT.MIN_SIZE_TEST
    slices = [{"image": b["image"], "height": size, "width": size}
              for b in synthetic_batch(num_slices, size, rng)]
    model(slices[:batch_size])  # warm-up
    sync(cfg.MODEL.DEVICE)
    start = time.perf_counter()
    detections = []
    for i in range(0, num_slices, batch_size):
        outputs = model(slices[i : i + batch_size])
        for z, out in enumerate(outputs, start=i):
            inst = out["instances"].to("cpu")
            for box, score in zip(inst.pred_boxes.tensor.tolist(), inst.scores.tolist()):
                detections.append({"case_id": "c", "slice": z, "box": box, "score": score})
    sync(cfg.MODEL.DEVICE)
    detect_s = time.perf_counter() - start
    start = time.perf_counter()
    merge_slice_detections(detections)
    return detect_s, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--slices", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--out", default="", help="append a markdown row to this file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_cfg()
    add_breast_config(cfg)
    cfg.merge_from_file(args.config_file, allow_unsafe=False)
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", args.device] + args.opts)
    rng = np.random.default_rng(0)
    model, s_per_iter = time_training(cfg, args.iters, args.warmup, rng)
    detect_s, merge_s = time_case_inference(cfg, model, args.slices, args.batch, rng)
    if args.device.startswith("cuda"):
        device_name = torch.cuda.get_device_name()
    else:
        device_name = platform.processor() or "cpu"
    result = {
        "config": args.config_file, "device": device_name, "threads": torch.get_num_threads(),
        "depth": cfg.MODEL.RESNETS.DEPTH, "train_size": cfg.INPUT.MIN_SIZE_TRAIN[0],
        "batch": cfg.SOLVER.IMS_PER_BATCH, "train_s_per_iter": round(s_per_iter, 4),
        "train_images_per_s": round(cfg.SOLVER.IMS_PER_BATCH / s_per_iter, 2),
        "case_slices": args.slices, "case_detect_s": round(detect_s, 3),
        "s_per_slice": round(detect_s / args.slices, 4), "case_merge_s": round(merge_s, 4),
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result))
    if args.out:
        with open(args.out, "a") as f:
            f.write("| " + " | ".join(str(v) for v in result.values()) + " |\n")


if __name__ == "__main__":
    main()
