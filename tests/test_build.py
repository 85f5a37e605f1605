"""The build: setup.py compiles the CPU kernels with OpenMP where the compiler has it, and without it (one
thread, said in the build's log) where it has not, as Apple's clang; extension_info() says which."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pysoftlabel as psl

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not psl.extension_info()["cpu"], reason="extension not built")
@pytest.mark.skipif(sys.platform != "linux" or not torch.backends.openmp.is_available(),
                    reason="GCC or clang with OpenMP is the Linux case; elsewhere the compiler may have none")
def test_the_cpu_kernels_were_built_with_openmp():
    assert psl.extension_info()["openmp"] is True


def _build_plan(tmp_path, compiler_lines):
    compiler = tmp_path / "c++"
    compiler.write_text("#!/bin/sh\n" + compiler_lines + "\n")
    compiler.chmod(0o755)
    env = dict(os.environ, CXX=str(compiler), PSL_CPU_ONLY="1")
    env.pop("PSL_CXX_FLAGS", None)
    done = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return [line for line in done.stdout.splitlines() if line.startswith("pysoftlabel: building")]


def test_a_compiler_without_openmp_builds_on_one_thread_and_says_so(tmp_path):
    # Apple's clang: "unsupported option '-fopenmp'"
    without = _build_plan(tmp_path, 'for a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done; exec c++ "$@"')
    assert without == ["pysoftlabel: building CPU kernels without OpenMP (the CPU kernels run on one thread), "
                       "no CUDA kernels"]
    assert _build_plan(tmp_path, 'exec c++ "$@"') == [
        "pysoftlabel: building CPU kernels with OpenMP, no CUDA kernels"]
