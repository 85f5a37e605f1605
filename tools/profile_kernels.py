#!/usr/bin/env python3
"""Run the shapes where the CUDA row kernel is furthest from its targets once each, inside a profiler
range, for Nsight Compute: which limit (DRAM, L2, issue slots, occupancy) each launch hits.

    ncu --profile-from-start off --nvtx --kernel-name regex:row_kernel --section SpeedOfLight \\
        --section MemoryWorkloadAnalysis --section Occupancy python3 tools/profile_kernels.py

(`bash tools/gpu_check.sh profile` runs this with the sections it needs.) Each case runs a few times
first, outside the range, so that ncu sees a warm allocator and the same launch as the benchmark.
"""
import argparse
import sys

import torch

import pysoftlabel as psl
from bench_kernels import fwd_bwd, make_case

# kind:dtype:NxC — the loss (forward + backward) and the calibration statistics where docs/benchmarks.md
# shows them furthest from the floor.
DEFAULT_CASES = ("ls:bfloat16:8192x32000", "ls:float32:4096x128000", "ls:bfloat16:4096x128000",
                 "ols:bfloat16:8192x32000", "calib:bfloat16:8192x32000")


def step_for(kind, dtype, n, c, g):
    if kind == "calib":
        x = (torch.randn(n, c, generator=g, device="cuda") * 2).to(dtype)
        y = torch.randint(0, c, (n,), generator=g, device="cuda")
        cal = psl.CalibrationStats(15, "cuda")
        return lambda: cal.update(x, y)
    case = make_case(n, c, dtype, torch.device("cuda"), kind, g)
    return fwd_bwd(lambda: psl.soft_cross_entropy(case["x"], case["target"]), case["x"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=DEFAULT_CASES, help="kind:dtype:NxC, kind in "
                        "ls, ols, mixup, dense, calib (default: %(default)s)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or not psl.extension_info()["cuda"]:
        sys.exit("profile_kernels.py needs a GPU and pysoftlabel built with CUDA kernels")
    g = torch.Generator(device="cuda").manual_seed(0)
    for spec in args.cases:
        kind, dtype, shape = spec.split(":")
        n, c = (int(v) for v in shape.split("x"))
        step = step_for(kind, getattr(torch, dtype), n, c, g)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        with torch.cuda.nvtx.range(spec):
            step()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
        print(f"profiled {spec}", flush=True)
        del step
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
