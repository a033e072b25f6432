#!/usr/bin/env python
"""Benchmark 3D merging + FROC against the I/O floor of loading the same detections from JSON.

Synthetic load (the FROC issue): ``--cases`` x ``--slices`` x ``--per-slice`` slice detections
(default 1,000 x 100 x 20 = 2 million) in 512 x 512 slices; each case has 0-3 masses seen on
consecutive slices by jittered boxes, every other detection is a random box. The load is made
once; then every step below is timed ``--repeats`` times in the same process (each repeat loads
the file again), and the table gives the median and the spread (min-max) of the repeats:

- ``load``: ``json.load`` of the detections file (the floor: any tool must at least read it);
- ``load, GC paused``: the same with the cyclic garbage collector paused around it (the
  tighter floor: building 2 million dicts with the GC on triggers full collections);
- ``merge`` (dict path, what tools/froc.py-style users call): ``merge_slice_detections``;
- ``froc``: ``compute_froc`` of the candidates (1,000 bootstrap resamples by default);
- the array path (what ``BreastFROCEvaluator`` uses): ``merge_slice_arrays`` + ``compute_froc``.

Ratios are taken inside each repeat (steps of the same repeat share the machine's load), then
their median and spread are reported. ``--profile`` runs the two paths once more under cProfile
and prints where the time goes.

Example::

    OMP_NUM_THREADS=1 python benchmarks/bench_froc.py            # the issue's 2M load, 3 repeats
    OMP_NUM_THREADS=1 python benchmarks/bench_froc.py --cases 50  # quick check
"""
import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import sys
import tempfile
import time
from typing import Dict, List

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


def _load_gc_paused(path: str):
    with gc_paused():
        return _load(path)


def timed(fn, *args, **kwargs):
    gc.collect()
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def _dict_path(loaded, gt, bootstrap: int, seed: int):
    return compute_froc(merge_slice_detections(loaded), gt, bootstrap=bootstrap, seed=seed)


def _array_path(loaded, gt, bootstrap: int, seed: int):
    merged = merge_slice_arrays(*detections_to_arrays(loaded))
    return compute_froc(merged, gt, bootstrap=bootstrap, seed=seed)


def run_once(path: str, gt, bootstrap: int, seed: int) -> Dict[str, object]:
    """Time every step once; returns ``{step: seconds}`` plus ``"info"`` (result summary)."""
    t: Dict[str, object] = {}
    loaded, t["load"] = timed(_load, path)
    del loaded
    loaded, t["load_nogc"] = timed(_load_gc_paused, path)
    cands, t["merge"] = timed(merge_slice_detections, loaded)
    result, t["froc"] = timed(compute_froc, cands, gt, bootstrap=bootstrap, seed=seed)
    n_cands = len(cands)
    del cands
    arrays, t["conv"] = timed(detections_to_arrays, loaded)
    merged, t["merge_arr"] = timed(merge_slice_arrays, *arrays)
    result_arr, t["froc_arr"] = timed(compute_froc, merged, gt, bootstrap=bootstrap, seed=seed)
    assert result_arr["cpm"] == result["cpm"] and len(merged) == n_cands
    _, t["froc_noboot"] = timed(compute_froc, merged, gt, bootstrap=0)
    t["dict_path"] = t["merge"] + t["froc"]
    t["array_path"] = t["conv"] + t["merge_arr"] + t["froc_arr"]
    t["info"] = {"detections": len(loaded), "candidates": n_cands, "result": result}
    return t


def profile(path: str, gt, bootstrap: int, seed: int, top: int) -> str:
    """cProfile of the dict path and the array path (one run each), top functions by own time."""
    loaded = _load_gc_paused(path)
    out = io.StringIO()
    for name, fn in (("dict path", _dict_path), ("array path", _array_path)):
        prof = cProfile.Profile()
        gc.collect()
        prof.runcall(fn, loaded, gt, bootstrap, seed)
        out.write(f"\n### cProfile: {name} (merge + FROC, bootstrap {bootstrap})\n\n")
        stats = pstats.Stats(prof, stream=out)
        out.write("Cumulative time of breast_d2's functions (where each stage's time goes):\n")
        stats.sort_stats("cumulative").print_stats("breast_d2", top)
        out.write("Own time, every function (what the stages spend it on):\n")
        stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


