// pysoftlabel::class_stats_update: rows classified correctly (argmax == label) add their softmax to
// their class's row of class_sum and 1 to class_count (Online Label Smoothing's statistics).
// See pysoftlabel/ops/class_stats.py.
#include <torch/library.h>

#include "../common/row_args.h"

namespace psl {
namespace {

void class_stats_update(const at::Tensor& logits, const at::Tensor& labels, int64_t ignore_index,
                        at::Tensor class_sum, at::Tensor class_count) {
  RowArgs a;
  a.logits = logits;
  a.labels = labels;
  a.ignore_index = ignore_index;
  a.class_sum = class_sum;
  a.class_count = class_count;
  run_rows(a);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pysoftlabel, m) {
  m.set_python_module("pysoftlabel.ops.class_stats");
  m.def(
      "class_stats_update(Tensor logits, Tensor labels, int ignore_index, Tensor(a!) class_sum, "
      "Tensor(b!) class_count) -> ()");
}

TORCH_LIBRARY_IMPL(pysoftlabel, CPU, m) { m.impl("class_stats_update", &class_stats_update); }

#if defined(PSL_WITH_CUDA)
TORCH_LIBRARY_IMPL(pysoftlabel, CUDA, m) { m.impl("class_stats_update", &class_stats_update); }
#endif

}  // namespace psl
