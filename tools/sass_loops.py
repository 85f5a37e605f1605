#!/usr/bin/env python3
"""Machine instructions per logit in the CUDA row kernel's loops, read from its SASS: the one figure of the
kernel's cost that needs no GPU (the bf16 and calibration launches were issue-bound on the H100, so fewer
instructions per element is what makes them faster).

    python tools/sass_loops.py                 # sm_90, the LS / OLS / dense kernels in fp32 and bf16
    python tools/sass_loops.py --arch 100

Compiles csrc/soft_ce/cuda/row_kernel.cu with setup.py's nvcc flags (nvcc of CUDA_HOME, default
/usr/local/cuda), disassembles it with line information (nvdisasm of the toolkit, or the copy Triton ships),
and counts the instructions of each loop of pass 1 (groups of U vectors, then single vectors) and pass 2
(the gradient-only loop: it stores and has no atomics). Counts are static: every instruction of the loop
body once. "rare" are the instructions of pass 2 that only the vector holding a label executes (subtract_at
in row_passes.h); "per element" leaves them out.
"""
import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEVICE = ROOT / "csrc/soft_ce/cuda/row_device.cuh"
PASSES = ROOT / "csrc/common/row_passes.h"
# (label, logits type as mangled, VEC, table, dense)
KERNELS = [("LS fp32", "f", 4, 0, 0), ("OLS fp32", "f", 4, 1, 0), ("dense fp32", "f", 4, 0, 1),
           ("LS bf16", "N3c108BFloat16E", 8, 0, 0), ("OLS bf16", "N3c108BFloat16E", 8, 1, 0),
           ("dense bf16", "N3c108BFloat16E", 8, 0, 1)]


def tool(name, cuda_home):
    for candidate in (Path(cuda_home) / "bin" / name, shutil.which(name)):
        if candidate and Path(candidate).exists():
            return str(candidate)
    try:
        import triton
        candidate = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    sys.exit(f"{name} not found (CUDA_HOME/bin, PATH, or Triton's package)")


def source_line(path, pattern):
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if pattern in line:
            return number
    sys.exit(f"{path.name}: no line with {pattern!r}")


def disassemble(arch, cuda_home):
    import torch.utils.cpp_extension as ext
    out = Path(tempfile.mkdtemp()) / "row_kernel.cubin"
    cmd = [tool("nvcc", cuda_home), "-O3", "-lineinfo", "-std=c++17", *ext.COMMON_NVCC_FLAGS,
           f"-gencode=arch=compute_{arch},code=sm_{arch}", "-cubin", "-o", str(out),
           *[f"-I{p}" for p in ext.include_paths()], str(ROOT / "csrc/soft_ce/cuda/row_kernel.cu")]
    subprocess.run(cmd, check=True)
    return subprocess.run([tool("nvdisasm", cuda_home), "-c", "-g", str(out)], check=True, capture_output=True,
                          text=True).stdout


def functions(listing):
    """{function name: [(label or None, opcode, (file, line))]}"""
    funcs, current, where = {}, None, None
    for line in listing.splitlines():
        if m := re.match(r"^(_Z\S+):$", line):
            current = funcs.setdefault(m.group(1), [])
        elif m := re.match(r'\s*//## File "(.*)", line (\d+)', line):
            where = (Path(m.group(1)).name, int(m.group(2)))
        elif current is not None and (m := re.match(r"^(\.L_x_\d+):", line)):
            current.append((m.group(1), None, where))
        elif current is not None and (m := re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;", line)):
            current.append((None, m.group(1), where))
    return funcs


def loops(body):
    """(back-edge source line, [instructions]) for each backward branch."""
    labels = {label: i for i, (label, _, _) in enumerate(body) if label}
    found = []
    for i, (_, op, where) in enumerate(body):
        m = op and re.search(r"BRA\s+`\((\.L_x_\d+)\)", op)
        if m and labels.get(m.group(1), i + 1) <= i:
            found.append((where, [entry for entry in body[labels[m.group(1)]:i + 1] if entry[1]]))
    return found


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="90", help="SM architecture (default: %(default)s)")
    args = p.parse_args()
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    funcs = functions(disassemble(args.arch, cuda_home))
    group = ("row_device.cuh", source_line(DEVICE, "for (; v + (U - 1) * stride < n_vec"))
    single = ("row_device.cuh", source_line(DEVICE, "for (; v < n_vec; v += stride)"))
    second = ("row_device.cuh", source_line(DEVICE, "for (int w = n_vec >"))
    rare_from = source_line(PASSES, "PSL_HD void subtract_at(")
    rare = range(rare_from, rare_from + 8)
    print(f"sm_{args.arch}, static SASS instructions per logit (nvcc of {cuda_home})\n")
    print("| kernel | pass 1, groups of U vectors | pass 1, single vectors | pass 2, gradient (rare) "
          "| top opcodes of pass 1 |")
    print("| --- | --- | --- | --- | --- |")
    for label, dtype, vec, table, dense in KERNELS:
        name = next((n for n in funcs if f"row_kernelI{dtype}Li{vec}ELb{table}ELb{dense}E" in n), None)
        if name is None:
            sys.exit(f"no row kernel for {label} in the listing")
        cells, top = {}, ""
        for where, instructions in loops(funcs[name]):
            if where == group:
                u = 2 if vec >= 8 or table or dense else 4
                cells["group"] = f"{len(instructions) / (u * vec):.1f} (U = {u})"
                counts = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", op).split()[0].split(".")[0]
                                             for _, op, _ in instructions)
                top = ", ".join(f"{k} {v}" for k, v in counts.most_common(5))
            elif where == single:
                cells["single"] = f"{len(instructions) / vec:.1f}"
            elif where == second and any("STG" in op for _, op, _ in instructions) and \
                    not any("RED" in op for _, op, _ in instructions):  # the gradient-only loop
                n_rare = sum(1 for _, _, w in instructions if w and w[0] == PASSES.name and w[1] in rare)
                cells.setdefault("second", f"{(len(instructions) - n_rare) / vec:.1f} ({n_rare / vec:.1f})")
        print(f"| {label} | {cells.get('group', '?')} | {cells.get('single', '?')} | {cells.get('second', '?')} "
              f"| {top} |")


if __name__ == "__main__":
    main()
