#include "row_args.h"

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <cstdio>

#if defined(PSL_WITH_CUDA)
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "launch.h"

namespace psl {
namespace {

// Numbers and shapes in messages are formatted with std::to_string and snprintf, not iostreams: built with
// GCC 13 against PyTorch 2.11's headers, the module carried its own copy of ostream's numeric insertion,
// and formatting an integer in an error message crashed there.
std::string num(int64_t v) { return std::to_string(v); }
std::string num(double v) {  // as Python prints it (0.5, 0, 1e-05), not std::to_string's 0.000000
  char text[32];
  std::snprintf(text, sizeof text, "%g", v);
  return text;
}

#if defined(PSL_WITH_CUDA)
// A launch's error. On a GPU the kernels were not built for, every launch fails with CUDA's bare "no kernel
// image is available": say which architectures the build has and how to build for this GPU instead.
void check_launch(cudaError_t error) {
  if (error == cudaErrorNoKernelImageForDevice || error == cudaErrorInvalidDeviceFunction) {
    cudaDeviceProp gpu{};
    C10_CUDA_CHECK(cudaGetDeviceProperties(&gpu, c10::cuda::current_device()));
    const std::string arch = num(int64_t{gpu.major}) + "." + num(int64_t{gpu.minor});
    const char* built = PSL_CUDA_ARCHS[0] != '\0' ? PSL_CUDA_ARCHS : "other architectures";
    TORCH_CHECK(false, "pysoftlabel's CUDA kernels were built for ", built, ", not for this GPU (", gpu.name,
                ", compute capability ", arch, "): build them for it with TORCH_CUDA_ARCH_LIST=\"", arch,
                "\" pip install --no-build-isolation . (or pass backend=\"reference\")");
  }
  C10_CUDA_CHECK(error);
}
#endif

std::string shape(at::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + "]";
}

void check_device(const at::Tensor& t, const at::Tensor& logits, const char* name) {
  TORCH_CHECK_VALUE(t.device() == logits.device(), name, " is on ", t.device(), " but logits is on ",
                    logits.device());
}

void check_rows(const std::optional<at::Tensor>& t, const at::Tensor& logits, const char* name) {
  if (!t) return;
  check_device(*t, logits, name);
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == logits.size(0), name, " must have shape [N] = [",
                    num(logits.size(0)), "], got ", shape(t->sizes()));
}

// A contiguous copy in dtype `dtype` (no copy when it already is one).
at::Tensor as(const at::Tensor& t, at::ScalarType dtype) { return t.to(dtype).contiguous(); }

template <typename acc_t>
PerRow<acc_t> per_row(const std::optional<at::Tensor>& t, double value, std::optional<at::Tensor>& keep,
                      at::ScalarType acc_dtype) {
  if (!t) return PerRow<acc_t>{nullptr, static_cast<acc_t>(value)};
  keep = as(*t, acc_dtype);
  return PerRow<acc_t>{keep->data_ptr<acc_t>(), 0};
}

void check_state(const std::optional<at::Tensor>& t, const at::Tensor& logits, at::ScalarType dtype,
                 at::IntArrayRef expected, const char* name) {
  if (!t) return;
  check_device(*t, logits, name);
  TORCH_CHECK_VALUE(t->scalar_type() == dtype, name, " must be ", dtype, ", got ", t->scalar_type());
  TORCH_CHECK_VALUE(t->sizes() == expected, name, " must have shape ", shape(expected), ", got ", shape(t->sizes()));
  TORCH_CHECK_VALUE(t->is_contiguous(), name, " must be contiguous");
}

}  // namespace

