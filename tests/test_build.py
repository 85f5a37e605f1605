"""The build: setup.py compiles the CPU kernels with OpenMP where the compiler has it, and without it (one
thread, said in the build's log) where it has not, as Apple's clang; extension_info() says which. With no GPU
visible it builds the CUDA kernels for the default architectures that the toolkit's nvcc can build."""
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


def _setup_plan(**environment):
    """The lines in which setup.py says what it builds, run with ``environment`` changed (None: unset)."""
    env = dict(os.environ)
    for name, value in environment.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    done = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return [line for line in done.stdout.splitlines() if line.startswith("pysoftlabel: building")]


def _build_plan(tmp_path, compiler_lines):
    compiler = tmp_path / "c++"
    compiler.write_text("#!/bin/sh\n" + compiler_lines + "\n")
    compiler.chmod(0o755)
    return _setup_plan(CXX=str(compiler), PSL_CPU_ONLY="1", PSL_CXX_FLAGS=None)


def _fake_toolkit(tmp_path, archs):
    """A CUDA toolkit whose nvcc lists ``archs`` (``--list-gpu-arch``), as far as setup.py looks at one."""
    toolkit = tmp_path / ("cuda-" + "-".join(archs))
    (toolkit / "bin").mkdir(parents=True)
    (toolkit / "include").mkdir()
    (toolkit / "include" / "cuda_runtime.h").write_text("")
    nvcc = toolkit / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\n" + "".join(f"echo compute_{a}\n" for a in archs))
    nvcc.chmod(0o755)
    return toolkit


@pytest.mark.skipif(torch.version.cuda is None or torch.cuda.is_available(),
                    reason="the default list is for a CUDA build of PyTorch with no GPU visible")
def test_the_default_architectures_are_those_the_toolkit_builds(tmp_path):
    def plan(archs):
        line = _setup_plan(CUDA_HOME=str(_fake_toolkit(tmp_path, archs)), TORCH_CUDA_ARCH_LIST=None)[0]
        return line.split("CUDA kernels for ")[1].split(" with ")[0]

    # CUDA 13: every default; CUDA 12.4 (no Blackwell): up to Hopper, whose PTX then serves what comes after.
    assert plan(["75", "80", "86", "87", "89", "90", "100", "103", "110", "120", "121"]) == \
        "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"
    assert plan(["50", "52", "60", "61", "70", "75", "80", "86", "87", "89", "90"]) == "7.5;8.0;8.6;8.9;9.0+PTX"
    assert plan([]) == "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"  # an nvcc that does not say: the defaults


def test_a_compiler_without_openmp_builds_on_one_thread_and_says_so(tmp_path):
    # Apple's clang: "unsupported option '-fopenmp'"
    without = _build_plan(tmp_path, 'for a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done; exec c++ "$@"')
    assert without == ["pysoftlabel: building CPU kernels without OpenMP (the CPU kernels run on one thread), "
                       "no CUDA kernels"]
    assert _build_plan(tmp_path, 'exec c++ "$@"') == [
        "pysoftlabel: building CPU kernels with OpenMP, no CUDA kernels"]
