// pysoftlabel::soft_cross_entropy: schema and the host function registered for CPU and CUDA.
// The Python layer (pysoftlabel/ops/soft_cross_entropy.py) owns the autograd of the user-facing API and
// the fake kernel; this op is the per-row primitive it calls (autograd.cpp: its gradient when called directly).
#include <ATen/core/Reduction.h>
#include <torch/library.h>

#include "../common/row_args.h"

namespace psl {
namespace {

std::tuple<at::Tensor, at::Tensor> soft_cross_entropy(
    const at::Tensor& logits, const at::Tensor& labels, const std::optional<at::Tensor>& labels2,
    const std::optional<at::Tensor>& lam, double lam_value, const std::optional<at::Tensor>& smoothing,
    double smoothing_value, const std::optional<at::Tensor>& table, const std::optional<at::Tensor>& table_weight,
    double table_weight_value, const std::optional<at::Tensor>& dense, const std::optional<at::Tensor>& dense_weight,
    double dense_weight_value, bool dense_logits, double temperature, int64_t ignore_index,
    int64_t reduction, const std::optional<at::Tensor>& grad_output, bool compute_grad,
    const std::optional<at::Tensor>& class_sum, const std::optional<at::Tensor>& class_count,
    const std::optional<at::Tensor>& calib_bins, const std::optional<at::Tensor>& calib_sums) {
  RowArgs a;
  a.logits = logits;
  a.labels = labels;
  a.labels2 = labels2;
  a.lam = lam;
  a.lam_value = lam_value;
  a.smoothing = smoothing;
  a.smoothing_value = smoothing_value;
  a.table = table;
  a.table_weight = table_weight;
  a.table_weight_value = table_weight_value;
  a.dense = dense;
  a.dense_weight = dense_weight;
  a.dense_weight_value = dense_weight_value;
  a.dense_logits = dense_logits;
  a.temperature = temperature;
  a.ignore_index = ignore_index;
  a.want_loss = true;
  a.want_grad = compute_grad;
  TORCH_CHECK_VALUE(reduction >= at::Reduction::None && reduction <= at::Reduction::Sum,
                    "reduction must be 0 (none), 1 (mean) or 2 (sum), got ", std::to_string(reduction));
  a.reduction = reduction;  // reduced by the kernels: no extra ops, no synchronisation
  a.grad_output = grad_output;
  a.class_sum = class_sum;
  a.class_count = class_count;
  a.calib_bins = calib_bins;
  a.calib_sums = calib_sums;
  RowOutputs out = run_rows(a);
  return {out.loss, out.grad};
}

void scale_rows_(at::Tensor grad, const at::Tensor& grad_output) { scale_rows(grad, grad_output); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(pysoftlabel, m) {
  m.set_python_module("pysoftlabel.ops.soft_cross_entropy");
  // Soft-target cross-entropy reduced by `reduction` (0 none, 1 mean, 2 sum, as at::Reduction); with
  // compute_grad also its gradient for grad_output (None: 1), written into a new tensor. The four
  // state tensors, when given, accumulate class and calibration statistics in the same pass.
  m.def(
      "soft_cross_entropy(Tensor logits, Tensor labels, Tensor? labels2, Tensor? lam, float lam_value, "
      "Tensor? smoothing, float smoothing_value, Tensor? table, Tensor? table_weight, float table_weight_value, "
      "Tensor? dense, Tensor? dense_weight, float dense_weight_value, bool dense_logits, float temperature, "
      "int ignore_index, int reduction, Tensor? grad_output, bool compute_grad, "
      "Tensor(a!)? class_sum, Tensor(b!)? class_count, Tensor(c!)? calib_bins, Tensor(d!)? calib_sums) "
      "-> (Tensor loss, Tensor grad)");
  // grad *= grad_output row by row, in place, skipping rows whose factor is 1.
  m.def("_scale_rows_(Tensor(a!) grad, Tensor grad_output) -> ()");
}

TORCH_LIBRARY_IMPL(pysoftlabel, CPU, m) {
  m.impl("soft_cross_entropy", &soft_cross_entropy);
  m.impl("_scale_rows_", &scale_rows_);
}

#if defined(PSL_WITH_CUDA)
TORCH_LIBRARY_IMPL(pysoftlabel, CUDA, m) {
  m.impl("soft_cross_entropy", &soft_cross_entropy);
  m.impl("_scale_rows_", &scale_rows_);
}
#endif

}  // namespace psl
