#!/usr/bin/env python
"""Run every CPU benchmark with its default settings (``make bench``; long: ~30+ minutes).

Each script prints its own table; copy them into BENCHMARKS.md with the machine and date.
The GPU numbers of configs/frcnn_r101.yaml come from benchmarks/bench_detector.py with
``--device cuda`` on a GPU machine.
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = [
    ["bench_phantom.py"],
    ["bench_convert_duke.py", "--repeats", "3", "--map-rows", "770000"],
    ["bench_froc.py"],
    ["bench_segmentation.py", "--sizes", "320", "160", "--threads", "2"],
    ["bench_mapper.py"],
    ["bench_train_masking.py"],
    ["bench_detector.py", "--config-file", os.path.join(HERE, "..", "configs",
                                                         "frcnn_cpu_demo.yaml"),
     "--device", "cpu", "--threads", "2", "--slices", "48"],
]


def main():
    failed = []
    for run in RUNS:
        print(f"\n## {' '.join(run)}\n", flush=True)
        if subprocess.run([sys.executable, os.path.join(HERE, run[0]), *run[1:]]).returncode:
            failed.append(run[0])
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