RowOutputs run_rows(const RowArgs& a) {
  const at::Tensor& logits_in = a.logits;
  TORCH_CHECK_VALUE(logits_in.dim() == 2, "logits must have shape [N, C], got ", shape(logits_in.sizes()));
  TORCH_CHECK_VALUE(at::isFloatingType(logits_in.scalar_type()), "logits must be floating point, got ",
                    logits_in.scalar_type());
  const int64_t N = logits_in.size(0), C = logits_in.size(1);
  TORCH_CHECK_VALUE(C >= 1, "logits must have at least one class, got C = ", num(C));
  // The kernels index the classes of a row with 32-bit integers.
  TORCH_CHECK_VALUE(C <= kMaxClasses, "logits has C = ", num(C), " classes, more than the ", num(kMaxClasses),
                    " the kernels support");
  check_rows(a.labels, logits_in, "labels");
  TORCH_CHECK_VALUE(!at::isFloatingType(a.labels.scalar_type()) && a.labels.scalar_type() != at::kBool,
                    "labels must be integer class indices, got ", a.labels.scalar_type());
  check_rows(a.labels2, logits_in, "labels2");
  check_rows(a.lam, logits_in, "lam");
  check_rows(a.smoothing, logits_in, "smoothing");
  check_rows(a.table_weight, logits_in, "table_weight");
  check_rows(a.dense_weight, logits_in, "dense_weight");
  TORCH_CHECK_VALUE(!a.lam || a.labels2, "lam needs labels2");
  if (a.table) {
    check_device(*a.table, logits_in, "table");
    TORCH_CHECK_VALUE(a.table->dim() == 2 && a.table->size(0) == C && a.table->size(1) == C,
                      "table must have shape [C, C] = [", num(C), ", ", num(C), "], got ", shape(a.table->sizes()));
  }
  if (a.dense) {
    check_device(*a.dense, logits_in, "dense");
    TORCH_CHECK_VALUE(a.dense->sizes() == logits_in.sizes(), "dense must have the shape of logits ",
                      shape(logits_in.sizes()), ", got ", shape(a.dense->sizes()));
    TORCH_CHECK_VALUE(at::isFloatingType(a.dense->scalar_type()), "dense must be floating point");
  }
  TORCH_CHECK_VALUE(a.temperature > 0, "temperature must be positive, got ", num(a.temperature));
  if (a.grad_output) {
    check_device(*a.grad_output, logits_in, "grad_output");
    TORCH_CHECK_VALUE(a.grad_output->numel() == 1 || a.grad_output->numel() == N,
                      "grad_output must have one value or N values, got ", shape(a.grad_output->sizes()));
  }
  check_state(a.class_sum, logits_in, at::kFloat, {C, C}, "class_sum");
  check_state(a.class_count, logits_in, at::kFloat, {C}, "class_count");
  TORCH_CHECK_VALUE(a.class_sum.has_value() == a.class_count.has_value(),
                    "class_sum and class_count come together");
  TORCH_CHECK_VALUE(a.calib_bins.has_value() == a.calib_sums.has_value(),
                    "calib_bins and calib_sums come together");
  if (a.calib_bins) {
    TORCH_CHECK_VALUE(a.calib_bins->dim() == 2 && a.calib_bins->size(1) == 3 && a.calib_bins->size(0) >= 1,
                      "calib_bins must have shape [M, 3], got ", shape(a.calib_bins->sizes()));
    check_state(a.calib_bins, logits_in, at::kDouble, {a.calib_bins->size(0), 3}, "calib_bins");
    check_state(a.calib_sums, logits_in, at::kDouble, {3}, "calib_sums");
  }

  // Class and calibration statistics on CUDA are float atomics, whose last bits follow the order in which
  // rows land (the CPU kernel adds its blocks in a fixed order): an error, or a warning, under
  // torch.use_deterministic_algorithms, as PyTorch's own such kernels.
  if (logits_in.is_cuda() && (a.class_sum || a.calib_bins)) {
    at::globalContext().alertNotDeterministic("pysoftlabel class and calibration statistics on CUDA");
  }

#if defined(PSL_WITH_CUDA)
  std::optional<c10::cuda::CUDAGuard> guard;
  if (logits_in.is_cuda()) guard.emplace(logits_in.device());
#else
  TORCH_CHECK_VALUE(!logits_in.is_cuda(), "pysoftlabel was built without CUDA kernels");
#endif
  TORCH_CHECK_VALUE(logits_in.is_cpu() || logits_in.is_cuda(), "logits must be a CPU or CUDA tensor, got ",
                    logits_in.device());

  const at::Tensor logits = logits_in.contiguous();
  const at::ScalarType acc_dtype = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto acc_options = logits.options().dtype(acc_dtype);
  RowOutputs out;
  const at::Tensor loss_rows = a.want_loss ? at::empty({N}, acc_options) : at::empty({0}, acc_options);
  const bool reduce = a.want_loss && a.reduction != 0;
  at::Tensor valid_and_scale;
  if (reduce) {
    out.loss = at::empty({}, acc_options);
    valid_and_scale = at::empty({2}, acc_options);
  } else {
    out.loss = loss_rows;
  }
  out.grad = a.want_grad ? at::empty({N, C}, logits.options()) : at::empty({0}, logits.options());

  // Owners of the converted copies, alive until the kernel has been queued.
  const at::Tensor labels = as(a.labels, at::kLong);
  std::optional<at::Tensor> labels2, lam, smoothing, table_weight, dense_weight, table, dense, grad_output;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "pysoftlabel_rows", [&] {
    using acc_t = opmath_t<scalar_t>;
    RowJob<scalar_t> job;
    job.rows = N;
    job.classes = C;
    job.logits = logits.data_ptr<scalar_t>();
    job.labels = labels.data_ptr<int64_t>();
    if (a.labels2) {
      labels2 = as(*a.labels2, at::kLong);
      job.labels2 = labels2->data_ptr<int64_t>();
      job.lam = per_row<acc_t>(a.lam, a.lam_value, lam, acc_dtype);
    }
    job.smoothing = per_row<acc_t>(a.smoothing, a.smoothing_value, smoothing, acc_dtype);
    if (a.table) {
      table = as(*a.table, acc_dtype);
      job.table = table->data_ptr<acc_t>();
      job.table_weight = per_row<acc_t>(a.table_weight, a.table_weight_value, table_weight, acc_dtype);
    }
    if (a.dense) {
      dense = as(*a.dense, logits.scalar_type());
      job.dense = dense->data_ptr<scalar_t>();
      job.dense_weight = per_row<acc_t>(a.dense_weight, a.dense_weight_value, dense_weight, acc_dtype);
      job.dense_logits = a.dense_logits;
      job.inv_temperature = static_cast<acc_t>(1.0 / a.temperature);
    }
    job.ignore_index = a.ignore_index;
    if (a.want_loss) job.loss = loss_rows.data_ptr<acc_t>();
    if (reduce) {
      job.reduction = static_cast<int>(a.reduction);
      job.loss_reduced = out.loss.data_ptr<acc_t>();
      job.valid_and_scale = valid_and_scale.data_ptr<acc_t>();
    }
    if (a.want_grad) {
      job.grad = out.grad.data_ptr<scalar_t>();
      if (a.grad_output) {
        grad_output = as(*a.grad_output, acc_dtype);
        job.grad_output = grad_output->data_ptr<acc_t>();
        job.grad_output_per_row = grad_output->numel() != 1;
      }
    }
    if (a.class_sum) {
      job.class_sum = a.class_sum->data_ptr<float>();
      job.class_count = a.class_count->data_ptr<float>();
    }
    if (a.calib_bins) {
      job.calib_bins = a.calib_bins->data_ptr<double>();
      job.calib_sums = a.calib_sums->data_ptr<double>();
      job.n_bins = a.calib_bins->size(0);
    }
#if defined(PSL_WITH_CUDA)
    if (logits.is_cuda()) {
      check_launch(run_rows_cuda<scalar_t>(job, c10::cuda::getCurrentCUDAStream()));
      return;
    }
#endif
    const RowStatus status = run_rows_cpu<scalar_t>(job);
    TORCH_CHECK_VALUE(status.code == kRowOk, row_error_message(status.code), " (row ", num(status.row), ")");
  });
  return out;
}

