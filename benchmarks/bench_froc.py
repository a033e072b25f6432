#!/usr/bin/env python
"""Benchmark 3D merging + FROC against the I/O floor of loading the same detections from JSON.

Synthetic load (the FROC issue): ``--cases`` x ``--slices`` x ``--per-slice`` slice detections
(default 1,000 x 100 x 20 = 2 million) in 512 x 512 slices; each case has 0-3 masses seen on
consecutive slices by jittered boxes, every other detection is a random box. Timed in one run:

- ``load``: ``json.load`` of the detections file (the floor: any tool must at least read it);
- ``merge`` (dict path, what tools/froc.py-style users call): ``merge_slice_detections``;
- ``froc``: ``compute_froc`` of the candidates (1,000 bootstrap resamples by default);
- the array path (what ``BreastFROCEvaluator`` uses): ``merge_slice_arrays`` + ``compute_froc``.

Example::

    OMP_NUM_THREADS=1 python benchmarks/bench_froc.py            # the issue's 2M load
    OMP_NUM_THREADS=1 python benchmarks/bench_froc.py --cases 50  # quick check
"""
import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

from breast_d2.evaluation.candidates import detections_to_arrays, gc_paused, merge_slice_arrays
from breast_d2.evaluation.candidates import merge_slice_detections
from breast_d2.evaluation.froc import compute_froc


def make_load(cases: int, slices: int, per_slice: int, seed: int):
    """Synthetic slice detections and ground truth (see module docstring)."""
    rng = np.random.default_rng(seed)
    n = cases * slices * per_slice
    case = np.repeat(np.arange(cases), slices * per_slice)
    z = np.tile(np.repeat(np.arange(slices), per_slice), cases)
    wh = rng.uniform(8, 60, size=(n, 2))
    xy = rng.uniform(0, 512 - 60, size=(n, 2))
    score = rng.uniform(0.05, 0.9, size=n)
    gt_cases = []
    for c in range(cases):
        boxes = []
        for _ in range(rng.integers(0, 4)):
            size = rng.uniform(15, 50)
            x0, y0 = rng.uniform(0, 512 - size, size=2)
            z0 = int(rng.integers(0, slices - 20))
            z1 = z0 + int(rng.integers(6, 20))
            boxes.append([float(x0), float(y0), z0, float(x0 + size), float(y0 + size), z1])
            # The first detection of each slice the mass spans becomes a jittered hit (90%).
            for zz in range(z0, z1):
                if rng.random() < 0.9:
                    i = (c * slices + zz) * per_slice
                    jit = rng.normal(0, 0.05 * size, size=4)
                    xy[i] = [x0 + jit[0], y0 + jit[1]]
                    wh[i] = [size + jit[2], size + jit[3]]
                    score[i] = rng.uniform(0.5, 1.0)
        gt_cases.append({"case_id": f"C{c:04d}", "boxes": boxes})
    xy = np.clip(xy, 0, None)
    boxes = np.round(np.c_[xy, xy + np.maximum(wh, 2)], 2)
    names = [f"C{c:04d}" for c in range(cases)]
    columns = (case.tolist(), z.tolist(), boxes.tolist(), np.round(score, 4).tolist())
    dets = [
        {"case_id": names[c], "slice": s, "box": b, "score": sc} for c, s, b, sc in zip(*columns)
    ]
    return dets, gt_cases


def _load(path: str):
    with open(path) as f:
        return json.load(f)


def timed(fn, *args, **kwargs):
    gc.collect()
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--per-slice", type=int, default=20)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    t0 = time.perf_counter()
    with gc_paused():  # untimed set-up
        dets, gt = make_load(args.cases, args.slices, args.per_slice, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "detections.json")
        with open(path, "w") as f:
            f.write(json.dumps(dets))
        size_mb = os.path.getsize(path) / 1e6
        del dets
        gen_s = time.perf_counter() - t0

        # The floor as a user meets it (default interpreter, GC on), and the tighter one.
        loaded, t_load = timed(_load, path)
        del loaded
        with gc_paused():
            loaded, t_load_nogc = timed(_load, path)
    cands, t_merge = timed(merge_slice_detections, loaded)
    result, t_froc = timed(compute_froc, cands, gt, bootstrap=args.bootstrap, seed=args.seed)
    n_cands = len(cands)
    del cands
    arrays, t_conv = timed(detections_to_arrays, loaded)
    merged, t_merge_arr = timed(merge_slice_arrays, *arrays)
    result_arr, t_froc_arr = timed(
        compute_froc, merged, gt, bootstrap=args.bootstrap, seed=args.seed
    )
    assert result_arr["cpm"] == result["cpm"] and len(merged) == n_cands
    _, t_froc_noboot = timed(compute_froc, merged, gt, bootstrap=0)

    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    dict_path = t_merge + t_froc
    array_path = t_conv + t_merge_arr + t_froc_arr
    rows = [
        ("json.load of the detections (floor)", t_load, 1.0),
        ("json.load with the GC paused (tighter floor)", t_load_nogc, t_load_nogc / t_load),
        ("merge_slice_detections (dicts in, dicts out)", t_merge, t_merge / t_load),
        (f"compute_froc on the dict list, bootstrap {args.bootstrap}", t_froc, t_froc / t_load),
        ("**merge + FROC, dict path**", dict_path, dict_path / t_load),
        ("detections_to_arrays (validation + conversion)", t_conv, t_conv / t_load),
        ("merge_slice_arrays", t_merge_arr, t_merge_arr / t_load),
        (f"compute_froc on CandidateArrays, bootstrap {args.bootstrap}", t_froc_arr,
         t_froc_arr / t_load),
        ("compute_froc on CandidateArrays, no bootstrap", t_froc_noboot, t_froc_noboot / t_load),
        ("**merge + FROC, array path (evaluator)**", array_path, array_path / t_load),
    ]
    print(f"- load: {args.cases} cases x {args.slices} slices x {args.per_slice} detections = "
          f"{len(loaded):,} slice detections, JSON {size_mb:.0f} MB (generated in {gen_s:.0f} s)")
    print(f"- {n_cands:,} candidates, {result['num_lesions']} masses, "
          f"{result['num_false_positives']:,} false positives; sens@3.4 "
          f"{result['sensitivity_at']['3.4']:.3f}, CPM {result['cpm']:.3f}")
    print(f"- Python {platform.python_version()}, NumPy {np.__version__}, "
          f"{os.cpu_count()} CPU cores, OMP_NUM_THREADS={threads}, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"- merge + FROC / json.load: dict path {dict_path / t_load:.2f}x "
          f"({dict_path / t_load_nogc:.2f}x the GC-paused load), array path "
          f"{array_path / t_load:.2f}x ({array_path / t_load_nogc:.2f}x)")
    print()
    print("| step | wall s | x json.load |")
    print("|---|---:|---:|")
    for name, t, ratio in rows:
        print(f"| {name} | {t:.2f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
