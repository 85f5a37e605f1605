"""Builds pysoftlabel._C: CPU kernels always, CUDA kernels whenever a CUDA toolkit and a CUDA build of
PyTorch are present (no GPU needed). The source list is csrc/sources.txt, shared with CMakeLists.txt.

Environment:
  CUDA_HOME             the CUDA toolkit (else: the real nvcc's toolkit, else /usr/local/cuda)
  TORCH_CUDA_ARCH_LIST  architectures to build, e.g. "9.0" (default with no GPU visible: those of DEFAULT_ARCHS
                        that the toolkit's nvcc builds)
  PSL_CPU_ONLY=1        skip the CUDA kernels
  DEBUG=1               -O0 -g
  PSL_CXX_FLAGS         extra C++ flags (default "-fopenmp -fno-trapping-math", without -fopenmp where the
                        compiler has no OpenMP, as Apple's clang: the CPU kernels then run on one thread)
  MAX_JOBS              parallel compile jobs (ninja)
"""
import os
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
# Turing to Blackwell, plus PTX of the newest for what comes after (nvcc 13 no longer builds below 7.5).
DEFAULT_ARCHS = "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"


def read_sources():
    groups, current = {"kernels": [], "ops": [], "cuda": []}, None
    for line in (ROOT / "csrc" / "sources.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
        else:
            groups[current].append(line)
    return groups


def is_toolkit(path):
    return path is not None and (Path(path) / "bin" / "nvcc").exists() and (Path(path) / "include" / "cuda_runtime.h").exists()


def real_nvcc_toolkit():
    """The toolkit of the nvcc on PATH, following links and one-line `exec` wrappers."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    nvcc = os.path.realpath(nvcc)
    try:
        text = Path(nvcc).read_text(errors="ignore") if os.path.getsize(nvcc) < 4096 else ""
    except OSError:
        text = ""
    for word in text.split():
        if word.endswith("/bin/nvcc") and os.path.exists(word):
            nvcc = os.path.realpath(word)
    return str(Path(nvcc).parent.parent)


def find_cuda_home():
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), real_nvcc_toolkit(), "/usr/local/cuda"):
        if is_toolkit(candidate):
            return str(Path(candidate).resolve())
    return None


def buildable_archs(cuda_home, archs=DEFAULT_ARCHS):
    """``archs`` less those the toolkit's nvcc cannot build (``nvcc --list-gpu-arch``: CUDA 12.0 to 12.7 have no
    10.0 or 12.0, for one), the newest kept with +PTX; all of them where nvcc does not say."""
    try:
        listed = subprocess.run([str(Path(cuda_home) / "bin" / "nvcc"), "--list-gpu-arch"], capture_output=True,
                                text=True, timeout=120).stdout.split()
    except (OSError, subprocess.SubprocessError):
        listed = []
    known = {name.removeprefix("compute_") for name in listed}
    wanted = [arch.removesuffix("+PTX") for arch in archs.split(";")]
    kept = [arch for arch in wanted if arch.replace(".", "") in known]
    if not kept:
        return archs
    return ";".join(kept[:-1] + [kept[-1] + "+PTX"])


def compiler_has_openmp():
    """Whether the C++ compiler the extension is built with compiles and links an OpenMP program."""
    cxx = shlex.split(os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "openmp.cpp"
        source.write_text("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            done = subprocess.run([*cxx, "-fopenmp", str(source), "-o", str(Path(tmp) / "openmp")],
                                  capture_output=True)
        except OSError:
            return False
    return done.returncode == 0


cuda_home = None if os.environ.get("PSL_CPU_ONLY") == "1" else find_cuda_home()
if cuda_home:
    # Must be set before torch.utils.cpp_extension is imported: it derives its own CUDA_HOME there.
    os.environ["CUDA_HOME"] = cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

with_cuda = cuda_home is not None and torch.version.cuda is not None
if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    os.environ["TORCH_CUDA_ARCH_LIST"] = buildable_archs(cuda_home)
archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPUs") if with_cuda else ""

debug = os.environ.get("DEBUG") == "1"
sources = read_sources()
define_macros = [("PSL_TORCH_VERSION", f'"{torch.__version__}"'), ("PSL_CUDA_ARCHS", f'"{archs}"')]
cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
# -fopenmp: at::parallel_for is inline and runs serially in a translation unit built without it.
# -fno-trapping-math: lets the compiler turn the clamps of the CPU kernel's exp into vector selects
# (the project never relies on floating-point exceptions).
if "PSL_CXX_FLAGS" in os.environ:
    cxx_flags += os.environ["PSL_CXX_FLAGS"].split()
else:
    cxx_flags += ["-fopenmp", "-fno-trapping-math"] if compiler_has_openmp() else ["-fno-trapping-math"]
LINK_FLAGS = ["-fopenmp"] if "-fopenmp" in cxx_flags else []
openmp = "with OpenMP" if LINK_FLAGS else "without OpenMP (the CPU kernels run on one thread)"
if with_cuda:
    define_macros.append(("PSL_WITH_CUDA", None))
    extension = CUDAExtension(
        "pysoftlabel._C",
        sources=sources["kernels"] + sources["ops"] + sources["cuda"],
        define_macros=define_macros,
        extra_link_args=LINK_FLAGS,
        extra_compile_args={"cxx": cxx_flags, "nvcc": (["-O0", "-g", "-G"] if debug else ["-O3", "-lineinfo"])},
    )
else:
    extension = CppExtension("pysoftlabel._C", sources=sources["kernels"] + sources["ops"], define_macros=define_macros,
                             extra_compile_args={"cxx": cxx_flags}, extra_link_args=LINK_FLAGS)

print(f"pysoftlabel: building CPU kernels {openmp}"
      f"{', and CUDA kernels for ' + archs + ' with ' + cuda_home if with_cuda else ', no CUDA kernels'}")
setup(ext_modules=[extension], cmdclass={"build_ext": BuildExtension})