STEPS = [
    ("load", "json.load of the detections (floor)"),
    ("load_nogc", "json.load with the GC paused (tighter floor)"),
    ("merge", "merge_slice_detections (dicts in, dicts out)"),
    ("froc", "compute_froc on the dict list, bootstrap {b}"),
    ("dict_path", "**merge + FROC, dict path**"),
    ("conv", "detections_to_arrays (validation + conversion)"),
    ("merge_arr", "merge_slice_arrays"),
    ("froc_arr", "compute_froc on CandidateArrays, bootstrap {b}"),
    ("froc_noboot", "compute_froc on CandidateArrays, no bootstrap"),
    ("array_path", "**merge + FROC, array path (evaluator)**"),
]


def _spread(values: List[float], digits: int) -> str:
    """``median (min-max)`` of ``values``."""
    return f"{np.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def table(runs: List[Dict[str, object]], bootstrap: int) -> str:
    """Markdown table: median (min-max) seconds and ratios to both floors over the repeats."""
    lines = [
        "| step | wall s | × json.load | × GC-paused json.load |",
        "|---|---:|---:|---:|",
    ]
    for key, label in STEPS:
        secs = [r[key] for r in runs]
        x_load = [r[key] / r["load"] for r in runs]
        x_nogc = [r[key] / r["load_nogc"] for r in runs]
        lines.append(
            f"| {label.format(b=bootstrap)} | {_spread(secs, 2)} | {_spread(x_load, 2)} | "
            f"{_spread(x_nogc, 2)} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--per-slice", type=int, default=20)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median + spread)")
    parser.add_argument("--profile", action="store_true",
                        help="also run both paths once under cProfile and print the top functions")
    parser.add_argument("--profile-top", type=int, default=25)
    args = parser.parse_args()
    if args.repeats < (0 if args.profile else 1):
        parser.error("--repeats must be >= 1 (0 only with --profile)")

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
        runs = []
        for k in range(args.repeats):
            runs.append(run_once(path, gt, args.bootstrap, args.seed))
            print(f"repeat {k + 1}/{args.repeats}: json.load {runs[-1]['load']:.2f} s, "
                  f"GC paused {runs[-1]['load_nogc']:.2f} s, dict path "
                  f"{runs[-1]['dict_path']:.2f} s, array path {runs[-1]['array_path']:.2f} s, "
                  f"load average {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        profiled = profile(path, gt, args.bootstrap, args.seed, args.profile_top) \
            if args.profile else ""

    if not runs:
        print(profiled)
        return 0
    info = runs[0]["info"]
    result = info["result"]
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    med = {(k, base): float(np.median([r[k] / r[base] for r in runs]))
           for base in ("load", "load_nogc") for k in ("dict_path", "array_path")}
    print(f"- load: {args.cases} cases x {args.slices} slices x {args.per_slice} detections = "
          f"{info['detections']:,} slice detections, JSON {size_mb:.0f} MB (generated in "
          f"{gen_s:.0f} s)")
    print(f"- {info['candidates']:,} candidates, {result['num_lesions']} masses, "
          f"{result['num_false_positives']:,} false positives; sens@3.4 "
          f"{result['sensitivity_at']['3.4']:.3f}, CPM {result['cpm']:.3f}")
    print(f"- Python {platform.python_version()}, NumPy {np.__version__}, "
          f"{os.cpu_count()} CPU cores, OMP_NUM_THREADS={threads}, {args.repeats} repeats, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"- merge + FROC, median over repeats: dict path {med['dict_path', 'load']:.2f}x "
          f"json.load ({med['dict_path', 'load_nogc']:.2f}x the GC-paused load), array path "
          f"{med['array_path', 'load']:.2f}x ({med['array_path', 'load_nogc']:.2f}x)")
    print()
    print("Median (min–max) over the repeats:")
    print()
    print(table(runs, args.bootstrap))
    if profiled:
        print(profiled)
    return 0


if __name__ == "__main__":
    sys.exit(main())
