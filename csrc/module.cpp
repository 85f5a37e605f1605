// pysoftlabel._C: loading it registers the ops (torch.ops.pysoftlabel.*); the module itself only
// reports how the extension was built.
#include <torch/extension.h>

#include "common/launch.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pysoftlabel native kernels (ops are under torch.ops.pysoftlabel)";
  m.def("build_info", [] {
    pybind11::dict info;
    info["cpu"] = true;
#if defined(PSL_WITH_CUDA)
    info["cuda"] = true;
    info["cuda_archs"] = PSL_CUDA_ARCHS;
#else
    info["cuda"] = false;
    info["cuda_archs"] = "";
#endif
    info["built_with_torch"] = PSL_TORCH_VERSION;
    info["cpu_capability"] = psl::cpu_capability();
    // Built without OpenMP (a compiler without it), at::parallel_for runs the CPU kernels on one thread.
#if defined(_OPENMP)
    info["openmp"] = true;
#else
    info["openmp"] = false;
#endif
    return info;
  });
}
