#!/usr/bin/env python
"""Phantom generation time per case (CPU and wall), at the study's size and the test size.

    OMP_NUM_THREADS=1 python benchmarks/bench_phantom.py
"""
import statistics as st
import tempfile
import time

from breast_d2.data import phantom as ph


def main():
    print("| setting | make_case CPU s | make_case wall s | write_case CPU s | write_case wall s |")
    print("|---|---|---|---|---|")
    for matrix, slices, cases in ((320, 96, 3), (128, 32, 5)):
        gen_w, gen_c, wr_w, wr_c = [], [], [], []
        with tempfile.TemporaryDirectory() as d:
            for i in range(cases):
                t, c = time.perf_counter(), time.process_time()
                case = ph.make_case(i, 0, matrix=matrix, slices=slices)
                gen_w.append(time.perf_counter() - t)
                gen_c.append(time.process_time() - c)
                t, c = time.perf_counter(), time.process_time()
                ph.write_case(case, d)
                wr_w.append(time.perf_counter() - t)
                wr_c.append(time.process_time() - c)
        print(f"| {matrix}x{matrix}x{slices} | {st.median(gen_c):.2f} | {st.median(gen_w):.2f} | "
              f"{st.median(wr_c):.2f} | {st.median(wr_w):.2f} |", flush=True)


if __name__ == "__main__":
    main()