void scale_rows(at::Tensor& grad, const at::Tensor& factor) {
  TORCH_CHECK_VALUE(grad.dim() == 2 && grad.is_contiguous(), "grad must be a contiguous [N, C] tensor");
  check_device(factor, grad, "grad_output");
  const int64_t N = grad.size(0), C = grad.size(1);
  TORCH_CHECK_VALUE(factor.numel() == 1 || factor.numel() == N,
                    "grad_output must have one value or N values, got ", shape(factor.sizes()));
#if defined(PSL_WITH_CUDA)
  std::optional<c10::cuda::CUDAGuard> guard;
  if (grad.is_cuda()) guard.emplace(grad.device());
#endif
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "pysoftlabel_scale_rows", [&] {
    using acc_t = opmath_t<scalar_t>;
    const at::Tensor f = as(factor, grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
    const bool per_row = f.numel() != 1;
#if defined(PSL_WITH_CUDA)
    if (grad.is_cuda()) {
      check_launch(scale_rows_cuda<scalar_t>(grad.data_ptr<scalar_t>(), N, C, f.data_ptr<acc_t>(), per_row,
                                             c10::cuda::getCurrentCUDAStream()));
      return;
    }
#endif
    scale_rows_cpu<scalar_t>(grad.data_ptr<scalar_t>(), N, C, f.data_ptr<acc_t>(), per_row);
  });
}

}  // namespace psl
