// pysoftlabel::calibration_update: one pass over the logits into an M-bin confidence histogram
// (count, confidence sum, correct count) and the NLL / Brier sums. See pysoftlabel/ops/calibration.py.
#include <torch/library.h>

#include "../common/row_args.h"

namespace psl {
namespace {

void calibration_update(const at::Tensor& logits, const at::Tensor& labels, int64_t ignore_index, at::Tensor bins,
                        at::Tensor sums) {
  RowArgs a;
  a.logits = logits;
  a.labels = labels;
  a.ignore_index = ignore_index;
  a.calib_bins = bins;
  a.calib_sums = sums;
  run_rows(a);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pysoftlabel, m) {
  m.set_python_module("pysoftlabel.ops.calibration");
  m.def("calibration_update(Tensor logits, Tensor labels, int ignore_index, Tensor(a!) bins, Tensor(b!) sums) -> ()");
}

TORCH_LIBRARY_IMPL(pysoftlabel, CPU, m) { m.impl("calibration_update", &calibration_update); }

#if defined(PSL_WITH_CUDA)
TORCH_LIBRARY_IMPL(pysoftlabel, CUDA, m) { m.impl("calibration_update", &calibration_update); }
#endif

}  // namespace psl
