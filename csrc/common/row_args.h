// Host side of the row kernel: the tensors of one call, checked, made contiguous and launched on
// the device they live on. Each op (soft_cross_entropy, calibration_update, class_stats_update)
// fills the parts it uses.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace psl {

struct RowArgs {
  at::Tensor logits;                       // N x C
  at::Tensor labels;                       // N
  std::optional<at::Tensor> labels2, lam;  // N, N (lam may also be a value)
  double lam_value = 1;
  std::optional<at::Tensor> smoothing, table_weight, dense_weight;  // N each, or the values below
  double smoothing_value = 0, table_weight_value = 0, dense_weight_value = 0;
  std::optional<at::Tensor> table;         // C x C
  std::optional<at::Tensor> dense;         // N x C
  bool dense_logits = false;
  double temperature = 1;
  int64_t ignore_index = -100;

  bool want_loss = false;
  int64_t reduction = 0;                   // with want_loss: 0 none, 1 mean, 2 sum
  bool want_grad = false;
  std::optional<at::Tensor> grad_output;   // one value or N

  std::optional<at::Tensor> class_sum, class_count;   // C x C fp32, C fp32
  std::optional<at::Tensor> calib_bins, calib_sums;   // M x 3 fp64, 3 fp64
};

struct RowOutputs {
  at::Tensor loss;  // reduced ([]) or per row ([N]), accumulation dtype (empty when not wanted)
  at::Tensor grad;  // N x C, logits dtype (empty when not wanted)
};

// Checks shapes, dtypes and devices (never values: those are the kernels'), then runs the kernel.
RowOutputs run_rows(const RowArgs& args);

// grad *= factor row by row (factor: one value or one per row); rows with factor 1 are untouched.
void scale_rows(at::Tensor& grad, const at::Tensor& factor);

}  // namespace psl
